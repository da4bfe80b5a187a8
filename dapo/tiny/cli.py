"""`dapo make-tiny-model DIR [--task addition|column-addition] [--seed N] [--untrained]`: build the tiny CPU model and its task data.

Without `--untrained` it also runs the supervised warm start and writes `DIR/data/{train,test}.jsonl`
and `DIR/warm_start.json`. torch and transformers are imported only after the arguments are parsed.
"""

from __future__ import annotations

import argparse
import os
import sys


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dapo make-tiny-model",
        description="Build the tiny Qwen2-architecture model (about 2.6 M parameters), its tokenizer and "
        "the 2-digit addition task, offline and deterministically.",
    )
    parser.add_argument("dir", help="output directory (created if missing)")
    parser.add_argument(
        "--seed", type=int, default=0, help="seed for weights, data split and warm start (default 0)"
    )
    parser.add_argument(
        "--task",
        default="addition",
        choices=["addition", "column-addition"],
        help="addition: 2-digit sums, bare answers (examples/tiny-model, the default); column-addition: "
        "2-digit sums worked column by column, then 'Answer: N' (examples/tiny-reasoning-model)",
    )
    parser.add_argument(
        "--untrained", action="store_true", help="random weights only: no warm start, no task data"
    )
    parser.add_argument(
        "--steps", type=int, default=None, help="warm-start optimizer steps (default: calibrated)"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads for the warm start (default: the shipped build's, 2 for addition, 1 for "
        "column-addition; the same seed and thread count give the same bytes)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.seed < 0:
        print(f"dapo make-tiny-model: --seed must be >= 0, got {args.seed}", file=sys.stderr)
        return 2
    from dapo.tiny.tasks import get_task

    if args.threads is None:
        args.threads = get_task(args.task).build_threads
    if args.threads < 1:
        print(f"dapo make-tiny-model: --threads must be >= 1, got {args.threads}", file=sys.stderr)
        return 2
    if args.steps is not None and args.steps < 0:
        print(f"dapo make-tiny-model: --steps must be >= 0, got {args.steps}", file=sys.stderr)
        return 2
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    console = Console(stderr=True)
    if args.untrained:
        from dapo.tiny.model import build_untrained_model

        with console.status("building the untrained model"):
            out = build_untrained_model(args.dir, seed=args.seed)
        console.print(f"untrained tiny model written to {out}")
        return 0

    from dataclasses import replace

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
            num_threads=args.threads,
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
