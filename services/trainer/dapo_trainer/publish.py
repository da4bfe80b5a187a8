"""Weights out: gather the full parameters from the shards and hand them to the rollout servers.

`gather_full_state_dict` (collective) gives rank 0 every parameter, in the Hugging Face names and in
the dtype the rollout engine loads. `WeightOutlet` (rank 0) serves that version to late joiners through
the WeightPublisher (FetchWeights) and pushes it to every rollout server in the Redis set
`keys.rollout_servers()` plus `services.rollout_addresses`. Every version is tagged with its run id
(versions count per run, from 0): a rollout server serving another run takes it whatever its number.
A push that fails is logged and reported as a run event, never fatal: that server fetches the version
later.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import grpc
import torch
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

from dapo import keys
from dapo.weights import tensors_from_state_dict
from dapo_trainer.distributed import DistContext
from dapo_trainer.model import WRAPPER_PREFIX
from dapo_trainer.redis_io import RetryingRedis

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def gather_full_state_dict(
    model: torch.nn.Module, dtype: str, tie_word_embeddings: bool, ctx: DistContext
) -> dict[str, torch.Tensor]:
    """Collective: rank 0 gets the full CPU tensors in HF names and `dtype`; other ranks get {}."""
    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if not ctx.is_main:
        return {}
    target = DTYPES[dtype]
    out: dict[str, torch.Tensor] = {}
    for name, value in full.items():
        assert isinstance(value, torch.Tensor), name
        tensor = value
        hf_name = name.removeprefix(WRAPPER_PREFIX)
        if tie_word_embeddings and hf_name == "lm_head.weight":
            continue  # tied to the embedding: loaders re-tie it
        out[hf_name] = tensor if tensor.dtype == target else tensor.to(target)
    return out


@dataclass
class PushOutcome:
    address: str
    error: str | None = None


@dataclass
class PublishReport:
    version: int
    num_bytes: int
    run_id: str = ""
    outcomes: list[PushOutcome] = field(default_factory=list)


class WeightOutlet:
    """Rank 0's publisher: FetchWeights for late joiners, a push to every known rollout server."""

    def __init__(
        self,
        host: str,
        port: int,
        redis: RetryingRedis,
        static_addresses: Iterable[str],
        push_timeout_s: float,
        on_push_failure: Callable[[str, str], None],
    ) -> None:
        from dapo.weight_publisher import WeightPublisher

        self.publisher = WeightPublisher(host=host, port=port).start()
        self.redis = redis
        self.static_addresses = list(static_addresses)
        self.push_timeout_s = push_timeout_s
        self.on_push_failure = on_push_failure

    def servers(self) -> list[str]:
        found = {
            m.decode() if isinstance(m, bytes) else m for m in self.redis.smembers(keys.rollout_servers())
        }
        return sorted(found | set(self.static_addresses))

    def publish(
        self, version: int, state_dict: dict[str, torch.Tensor], run_id: str, push: bool = True
    ) -> PublishReport:
        """Serve `version` of run `run_id` to fetchers and (with `push`) push it to every known server."""
        from dapo.weight_publisher import push_weights

        tensors = tensors_from_state_dict(state_dict)
        self.publisher.publish(version, tensors, run_id=run_id)
        report = PublishReport(version, sum(t.num_bytes for t in tensors), run_id)
        if not push:
            return report
        for address in self.servers():
            try:
                push_weights(address, version, tensors, timeout=self.push_timeout_s, run_id=run_id)
                report.outcomes.append(PushOutcome(address))
            except grpc.RpcError as exc:  # one server's failure is reported, not fatal: it fetches later
                detail = f"{exc.code().name}: {exc.details()}" if hasattr(exc, "code") else str(exc)
                message = f"pushing version {version} to rollout server {address} failed: {detail}"
                log.warning(message)
                self.on_push_failure(address, message)
                report.outcomes.append(PushOutcome(address, str(exc)))
        return report

    def stop(self) -> None:
        self.publisher.stop()
