"""Exact-match accuracy of a model on prompt rows, with transformers' `generate` (CPU, no services).

Used by the warm start, tests and benches. An answer is right when the decoded completion, stripped of
whitespace and special tokens, equals the ground truth string; this is what the arithmetic task needs
(the reward service's math-verify agrees on bare integers). Sampling uses `top_k=0` and `top_p=1`, so
the sampled distribution is the model's own softmax at the given temperature (transformers' default
top_k=50 would renormalise it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class EvalResult:
    """Accuracy over all samples, and how the samples of each prompt split into right and wrong."""

    accuracy: float
    """Fraction of all samples that were right."""
    num_prompts: int
    num_samples: int
    """Samples per prompt."""
    fraction_mixed: float
    """Fraction of prompts with some right and some wrong samples (the groups RL can learn from)."""
    fraction_all_wrong: float
    fraction_all_right: float
    num_correct_per_prompt: list[int] = field(default_factory=list, repr=False)
    mean_response_tokens: float = 0.0
    """Mean generated tokens per sample, EOS included."""
    truncated_frac: float = 0.0
    """Fraction of samples that hit `max_new_tokens` without EOS."""

    def summary(self) -> dict[str, Any]:
        """The result without the per-prompt counts."""
        out = asdict(self)
        out.pop("num_correct_per_prompt")
        return out


def _messages_and_truth(row: Any, index: int) -> tuple[list[dict[str, str]], str]:
    """Accept a verl/NeMo row dict or an object with `messages` and `ground_truth` (dapo.data.PromptRow)."""
    if isinstance(row, dict):
        if "prompt" not in row or "reward_model" not in row:
            raise ValueError(f"row {index} lacks field 'prompt' or 'reward_model' (expected a verl/NeMo row)")
        return list(row["prompt"]), str(row["reward_model"]["ground_truth"])
    return list(row.messages), str(row.ground_truth)


def evaluate_model(
    model: Any,
    tokenizer: Any,
    rows: Sequence[Any],
    *,
    greedy: bool = True,
    num_samples: int = 1,
    temperature: float = 1.0,
    max_new_tokens: int = 8,
    batch_size: int = 256,
    seed: int = 0,
    final_answer: Callable[[str], str] | None = None,
) -> EvalResult:
    """Generate for every row and score by exact match. `model` is a transformers causal LM.

    `final_answer` picks the answer out of a decoded response (e.g. the `Answer:` line of a worked
    solution); without it the whole stripped response is the answer.
    """
    _check_eval_args(rows, greedy=greedy, num_samples=num_samples, temperature=temperature)
    prompts, truths = [], []
    for i, row in enumerate(rows):
        messages, truth = _messages_and_truth(row, i)
        prompts.append(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
        truths.append(truth.strip())
    sampling: dict[str, Any] = (
        {"do_sample": False}
        if greedy
        else {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0}
    )
    num_correct: list[int] = []
    lengths: list[int] = []
    answer_of = final_answer or (lambda text: text)
    with _generating(model, tokenizer, seed):
        for start in range(0, len(prompts), batch_size):
            texts, batch_lengths = _generate_batch(
                model, tokenizer, prompts[start : start + batch_size], num_samples, max_new_tokens, sampling
            )
            lengths += batch_lengths
            for j, truth in enumerate(truths[start : start + batch_size]):
                answers = texts[j * num_samples : (j + 1) * num_samples]
                num_correct.append(sum(answer_of(answer).strip() == truth for answer in answers))
    return _eval_result(num_correct, lengths, num_samples=num_samples, max_new_tokens=max_new_tokens)


def _check_eval_args(rows: Sequence[Any], *, greedy: bool, num_samples: int, temperature: float) -> None:
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    if greedy and num_samples != 1:
        raise ValueError(
            f"greedy decoding gives one answer per prompt: num_samples must be 1, got {num_samples}"
        )
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if not rows:
        raise ValueError("rows is empty: nothing to evaluate")


@contextmanager
def _generating(model: Any, tokenizer: Any, seed: int) -> Iterator[None]:
    """Eval mode, left padding and a seeded torch generator; all three restored afterwards."""
    import torch

    was_training = model.training
    model.eval()
    padding_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    generator_state = torch.get_rng_state()
    torch.manual_seed(seed)
    try:
        yield
    finally:
        tokenizer.padding_side = padding_side
        torch.set_rng_state(generator_state)
        model.train(was_training)


def _generate_batch(
    model: Any,
    tokenizer: Any,
    prompts: list[str],
    num_samples: int,
    max_new_tokens: int,
    sampling: dict[str, Any],
) -> tuple[list[str], list[int]]:
    """`num_samples` completions per prompt (prompt-major): their decoded texts and token counts, EOS
    included (`max_new_tokens + 1` for one that reached the budget without EOS)."""
    import torch

    batch = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(
            **batch,
            max_new_tokens=max_new_tokens,
            num_return_sequences=num_samples,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            **sampling,
        )
    generated = out[:, batch["input_ids"].shape[1] :]
    texts = tokenizer.batch_decode(generated, skip_special_tokens=True)
    lengths = []
    for row in generated.tolist():
        ended = [k for k, token in enumerate(row) if token == tokenizer.eos_token_id]
        lengths.append(ended[0] + 1 if ended else len(row) + 1)  # len+1: no EOS within budget
    return texts, lengths


def _eval_result(
    num_correct: list[int], lengths: list[int], *, num_samples: int, max_new_tokens: int
) -> EvalResult:
    num_prompts = len(num_correct)
    return EvalResult(
        accuracy=sum(num_correct) / (num_prompts * num_samples),
        num_prompts=num_prompts,
        num_samples=num_samples,
        fraction_mixed=sum(0 < c < num_samples for c in num_correct) / num_prompts,
        fraction_all_wrong=sum(c == 0 for c in num_correct) / num_prompts,
        fraction_all_right=sum(c == num_samples for c in num_correct) / num_prompts,
        num_correct_per_prompt=num_correct,
        mean_response_tokens=sum(min(n, max_new_tokens) for n in lengths) / len(lengths),
        truncated_frac=sum(n > max_new_tokens for n in lengths) / len(lengths),
    )


def evaluate_accuracy(
    model_dir: str | Path,
    rows: Sequence[Any],
    greedy: bool = True,
    num_samples: int = 1,
    *,
    temperature: float = 1.0,
    max_new_tokens: int = 8,
    batch_size: int = 256,
    seed: int = 0,
    final_answer: Callable[[str], str] | None = None,
) -> EvalResult:
    """Load the model in `model_dir` (float32, CPU) and evaluate it on `rows` (see `evaluate_model`)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(model_dir)
    if not (path / "config.json").is_file():
        raise ValueError(f"model_dir {str(path)!r} has no config.json: not a model directory")
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    return evaluate_model(
        model,
        tokenizer,
        rows,
        greedy=greedy,
        num_samples=num_samples,
        temperature=temperature,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        seed=seed,
        final_answer=final_answer,
    )
