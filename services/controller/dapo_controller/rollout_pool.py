"""Fan Generate calls out over the healthy rollout servers.

Addresses are `host:port`, or `dns:///name:port` for a headless Service: such a name is resolved at
every probe and each address behind it becomes a server of its own (servers may come and go).
A server that fails a call (unavailable, deadline exceeded, internal error) is taken out of rotation
and the prompts it held are retried on another server; a background probe (`Status`) brings it back
once it answers again. Requests go to the server with the fewest calls in flight (ties: round-robin).

Policy versions count per run (every run's trainer starts at 0), so a server is used only while it serves
the pool's `run_id` at `required_version` or newer; a reply whose samples come from another run's weights
(the server switched runs after its last probe) is never returned: its prompts are retried elsewhere.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass

import grpc

from dapo import rpc
from dapo.v1 import rollout_pb2, rollout_pb2_grpc

log = logging.getLogger(__name__)
DNS_PREFIX = "dns:///"
RETRYABLE = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}


class NoHealthyServerError(RuntimeError):
    """Every rollout server is out of rotation."""


@dataclass
class _Server:
    address: str
    stub: rollout_pb2_grpc.RolloutStub
    channel: grpc.aio.Channel
    healthy: bool = False
    in_flight: int = 0
    version: int = -1
    run_id: str = ""
    is_answering: bool = False  # answered its last Status probe (ready or not)


class RolloutPool:
    def __init__(
        self,
        addresses: list[str],
        timeout_s: float,
        on_change: Callable[[str, bool, str], None] | None = None,
        run_id: str = "",
    ) -> None:
        if not addresses:
            raise ValueError("rollout addresses: expected at least one host:port")
        self.addresses = list(addresses)
        self.servers: list[_Server] = []
        self._sync_servers(self._static_addresses())
        self.timeout_s = timeout_s
        self.on_change = on_change
        self._order = itertools.count()
        self.run_id = run_id  # servers serving another run's weights get no requests
        self.required_version = 0  # servers reporting an older policy version get no requests

    def _static_addresses(self) -> list[str]:
        return [a for a in self.addresses if not a.startswith(DNS_PREFIX)]

    async def _resolve(self) -> list[str]:
        found = self._static_addresses()
        loop = asyncio.get_running_loop()
        for entry in self.addresses:
            if not entry.startswith(DNS_PREFIX):
                continue
            host, _, port = entry.removeprefix(DNS_PREFIX).rpartition(":")
            try:
                infos = await loop.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
            except OSError as exc:
                log.warning("cannot resolve %s: %s", entry, exc)
                continue
            found += sorted({f"{info[4][0]}:{port}" for info in infos})
        return found

    def _sync_servers(self, addresses: list[str]) -> None:
        """Add servers for new addresses and drop those no longer listed."""
        known = {s.address for s in self.servers}
        for address in addresses:
            if address not in known:
                channel = rpc.aio_channel(address)
                self.servers.append(_Server(address, rollout_pb2_grpc.RolloutStub(channel), channel))
        gone = [s for s in self.servers if s.address not in addresses]
        for server in gone:
            self.servers.remove(server)
            asyncio.get_running_loop().create_task(server.channel.close())

    async def close(self) -> None:
        for server in self.servers:
            await server.channel.close()

    def _mark(self, server: _Server, healthy: bool, reason: str) -> None:
        if server.healthy != healthy:
            server.healthy = healthy
            log.warning("rollout server %s %s: %s", server.address, "back" if healthy else "out", reason)
            if self.on_change is not None:
                self.on_change(server.address, healthy, reason)

    async def probe(self, probe_timeout_s: float = 5.0) -> list[str]:
        """Ask every server for its Status; update rotation; return the healthy addresses."""
        if any(a.startswith(DNS_PREFIX) for a in self.addresses):
            self._sync_servers(await self._resolve())

        async def one(server: _Server) -> None:
            try:
                status = await server.stub.Status(rollout_pb2.StatusRequest(), timeout=probe_timeout_s)
            except grpc.aio.AioRpcError as exc:
                server.is_answering = False
                self._mark(server, False, f"{exc.code().name}: {exc.details()}")
                return
            server.is_answering = True
            server.version, server.run_id = status.policy_version, status.run_id
            if status.ready:
                self._mark(server, True, "answers Status")
            else:
                self._mark(server, False, "not ready")

        await asyncio.gather(*(one(s) for s in self.servers))
        return [s.address for s in self.servers if s.healthy]

    def answering(self) -> list[str]:
        """Addresses of the servers that answered the last probe (alive, whatever they serve)."""
        return [s.address for s in self.servers if s.is_answering]

    def healthy(self) -> list[_Server]:
        """Servers in rotation that serve this pool's run at `required_version` or newer."""
        return [
            s
            for s in self.servers
            if s.healthy and s.run_id == self.run_id and s.version >= self.required_version
        ]

    def _pick(self, exclude: set[str]) -> _Server:
        candidates = [s for s in self.healthy() if s.address not in exclude] or self.healthy()
        if not candidates:
            raise NoHealthyServerError(
                f"no healthy rollout server at policy version >= {self.required_version} of run "
                f"'{self.run_id}': every server failed its last call or probe, or serves older weights "
                "or another run's"
            )
        turn = next(self._order)
        return min(
            candidates, key=lambda s: (s.in_flight, (self.servers.index(s) - turn) % len(self.servers))
        )

    async def generate(
        self, prompts: list[rollout_pb2.Prompt], sampling: rollout_pb2.SamplingParams, max_attempts: int = 4
    ) -> list[rollout_pb2.PromptResult]:
        """Generate for `prompts`, split over the healthy servers; failed parts are retried elsewhere."""
        if not prompts:
            return []
        num_parts = max(1, len(self.healthy()))
        size = -(-len(prompts) // num_parts)
        parts = [prompts[i : i + size] for i in range(0, len(prompts), size)]
        results = await asyncio.gather(*(self._generate_part(p, sampling, max_attempts) for p in parts))
        return [r for part in results for r in part]

    async def _generate_part(
        self, prompts: list[rollout_pb2.Prompt], sampling: rollout_pb2.SamplingParams, max_attempts: int
    ) -> list[rollout_pb2.PromptResult]:
        tried: set[str] = set()
        last_error = ""
        for _ in range(max_attempts):
            if not self.healthy():
                await self.probe()
            server = self._pick(tried)
            server.in_flight += 1
            try:
                reply = await server.stub.Generate(
                    rollout_pb2.GenerateRequest(prompts=prompts, sampling=sampling), timeout=self.timeout_s
                )
            except grpc.aio.AioRpcError as exc:
                if exc.code() not in RETRYABLE:
                    raise
                last_error = f"{server.address}: {exc.code().name}: {exc.details()}"
                self._mark(server, False, last_error)
                tried.add(server.address)
                continue
            finally:
                server.in_flight -= 1
            if len(reply.results) != len(prompts):
                raise RuntimeError(
                    f"rollout server {server.address} answered {len(reply.results)} results for {len(prompts)} prompts"
                )
            foreign = next((s for r in reply.results for s in r.samples if s.run_id != self.run_id), None)
            if foreign is not None:
                # Switched to another run's weights since its last probe: out of use until it serves ours.
                server.run_id, server.version = foreign.run_id, foreign.policy_version
                last_error = (
                    f"{server.address}: sampled with version {foreign.policy_version} of run "
                    f"'{foreign.run_id}', not of run '{self.run_id}'"
                )
                log.warning("discarded a reply: %s", last_error)
                tried.add(server.address)
                continue
            return list(reply.results)
        raise NoHealthyServerError(
            f"Generate failed on every server tried ({max_attempts} attempts): {last_error}"
        )
