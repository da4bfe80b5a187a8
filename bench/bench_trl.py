"""Hugging Face TRL's GRPOTrainer (loss_type="dapo") on the tiny model and task: the peer dapo is timed against.

Runs in its own environment (TRL is not a dependency of the project):

    bash bench/setup_trl_env.sh            # .venv-trl: torch 2.13.0 CPU + trl 1.16
    OMP_NUM_THREADS=1 .venv-trl/bin/python bench/bench_trl.py --model examples/tiny-model \
        --budget-s 480 --target 0.655 --out results/bench_trl.json

Same model in float32 (no activation checkpointing), same training problems, same group size (8), prompts per generation batch (16), two
optimizer steps per generation batch (64 answers each), learning rate, clips (0.2 / 0.28), max new
tokens (8) and temperature (1, no top-k / top-p) as `examples/configs/tiny_cpu.yaml`. The reward is
exact match of the stripped answer with the ground truth (what math-verify concludes on bare integers).

Held-out greedy accuracy on the first `--num-eval` test problems is measured with the same function
the dapo run's report uses (`dapo.tiny.evaluate.evaluate_model`, transformers `generate`) every
`--eval-every-steps` optimizer steps (the same grid as a dapo run's `grpo.val_period`, which counts
generation batches of two optimizer steps), or every `--eval-every-s` seconds of training without it;
the evaluation's own time is NOT counted in TRL's clock (the
dapo run's clock includes its validation), which favours TRL. Prints one JSON line per evaluation and
writes the whole record to `--out`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # dapo.tiny.evaluate, without installing dapo


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model",
        default="examples/tiny-model",
        help="tiny model dir (shipped; rebuilt by dapo make-tiny-model)",
    )
    parser.add_argument("--budget-s", type=float, default=480.0, help="training wall-clock budget")
    parser.add_argument("--eval-every-s", type=float, default=30.0)
    parser.add_argument(
        "--eval-every-steps",
        type=int,
        default=0,
        help="evaluate every N optimizer steps (0: every --eval-every-s)",
    )
    parser.add_argument("--target", type=float, default=None, help="held-out accuracy to time")
    parser.add_argument("--num-eval", type=int, default=200)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="results/bench_trl.json")
    args = parser.parse_args()

    import torch
    import trl
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from dapo.tiny.evaluate import evaluate_model

    torch.set_num_threads(1)
    model_dir = Path(args.model)
    train_rows = read_rows(model_dir / "data" / "train.jsonl")
    eval_rows = read_rows(model_dir / "data" / "test.jsonl")[: args.num_eval]
    dataset = Dataset.from_list(
        [{"prompt": r["prompt"], "ground_truth": r["reward_model"]["ground_truth"]} for r in train_rows]
    )

    def exact_match(completions: list, ground_truth: list, **_: object) -> list[float]:
        return [
            1.0 if c[0]["content"].strip() == str(t).strip() else -1.0
            for c, t in zip(completions, ground_truth, strict=True)
        ]

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    config = GRPOConfig(
        output_dir=str(Path(args.out).parent / "trl-output"),
        loss_type="dapo",
        epsilon=0.2,
        epsilon_high=0.28,
        beta=0.0,
        learning_rate=args.lr,
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        max_grad_norm=1.0,
        num_generations=8,
        per_device_train_batch_size=64,
        steps_per_generation=2,  # a generation batch of 128 = 16 prompts x 8, two optimizer steps
        max_completion_length=8,
        temperature=1.0,
        top_k=0,
        top_p=1.0,
        max_steps=100_000,  # the wall-clock budget ends the run
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        bf16=False,  # float32 like the dapo run (TRL's GRPOConfig defaults to bf16, slow on this CPU)
        gradient_checkpointing=False,  # TRL's default is True; the tiny model needs no recompute
        seed=args.seed,
        dataloader_num_workers=0,
    )

    record: dict = {
        "trl_version": trl.__version__,
        "torch_version": torch.__version__,
        "seed": args.seed,
        "lr": args.lr,
        "budget_s": args.budget_s,
        "target": args.target,
        "evals": [],
    }

    class Clock(TrainerCallback):
        """Training wall-clock without the evaluations; evaluates and stops on the budget."""

        def __init__(self) -> None:
            self.started = 0.0
            self.paused = 0.0
            self.next_eval = 0.0
            self.target_reached_s: float | None = None

        def training_s(self) -> float:
            return time.perf_counter() - self.started - self.paused

        def evaluate(self, step: int) -> float:
            begun = time.perf_counter()
            result = evaluate_model(model, tokenizer, eval_rows, greedy=True, seed=args.seed)
            self.paused += time.perf_counter() - begun
            entry = {"train_s": round(self.training_s(), 1), "step": step, "accuracy": result.accuracy}
            record["evals"].append(entry)
            print(json.dumps(entry), flush=True)
            if args.target is not None and self.target_reached_s is None and result.accuracy >= args.target:
                self.target_reached_s = entry["train_s"]
                record["target_reached_s"] = entry["train_s"]
                record["target_reached_step"] = step
            return result.accuracy

        def on_train_begin(self, _args, state, control, **kwargs):  # type: ignore[no-untyped-def]
            self.started = time.perf_counter()
            self.evaluate(0)
            self.next_eval = args.eval_every_s

        def on_step_end(self, _args, state, control, **kwargs):  # type: ignore[no-untyped-def]
            elapsed = self.training_s()
            due = (
                state.global_step % args.eval_every_steps == 0
                if args.eval_every_steps
                else elapsed >= self.next_eval
            )
            if due or elapsed >= args.budget_s:
                self.evaluate(state.global_step)
                self.next_eval += args.eval_every_s
            if elapsed >= args.budget_s:
                control.should_training_stop = True
            return control

    clock = Clock()
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=exact_match,
        args=config,
        train_dataset=dataset,
        processing_class=tokenizer,
        callbacks=[clock],
    )
    trainer.train()
    record["optimizer_steps"] = trainer.state.global_step
    record["train_s"] = round(clock.training_s(), 1)
    record["final_accuracy"] = record["evals"][-1]["accuracy"]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps({k: v for k, v in record.items() if k != "evals"}), flush=True)


if __name__ == "__main__":
    main()
