"""Time per trainer step, split into its parts, on the tiny model and on a ~0.5 GB synthetic Qwen2.

One rank, in this process, on the shipped code path (FSDP2 over a one-rank group, dapo.algo log-probs
and loss, AdamW, the full-state-dict gather, the safetensors checkpoint export). The publish part is
`WeightPublisher.publish` plus encoding every chunk message a push streams to one rollout server
(`dapo.weights.encode_update`), without the network. No Redis: the batches are built in memory.

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_trainer.py [--models tiny,medium] [--steps 2]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

MEDIUM_CONFIG = {  # about 125 M parameters: 0.5 GB in float32
    "vocab_size": 32000,
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "num_key_value_heads": 4,
    "intermediate_size": 2048,
    "max_position_embeddings": 1024,
    "tie_word_embeddings": False,
}


def build_medium(out: Path) -> Path:
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(**MEDIUM_CONFIG, dtype="float32"))
    model.save_pretrained(str(out), safe_serialization=True)
    return out


def run(model_dir: Path, name: str, steps: int, num_sequences: int, prompt: int, response: int) -> dict:

    from dapo_trainer.checkpoint import export_hf
    from dapo_trainer.distributed import setup_distributed, teardown_distributed
    from dapo_trainer.model import read_model_info
    from dapo_trainer.optim import build_optimizer
    from dapo_trainer.publish import gather_full_state_dict
    from dapo_trainer.step import train_on_batch
    from dapo_trainer.synthetic import make_batch
    from dapo_trainer.train import setup_model

    from dapo.config import parse_config
    from dapo.weight_publisher import WeightPublisher
    from dapo.weights import encode_update, tensors_from_state_dict

    config = parse_config(
        {
            "policy": {
                "model_name": str(model_dir),
                "train_global_batch_size": num_sequences,
                "train_micro_batch_size": max(1, num_sequences // 2),
                "precision": "float32",
                "max_total_sequence_length": prompt + response + 1,
                "generation": {"max_new_tokens": response},
                "optimizer": {"lr": 1e-5},
            },
            "grpo": {"num_prompts_per_step": 1, "num_generations_per_prompt": num_sequences},
        }
    )
    ctx = setup_distributed()
    try:
        info = read_model_info(str(model_dir), None)
        model = setup_model(config, info, ctx)
        optimizer, scheduler = build_optimizer(model, config.policy.optimizer)
        num_params = sum(p.numel() for p in model.parameters())
        publisher = WeightPublisher(host="127.0.0.1", port=0).start()
        rows = []
        for step in range(steps + 1):  # step 0 warms up
            batch = make_batch(
                "bench",
                step,
                num_sequences=num_sequences,
                vocab_size=info.vocab_size,
                prompt_length=(prompt, prompt),
                response_length=(response, response),
            )
            t0 = time.perf_counter()
            result = train_on_batch(model, optimizer, scheduler, batch, config, ctx, info.pad_token_id)
            t1 = time.perf_counter()
            full = gather_full_state_dict(model, "float32", info.tie_word_embeddings, ctx)
            t2 = time.perf_counter()
            tensors = tensors_from_state_dict(full)
            publisher.publish(step + 1, tensors)
            num_bytes = sum(len(m.chunk.data) for m in encode_update(step + 1, tensors))
            t3 = time.perf_counter()
            with tempfile.TemporaryDirectory() as out:
                export_hf(Path(out) / "hf", full, info, "float32")
            t4 = time.perf_counter()
            if step == 0:
                continue
            rows.append(
                {
                    "forward": result.times.forward,
                    "backward": result.times.backward,
                    "optimizer": result.times.optimizer,
                    "train": t1 - t0,
                    "gather": t2 - t1,
                    "publish": t3 - t2,
                    "export": t4 - t3,
                    "bytes": num_bytes,
                    "tokens": result.metrics["train/num_tokens"],
                }
            )
        publisher.stop()
    finally:
        teardown_distributed()
    mean = {k: sum(r[k] for r in rows) / len(rows) for k in rows[0]}
    step_s = mean["train"] + mean["gather"] + mean["publish"]
    return {
        "model": name,
        "params_M": num_params / 1e6,
        "weights_MB": mean["bytes"] / 1e6,
        "tokens": mean["tokens"],
        **{k: round(v, 4) for k, v in mean.items() if k not in ("bytes", "tokens")},
        "step_s": round(step_s, 4),
        "gather+publish_share": round((mean["gather"] + mean["publish"]) / step_s, 4),
        "tokens_per_s": round(mean["tokens"] / mean["train"], 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="tiny,medium")
    parser.add_argument("--steps", type=int, default=2)
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            if name == "tiny":
                from dapo.tiny.model import build_untrained_model

                model_dir = build_untrained_model(Path(tmp) / "tiny", seed=0)
                results.append(run(model_dir, name, args.steps, num_sequences=16, prompt=16, response=32))
            elif name == "medium":
                model_dir = build_medium(Path(tmp) / "medium")
                results.append(run(model_dir, name, args.steps, num_sequences=8, prompt=32, response=32))
            else:
                raise ValueError(f"unknown model '{name}' (tiny, medium)")
            print(json.dumps(results[-1]), flush=True)
    print_table(results)


def print_table(rows: list[dict]) -> None:
    """`rows` as a Markdown table, one column per key of the first row."""
    keys = list(rows[0])
    print("\n| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for row in rows:
        print("| " + " | ".join(str(row[k]) for k in keys) + " |")


if __name__ == "__main__":
    main()
