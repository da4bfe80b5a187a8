"""The rollout service: weight-update throughput and generation overhead, each against a baseline measured
in the same run.

1. Weight update: a synthetic Qwen2-architecture model of about 0.5 GB in float32 (random weights, built
   locally, untied embeddings) is served by `dapo rollout`; new random weights of the same shapes are pushed
   with `dapo.weight_publisher.push_weights` (the trainer's path). The time runs from the first chunk sent
   to the reply, which comes only once the new version is served (staged, verified, reloaded into vLLM,
   prefix cache reset). Baseline: the same bytes sent over a raw loopback TCP socket (`sendall` from the
   tensors' buffers into `recv_into` in another process).
2. Generation overhead: the same requests (tiny model, prompts of random token ids, n samples each, fixed
   per-request seeds, concurrent calls) through the gRPC service and through vLLM's AsyncLLM called directly
   in-process with the engine arguments the service uses (`dapo_rollout.engine.engine_args`). Both engines
   are up at once and the rounds alternate (direct, service, direct, ...), so other load hits both alike.

    OMP_NUM_THREADS=1 VLLM_CPU_KVCACHE_SPACE=1 .venv/bin/python bench/bench_rollout.py \\
        [--repeats 3] [--chunk-mib 1] [--skip-update] [--skip-generate]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import shutil
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

# About 125 M parameters: 0.50 GB in float32.
SYNTHETIC_CONFIG = {
    "vocab_size": 32000,
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "num_key_value_heads": 4,
    "intermediate_size": 2048,
    "max_position_embeddings": 512,
    "tie_word_embeddings": False,
}


def build_synthetic_model(out: Path, tokenizer_from: Path) -> int:
    """Write a random-weight Qwen2 model to `out` (tokenizer copied from the tiny model); return its bytes."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(**SYNTHETIC_CONFIG, dtype="float32")).to(torch.float32)
    model.save_pretrained(str(out), safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        if (tokenizer_from / name).exists():
            shutil.copy(tokenizer_from / name, out / name)
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


def random_tensors(model_dir: Path, seed: int) -> list:
    """New random tensors with the model's names, shapes and dtypes."""
    import torch
    from dapo_rollout.weight_update import expected_specs_from_dir

    from dapo.weights import tensors_from_state_dict

    generator = torch.Generator().manual_seed(seed)
    state = {
        name: torch.randn(shape, generator=generator, dtype=torch.float32) * 0.02
        for name, (_, shape) in expected_specs_from_dir(model_dir).items()
    }
    return tensors_from_state_dict(state)


def _socket_receiver(port_queue, num_bytes: int, result_queue) -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        port_queue.put(server.getsockname()[1])
        conn, _ = server.accept()
        buffer = bytearray(num_bytes)
        view = memoryview(buffer)
        received = 0
        while received < num_bytes:
            n = conn.recv_into(view[received:], min(num_bytes - received, 8 << 20))
            if n == 0:
                break
            received += n
        conn.sendall(b"k")  # the sender stops its clock on this byte
        conn.close()
        result_queue.put(received)


def raw_socket_seconds(tensors: list) -> float:
    num_bytes = sum(t.num_bytes for t in tensors)
    context = multiprocessing.get_context("fork")
    port_queue, result_queue = context.Queue(), context.Queue()
    receiver = context.Process(target=_socket_receiver, args=(port_queue, num_bytes, result_queue))
    receiver.start()
    port = port_queue.get(timeout=30)
    with socket.create_connection(("127.0.0.1", port)) as conn:
        started = time.perf_counter()
        for t in tensors:
            conn.sendall(t.data)
        assert conn.recv(1) == b"k"
        elapsed = time.perf_counter() - started
    assert result_queue.get(timeout=30) == num_bytes
    receiver.join(30)
    return elapsed


def bench_update(tiny_dir: Path, work: Path, repeats: int, chunk_bytes: int) -> dict:
    from dapo_rollout.launch import RolloutProcess

    from dapo.weight_publisher import push_weights

    model_dir = work / "synthetic"
    started = time.perf_counter()
    num_bytes = build_synthetic_model(model_dir, tiny_dir)
    print(f"synthetic model: {num_bytes / 1e9:.3f} GB in {time.perf_counter() - started:.1f} s", flush=True)
    server = RolloutProcess(model_dir, ["--max-model-len", "256"], log_path=work / "update-server.log")
    server.start()
    rows = []
    try:
        server.wait_ready(timeout=300)
        for i in range(repeats):
            tensors = random_tensors(model_dir, seed=i + 1)
            socket_s = raw_socket_seconds(tensors)
            started = time.perf_counter()
            reply = push_weights(server.address, i + 1, tensors, timeout=300, chunk_bytes=chunk_bytes)
            update_s = time.perf_counter() - started
            assert reply.version == i + 1 and server.status().policy_version == i + 1
            rows.append(
                {
                    "update_s": update_s,
                    "server_side_s": reply.duration_s,
                    "socket_s": socket_s,
                    "bytes": reply.num_bytes,
                }
            )
            print(
                f"update {i + 1}: {update_s:.2f} s ({reply.num_bytes / update_s / 2**30:.2f} GiB/s; "
                f"server {reply.duration_s:.2f} s), raw socket {socket_s:.3f} s "
                f"({reply.num_bytes / socket_s / 2**30:.2f} GiB/s)",
                flush=True,
            )
    finally:
        server.stop()
        log = (work / "update-server.log").read_text(errors="replace").splitlines()
        for line in log:
            if "applied weights version" in line or "swapped in version" in line:
                print("  server:", line.split(": ", 1)[-1], flush=True)
    update_s = statistics.median(r["update_s"] for r in rows)
    socket_s = statistics.median(r["socket_s"] for r in rows)
    return {
        "bytes": rows[0]["bytes"],
        "update_s_median": update_s,
        "socket_s_median": socket_s,
        "update_gib_s": rows[0]["bytes"] / update_s / 2**30,
        "socket_gib_s": rows[0]["bytes"] / socket_s / 2**30,
        "throughput_ratio": socket_s / update_s,
        "runs": rows,
    }


# --- generation overhead ---------------------------------------------------------------------------

NUM_CALLS = 8
PROMPTS_PER_CALL = 4
N = 8
MAX_TOKENS = 64
PROMPT_LEN = 24


def workload(seed: int = 0) -> list[list[list[int]]]:
    import random

    rng = random.Random(seed)
    return [
        [[rng.randrange(3, 500) for _ in range(PROMPT_LEN)] for _ in range(PROMPTS_PER_CALL)]
        for _ in range(NUM_CALLS)
    ]


def _seed(call: int, prompt: int) -> int:
    return 1000 + call * PROMPTS_PER_CALL + prompt


async def _service_round(address: str, calls) -> tuple[float, int]:
    from dapo_rollout.client import RolloutClient, sampling_params, to_prompt

    async with RolloutClient(address) as client:
        started = time.perf_counter()
        # one Generate per prompt so that each carries its own seed, as in the direct run
        replies = await asyncio.gather(
            *(
                client.generate(
                    [to_prompt(p)],
                    sampling_params(n=N, temperature=1.0, max_tokens=MAX_TOKENS, seed=_seed(c, i)),
                )
                for c, call in enumerate(calls)
                for i, p in enumerate(call)
            )
        )
        elapsed = time.perf_counter() - started
    return elapsed, sum(len(s.token_ids) for reply in replies for r in reply for s in r.samples)


async def _interleaved_rounds(tiny_dir: Path, address: str, calls, repeats: int):
    """Alternate direct-vLLM and service rounds, so that load from other jobs hits both alike."""
    import uuid

    from dapo_rollout.engine import EngineOptions, detect_device, engine_args
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind
    from vllm.v1.engine.async_llm import AsyncLLM

    llm = AsyncLLM.from_engine_args(
        engine_args(EngineOptions(str(tiny_dir), max_model_len=256), detect_device())
    )

    async def one(prompt: list[int], seed: int) -> int:
        params = SamplingParams(
            n=N,
            temperature=1.0,
            max_tokens=MAX_TOKENS,
            seed=seed,
            logprobs=0,
            output_kind=RequestOutputKind.FINAL_ONLY,
        )
        final = None
        async for out in llm.generate({"prompt_token_ids": prompt}, params, uuid.uuid4().hex):
            final = out
        return sum(len(c.token_ids) for c in final.outputs)

    async def direct_round() -> tuple[float, int]:
        started = time.perf_counter()
        counts = await asyncio.gather(
            *(one(p, _seed(c, i)) for c, call in enumerate(calls) for i, p in enumerate(call))
        )
        return time.perf_counter() - started, sum(counts)

    try:
        await direct_round()  # warm-up of both
        await _service_round(address, calls)
        direct, service = [], []
        for _ in range(repeats):
            direct.append(await direct_round())
            service.append(await _service_round(address, calls))
        return direct, service
    finally:
        llm.shutdown()


def bench_generate(tiny_dir: Path, work: Path, repeats: int) -> dict:
    from dapo_rollout.launch import RolloutProcess

    calls = workload()
    server = RolloutProcess(tiny_dir, ["--max-model-len", "256"], log_path=work / "generate-server.log")
    server.start()
    try:
        server.wait_ready(timeout=300)
        direct, service = asyncio.run(_interleaved_rounds(tiny_dir, server.address, calls, repeats))
    finally:
        server.stop()
    print("direct vLLM rounds:", [f"{s:.2f} s / {n} tok" for s, n in direct], flush=True)
    print("service rounds:", [f"{s:.2f} s / {n} tok" for s, n in service], flush=True)
    assert {n for _, n in service} == {n for _, n in direct}, "seeded runs should sample the same tokens"
    direct_s = statistics.median(s for s, _ in direct)
    service_s = statistics.median(s for s, _ in service)
    return {
        "tokens_per_round": direct[0][1],
        "direct_s_median": direct_s,
        "service_s_median": service_s,
        "overhead": service_s / direct_s - 1,
        "direct_rounds_s": [s for s, _ in direct],
        "service_rounds_s": [s for s, _ in service],
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--chunk-mib", type=float, default=1.0, help="weight chunk size")
    parser.add_argument("--skip-update", action="store_true")
    parser.add_argument("--skip-generate", action="store_true")
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "services" / "rollout"))
    from dapo.tiny.model import build_untrained_model

    work = Path(tempfile.mkdtemp(prefix="bench-rollout-"))
    results: dict = {}
    try:
        tiny_dir = build_untrained_model(work / "tiny", seed=0)
        if not args.skip_update:
            results["update"] = bench_update(tiny_dir, work, args.repeats, int(args.chunk_mib * 2**20))
        if not args.skip_generate:
            results["generate"] = bench_generate(tiny_dir, work, args.repeats)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(results, indent=2))
    if "update" in results:
        u = results["update"]
        print(
            f"\nweight update {u['bytes'] / 1e9:.3f} GB: {u['update_s_median']:.2f} s ({u['update_gib_s']:.2f} GiB/s) "
            f"vs raw socket {u['socket_s_median']:.3f} s ({u['socket_gib_s']:.2f} GiB/s): "
            f"{u['throughput_ratio']:.2f}x of the socket's throughput"
        )
    if "generate" in results:
        g = results["generate"]
        print(
            f"generation: service {g['service_s_median']:.2f} s vs direct vLLM {g['direct_s_median']:.2f} s "
            f"per round of {g['tokens_per_round']} tokens: {100 * g['overhead']:+.1f}%"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
