"""Peak memory per rank while the trainer loads its model: the old way (every rank reads the whole
model in float32 on the CPU, then shards it) against the shipped one (every rank builds the model on
the meta device and shards it; rank 0 alone reads the weights and broadcasts them, each rank keeping
its shard), on the ~125 M-parameter synthetic Qwen2 of bench_trainer.py, with 2 gloo ranks.

Each way runs in its own torchrun group (a process's peak RSS cannot be reset), in the same invocation.
Per rank: RSS before the load, the peak RSS (VmHWM) after it, the difference, the load time, and a digest
of the rank's shards (equal between the two ways: the same parameters).

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_load.py [--ranks 2]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
WAYS = ("every_rank", "rank0_broadcast")


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


def worker(way: str, model_dir: str, out: Path) -> None:
    import torch
    from dapo_trainer.distributed import barrier, setup_distributed, teardown_distributed
    from dapo_trainer.fsdp import shard_model
    from dapo_trainer.model import load_model, read_model_info
    from dapo_trainer.train import setup_model

    from dapo.config import parse_config

    config = parse_config({"policy": {"model_name": model_dir, "precision": "float32"}})
    ctx = setup_distributed()
    try:
        info = read_model_info(model_dir, None)
        options = {
            "chunk_size": config.policy.logprob_chunk_size,
            "temperature": config.policy.generation.temperature,
        }
        # The model's code (transformers imports it lazily, ~120 MB) is loaded before the baseline: the
        # figures are what the weights take. A meta-device model holds no memory.
        load_model(info, on_meta=True, **options)
        barrier(ctx)
        rss_before = _status_mb("VmRSS")
        t0 = time.perf_counter()
        if way == "every_rank":
            torch.manual_seed(config.grpo.seed)
            model = shard_model(load_model(info, **options), "float32", ctx)
        else:
            model = setup_model(config, info, ctx)
        barrier(ctx)
        load_s = time.perf_counter() - t0
        peak, after = _status_mb("VmHWM"), _status_mb("VmRSS")
        digest = hashlib.sha256()
        for name, value in sorted(model.state_dict().items()):
            digest.update(name.encode())
            digest.update(value.to_local().contiguous().numpy().tobytes())
        row = {
            "way": way,
            "rank": ctx.rank,
            "rss_before_MB": round(rss_before, 1),
            "peak_MB": round(peak, 1),
            "peak_rise_MB": round(peak - rss_before, 1),
            "rss_after_MB": round(after, 1),
            "load_s": round(load_s, 2),
            "shard_digest": digest.hexdigest()[:16],
        }
    finally:
        teardown_distributed()
    (out / f"{way}-rank{row['rank']}.json").write_text(json.dumps(row))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--worker", nargs=3, metavar=("WAY", "MODEL_DIR", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker[0], args.worker[1], Path(args.worker[2]))
        return
    from bench_trainer import MEDIUM_CONFIG, build_medium, print_table

    from dapo.local_redis import free_port

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_medium(Path(tmp) / "medium")
        size_mb = sum(p.stat().st_size for p in model_dir.glob("*.safetensors")) / 2**20
        print(json.dumps({"model": MEDIUM_CONFIG, "weights_MB": round(size_mb, 1), "ranks": args.ranks}))
        rows = []
        for way in WAYS:
            command = [
                sys.executable,
                "-m",
                "torch.distributed.run",
                f"--nproc_per_node={args.ranks}",
                f"--master_port={free_port()}",
                __file__,
                "--worker",
                way,
                str(model_dir),
                tmp,
            ]
            subprocess.run(command, check=True)
            for rank in range(args.ranks):
                rows.append(json.loads((Path(tmp) / f"{way}-rank{rank}.json").read_text()))
                print(json.dumps(rows[-1]), flush=True)
    print_table(rows)
    by_way = {way: [r for r in rows if r["way"] == way] for way in WAYS}
    worst = {way: max(r["peak_rise_MB"] for r in by_way[way]) for way in WAYS}
    others = {way: max(r["peak_rise_MB"] for r in by_way[way] if r["rank"] != 0) for way in WAYS}
    same = [r["shard_digest"] for r in by_way[WAYS[0]]] == [r["shard_digest"] for r in by_way[WAYS[1]]]
    print(
        f"\nweights {size_mb:.0f} MB; peak rise, worst rank: every_rank {worst['every_rank']} MB, "
        f"rank0_broadcast {worst['rank0_broadcast']} MB; ranks other than 0: every_rank "
        f"{others['every_rank']} MB, rank0_broadcast {others['rank0_broadcast']} MB "
        f"(ratio {others['rank0_broadcast'] / others['every_rank']:.2f}); same shards: {same}"
    )


if __name__ == "__main__":
    main()
