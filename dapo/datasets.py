"""Named math datasets (`data.dataset_name`, NeMo RL's names), read from local copies, never downloaded.

A name is looked up in `$DAPO_DATASETS_DIR/<name>/` (default `data/datasets/<name>/`: the JSONL or
Parquet files as published, e.g. a `git clone` of the hub repository), then in the local Hugging Face
cache (`datasets--<org>--<name>`, as `huggingface-cli download --repo-type dataset` leaves it). Files whose
path names the split (`train`, `test`) are taken when there are any, else every file. Rows are read in
the formats of dapo.data: verl's (DAPO-Math-17k, AIME-2024), NeMo's problem/expected_answer
(OpenMathInstruct-2), GSM8K's, MATH's (an `answer`, or the last `\\boxed{}` of the `solution`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from dapo.hub import cached_snapshot


@dataclass(frozen=True)
class Dataset:
    repo_id: str
    split: str


DATASETS: dict[str, Dataset] = {
    "DAPOMath17K": Dataset("BytedTsinghua-SIA/DAPO-Math-17k", "train"),
    "DAPOMathAIME2024": Dataset("BytedTsinghua-SIA/AIME-2024", "train"),
    "OpenMathInstruct-2": Dataset("nvidia/OpenMathInstruct-2", "train"),
    "GSM8K": Dataset("openai/gsm8k", "train"),
    "GSM8K-test": Dataset("openai/gsm8k", "test"),
    "MATH": Dataset("EleutherAI/hendrycks_math", "train"),
    "MATH-500": Dataset("HuggingFaceH4/MATH-500", "test"),
}
ALIASES = {"DAPO-Math-17k": "DAPOMath17K", "AIME-2024": "DAPOMathAIME2024", "gsm8k": "GSM8K"}
SUFFIXES = (".jsonl", ".json", ".parquet")


def datasets_dir() -> Path:
    return Path(os.environ.get("DAPO_DATASETS_DIR", "data/datasets"))


def _data_files(root: Path, split: str) -> list[Path]:
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES)
    named = [p for p in files if split in p.relative_to(root).as_posix().lower()]
    return named or files


def dataset_files(name: str) -> list[Path]:
    """The local files of dataset `name`; FileNotFoundError naming where it looked and how to provide it."""
    canonical = ALIASES.get(name, name)
    if canonical not in DATASETS:
        known = ", ".join(sorted([*DATASETS, *ALIASES]))
        raise FileNotFoundError(f"data.dataset_name {name!r} is not a known dataset; known: {known}")
    spec = DATASETS[canonical]
    places = [datasets_dir() / name, datasets_dir() / canonical]
    snapshot = cached_snapshot(spec.repo_id, kind="dataset")
    if snapshot is not None:
        places.append(snapshot)
    for place in places:
        if place.is_dir() and (files := _data_files(place, spec.split)):
            return files
    raise FileNotFoundError(
        f"data.dataset_name {name!r}: no local copy in {', '.join(str(p) for p in places[:2])} or the Hugging "
        f"Face cache (datasets--{spec.repo_id.replace('/', '--')}); nothing is downloaded. Provide it with "
        f"`huggingface-cli download --repo-type dataset {spec.repo_id}` on a machine with hub access (copy the "
        f"cache here or set HF_HOME), put its files in {places[1]}, or set data.train_file"
    )
