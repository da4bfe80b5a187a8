"""The supervised warm start of the tiny model, and `make_tiny_model` (model + warm start + task data).

RL on 2-digit addition needs a starting policy that is sometimes right: with a cold model every group
is all wrong and dynamic sampling keeps nothing. The warm start trains on the training split with
"forgot to carry" labels: each time a problem is drawn, its label is the column-wise sum without the
carry (`task.no_carry_sum`) with probability `no_carry_fraction` (0.7) and the true sum otherwise.
Problems without a carry get the true sum either way. The default run (1,600 steps of 64) leaves a
model that adds precisely but usually forgets the carry: 59% greedy held-out accuracy, 65% sampled
(93-95% of samples right on problems without a units carry, 22-28% on those with one), half of the
8-sample groups mixed. That is a systematic, explainable error RL fixes fast: the README's run lifts it
to 89.5-93.5% in 30 steps and 93-96% in 80 on the three seeds measured (bench/RESULTS.md, "End to end").
Shorter warm starts leave a model that is imprecise everywhere, and RL then spends its steps on that:
800 steps (57.5% greedy but only 76% of samples right on carry-free problems) levelled off at 85-89%;
440 steps (35% greedy) had not learned to add and RL gained a few points in 100 steps. Every supervised
step costs about 0.3 s on the 2-core machine, so the default build takes about 8 minutes; the repository
ships its result (`examples/tiny-model`).
Only the answer tokens and EOS are trained.

Everything runs on `num_threads` CPU threads with seeded generators, so the same seed and thread count
give the same bytes.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dapo.tiny.task import Problem, to_row
from dapo.tiny.tasks import TinyTask, get_task

if TYPE_CHECKING:
    from dapo.tiny.evaluate import EvalResult


@dataclass(frozen=True)
class WarmStartConfig:
    """Settings of the supervised warm start (defaults calibrated on the 2-core CPU)."""

    num_steps: int = 1600
    batch_size: int = 64
    lr: float = 1e-3
    warmup_steps: int = 20
    decay_steps: int = 100
    """The last this-many steps decay the learning rate linearly to 10%, so the final weights sit still."""
    weight_decay: float = 0.0
    no_carry_fraction: float = 0.7
    num_eval_problems: int = 200
    """Held-out problems used for the accuracy report (greedy and sampled)."""
    num_eval_samples: int = 8
    """Samples per problem for the sampled accuracy (temperature 1)."""

    def __post_init__(self) -> None:
        for name in (
            "num_steps",
            "batch_size",
            "warmup_steps",
            "decay_steps",
            "num_eval_problems",
            "num_eval_samples",
        ):
            if getattr(self, name) < (
                1 if name in ("batch_size", "num_eval_problems", "num_eval_samples") else 0
            ):
                raise ValueError(f"WarmStartConfig.{name} out of range: {getattr(self, name)}")
        if not 0 <= self.no_carry_fraction <= 1:
            raise ValueError(
                f"WarmStartConfig.no_carry_fraction must be in [0, 1], got {self.no_carry_fraction}"
            )
        if self.lr <= 0:
            raise ValueError(f"WarmStartConfig.lr must be > 0, got {self.lr}")


def default_warm_start(task: str = "addition") -> WarmStartConfig:
    """The calibrated warm start of `task` (the build shipped for it)."""
    return replace(WarmStartConfig(), **get_task(task).warm_start)


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes (the warm start's report records it for `model.safetensors`)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _encode(tokenizer: Any, problem: Problem, label: str) -> tuple[list[int], int]:
    """Token ids of the chat-formatted prompt plus `label` and EOS, and the prompt length."""
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": problem.question}], tokenize=False, add_generation_prompt=True
    )
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    answer_ids = tokenizer(label, add_special_tokens=False)["input_ids"]
    return [*prompt_ids, *answer_ids, tokenizer.eos_token_id], len(prompt_ids)


def supervised_warm_start(
    model: Any,
    tokenizer: Any,
    train: list[Problem],
    config: WarmStartConfig,
    seed: int = 0,
    on_step: Callable[[int, float], None] | None = None,
    task: TinyTask | None = None,
) -> list[float]:
    """Train `model` in place on `task`'s warm-start labels (default: addition, forgot-to-carry);
    return the loss of every step."""
    import torch

    task = task or get_task("addition")

    rng = random.Random(seed)
    # Cache the encodings: the prompt and both labels of every training problem.
    cache: dict[tuple[Problem, str], tuple[list[int], int]] = {}

    def encoded(problem: Problem, label: str) -> tuple[list[int], int]:
        key = (problem, label)
        if key not in cache:
            cache[key] = _encode(tokenizer, problem, label)
        return cache[key]

    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: _lr_factor(config, step))
    model.train()
    losses: list[float] = []
    for step in range(config.num_steps):
        encodings = [
            encoded(problem, task.warm_label(problem, rng, config.no_carry_fraction))
            for problem in rng.choices(train, k=config.batch_size)
        ]
        input_ids, attention_mask, labels = _padded_batch(encodings, tokenizer.pad_token_id)
        loss = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
        if on_step is not None:
            on_step(step, losses[-1])
    model.eval()
    return losses


def _lr_factor(config: WarmStartConfig, step: int) -> float:
    """Linear warm-up over `warmup_steps`, then linear decay to 10% over the last `decay_steps`."""
    warmup = min(1.0, (step + 1) / max(1, config.warmup_steps))
    steps_left = config.num_steps - step
    decay = 0.1 + 0.9 * min(1.0, steps_left / config.decay_steps) if config.decay_steps else 1.0
    return warmup * decay


def _padded_batch(encodings: list[tuple[list[int], int]], pad_id: int) -> tuple[Any, Any, Any]:
    """Right-padded input ids, attention mask and labels (-100 outside the answer and EOS), each (B, T),
    from (token ids, prompt length) pairs."""
    import torch

    length = max(len(ids) for ids, _ in encodings)
    input_ids = torch.full((len(encodings), length), pad_id, dtype=torch.long)  # (B, T)
    labels = torch.full((len(encodings), length), -100, dtype=torch.long)  # (B, T)
    attention_mask = torch.zeros((len(encodings), length), dtype=torch.long)
    for i, (ids, prompt_length) in enumerate(encodings):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        labels[i, prompt_length : len(ids)] = torch.tensor(ids[prompt_length:])
        attention_mask[i, : len(ids)] = 1
    return input_ids, attention_mask, labels


def make_tiny_model(
    out_dir: str | Path,
    seed: int = 0,
    config: WarmStartConfig | None = None,
    num_test: int = 500,
    log: Callable[[str], None] | None = print,
    on_step: Callable[[int, float], None] | None = None,
    num_threads: int = 2,
    task: str = "addition",
) -> dict[str, Any]:
    """Build the untrained model, warm-start it on `task`, write `data/train.jsonl` and `data/test.jsonl`.

    The warm start runs on `num_threads` torch threads (2: both cores of the reference machine; the
    build takes about 8 minutes there).

    Returns (and writes to `out_dir/warm_start.json`) the greedy held-out accuracy, the sampled
    accuracy and the fraction of mixed sample groups, measured on `config.num_eval_problems` test problems.
    """
    if num_threads < 1:
        raise ValueError(f"num_threads must be >= 1, got {num_threads}")
    tiny_task = get_task(task)
    config = config or default_warm_start(task)
    say = log or (lambda _message: None)
    out = Path(out_dir)
    started = time.perf_counter()
    with _torch_threads(num_threads):
        train, test = _write_untrained(out, seed, num_test, tiny_task, say)
        say(f"supervised warm start: {config.num_steps} steps of {config.batch_size} problems")
        model, tokenizer, losses = _warm_start_saved(out, train, config, seed, on_step, tiny_task)
        greedy, sampled = _evaluate_warm_start(model, tokenizer, test, config, seed, tiny_task)
    report = {
        "seed": seed,
        "num_eval_problems": greedy.num_prompts,
        "greedy_accuracy": greedy.accuracy,
        "sampled_accuracy": sampled.accuracy,
        "num_samples": sampled.num_samples,
        "fraction_mixed_groups": sampled.fraction_mixed,
        "fraction_all_wrong_groups": sampled.fraction_all_wrong,
        "fraction_all_right_groups": sampled.fraction_all_right,
        "final_loss": losses[-1] if losses else None,
        "model_sha256": file_sha256(out / "model.safetensors"),
        "seconds": round(time.perf_counter() - started, 1),
        "num_threads": num_threads,
        "warm_start": asdict(config),
    }
    if task != "addition":  # the shipped addition build's report predates these keys
        report = {
            "task": task,
            **report,
            "sampled_response_tokens": sampled.mean_response_tokens,
            "sampled_truncated_frac": sampled.truncated_frac,
            "eval_max_new_tokens": tiny_task.eval_max_new_tokens,
        }
    (out / "warm_start.json").write_text(json.dumps(report, indent=2) + "\n")
    say(
        f"held-out greedy accuracy {greedy.accuracy:.1%}, sampled accuracy {sampled.accuracy:.1%} "
        f"({sampled.num_samples} samples at temperature 1), mixed groups {sampled.fraction_mixed:.0%} "
        f"on {greedy.num_prompts} problems; {report['seconds']} s"
    )
    return report


@contextmanager
def _torch_threads(num_threads: int) -> Iterator[None]:
    """Run the block on `num_threads` torch threads, then restore the previous count."""
    import torch

    previous_threads = torch.get_num_threads()
    torch.set_num_threads(num_threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous_threads)


def _write_untrained(
    out: Path, seed: int, num_test: int, task: TinyTask, say: Callable[[str], None]
) -> tuple[list[Problem], list[Problem]]:
    """Write the untrained model and the task's data to `out`; returns the training and test problems."""
    from dapo.tiny.model import build_untrained_model

    build_untrained_model(out, seed=seed, model_config=task.model_config)
    say(f"built the untrained model in {out}")
    train, test = task.split_problems(seed, num_test)
    train_path, _ = task.write_task_data(out / "data", seed, num_test)
    say(f"wrote {len(train)} training and {len(test)} test problems to {train_path.parent}")
    return train, test


def _warm_start_saved(
    out: Path,
    train: list[Problem],
    config: WarmStartConfig,
    seed: int,
    on_step: Callable[[int, float], None] | None,
    task: TinyTask,
) -> tuple[Any, Any, list[float]]:
    """Load the untrained model from `out`, warm-start it and save it there; returns the model, its
    tokenizer and the losses."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from dapo.tiny.model import _seed_everything

    tokenizer = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    _seed_everything(seed)
    losses = supervised_warm_start(model, tokenizer, train, config, seed=seed, on_step=on_step, task=task)
    model.save_pretrained(str(out), safe_serialization=True)
    return model, tokenizer, losses


def _evaluate_warm_start(
    model: Any, tokenizer: Any, test: list[Problem], config: WarmStartConfig, seed: int, task: TinyTask
) -> tuple[EvalResult, EvalResult]:
    """Greedy and sampled accuracy on the first `config.num_eval_problems` test problems."""
    from dapo.tiny.evaluate import evaluate_model

    eval_rows = [to_row(p, i) for i, p in enumerate(test[: config.num_eval_problems])]
    scoring: dict[str, Any] = {"max_new_tokens": task.eval_max_new_tokens, "seed": seed}
    if task.final_answer is not None:
        scoring["final_answer"] = task.final_answer
    greedy = evaluate_model(model, tokenizer, eval_rows, greedy=True, **scoring)
    sampled = evaluate_model(
        model, tokenizer, eval_rows, greedy=False, num_samples=config.num_eval_samples, **scoring
    )
    return greedy, sampled
