"""Prompt data: read JSONL (or Parquet, with pyarrow) in the common math formats, and walk it resumably.

Formats (`format="auto"` picks one from the keys of the first row):
- `verl`: verl/NeMo RL rows, `{"prompt": [{"role": ..., "content": ...}, ...], "reward_model":
  {"ground_truth": ...}}` (a plain-string `prompt` is taken as one user message); NeMo's
  `{"problem": ..., "expected_answer": ...}` rows are read under this format too.
- `gsm8k`: `{"question", "answer"}` where the answer is a worked solution ending in `#### <number>`;
  the ground truth is that number with thousands separators removed (`gsm8k_final_answer`, which the
  reward service also applies to a ground truth still holding a `####`).
- `math`: `{"problem", "answer"}` (MATH, MATH-500); the answer is kept as written (LaTeX).

Every row becomes a `PromptRow(id, messages, ground_truth)`. Ids come from the row's `id` or
`unique_id`, else `extra_info.index`, else the row number, and must be unique. A `prompt_template`
(`DataConfig.prompt_template`, a format string with `{question}`) is applied to the question text (for
chat rows: the last user message). Errors name the file, the line or row, and the field.

`PromptCursor` hands out rows in order, reshuffling each epoch with a seed derived from (seed, epoch),
and its `state()` (epoch, position) lets a restarted controller continue exactly where it stopped.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from dapo.config.schema import DataConfig

RowFormat = Literal["auto", "verl", "gsm8k", "math"]
FORMATS = ("auto", "verl", "gsm8k", "math")
GSM8K_MARKER = "####"
_GROUPED_NUMBER = re.compile(r"^-?\d{1,3}(,\d{3})+(\.\d*)?$")


@dataclass(frozen=True)
class PromptRow:
    """One prompt: a stable id, the chat messages to send, and the reference answer."""

    id: str
    messages: list[dict[str, str]] = field(hash=False)
    ground_truth: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "messages": [dict(m) for m in self.messages],
            "ground_truth": self.ground_truth,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PromptRow:
        return cls(
            id=str(data["id"]), messages=list(data["messages"]), ground_truth=str(data["ground_truth"])
        )


class DataError(ValueError):
    """Bad data: the message names the file, the line or row, and the field."""


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """The raw rows of a `.jsonl`/`.json` (JSON lines) or `.parquet` file, as dicts."""
    file = Path(path)
    if not file.is_file():
        raise DataError(f"data file not found: {str(file)!r}")
    if file.suffix.lower() == ".parquet":
        return _read_parquet(file)
    records: list[dict[str, Any]] = []
    with file.open("r", encoding="utf-8") as f:
        for line_number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(
                    f"{file}: bad JSON at line {line_number}: {e.msg} (column {e.colno})"
                ) from None
            if not isinstance(record, dict):
                raise DataError(
                    f"{file}: line {line_number} is a {type(record).__name__}, expected a JSON object"
                )
            records.append(record)
    return records


def _read_parquet(file: Path) -> list[dict[str, Any]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(
            f"{file}: reading Parquet needs pyarrow, which is not installed (pip install pyarrow), "
            "or convert the file to JSONL"
        ) from None
    import pyarrow as pa

    try:
        return list(pq.read_table(file).to_pylist())
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"{file}: not a readable Parquet file: {exc}") from None


def detect_format(record: dict[str, Any]) -> Literal["verl", "gsm8k", "math"]:
    """The format of a row from its keys (see the module docstring)."""
    keys = set(record)
    if "prompt" in keys and "reward_model" in keys:
        return "verl"
    if "problem" in keys and "expected_answer" in keys:
        return "verl"
    if "question" in keys and "answer" in keys:
        return "gsm8k"
    if "problem" in keys and ("answer" in keys or "solution" in keys):
        return "math"
    raise DataError(
        f"cannot detect the row format from keys {sorted(keys)}: expected 'prompt'+'reward_model' (verl), "
        "'problem'+'expected_answer' (NeMo), 'question'+'answer' (gsm8k) or 'problem'+'answer' (math)"
    )


class NoFinalAnswer(ValueError):
    """A GSM8K solution without a final `#### <answer>`."""


def without_thousands_separators(answer: str) -> str:
    """`1,234,567.5` -> `1234567.5`; anything but a number written in groups of three is kept as is
    (`2,1` may be a list of two roots)."""
    return answer.replace(",", "") if _GROUPED_NUMBER.match(answer) else answer


def gsm8k_final_answer(solution: str) -> str:
    """The final answer of a GSM8K solution: the text after its last `####`, stripped, without thousands
    separators. NoFinalAnswer (a ValueError) when there is no `####` or nothing after it."""
    _, marker, answer = solution.rpartition(GSM8K_MARKER)
    answer = answer.strip()
    if not marker or not answer:
        raise NoFinalAnswer("answer has no final '#### <number>' line")
    return without_thousands_separators(answer)


def apply_template(template: str | None, question: str) -> str:
    """`template.format(question=question)`, or the question itself when there is no template."""
    if template is None:
        return question
    try:
        return template.format(question=question)
    except (KeyError, IndexError, ValueError) as e:
        raise DataError(
            f"prompt_template {template!r} is not a valid format string with only {{question}}: {e!r}"
        ) from None


def _field(record: dict[str, Any], name: str, where: str) -> Any:
    if name not in record or record[name] is None:
        raise DataError(f"{where} lacks field '{name}'")
    return record[name]


def _text(value: Any, name: str, where: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise DataError(f"{where}: field '{name}' must be a string or a number, got {type(value).__name__}")
    text = str(value)
    if not text.strip():
        raise DataError(f"{where}: field '{name}' is empty")
    return text


def _messages(prompt: Any, where: str) -> list[dict[str, str]]:
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    if not isinstance(prompt, list) or not prompt:
        raise DataError(f"{where}: field 'prompt' must be a non-empty list of chat messages or a string")
    messages = []
    for i, message in enumerate(prompt):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise DataError(f"{where}: field 'prompt[{i}]' must be an object with a string 'role'")
        if not isinstance(message.get("content"), str):
            raise DataError(f"{where}: field 'prompt[{i}].content' must be a string")
        messages.append({"role": message["role"], "content": message["content"]})
    if not any(m["role"] == "user" for m in messages):
        raise DataError(f"{where}: field 'prompt' has no message with role 'user'")
    return messages


def _row_id(record: dict[str, Any], index: int) -> str:
    for key in ("id", "unique_id"):
        if record.get(key) is not None:
            return str(record[key])
    extra = record.get("extra_info")
    if isinstance(extra, dict) and extra.get("index") is not None:
        return str(extra["index"])
    return str(index)


def parse_row(
    record: dict[str, Any],
    index: int,
    format: Literal["verl", "gsm8k", "math"],
    prompt_template: str | None = None,
    where: str | None = None,
) -> PromptRow:
    """One raw row as a PromptRow. `where` names the row in error messages."""
    where = where or f"row {index}"
    if format == "verl" and "prompt" in record:
        messages = _messages(_field(record, "prompt", where), where)
        reward_model = _field(record, "reward_model", where)
        if not isinstance(reward_model, dict):
            raise DataError(f"{where}: field 'reward_model' must be an object")
        truth = _text(_field(reward_model, "ground_truth", where), "reward_model.ground_truth", where)
        if prompt_template is not None:
            last_user = max(i for i, m in enumerate(messages) if m["role"] == "user")
            messages[last_user] = {
                "role": "user",
                "content": apply_template(prompt_template, messages[last_user]["content"]),
            }
        return PromptRow(_row_id(record, index), messages, truth)
    if format == "verl":  # NeMo's problem/expected_answer rows
        question = _text(_field(record, "problem", where), "problem", where)
        truth = _text(_field(record, "expected_answer", where), "expected_answer", where)
    elif format == "gsm8k":
        question = _text(_field(record, "question", where), "question", where)
        solution = _text(_field(record, "answer", where), "answer", where)
        try:
            truth = gsm8k_final_answer(solution)
        except ValueError as e:
            raise DataError(f"{where}: field 'answer' {e}") from None
    elif format == "math":
        question = _text(_field(record, "problem", where), "problem", where)
        if "answer" in record or "solution" not in record:
            truth = _text(_field(record, "answer", where), "answer", where)
        else:  # Hendrycks MATH: the answer is the solution's last \boxed{...}
            truth = _last_boxed(_text(record["solution"], "solution", where), where)
    else:
        raise DataError(f"format must be one of {', '.join(FORMATS)}, got {format!r}")
    content = apply_template(prompt_template, question)
    return PromptRow(_row_id(record, index), [{"role": "user", "content": content}], truth)


def _last_boxed(solution: str, where: str) -> str:
    start = solution.rfind("\\boxed{")
    if start < 0:
        raise DataError(f"{where}: field 'solution' has no \\boxed{{}} answer and there is no 'answer'")
    depth, begin = 0, start + len("\\boxed{")
    for i in range(begin, len(solution)):
        depth += {"{": 1, "}": -1}.get(solution[i], 0)
        if depth < 0:
            return solution[begin:i]
    raise DataError(f"{where}: field 'solution' has an unclosed \\boxed{{")


def load_prompts(
    path: str | Path | Sequence[Path],
    format: RowFormat = "auto",
    prompt_template: str | None = None,
    limit: int | None = None,
) -> list[PromptRow]:
    """Read a data file into PromptRows (at most `limit` of them, from the start)."""
    if format not in FORMATS:
        raise DataError(f"format must be one of {', '.join(FORMATS)}, got {format!r}")
    if limit is not None and limit < 1:
        raise DataError(f"limit must be >= 1, got {limit}")
    if prompt_template is not None:
        apply_template(prompt_template, "")  # fail early on a broken template
    paths = [Path(path)] if isinstance(path, str | Path) else list(path)
    records = [record for file in paths for record in read_records(file)]
    path = paths[0] if len(paths) == 1 else f"{paths[0].parent} ({len(paths)} files)"
    if not records:
        raise DataError(f"data file {str(path)!r} has no rows")
    if limit is not None:
        records = records[:limit]
    row_format = detect_format(records[0]) if format == "auto" else format
    rows: list[PromptRow] = []
    seen: dict[str, int] = {}
    for index, record in enumerate(records):
        row = parse_row(record, index, row_format, prompt_template, where=f"{path}: row {index}")
        if row.id in seen:
            raise DataError(f"{path}: row {index} has id {row.id!r}, the same as row {seen[row.id]}")
        seen[row.id] = index
        rows.append(row)
    return rows


def _source(file: str | None, dataset_name: str | None) -> str | list[Path] | None:
    if dataset_name is None:
        return file
    from dapo.datasets import dataset_files

    try:
        return dataset_files(dataset_name)
    except FileNotFoundError as exc:
        raise DataError(str(exc)) from None


def load_from_config(config: DataConfig, validation: bool = False, seed: int = 0) -> list[PromptRow]:
    """The training (or, with `validation=True`, the held-out) prompts that `config` names.

    Validation is capped at `config.max_val_samples`; with no validation set it is empty. With
    `split_validation_size`, that fraction of the training prompts (chosen by `seed`) is the validation
    set and is left out of training.
    """
    if config.split_validation_size > 0:
        source = _source(config.train_file, config.dataset_name)
        assert source is not None
        rows = load_prompts(source, config.format, config.prompt_template)
        order = list(range(len(rows)))
        random.Random(f"dapo.split:{seed}").shuffle(order)
        num_val = max(1, round(len(rows) * config.split_validation_size))
        held_out = set(order[:num_val])
        if validation:
            return [rows[i] for i in sorted(held_out)][: config.max_val_samples]
        return [row for i, row in enumerate(rows) if i not in held_out]
    if validation:
        source = _source(config.validation_file, config.validation_dataset_name)
        if source is None:
            return []
        return load_prompts(source, config.format, config.prompt_template, limit=config.max_val_samples)
    train = _source(config.train_file, config.dataset_name)
    assert train is not None
    return load_prompts(train, config.format, config.prompt_template)


class PromptCursor:
    """Deterministic, resumable walk over prompts: epoch after epoch, reshuffled each epoch if asked.

    The order of epoch e depends only on (seed, e), so `from_state(rows, cursor.state())` continues
    with exactly the rows the original cursor would have returned next.
    """

    def __init__(self, rows: Sequence[PromptRow], seed: int = 0, shuffle: bool = True) -> None:
        if not rows:
            raise DataError("PromptCursor needs at least one row")
        self.rows = list(rows)
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0
        self.position = 0
        self._order = self._epoch_order(0)

    def _epoch_order(self, epoch: int) -> list[int]:
        order = list(range(len(self.rows)))
        if self.shuffle:
            random.Random(f"dapo.PromptCursor:{self.seed}:{epoch}").shuffle(order)
        return order

    def take(self, n: int) -> list[PromptRow]:
        """The next `n` rows; crosses into the next epoch (with its own order) when one runs out."""
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        out: list[PromptRow] = []
        while len(out) < n:
            if self.position == len(self._order):
                self.epoch += 1
                self.position = 0
                self._order = self._epoch_order(self.epoch)
            count = min(n - len(out), len(self._order) - self.position)
            out.extend(self.rows[i] for i in self._order[self.position : self.position + count])
            self.position += count
        return out

    def state(self) -> dict[str, Any]:
        """What to persist to resume: epoch and position, plus the settings they depend on."""
        return {
            "epoch": self.epoch,
            "position": self.position,
            "seed": self.seed,
            "shuffle": self.shuffle,
            "num_rows": len(self.rows),
        }

    @classmethod
    def from_state(cls, rows: Sequence[PromptRow], state: dict[str, Any]) -> PromptCursor:
        """A cursor over `rows` positioned where `state` (from `state()`) says."""
        for key in ("epoch", "position", "seed", "shuffle"):
            if key not in state:
                raise DataError(f"cursor state lacks field '{key}'")
        num_rows = state.get("num_rows", len(rows))
        if num_rows != len(rows):
            raise DataError(
                f"cursor state was saved over {num_rows} rows but the data now has {len(rows)}: "
                "the data file changed"
            )
        epoch, position = int(state["epoch"]), int(state["position"])
        if epoch < 0 or not 0 <= position <= len(rows):
            raise DataError(
                f"cursor state out of range: epoch={epoch}, position={position}, rows={len(rows)}"
            )
        cursor = cls(rows, seed=int(state["seed"]), shuffle=bool(state["shuffle"]))
        cursor.epoch, cursor.position = epoch, position
        cursor._order = cursor._epoch_order(epoch)
        return cursor
