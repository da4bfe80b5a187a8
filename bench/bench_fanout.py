"""Weight fan-out to N rollout servers on loopback: time until all N serve a verified version, and what the
publisher (the trainer) sends, for the relay chain against the old one-server-after-another push.

Receivers are rollout servers without vLLM (tests/weight_receiver.py: the real gRPC server and
WeightUpdater, so each stages, relays, CRC-checks and "applies" the version as a rollout server does; the
engine's reload is left out). Their staging files are on disk under a temp dir, deleted after each apply,
so that 32 receivers of a 0.5 GB version fit in this machine's memory. Per N: the relay (`fan_out`,
`--repeats` times) and, for N in `--baseline-sizes`, the old push (`push_weights` to each server in turn,
each encoding and checksumming the version again, as `WeightOutlet.publish` did), both in the same run.

The critical-path part (`--critical-path`) times what the trainer does between an optimizer step and the
next on a 0.5 GB (125 M parameter) synthetic Qwen2 on one CPU rank: the old gather (full state dict to
CPU, then the dtype) plus the old synchronous push to `--critical-path-servers` servers, against the new
gather plus `WeightOutlet.publish` (which hands the fan-out to its thread).

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_fanout.py [--sizes 1,4,16,32] [--mb 500]
    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_fanout.py --critical-path
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parent.parent
for sub in ("", "services/rollout", "services/trainer"):
    sys.path.insert(0, str(ROOT / sub))


def make_version(total_mb: int, num_tensors: int = 32) -> list:
    import numpy as np

    from dapo.weights import TensorBytes

    rng = np.random.default_rng(0)
    numel = total_mb * 1_000_000 // 4 // num_tensors
    return [
        TensorBytes(
            f"layer.{i}.weight", "float32", (numel,), memoryview(rng.random(numel, dtype=np.float32).data)
        )
        for i in range(num_tensors)
    ]


class MemoryWatch:
    """The lowest MemAvailable seen while it runs (how much memory the benchmark took from the machine)."""

    def __init__(self) -> None:
        self.start = self.lowest = self._available()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @staticmethod
    def _available() -> int:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
        return 0

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            self.lowest = min(self.lowest, self._available())

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return (self.start - self.lowest) / 1e9


def served_versions(addresses: list[str]) -> list[tuple[int, str]]:
    from dapo import rpc
    from dapo.v1 import rollout_pb2, rollout_pb2_grpc

    out = []
    for address in addresses:
        with rpc.sync_channel(address) as channel:
            reply = rollout_pb2_grpc.RolloutStub(channel).Status(rollout_pb2.StatusRequest(), timeout=10)
        out.append((reply.policy_version, reply.run_id))
    return out


def run_size(num: int, tensors: list, repeats: int, baseline: bool, workdir: Path) -> dict:
    from dapo.weight_publisher import EncodedVersion, WeightPublisher, push_weights
    from dapo.weights import tensors_from_state_dict  # noqa: F401  (the trainer's path imports it)
    from tests.weight_receiver import Receivers

    specs = {t.name: (t.dtype, t.shape) for t in tensors}
    version_bytes = sum(t.num_bytes for t in tensors)
    publisher = WeightPublisher(host="127.0.0.1", port=0).start()
    staging = workdir / f"staging-{num}"
    staging.mkdir()
    receivers = Receivers(
        num,
        specs,
        workdir / f"n{num}",
        publisher.address,
        staging_root=staging,
        is_recording=False,
        release_staging=True,
    )
    row: dict = {"n": num, "version_bytes": version_bytes}
    version = 0
    try:
        receivers.wait_ready(120)
        watch = MemoryWatch()
        relay_times, egress, cpu = [], [], []
        for _ in range(repeats):
            version += 1
            encoded = publisher.publish(version, tensors, run_id="bench")
            cpu_before = [receivers.cpu_seconds(i) for i in range(num)]
            sent_before = publisher.egress_bytes
            started = time.perf_counter()
            outcomes = publisher.fan_out(encoded, receivers.addresses, timeout=600, stall_s=120)
            relay_times.append(time.perf_counter() - started)
            egress.append(publisher.egress_bytes - sent_before)
            cpu.append(statistics.mean(receivers.cpu_seconds(i) - cpu_before[i] for i in range(num)))
            failed = [o for o in outcomes if not o.is_served]
            assert not failed, failed
            assert served_versions(receivers.addresses) == [(version, "bench")] * num
        row.update(
            relay_s=statistics.median(relay_times),
            relay_runs=[round(t, 2) for t in relay_times],
            relay_egress=statistics.median(egress),
            receiver_cpu_s=statistics.median(cpu),
            encodes_per_version=publisher.num_encodes / repeats,
        )
        if baseline:
            version += 1
            cpu_before = [receivers.cpu_seconds(i) for i in range(num)]
            started = time.perf_counter()
            sent = 0
            for address in receivers.addresses:  # the old WeightOutlet.publish: encode and push, in turn
                sent += sum(len(f) for f in EncodedVersion(version, tensors, 1 << 20, "bench").frames())
                push_weights(address, version, tensors, timeout=600, run_id="bench")
            row.update(
                sequential_s=time.perf_counter() - started,
                sequential_egress=sent,
                sequential_receiver_cpu_s=statistics.mean(
                    receivers.cpu_seconds(i) - cpu_before[i] for i in range(num)
                ),
            )
            assert served_versions(receivers.addresses) == [(version, "bench")] * num
        row["memory_taken_gb"] = watch.stop()
    finally:
        receivers.stop()
        publisher.stop()
    return row


def fan_out_bench(args: argparse.Namespace) -> None:
    sizes = [int(s) for s in args.sizes.split(",")]
    baseline_sizes = {int(s) for s in args.baseline_sizes.split(",") if s}
    tensors = make_version(args.mb)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-fanout-", dir=args.workdir) as workdir:
        for num in sizes:
            repeats = 1 if num == max(sizes) else args.repeats
            row = run_size(num, tensors, repeats, num in baseline_sizes, Path(workdir))
            rows.append(row)
            print(json.dumps(row), flush=True)
    base = next(r for r in rows if r["n"] == min(sizes))
    version_gb = base["version_bytes"] / 1e9
    print(f"\nversion: {version_gb:.3f} GB in {len(tensors)} tensors, 1 MiB chunks; load: {os.getloadavg()}")
    print(
        "| N | relay s | time(N)/time(1) | egress / version | receiver CPU s each | sequential s "
        "| sequential egress / version | memory taken GB |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        seq = f"{r['sequential_s']:.2f}" if "sequential_s" in r else "-"
        seq_egress = f"{r['sequential_egress'] / r['version_bytes']:.2f}x" if "sequential_s" in r else "-"
        print(
            f"| {r['n']} | {r['relay_s']:.2f} | {r['relay_s'] / base['relay_s']:.2f} "
            f"| {r['relay_egress'] / r['version_bytes']:.3f}x | {r['receiver_cpu_s']:.2f} | {seq} | {seq_egress} "
            f"| {r['memory_taken_gb']:.1f} |"
        )


def critical_path_bench(args: argparse.Namespace) -> None:
    """Old vs new: time between the end of an optimizer step and being ready for the next one."""
    import torch
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    sys.path.insert(0, str(ROOT / "bench"))
    from bench_trainer import build_medium
    from dapo_trainer.distributed import setup_distributed, teardown_distributed
    from dapo_trainer.model import WRAPPER_PREFIX, read_model_info
    from dapo_trainer.publish import WeightOutlet, gather_full_state_dict
    from dapo_trainer.train import setup_model

    from dapo.config import parse_config
    from dapo.weight_publisher import push_weights
    from dapo.weights import tensors_from_state_dict
    from tests.weight_receiver import Receivers

    class NoRedis:
        def smembers(self, key: str) -> set:
            return set()

    with tempfile.TemporaryDirectory(prefix="bench-gap-", dir=args.workdir) as tmp:
        model_dir = build_medium(Path(tmp) / "medium")
        config = parse_config(
            {
                "policy": {
                    "model_name": str(model_dir),
                    "train_global_batch_size": 2,
                    "train_micro_batch_size": 1,
                    "precision": "float32",
                    "max_total_sequence_length": 64,
                    "generation": {"max_new_tokens": 8},
                },
                "grpo": {"num_prompts_per_step": 1, "num_generations_per_prompt": 2},
            }
        )
        ctx = setup_distributed()
        info = read_model_info(str(model_dir), None)
        model = setup_model(config, info, ctx)
        probe = gather_full_state_dict(model, "float32", info.tie_word_embeddings, ctx)
        specs = {k: ("float32", tuple(v.shape)) for k, v in probe.items()}
        del probe
        staging = Path(tmp) / "staging"
        staging.mkdir()
        num = args.critical_path_servers
        receivers = Receivers(
            num, specs, Path(tmp) / "rx", None, staging_root=staging, is_recording=False, release_staging=True
        )
        receivers.wait_ready(120)
        old_s, new_s, new_out_s = [], [], []
        outlet = WeightOutlet("127.0.0.1", 0, NoRedis(), receivers.addresses, 600, lambda a, m: None)  # type: ignore[arg-type]
        try:
            version = 0
            for _ in range(args.repeats):
                version += 1
                started = time.perf_counter()  # the old path: gather to CPU, convert, push to each in turn
                full = get_model_state_dict(
                    model, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
                )
                old = {k.removeprefix(WRAPPER_PREFIX): v.to(torch.float32) for k, v in full.items()}
                tensors = tensors_from_state_dict(old)
                for address in receivers.addresses:
                    push_weights(address, version, tensors, timeout=600, run_id="gap")
                old_s.append(time.perf_counter() - started)
                del full, old, tensors
                version += 1
                started = time.perf_counter()  # the new path: gather on the device, hand to the fan-out
                new = gather_full_state_dict(model, "float32", info.tie_word_embeddings, ctx)
                outlet.publish(version, new, run_id="gap")
                new_s.append(time.perf_counter() - started)
                report = outlet.wait(600)
                new_out_s.append(time.perf_counter() - started)
                assert report is not None and all(o.error is None for o in report.outcomes), report
                del new
        finally:
            outlet.stop()
            receivers.stop()
            teardown_distributed()
    print(json.dumps({"servers": num, "old_s": old_s, "new_s": new_s, "new_all_served_s": new_out_s}))
    print(
        f"\n| path | trainer's gap s (median of {args.repeats}) | until all {num} serve s |\n|---|---|---|\n"
        f"| old: gather to CPU + convert + push in turn | {statistics.median(old_s):.2f} "
        f"| {statistics.median(old_s):.2f} |\n"
        f"| new: gather on device + WeightOutlet.publish | {statistics.median(new_s):.2f} "
        f"| {statistics.median(new_out_s):.2f} |"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="1,4,16,32", help="numbers of receivers; the largest runs once, last")
    p.add_argument("--baseline-sizes", default="1,4", help="sizes that also run the old sequential push")
    p.add_argument("--mb", type=int, default=500, help="the version's size in MB")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--workdir", default=None, help="where staging files go (default: the temp dir, on disk)")
    p.add_argument("--critical-path", action="store_true")
    p.add_argument("--critical-path-servers", type=int, default=4)
    args = p.parse_args()
    if args.critical_path:
        critical_path_bench(args)
    else:
        fan_out_bench(args)


if __name__ == "__main__":
    main()
