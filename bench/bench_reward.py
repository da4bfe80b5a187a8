"""Reward service throughput and tail latency, against a plain single-process math-verify loop.

    OMP_NUM_THREADS=1 python bench/bench_reward.py [--items 2000] [--workers 2] [--timeout 2]

Both sides verify the same items: GSM8K gold answers (shipped sample) written in several equivalent
forms. The service is called over gRPC in batches of 200; the loop calls parse + verify directly, in
one process, with math-verify's own timeouts. Then p99 latency per batch item with 5% hostile items
mixed in (huge towers of exponents and deep nesting), which the service must bound by timeout + grace.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import threading
import time
from pathlib import Path

from dapo_reward.service import RewardService
from dapo_reward.settings import RewardSettings
from dapo_reward.verifiers import verify_item

from dapo import rpc
from dapo.v1 import reward_pb2, reward_pb2_grpc

ROOT = Path(__file__).resolve().parents[1]
FORMS = [
    "{a}",
    "\\boxed{{{a}}}",
    "${a}$",
    "The answer is {a}.",
    "{a}.0",
    "So we get \\boxed{{{a}}} in total.",
]
HOSTILE = ["\\boxed{9^{9^{9^{9}}}}", "\\boxed{2^{2^{30}}}", "\\boxed{" + "{" * 5000 + "}" * 5000 + "}"]


def gold_answers() -> list[str]:
    rows = [json.loads(line) for line in (ROOT / "examples/data/gsm8k_train.jsonl").open()]
    return [r["answer"].rsplit("####", 1)[1].strip().replace(",", "") for r in rows]


def make_items(n: int, hostile_fraction: float, seed: int = 0) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    golds = gold_answers()
    items = []
    for i in range(n):
        gold = golds[i % len(golds)]
        if rng.random() < hostile_fraction:
            items.append((rng.choice(HOSTILE), gold))
        else:
            items.append((rng.choice(FORMS).format(a=gold), gold))
    return items


def run_loop(items: list[tuple[str, str]], timeout: int) -> tuple[float, list[bool]]:
    started = time.perf_counter()
    verdicts = [verify_item("math_verify", response, gold, timeout)[0] for response, gold in items]
    return time.perf_counter() - started, verdicts


def run_service(address: str, items: list[tuple[str, str]], batch: int = 200) -> tuple[float, list[bool]]:
    verdicts: list[bool] = []
    with rpc.sync_channel(address) as channel:
        stub = reward_pb2_grpc.RewardStub(channel)
        started = time.perf_counter()
        for start in range(0, len(items), batch):
            part = items[start : start + batch]
            reply = stub.Score(
                reward_pb2.ScoreRequest(
                    verifier="math_verify",
                    items=[
                        reward_pb2.ScoreItem(id=str(i), response=r, ground_truth=g)
                        for i, (r, g) in enumerate(part)
                    ],
                ),
                timeout=3600,
            )
            verdicts.extend(result.correct for result in reply.results)
        return time.perf_counter() - started, verdicts


def per_item_latencies(address: str, items: list[tuple[str, str]]) -> list[float]:
    """Each item alone in flight with the others (a batch), timed from the batch's start to its verdict."""
    done: list[float] = []

    async def one(stub: reward_pb2_grpc.RewardStub, i: int, item: tuple[str, str], start: float) -> None:
        await stub.Score(
            reward_pb2.ScoreRequest(
                verifier="math_verify",
                items=[reward_pb2.ScoreItem(id=str(i), response=item[0], ground_truth=item[1])],
            ),
            timeout=600,
        )
        done.append(time.perf_counter() - start)

    async def main() -> None:
        async with rpc.aio_channel(address) as channel:
            stub = reward_pb2_grpc.RewardStub(channel)
            for start in range(0, len(items), 20):  # 20 concurrent items, like a small batch
                t0 = time.perf_counter()
                await asyncio.gather(
                    *(one(stub, i, it, t0) for i, it in enumerate(items[start : start + 20]))
                )

    asyncio.run(main())
    return done


def main() -> None:
    import logging

    logging.getLogger("math_verify").setLevel(logging.CRITICAL)  # the loop's timeouts log whole inputs
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--items", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--timeout", type=int, default=2)
    args = parser.parse_args()

    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()
    service = RewardService(
        RewardSettings(grpc_port=0, http_port=0, workers=args.workers, timeout=args.timeout, cache_size=0)
    )
    asyncio.run_coroutine_threadsafe(service.start(), loop).result()
    address = f"127.0.0.1:{service.grpc_port}"
    try:
        clean = make_items(args.items, 0.0)
        run_service(address, clean[:100])  # warm the workers' imports
        loop_s, loop_verdicts = run_loop(clean, args.timeout)
        service_s, service_verdicts = run_service(address, clean)
        agree = sum(a == b for a, b in zip(loop_verdicts, service_verdicts, strict=True))
        print(f"clean items: {args.items}")
        print(f"  single-process loop : {loop_s:7.2f} s  {args.items / loop_s:7.0f} items/s")
        print(
            f"  service ({args.workers} workers) : {service_s:7.2f} s  {args.items / service_s:7.0f} items/s"
        )
        print(f"  throughput ratio    : {loop_s / service_s:.2f}x (target >= 1.6x)")
        print(f"  verdicts agree      : {agree}/{args.items} ({sum(service_verdicts)} correct)")
        mixed = make_items(400, 0.05, seed=1)
        latencies = sorted(per_item_latencies(address, mixed))
        p50 = latencies[len(latencies) // 2]
        p99 = latencies[int(len(latencies) * 0.99) - 1]
        print(
            f"5% hostile, 400 items in groups of 20: p50 {p50:.3f} s, p99 {p99:.3f} s, max {latencies[-1]:.3f} s "
            f"(target p99 <= timeout + 0.5 = {args.timeout + 0.5:.1f} s)"
        )
    finally:
        asyncio.run_coroutine_threadsafe(service.stop(1), loop).result()


if __name__ == "__main__":
    main()
