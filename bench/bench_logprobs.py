"""Chunked token log-probs + DAPO loss + backward vs the straightforward way, on CPU.

Variants, each run in a FRESH subprocess on the same seeded inputs:
- naive:      logits = hidden @ W.T (float32), log_softmax over the whole [T, V] matrix, gather
              (what TRL and verl do), then `policy_loss`, then backward.
- chunked:    `dapo.algo.token_logprobs` (custom autograd function, logits recomputed per chunk in
              backward), then `policy_loss`, then backward.
- checkpoint: the naive computation per chunk of tokens under `torch.utils.checkpoint`.
- fused:      `dapo.algo.fused_policy_loss`: the loss evaluated chunk by chunk in forward, the lm head's
              gradients formed while each chunk's logits are in memory (three [T x H x V] matmuls
              instead of chunked's four); backward only scales them.

The old log-probs (the current ones plus seeded noise, so ratios reach both clip bounds) are computed
once per child before timing, with `token_logprobs` under no_grad, so every variant sees the same
loss inputs (the fused path needs them before its forward).

Memory: each child reports its peak resident set size (`ru_maxrss`, the kernel's high-water mark of
the process) and its RSS after the inputs exist. Large tensors are mmap-backed in glibc and returned
to the kernel when freed, so the high-water mark tracks the peak of live tensor memory. "Working" memory
is the peak minus the RSS after setup (inputs: hidden, lm-head weight; the weight gradient, needed by
every variant, counts as working memory). Time: wall clock of forward + loss + backward, after a small
warm-up in the same process, with OMP_NUM_THREADS=1 (set by this script for its children).

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_logprobs.py [--tokens 2048 --vocab 151936 --hidden 1536
        --chunk-size 256 --variants naive,chunked,fused,checkpoint]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

VARIANTS = ("naive", "chunked", "fused", "checkpoint")


def _rss_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def _child(variant: str, tokens: int, vocab: int, hidden: int, chunk_size: int) -> dict[str, float]:
    import torch
    import torch.utils.checkpoint

    from dapo.algo import LossOptions, fused_policy_loss, policy_loss, token_logprobs

    torch.set_num_threads(1)

    def naive_logp(hidden_TH: torch.Tensor, weight_VH: torch.Tensor, targets_T: torch.Tensor) -> torch.Tensor:
        logits_TV = (hidden_TH @ weight_VH.T).float()
        return torch.log_softmax(logits_TV, dim=-1).gather(1, targets_T[:, None]).squeeze(1)

    def logp_of(hidden_TH: torch.Tensor, weight_VH: torch.Tensor, targets_T: torch.Tensor) -> torch.Tensor:
        if variant == "naive":
            return naive_logp(hidden_TH, weight_VH, targets_T)
        if variant == "chunked":
            return token_logprobs(hidden_TH, weight_VH, targets_T, chunk_size=chunk_size)[0]
        parts = [
            torch.utils.checkpoint.checkpoint(
                naive_logp,
                hidden_TH[s : s + chunk_size],
                weight_VH,
                targets_T[s : s + chunk_size],
                use_reentrant=False,
            )
            for s in range(0, hidden_TH.shape[0], chunk_size)
        ]
        return torch.cat(parts)

    num_sequences = 4
    loss_options = LossOptions(ratio_clip_min=0.2, ratio_clip_max=0.28)

    def step(
        hidden_TH: torch.Tensor, weight_VH: torch.Tensor, targets_T: torch.Tensor, old_logp_BT: torch.Tensor
    ) -> float:
        advantages_B = torch.tensor([1.0, -1.0, 0.5, -0.5])
        mask_BT = torch.ones(old_logp_BT.shape, dtype=torch.bool)
        if variant == "fused":
            loss = fused_policy_loss(
                hidden_TH.view(num_sequences, -1, hidden_TH.shape[1]),
                weight_VH,
                targets_T.view(num_sequences, -1),
                old_logp_BT,
                advantages_B,
                mask_BT,
                global_denominator=old_logp_BT.numel(),
                chunk_size=chunk_size,
                options=loss_options,
            )[0]
        else:
            logp_BT = logp_of(hidden_TH, weight_VH, targets_T).view(num_sequences, -1)
            loss, _ = policy_loss(
                logp_BT,
                old_logp_BT,
                advantages_B,
                mask_BT,
                global_denominator=logp_BT.numel(),
                options=loss_options,
            )
        loss.backward()
        return loss.item()

    def inputs(t: int, v: int, h: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        generator = torch.Generator().manual_seed(0)
        hidden_TH = torch.randn(t, h, generator=generator).requires_grad_()
        weight_VH = (torch.randn(v, h, generator=generator) * h**-0.5).requires_grad_()
        targets_T = torch.randint(0, v, (t,), generator=generator)
        with torch.no_grad():
            logp_T, _ = token_logprobs(hidden_TH, weight_VH, targets_T, chunk_size=chunk_size)
        noise = 0.1 * torch.randn(t, generator=torch.Generator().manual_seed(1))
        return hidden_TH, weight_VH, targets_T, (logp_T + noise).view(num_sequences, -1)

    step(*inputs(64, 1024, 64))  # warm-up: kernels and allocator, negligible memory
    hidden_TH, weight_VH, targets_T, old_logp_BT = inputs(tokens, vocab, hidden)
    rss_setup = _rss_bytes()
    start = time.perf_counter()
    loss = step(hidden_TH, weight_VH, targets_T, old_logp_BT)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
    grad_norm = float(hidden_TH.grad.norm()) + float(weight_VH.grad.norm())
    return {
        "seconds": seconds,
        "peak_bytes": peak,
        "setup_bytes": rss_setup,
        "loss": loss,
        "grad_norm": grad_norm,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--vocab", type=int, default=151_936)
    parser.add_argument("--hidden", type=int, default=1536)
    parser.add_argument("--chunk-size", type=int, default=256)
    parser.add_argument("--variants", default="naive,chunked,fused")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.tokens % 4:
        parser.error("--tokens must be divisible by 4 (four sequences)")
    unknown = set(args.variants.split(",")) - set(VARIANTS)
    if unknown:
        parser.error(f"--variants: unknown {sorted(unknown)}; choose from {list(VARIANTS)}")
    if args.child:
        result = _child(args.child, args.tokens, args.vocab, args.hidden, args.chunk_size)
        print(json.dumps(result))
        return

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    print(
        f"tokens={args.tokens} vocab={args.vocab} hidden={args.hidden} chunk_size={args.chunk_size} "
        f"float32, CPU, OMP_NUM_THREADS=1; [T, V] float32 = {args.tokens * args.vocab * 4 / 2**30:.2f} GiB"
    )
    results: dict[str, dict[str, float]] = {}
    for variant in args.variants.split(","):
        command = [
            sys.executable,
            __file__,
            "--child",
            variant,
            "--tokens",
            str(args.tokens),
            "--vocab",
            str(args.vocab),
            "--hidden",
            str(args.hidden),
            "--chunk-size",
            str(args.chunk_size),
        ]
        output = subprocess.run(command, env=env, check=True, capture_output=True, text=True).stdout
        results[variant] = json.loads(output.strip().splitlines()[-1])
    base = results.get("naive")
    gib = 2**30
    print(
        f"{'variant':<11} {'time s':>7} {'peak GiB':>9} {'working GiB':>12} {'time x':>7} {'peak x':>7} {'working x':>10}  loss / grad-norm"
    )
    for variant, r in results.items():
        working = r["peak_bytes"] - r["setup_bytes"]
        ratios = ""
        if base is not None:
            base_working = base["peak_bytes"] - base["setup_bytes"]
            ratios = (
                f"{r['seconds'] / base['seconds']:>7.2f} {r['peak_bytes'] / base['peak_bytes']:>7.2f} "
                f"{working / base_working:>10.2f}"
            )
        print(
            f"{variant:<11} {r['seconds']:>7.2f} {r['peak_bytes'] / gib:>9.2f} {working / gib:>12.2f} {ratios}  "
            f"{r['loss']:.6f} / {r['grad_norm']:.6f}"
        )


if __name__ == "__main__":
    main()
