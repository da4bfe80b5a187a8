"""The tiny model builder: deterministic files, the tokenizer's contract, the chat template."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import require_module

require_module("transformers", "the train extra installs it")


def test_untrained_build_is_byte_identical(tmp_path: Path, tiny_model_dir: Path) -> None:
    from dapo.tiny.model import build_untrained_model

    again = build_untrained_model(tmp_path / "again", seed=0)
    for name in ("model.safetensors", "tokenizer.json", "config.json", "chat_template.jinja"):
        assert (again / name).read_bytes() == (tiny_model_dir / name).read_bytes(), name
    other = build_untrained_model(tmp_path / "other", seed=1)
    assert (other / "model.safetensors").read_bytes() != (again / "model.safetensors").read_bytes()
    assert (other / "tokenizer.json").read_bytes() == (again / "tokenizer.json").read_bytes()


def test_model_loads_with_the_expected_shape(tiny_model_dir: Path) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(tiny_model_dir)
    assert config.model_type == "qwen2"
    assert (config.vocab_size, config.hidden_size, config.num_hidden_layers) == (512, 256, 4)
    assert (config.num_attention_heads, config.num_key_value_heads, config.intermediate_size) == (4, 2, 512)
    assert config.max_position_embeddings >= 512 and config.tie_word_embeddings is False
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert next(model.parameters()).dtype == torch.float32
    assert 2_000_000 < sum(p.numel() for p in model.parameters()) < 3_000_000
    assert not torch.equal(model.lm_head.weight, model.model.embed_tokens.weight)


def test_tokenizers_agree_and_digits_are_single_tokens(tiny_model_dir: Path) -> None:
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(tiny_model_dir)
    raw = Tokenizer.from_file(str(tiny_model_dir / "tokenizer.json"))
    assert type(hf).__name__ == "Qwen2Tokenizer"
    assert len(hf) <= 512
    for text in ["What is 37+48?", "Héllo wörld  café\n\n 1,234.5 $x^2$", "<|im_start|>user\nhi<|im_end|>"]:
        ids = hf(text, add_special_tokens=False)["input_ids"]
        assert ids == raw.encode(text, add_special_tokens=False).ids
        assert hf.decode(ids) == text
    assert hf.convert_ids_to_tokens(hf("12345", add_special_tokens=False)["input_ids"]) == list("12345")


def test_special_tokens_and_chat_template(tiny_model_dir: Path) -> None:
    from transformers import AutoTokenizer, GenerationConfig

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.pad_token == "<|endoftext|>"
    assert tokenizer.convert_tokens_to_ids("<|im_start|>") != tokenizer.unk_token_id
    assert GenerationConfig.from_pretrained(tiny_model_dir).eos_token_id == tokenizer.eos_token_id
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 37+48?"}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nWhat is 37+48?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert ids.count(tokenizer.convert_tokens_to_ids("<|im_start|>")) == 3
    assert ids.count(tokenizer.eos_token_id) == 2


def test_bad_seed_is_rejected(tmp_path: Path) -> None:
    from dapo.tiny.model import build_untrained_model

    with pytest.raises(ValueError, match="seed"):
        build_untrained_model(tmp_path, seed=-1)
