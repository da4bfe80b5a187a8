"""Each run-config key does what NeMo RL says it does: from the key to the function that acts on it,
and that function's effect (advantages, shaping, the loss options, the generation rounds, the
controller's calls, the reward service's options, the optimizer, the layout, the outputs). The
advantage and shaping keys are tested in test_controller_groups.py, the trainer step's in
tests/integration/test_trainer_step.py."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from dapo_controller.groups import Group, Sample
from dapo_controller.loop import RunFailed, RunLoop, score_request
from dapo_trainer.checkpoint import is_checkpoint_due
from dapo_trainer.optim import build_optimizer
from dapo_trainer.step import loss_options

from dapo.algo.loss import token_losses
from dapo.config import load_config, parse_config
from dapo.data import DataError, PromptCursor, PromptRow, load_from_config
from dapo.launch.launcher import Launcher
from dapo.launch.services import controller_settings, reward_settings, trainer_settings
from dapo.launch.slurm import layout
from dapo.v1 import reward_pb2, rollout_pb2

# two prompts of two answers a step (the default micro-batch of 4 divides the batch)
SMALL = [
    "grpo.num_prompts_per_step=2",
    "grpo.num_generations_per_prompt=2",
    "policy.train_global_batch_size=4",
]


def _group(name: str, scores: list[float], lengths: list[int] | None = None) -> Group:
    lengths = lengths or [2] * len(scores)
    g = Group(row_id=name, prompt_ids=[1, 2], ground_truth="5")
    for score, n in zip(scores, lengths, strict=True):
        g.samples.append(
            Sample(list(range(n)), [-0.5] * n, "stop", version=0, score=score, correct=score > 0)
        )
    return g


# --- loss_fn: the trainer's loss options -------------------------------------------------------------


def test_loss_keys_reach_the_trainers_loss_options() -> None:
    options = loss_options(load_config(None, SMALL))
    assert (options.ratio_clip_min, options.ratio_clip_max, options.ratio_clip_c) == (0.2, 0.28, None)
    assert options.aggregation == "token-mean" and options.tis_cap is None
    assert (options.log_ratio_clamp, options.max_response_length) == (20.0, 512)
    options = loss_options(
        load_config(
            None,
            [
                *SMALL,
                "loss_fn.token_level_loss=false",
                "loss_fn.log_ratio_clamp=3",
                "loss_fn.ratio_clip_c=3",
                "loss_fn.use_importance_sampling_correction=true",
                "loss_fn.truncated_importance_sampling_ratio=1.5",
            ],
        )
    )
    # NeMo RL's token_level_loss: false averages each sequence's tokens first (GRPO)
    assert options.aggregation == "seq-mean-token-mean"
    assert (options.log_ratio_clamp, options.ratio_clip_c, options.tis_cap) == (3.0, 3.0, 1.5)
    # the cap applies only with the correction on; staleness turns the correction on by default
    off = [
        "loss_fn.truncated_importance_sampling_ratio=1.5",
        "loss_fn.use_importance_sampling_correction=false",
    ]
    assert loss_options(load_config(None, [*SMALL, *off])).tis_cap is None
    assert loss_options(load_config(None, [*SMALL, "grpo.max_staleness=1"])).tis_cap == 2.0


def test_log_ratio_clamp_from_the_config_bounds_the_ratio() -> None:
    options = loss_options(load_config(None, [*SMALL, "loss_fn.log_ratio_clamp=2"]))
    logp = torch.tensor([[0.0, -1.0]])
    old = torch.tensor([[-10.0, -1.5]])  # log-ratios 10 (clamped to 2) and 0.5
    terms = token_losses(logp, old, torch.tensor([1.0]), torch.ones(1, 2, dtype=torch.bool), options)
    torch.testing.assert_close(terms.log_ratio_BT, torch.tensor([[2.0, 0.5]]))
    torch.testing.assert_close(terms.ratio_BT, torch.tensor([[math.exp(2.0), math.exp(0.5)]]))


# --- the controller loop: generation rounds, validation, calls ---------------------------------------


class _Loop:
    """A RunLoop whose generation and scoring are fakes: every answer gets `score`."""

    def __init__(self, overrides: list[str], score: float) -> None:
        self.loop = RunLoop.__new__(RunLoop)
        self.loop.run_id = "r"
        self.loop.config = load_config(None, overrides)
        self.prompts_per_round: list[int] = []
        self.temperatures: list[float] = []
        self.score = score

        async def no_stop() -> None:
            return None

        async def generate(rows: list[PromptRow], n: int, temperature: float) -> list[Group]:
            self.prompts_per_round.append(len(rows))
            self.temperatures.append(temperature)
            return [_group(row.id, [0.0] * n) for row in rows]

        async def scored(groups: list[Group]) -> None:
            for g in groups:
                for i, s in enumerate(g.samples):
                    s.score = self.score if i else -self.score  # mixed when score > 0
                    s.correct, s.run_id = s.score > 0, "r"

        async def commit(**_: Any) -> None:
            raise _Committed()

        self.loop._check_stop = no_stop  # type: ignore[method-assign]
        self.loop._generate = generate  # type: ignore[method-assign]
        self.loop._score = scored  # type: ignore[method-assign]
        self.loop._commit_batch = commit  # type: ignore[assignment]

    def make_batch(self) -> None:
        rows = [PromptRow(str(i), [{"role": "user", "content": str(i)}], str(i)) for i in range(20)]
        asyncio.run(self.loop._make_batch(1, PromptCursor(rows, seed=0), 0))


class _Committed(Exception):
    """The batch was filled and reached the commit."""


def test_dynamic_sampling_max_gen_batches_bounds_the_rounds_then_fails_naming_the_keys() -> None:
    uniform = _Loop([*SMALL, "grpo.dynamic_sampling_max_gen_batches=3"], score=0.0)  # every group all wrong
    with pytest.raises(RunFailed) as failure:
        uniform.make_batch()
    assert uniform.prompts_per_round == [2, 2, 2]
    message = str(failure.value)
    assert "filled only 0 of 2 groups after 3 generation rounds" in message
    assert "6 all wrong" in message
    assert "grpo.dynamic_sampling_max_gen_batches" in message and "grpo.batch_multiplier" in message


def test_a_filled_batch_stops_generating_and_batch_multiplier_oversamples() -> None:
    mixed = _Loop([*SMALL, "grpo.batch_multiplier=2.5", "policy.generation.temperature=0.6"], score=1.0)
    with pytest.raises(_Committed):
        mixed.make_batch()
    assert mixed.prompts_per_round == [5]  # ceil(2 * 2.5), one round: the batch is full
    assert mixed.temperatures == [0.6]  # training rounds sample at policy.generation.temperature
    exact = _Loop([*SMALL, "grpo.batch_multiplier=2.5", "grpo.use_dynamic_sampling=false"], score=0.0)
    with pytest.raises(_Committed):
        exact.make_batch()
    assert exact.prompts_per_round == [2]  # without dynamic sampling: exactly the batch, every group kept


@pytest.mark.parametrize(
    ("overrides", "due"),
    [
        ([], [0]),
        (["grpo.val_period=2"], [0, 2, 4]),
        (["grpo.val_period=2", "grpo.val_at_start=false"], [2, 4]),
    ],
)
def test_val_period_and_val_at_start_choose_the_validation_steps(
    overrides: list[str], due: list[int]
) -> None:
    loop = RunLoop.__new__(RunLoop)
    loop.config = load_config(None, overrides)
    loop.val_rows = [PromptRow("v", [{"role": "user", "content": "1+1"}], "2")]
    assert [step for step in range(5) if loop._validation_due(step)] == due
    loop.val_rows = []
    assert not any(loop._validation_due(step) for step in range(5))  # nothing to validate on


def test_rpc_timeout_s_is_the_deadline_of_the_score_call() -> None:
    calls: list[float] = []

    class Reward:
        async def Score(self, request: reward_pb2.ScoreRequest, timeout: float) -> reward_pb2.ScoreReply:  # noqa: N802
            calls.append(timeout)
            return reward_pb2.ScoreReply(
                results=[reward_pb2.ScoreResult(id=i.id, score=1.0, correct=True) for i in request.items]
            )

    loop = RunLoop.__new__(RunLoop)
    loop.config = load_config(None, ["services.rpc_timeout_s=7.5"])
    loop.reward = Reward()  # type: ignore[assignment]
    groups = [_group("a", [0.0, 0.0])]
    asyncio.run(loop._score(groups))
    assert calls == [7.5]
    assert [s.score for s in groups[0].samples] == [1.0, 1.0]


def test_generation_keys_reach_the_generate_call() -> None:
    sent: list[rollout_pb2.SamplingParams] = []

    async def generate_waiting(
        prompts: list[rollout_pb2.Prompt], sampling: rollout_pb2.SamplingParams
    ) -> list[rollout_pb2.PromptResult]:
        sent.append(sampling)
        return [rollout_pb2.PromptResult() for _ in prompts]

    mixed = _Loop(
        [
            *SMALL,
            "policy.generation.temperature=0.7",
            "policy.generation.top_p=0.9",
            "policy.generation.top_k=20",
            "policy.generation.max_new_tokens=6",
            "policy.generation.stop=['</answer>']",
            "data.use_chat_template=false",
        ],
        score=1.0,
    )
    loop = mixed.loop
    del loop._generate  # the real one, over a fake transport
    loop.pool = object()  # type: ignore[assignment]
    loop._generate_waiting = generate_waiting  # type: ignore[method-assign]
    row = PromptRow("0", [{"role": "user", "content": "1+1"}], "2")
    asyncio.run(loop._generate([row], 2, loop.config.policy.generation.temperature))
    (sampling,) = sent
    assert (sampling.n, sampling.max_tokens, list(sampling.stop)) == (2, 6, ["</answer>"])
    assert (sampling.temperature, sampling.top_p, sampling.top_k) == pytest.approx((0.7, 0.9, 20))


def test_rpc_timeout_s_is_the_deadline_of_the_trainers_weight_pushes(redis_server) -> None:  # type: ignore[no-untyped-def]
    from dapo_trainer.redis_io import RetryingRedis
    from dapo_trainer.service import _open_outlet
    from dapo_trainer.settings import TrainerSettings

    options = TrainerSettings(
        redis_url=redis_server.url,
        run_id="r",
        config_path=None,
        overrides=(),
        publisher_host="127.0.0.1",
        publisher_port=0,
        metrics_port=None,
        weights_dtype="float32",
        exit_when_done=True,
        poll_interval_s=0.1,
        heartbeat_ttl_s=5.0,
        redis_retry_s=5.0,
    )
    config = load_config(
        None,
        [
            "services.rpc_timeout_s=7.5",
            "services.rollout_addresses=['127.0.0.1:1']",
            "services.weights_relay_fanout=3",
            "services.weights_relay_stall_s=4.5",
        ],
    )
    outlet = _open_outlet(options, RetryingRedis(redis_server.url, retry_s=5), "r", config)
    try:
        assert outlet.push_timeout_s == 7.5
        assert outlet.static_addresses == ["127.0.0.1:1"]  # services.rollout_addresses: pushed to as well
        assert (outlet.relay_fanout, outlet.stall_s) == (3, 4.5)  # the relay plan's width and stall limit
    finally:
        outlet.stop()


def test_redis_timeout_s_is_how_long_the_started_services_retry_redis() -> None:
    config = load_config(None, ["services.redis_timeout_s=12.5"])
    assert trainer_settings(config, "redis://127.0.0.1:1/0", "127.0.0.1", 1, 2).redis_retry_s == 12.5
    controller = controller_settings(
        config, "redis://127.0.0.1:1/0", "127.0.0.1", 1, ["127.0.0.1:2"], "127.0.0.1:3"
    )
    assert controller.redis_retry_s == 12.5


def test_binary_reward_reaches_the_score_request() -> None:
    items = [("\\boxed{2}", "2")]
    assert score_request(parse_config({"env": {"math": {"binary_reward": True}}}).env.math, items).binary
    assert not score_request(parse_config({}).env.math, items).binary


# --- data: the prompts --------------------------------------------------------------------------------

DATA = Path(__file__).resolve().parents[1] / "data"


def test_prompt_template_and_format_from_the_config_shape_the_prompts() -> None:
    config = load_config(
        None,
        [
            f"data.train_file={DATA / 'gsm8k_rows.jsonl'}",
            "data.format=gsm8k",
            "data.prompt_template='{question} Think step by step.'",
        ],
    )
    rows = load_from_config(config.data, seed=config.grpo.seed)
    assert rows[0].messages[-1]["content"].startswith("Janet")
    assert all(r.messages[-1]["content"].endswith(" Think step by step.") for r in rows)
    assert rows[0].ground_truth == "18"  # gsm8k's final number after ####
    with pytest.raises(DataError):
        load_from_config(
            load_config(None, [f"data.train_file={DATA / 'gsm8k_rows.jsonl'}", "data.format=verl"]).data
        )


@pytest.mark.parametrize("shuffle", [True, False])
def test_shuffle_decides_the_order_of_the_first_epoch(shuffle: bool) -> None:
    class Redis:
        async def hgetall(self, key: str) -> dict[bytes, bytes]:
            return {}  # a new run: no loop state yet

    async def version() -> int:
        return 0

    loop = RunLoop.__new__(RunLoop)
    loop.run_id = "r"
    loop.config = load_config(None, [f"data.shuffle={str(shuffle).lower()}"])
    loop.redis = Redis()  # type: ignore[assignment]
    loop._trainer_version = version  # type: ignore[method-assign]
    loop.train_rows = [PromptRow(str(i), [{"role": "user", "content": str(i)}], str(i)) for i in range(20)]
    step, cursor = asyncio.run(loop._load_state())
    order = [r.id for r in cursor.take(20)]
    assert step == 0 and sorted(order, key=int) == [str(i) for i in range(20)]
    assert (order != [str(i) for i in range(20)]) is shuffle


# --- env.math: the reward service's options ---------------------------------------------------------


def test_max_response_chars_from_the_config_reaches_the_reward_service(tmp_path: Path) -> None:
    from dapo_reward.main import parse_settings

    config_file = tmp_path / "run.yaml"
    config_file.write_text("env:\n  math:\n    max_response_chars: 123\n")
    assert parse_settings(["--config", str(config_file)]).max_response_chars == 123
    assert parse_settings(["--config", str(config_file), "--max-response-chars", "9"]).max_response_chars == 9
    # what `dapo run` and the Slurm plan start it with
    assert reward_settings(load_config(str(config_file)), "127.0.0.1", 1, 2).max_response_chars == 123


# --- policy.optimizer, checkpointing, cluster, logger ---------------------------------------------------------------


def test_optimizer_keys_reach_adamw() -> None:
    config = load_config(
        None,
        [
            "policy.optimizer.lr=2e-5",
            "policy.optimizer.betas=[0.8, 0.95]",
            "policy.optimizer.eps=1e-6",
            "policy.optimizer.weight_decay=0.1",
        ],
    )
    optimizer, _ = build_optimizer(torch.nn.Linear(2, 2), config.policy.optimizer)
    group = optimizer.param_groups[0]
    assert (group["lr"], group["betas"], group["eps"], group["weight_decay"]) == (
        2e-5,
        (0.8, 0.95),
        1e-6,
        0.1,
    )


def test_save_period_and_enabled_decide_the_checkpointed_steps() -> None:
    config = load_config(None, ["checkpointing.save_period=3", "grpo.max_num_steps=7"])
    assert [v for v in range(1, 8) if is_checkpoint_due(v, config)] == [3, 6, 7]  # and the last step
    config.checkpointing.enabled = False
    assert not any(is_checkpoint_due(v, config) for v in range(1, 8))


def test_trainer_processes_per_node_sets_the_trainer_ranks() -> None:
    gpus = ["cluster.gpus_per_node=8", "cluster.num_nodes=2", "cluster.num_rollout_servers=2"]
    assert layout(load_config(None, gpus)).trainer_nproc == 4  # default: the trainer's half of the GPUs
    assert layout(load_config(None, [*gpus, "cluster.trainer_processes_per_node=2"])).trainer_nproc == 2
    cpu = ["cluster.num_nodes=2", "cluster.trainer_processes_per_node=3"]
    assert layout(load_config(None, cpu)).trainer_nproc == 3  # CPU nodes: 1 unless set


@pytest.mark.parametrize("enabled", [True, False])
def test_tensorboard_enabled_decides_the_event_files(tmp_path: Path, enabled: bool) -> None:
    config = load_config(
        None, [f"logger.log_dir={tmp_path}", f"logger.tensorboard_enabled={str(enabled).lower()}"]
    )
    launcher = Launcher(config, tmp_path, config.model_dump(mode="json"))
    launcher.run_id = "run1"
    launcher.records = [{"step": 1, "source": "trainer", "train/loss": 0.5}]
    out = launcher.write_outputs({"status": "succeeded"})
    assert (out / "metrics.jsonl").exists()
    events = (
        list((out / "tensorboard").glob("events.out.tfevents.*")) if (out / "tensorboard").exists() else []
    )
    assert bool(events) is enabled
