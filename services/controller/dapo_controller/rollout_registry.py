"""The registry of live rollout servers: the Redis set `keys.rollout_servers()` that the trainer pushes
every weight version to, kept by the controller from its probes.

Rollout servers do not talk to Redis; the controller's `Status` probes are their heartbeat. `refresh`
records, in the sorted set `keys.rollout_servers_seen()`, the time each server that answered was seen,
adds it to the set, and removes from both every server not seen for `ttl_s` (a stopped process, a pod
gone from the headless Service's DNS). One Lua script does it, so readers never see a server that is
in the set without a last-seen time. A pruned server that answers again rejoins; meanwhile it fetches
the versions it missed from the trainer's publisher by itself.
"""

from __future__ import annotations

import time

import redis.asyncio as aioredis

from dapo import keys

# KEYS: the set, the last-seen sorted set; ARGV: now, cutoff, then the addresses seen now.
# A member of the set without a last-seen time (registered by an older controller) gets `now`, a grace
# period of one ttl. Returns the addresses removed.
_REFRESH = """
for i = 3, #ARGV do
  redis.call('SADD', KEYS[1], ARGV[i])
  redis.call('ZADD', KEYS[2], ARGV[1], ARGV[i])
end
for _, member in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if not redis.call('ZSCORE', KEYS[2], member) then redis.call('ZADD', KEYS[2], ARGV[1], member) end
end
local stale = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', '(' .. ARGV[2])
for _, member in ipairs(stale) do
  redis.call('SREM', KEYS[1], member)
  redis.call('ZREM', KEYS[2], member)
end
return stale
"""


class RolloutRegistry:
    def __init__(self, redis: aioredis.Redis, ttl_s: float) -> None:
        if ttl_s <= 0:
            raise ValueError(f"services.rollout_server_ttl_s must be > 0, got {ttl_s}")
        self.redis = redis
        self.ttl_s = ttl_s
        self._refresh = redis.register_script(_REFRESH)

    async def refresh(self, seen: list[str], now: float | None = None) -> list[str]:
        """Register the servers `seen` answering now and drop those silent for `ttl_s`; returns the
        dropped addresses."""
        now = time.time() if now is None else now
        removed = await self._refresh(
            keys=[keys.rollout_servers(), keys.rollout_servers_seen()],
            args=[repr(now), repr(now - self.ttl_s), *seen],
        )
        return sorted(m.decode() if isinstance(m, bytes) else str(m) for m in removed)

    async def members(self) -> list[str]:
        return sorted(m.decode() for m in await self.redis.smembers(keys.rollout_servers()))
