"""A small byte-level BPE tokenizer for the tiny model, trained locally and deterministically.

It uses exactly Qwen2's normalizer (NFC) and pre-tokenizer (Qwen2's split regex, then byte-level
mapping without a prefix space), because `AutoTokenizer` loads any `model_type=qwen2` directory with
`Qwen2Tokenizer`, which rebuilds those two parts itself: with anything else the ids would differ between
`tokenizers`, transformers and vLLM. Qwen2's regex splits numbers into single digits (`\\p{N}`), so every
digit is one token, which the arithmetic task relies on.

The chat template is Qwen-style ChatML without a default system message; `<|im_end|>` ends a turn and is
the EOS token, `<|endoftext|>` pads.
"""

from __future__ import annotations

from pathlib import Path

ENDOFTEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPECIAL_TOKENS = (ENDOFTEXT, IM_START, IM_END)

# Same pattern as transformers' Qwen2Tokenizer (and Qwen2's tokenizer.json).
QWEN2_PRETOKENIZE_REGEX = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""

CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- endif %}"
)

# A little general text so that the tokenizer is not only about arithmetic.
_GENERAL_TEXT = """\
What is the sum of the numbers? Compute the answer and give only the number.
Solve the problem step by step, then write the final answer.
The answer is the number of apples that she has left after giving some to her friends.
How many more minutes does it take? Find the value of x. Express your answer as a fraction.
A train travels at a constant speed. If it leaves at noon, when does it arrive?
"""


def _training_corpus() -> list[str]:
    """Deterministic text to learn merges from: chat-formatted arithmetic plus general sentences."""
    lines = [_GENERAL_TEXT] * 4
    for a in range(10, 100, 3):
        for b in range(10, 100, 7):
            lines.append(f"{IM_START}user\nWhat is {a}+{b}?{IM_END}\n{IM_START}assistant\n{a + b}{IM_END}\n")
    return lines


def train_tokenizer(vocab_size: int = 512):  # -> tokenizers.Tokenizer
    """Train the byte-level BPE tokenizer (at most `vocab_size` tokens, special tokens first: ids 0-2)."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    if vocab_size < 256 + len(SPECIAL_TOKENS):
        raise ValueError(f"vocab_size must be at least {256 + len(SPECIAL_TOKENS)}, got {vocab_size}")
    tokenizer = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_training_corpus(), trainer=trainer)
    return tokenizer


def build_tokenizer(vocab_size: int = 512):  # -> transformers.PreTrainedTokenizerBase
    """The trained tokenizer wrapped for transformers, with special tokens and the chat template set."""
    from transformers import PreTrainedTokenizerFast

    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=train_tokenizer(vocab_size),
        eos_token=IM_END,
        pad_token=ENDOFTEXT,
        unk_token=ENDOFTEXT,
        additional_special_tokens=[IM_START, IM_END],
        model_max_length=512,
        clean_up_tokenization_spaces=False,
    )
    wrapped.chat_template = CHAT_TEMPLATE
    return wrapped


def save_tokenizer(out_dir: str | Path, vocab_size: int = 512) -> dict[str, int]:
    """Train and save the tokenizer into `out_dir`; return the ids of the special tokens."""
    tokenizer = build_tokenizer(vocab_size)
    tokenizer.save_pretrained(str(out_dir))
    return {token: tokenizer.convert_tokens_to_ids(token) for token in SPECIAL_TOKENS}
