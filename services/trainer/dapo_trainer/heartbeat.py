"""Rank 0's liveness key: `keys.trainer_heartbeat()`, SET with a TTL from a daemon thread.

Its value is JSON {run_id, version, step, pid, host}; the controller reads it to tell a trainer that
serves a run from one that died.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
from typing import Any

import redis as redis_lib

from dapo import auth, keys

log = logging.getLogger(__name__)


class Heartbeat:
    """Rank 0's liveness key, refreshed from a daemon thread every `ttl_s / 4` seconds."""

    def __init__(self, url: str, ttl_s: float) -> None:
        self.client = redis_lib.Redis.from_url(
            url, socket_timeout=5.0, socket_connect_timeout=5.0, **auth.redis_options(url)
        )
        self.ttl_ms = int(ttl_s * 1000)
        self.value: dict[str, Any] = {
            "run_id": None,
            "version": None,
            "step": None,
            "pid": os.getpid(),
            "host": socket.gethostname(),
        }
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="trainer-heartbeat", daemon=True)

    def start(self) -> Heartbeat:
        self._thread.start()
        return self

    def update(self, **fields: Any) -> None:
        with self._lock:
            self.value.update(fields)
        self._beat()

    def _beat(self) -> None:
        with self._lock:
            value = json.dumps(self.value)
        try:
            self.client.set(keys.trainer_heartbeat(), value, px=self.ttl_ms)
        except (redis_lib.ConnectionError, redis_lib.TimeoutError) as exc:  # the main loop reports outages
            log.warning("heartbeat not written: %s", exc)

    def _run(self) -> None:
        while not self._stop.wait(self.ttl_ms / 4000):
            self._beat()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.client.close()
