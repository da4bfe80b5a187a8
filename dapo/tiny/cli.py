"""`dapo make-tiny-model DIR [--task addition|column-addition] [--seed N] [--untrained]`: build the tiny CPU model and its task data.

Without `--untrained` it also runs the supervised warm start and writes `DIR/data/{train,test}.jsonl`
and `DIR/warm_start.json`. torch and transformers are imported only after the arguments are parsed.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console


@dataclass(frozen=True)
class TinyModelArgs:
    """What `dapo make-tiny-model` was asked for (see dapo.cli for the options)."""

    dir: str
    seed: int = 0
    task: str = "addition"
    untrained: bool = False
    steps: int | None = None
    threads: int | None = None


def make(args: TinyModelArgs) -> int:
    """Build the model (and, unless untrained, its warm start and data); exit status 2 on a bad value."""
    from dapo.tiny.tasks import get_task

    threads = get_task(args.task).build_threads if args.threads is None else args.threads
    problem = _bad_value(args, threads)
    if problem is not None:
        print(f"dapo make-tiny-model: {problem}", file=sys.stderr)
        return 2
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from rich.console import Console

    console = Console(stderr=True)
    if args.untrained:
        from dapo.tiny.model import build_untrained_model

        with console.status("building the untrained model"):
            out = build_untrained_model(args.dir, seed=args.seed)
        console.print(f"untrained tiny model written to {out}")
        return 0
    _make_warm_started(args, threads, console)
    return 0


def _bad_value(args: TinyModelArgs, threads: int) -> str | None:
    if args.seed < 0:
        return f"--seed must be >= 0, got {args.seed}"
    if threads < 1:
        return f"--threads must be >= 1, got {threads}"
    if args.steps is not None and args.steps < 0:
        return f"--steps must be >= 0, got {args.steps}"
    return None


def _make_warm_started(args: TinyModelArgs, threads: int, console: Console) -> None:
    """The model, its warm start (progress shown) and data, and a summary of how well it starts."""
    from dataclasses import replace

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from dapo.tiny.sft import default_warm_start, make_tiny_model

    config = default_warm_start(args.task)
    if args.steps is not None:
        config = replace(config, num_steps=args.steps)
    with Progress(
        TextColumn("warm start"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.3f}"),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    ) as progress:
        task = progress.add_task("sft", total=config.num_steps, loss=float("nan"))
        report = make_tiny_model(
            args.dir,
            seed=args.seed,
            config=config,
            log=console.print,
            num_threads=threads,
            task=args.task,
            on_step=lambda step, loss: progress.update(task, completed=step + 1, loss=loss),
        )
    console.print(
        f"[bold]done[/bold]: {args.dir} (model, tokenizer, data/train.jsonl, data/test.jsonl, warm_start.json)\n"
        f"  held-out greedy accuracy  {report['greedy_accuracy']:.1%}\n"
        f"  sampled accuracy (x{report['num_samples']}, T=1) {report['sampled_accuracy']:.1%}\n"
        f"  mixed groups              {report['fraction_mixed_groups']:.0%}\n"
        f"  build time                {report['seconds']} s"
    )
