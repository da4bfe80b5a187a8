"""Weights out: gather the full parameters from the shards and hand them to the rollout servers.

`gather_full_state_dict` (collective) gives rank 0 every parameter, in the Hugging Face names and in
the dtype the rollout engine loads, cast and gathered on the device before the copy to CPU. `WeightOutlet`
(rank 0) serves that version to late joiners through the WeightPublisher (FetchWeights) and fans it out,
on a thread of its own, to every rollout server in the Redis set `keys.rollout_servers()` plus
`services.rollout_addresses`: the publisher streams it once, to the first server, and the servers relay
it along a chain (dapo.relay), so neither the time until all of them serve it nor the trainer's egress
grows with their number. Every version is tagged with its run id (versions count per run, from 0): a
rollout server serving another run takes it whatever its number. A server the version does not reach is
logged and reported as a run event, never fatal: that server fetches the version later.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

from dapo import keys
from dapo.dtypes import SERVED_DTYPES, torch_dtype
from dapo.weights import tensors_from_state_dict
from dapo_trainer.distributed import DistContext
from dapo_trainer.model import WRAPPER_PREFIX
from dapo_trainer.redis_io import RetryingRedis

if TYPE_CHECKING:
    from dapo.weight_publisher import EncodedVersion

log = logging.getLogger(__name__)

Announce = Callable[[int], None]
"""Called with a version once it is out (the trainer sets the policy-version key)."""


def gather_full_state_dict(
    model: torch.nn.Module, dtype: str, tie_word_embeddings: bool, ctx: DistContext
) -> dict[str, torch.Tensor]:
    """Collective: rank 0 gets the full CPU tensors in HF names and `dtype`; other ranks get {}.

    Each parameter's shard is cast to `dtype` where it lives (on the GPU when training there), gathered
    whole there, and only then copied to CPU: the gather and the copy move `dtype`'s bytes (half of float32's
    for bfloat16), and the device holds one full tensor at a time beyond its shards. The CPU tensors never
    share memory with the parameters, so the next optimizer step cannot change a version being sent.
    """
    from torch.distributed.tensor import DTensor

    sharded = get_model_state_dict(model, options=StateDictOptions(full_state_dict=False))
    assert dtype in SERVED_DTYPES, dtype  # resolve_weights_dtype checked it
    target = torch_dtype(dtype)
    out: dict[str, torch.Tensor] = {}
    for name, value in sharded.items():
        assert isinstance(value, torch.Tensor), name
        hf_name = name.removeprefix(WRAPPER_PREFIX)
        if tie_word_embeddings and hf_name == "lm_head.weight":
            continue  # tied to the embedding: loaders re-tie it
        cast = value.detach().to(target)
        full = cast.full_tensor() if isinstance(cast, DTensor) else cast
        if not ctx.is_main:
            continue
        cpu = full.to("cpu")
        local = value.to_local() if isinstance(value, DTensor) else value
        if cpu.untyped_storage().data_ptr() == local.untyped_storage().data_ptr():
            cpu = cpu.clone()  # one CPU rank, same dtype: the "gathered" tensor is the parameter itself
        out[hf_name] = cpu
    return out


@dataclass
class PushOutcome:
    address: str
    error: str | None = None
    source: str = ""  # where the server's bytes came from ("upstream": the planned relay stream)


@dataclass
class PublishReport:
    version: int
    num_bytes: int
    run_id: str = ""
    outcomes: list[PushOutcome] = field(default_factory=list)
    duration_s: float = 0.0
    egress_bytes: int = 0  # what the publisher sent during this fan-out (resumed fetches included)

    def summary(self) -> str:
        reached = [o for o in self.outcomes if o.error is None]
        resumed = [o for o in reached if o.source.startswith("publisher")]
        failed = [f"{o.address} ({o.error})" for o in self.outcomes if o.error is not None]
        ratio = self.egress_bytes / self.num_bytes if self.num_bytes else 0.0
        return (
            f"weights version {self.version} reached {len(reached)} of {len(self.outcomes)} rollout servers in "
            f"{self.duration_s:.2f} s ({len(resumed)} resumed from the publisher after a relay failed); "
            f"the publisher sent {ratio:.2f}x the version's {self.num_bytes} bytes"
            + (f"; not reached: {', '.join(failed)}" if failed else "")
        )


class WeightOutlet:
    """Rank 0's publisher: FetchWeights for late joiners, and a fan-out of every version to every known
    rollout server, run on a thread of its own so that the trainer goes on with its next step.

    `publish` only swaps the version in (nothing is copied or encoded on the caller's thread) and hands it
    to the fan-out thread, which fans it out and then calls the version's `announce` (the trainer sets the
    policy-version key there: a version is announced only once it is out). A version published while an
    older one is still going out replaces any version waiting behind it (servers need the newest, not
    every one; its `announce` is not called). A synchronous run `wait`s after each `publish`; an
    asynchronous one goes on training and waits only at the end of the run. A fan-out's failure is
    logged and reported per server, never fatal (the server fetches later); an `announce` that fails is
    raised by the next `publish` or `wait`. `stop` waits for what is handed over (up to the push timeout),
    then stops the publisher.
    """

    def __init__(
        self,
        host: str,
        port: int,
        redis: RetryingRedis,
        static_addresses: Iterable[str],
        push_timeout_s: float,
        on_push_failure: Callable[[str, str], None],
        relay_fanout: int = 1,
        stall_s: float = 30.0,
    ) -> None:
        from dapo.weight_publisher import WeightPublisher

        if relay_fanout < 1:
            raise ValueError(f"relay_fanout must be >= 1, got {relay_fanout}")
        self.publisher = WeightPublisher(host=host, port=port).start()
        self.redis = redis
        self.static_addresses = list(static_addresses)
        self.push_timeout_s = push_timeout_s
        self.on_push_failure = on_push_failure
        self.relay_fanout = relay_fanout
        self.stall_s = stall_s
        self.last_report: PublishReport | None = None
        self.last_publish_s: float | None = None
        """Seconds the last version took on the fan-out thread, fan-out and announce (None before the first)."""
        self._cond = threading.Condition()
        self._pending: tuple[EncodedVersion, Announce | None] | None = None
        self._is_sending = False
        self._is_stopping = False
        self._failure: Exception | None = None
        self._thread = threading.Thread(target=self._fan_out_loop, name="weight-fan-out", daemon=True)
        self._thread.start()

    def servers(self) -> list[str]:
        found = {
            m.decode() if isinstance(m, bytes) else m for m in self.redis.smembers(keys.rollout_servers())
        }
        return sorted(found | set(self.static_addresses))

    def publish(
        self,
        version: int,
        state_dict: dict[str, torch.Tensor],
        run_id: str,
        announce: Announce | None = None,
    ) -> None:
        """Serve `version` of run `run_id` to fetchers and fan it out to every known server in the
        background, then call `announce(version)` there. Raises the failure of an earlier `announce`
        (and hands nothing over)."""
        self._raise_failure()
        encoded = self.publisher.publish(version, tensors_from_state_dict(state_dict), run_id=run_id)
        with self._cond:
            self._pending = (encoded, announce)
            self._cond.notify_all()

    def wait(self, timeout: float | None = None) -> PublishReport | None:
        """Block until every version handed over has gone out (and been announced); the last fan-out's
        report. Raises the failure of an `announce`."""
        with self._cond:
            self._cond.wait_for(lambda: self._pending is None and not self._is_sending, timeout)
        self._raise_failure()
        return self.last_report

    def _raise_failure(self) -> None:
        with self._cond:
            failure, self._failure = self._failure, None
        if failure is not None:
            raise failure

    def _fan_out_loop(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._pending is not None or self._is_stopping)
                if self._pending is None:
                    return
                (encoded, announce), self._pending, self._is_sending = self._pending, None, True
            try:
                self._send(encoded, announce)
            finally:
                with self._cond:
                    self._is_sending = False
                    self._cond.notify_all()

    def _send(self, encoded: EncodedVersion, announce: Announce | None) -> None:
        """Fan `encoded` out, then announce it; a failed announce is kept for the trainer's thread."""
        started = time.perf_counter()
        try:
            self.last_report = self._fan_out(encoded)
        except Exception:  # a fan-out must never take the trainer down: the servers fetch later
            log.exception("fanning out weights version %d failed", encoded.version)
        try:
            if announce is not None:
                announce(encoded.version)
        except Exception as exc:  # raised on the trainer's thread by its next publish or wait
            with self._cond:
                self._failure = exc
            return
        self.last_publish_s = time.perf_counter() - started

    def _fan_out(self, encoded: EncodedVersion) -> PublishReport:
        started, sent_before = time.perf_counter(), self.publisher.egress_bytes
        servers = self.servers()
        outcomes = self.publisher.fan_out(
            encoded, servers, fanout=self.relay_fanout, timeout=self.push_timeout_s, stall_s=self.stall_s
        )
        report = PublishReport(
            encoded.version,
            encoded.num_bytes,
            encoded.run_id,
            [PushOutcome(o.address, None if o.is_served else o.error, o.source) for o in outcomes],
            time.perf_counter() - started,
            self.publisher.egress_bytes - sent_before,
        )
        for outcome in report.outcomes:
            if outcome.error is not None:  # one server's failure is reported, not fatal: it fetches later
                message = f"pushing version {encoded.version} to rollout server {outcome.address} failed: {outcome.error}"
                log.warning(message)
                self.on_push_failure(outcome.address, message)
        if servers:
            log.info("%s", report.summary())
        return report

    def stop(self) -> None:
        try:
            self.wait(self.push_timeout_s)
        except Exception:  # the run is over: a last failed announce is logged, not raised
            log.exception("announcing the last weights version failed")
        with self._cond:
            self._is_stopping = True
            self._cond.notify_all()
        self._thread.join(self.push_timeout_s)
        self.publisher.stop()
