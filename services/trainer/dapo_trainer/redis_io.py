"""Redis from rank 0, with retries at the network boundary.

Every command goes through `RetryingRedis`: connection errors and timeouts are retried with
exponential back-off (tenacity) for up to `retry_s` seconds; after that `RedisUnavailable` is raised
with the URL and the last error, and the trainer exits non-zero. Errors Redis itself answers
(wrong type, bad arguments) are never retried.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import redis
from tenacity import (
    RetryError,
    Retrying,
    before_sleep_log,
    retry_if_exception_type,
    stop_after_delay,
    wait_exponential,
)

from dapo import auth

log = logging.getLogger(__name__)

RETRIED_ERRORS = (redis.ConnectionError, redis.TimeoutError)


class RedisUnavailable(RuntimeError):
    """Redis did not answer within the retry budget."""


class RetryingRedis:
    """A redis.Redis whose commands are retried on connection errors and timeouts."""

    def __init__(self, url: str, retry_s: float = 30.0, socket_timeout_s: float = 30.0) -> None:
        self.url = url
        self.retry_s = retry_s
        self.client = redis.Redis.from_url(
            url,
            socket_timeout=socket_timeout_s,
            socket_connect_timeout=5.0,
            health_check_interval=10,
            **auth.redis_options(url),
        )

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self.client, name)
        if not callable(method):
            return method

        def call(*args: Any, **kwargs: Any) -> Any:
            return self.call(method, *args, **kwargs)

        return call

    def call(self, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        retrying = Retrying(
            retry=retry_if_exception_type(RETRIED_ERRORS),
            stop=stop_after_delay(self.retry_s),
            wait=wait_exponential(multiplier=0.2, max=5.0),
            before_sleep=before_sleep_log(log, logging.WARNING),
            reraise=False,
        )
        try:
            return retrying(method, *args, **kwargs)
        except RetryError as exc:
            last = exc.last_attempt.exception()
            raise RedisUnavailable(
                f"Redis at {auth.redact_url(self.url)} unavailable for {self.retry_s:.0f} s "
                f"({getattr(method, '__name__', 'command')}): {last}"
            ) from last

    def close(self) -> None:
        self.client.close()
