"""Load a run config from YAML (or a dict) plus dotted `key=value` overrides, with clear errors."""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from dapo.config.schema import RunConfig

_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


class ConfigError(ValueError):
    """A config that cannot be used; the message names the key and what was expected.

    `errors` holds one (key path, message) pair per problem, for APIs that report them by field.
    """

    def __init__(self, message: str, errors: list[tuple[tuple[str | int, ...], str]] | None = None) -> None:
        super().__init__(message)
        no_key: tuple[str | int, ...] = ()
        self.errors = errors if errors is not None else [(no_key, message)]


def _valid_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    keys = []
    for name, field in model.model_fields.items():
        path = f"{prefix}{name}"
        keys.append(path)
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            keys.extend(_valid_keys(annotation, f"{path}."))
    return keys


def _describe(error: Mapping[str, Any]) -> str:
    path = ".".join(str(part) for part in error["loc"])
    if error["type"] == "extra_forbidden":
        candidates = _valid_keys(RunConfig)
        close = difflib.get_close_matches(path, candidates, n=1, cutoff=0.6)
        if not close:
            # Compare the last component within the same section, e.g. grpo.clip_max -> grpo.ratio_clip_max.
            section, _, leaf = path.rpartition(".")
            siblings = [k for k in candidates if k.rpartition(".")[0] == section]
            leaves = difflib.get_close_matches(
                leaf, [k.rpartition(".")[2] for k in siblings], n=1, cutoff=0.5
            )
            close = [f"{section}.{leaves[0]}" if section else leaves[0]] if leaves else []
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        return f"unknown key '{path}'{hint}"
    message = str(error["msg"]).removeprefix("Value error, ")
    if not path or error["type"] == "value_error":
        return message  # cross-field messages already name their fields
    return f"{path}: {message} (got {error.get('input')!r})"


def parse_config(data: Mapping[str, Any] | None) -> RunConfig:
    """Validate a config dict; raise ConfigError with one line per problem."""
    if data is not None and not isinstance(data, Mapping):
        raise ConfigError(f"a run config must be a mapping of sections, got {type(data).__name__}")
    try:
        return RunConfig.model_validate(dict(data or {}))
    except ValidationError as exc:
        errors = [(tuple(e["loc"]), _describe(e)) for e in exc.errors()]
        raise ConfigError("invalid run config:\n  " + "\n  ".join(m for _, m in errors), errors) from None


def _parse_value(text: str) -> Any:
    try:
        value = yaml.safe_load(text) if text != "" else ""
    except yaml.YAMLError:
        return text
    if isinstance(value, str) and _NUMBER.fullmatch(value):
        return float(value)  # YAML 1.1 reads 3e-5 (no dot) as a string; a number is meant
    return value


def apply_overrides(data: Mapping[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Return a copy of `data` with each `a.b.c=value` override set (values parsed as YAML scalars)."""
    result: dict[str, Any] = _deep_copy(data)
    for override in overrides:
        key, sep, raw = override.partition("=")
        key = key.strip().lstrip("+")
        if not sep or not key or any(not part for part in key.split(".")):
            raise ConfigError(f"override {override!r} must look like section.key=value")
        node = result
        parts = key.split(".")
        for depth, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(
                    f"override {override!r}: '{'.'.join(parts[: depth + 1])}' is a value, not a section"
                )
            node = child
        node[parts[-1]] = _parse_value(raw)
    return result


def _deep_copy(data: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, Mapping) else v for k, v in data.items()}


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; ConfigError when the file is missing or not a mapping."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {str(path)!r} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping of sections")
    return data


def load_config(path: str | Path | None = None, overrides: Iterable[str] = ()) -> RunConfig:
    """Load YAML from `path` (or start from defaults), apply overrides, validate."""
    data = read_yaml(path) if path is not None else {}
    return parse_config(apply_overrides(data, overrides))
