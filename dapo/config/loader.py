"""Load a run config from YAML (or a dict) plus dotted `key=value` overrides, with clear errors.

As NVIDIA NeMo RL's loader does, a file may extend others with `defaults:` (a path or a list of paths,
relative to the file; the file's own keys win, lists are replaced), and values may interpolate others
with OmegaConf's `${path}` (also `${mul:a,b}` and the other NeMo resolvers). Overrides are applied before
interpolation, so `policy.max_total_sequence_length=1024` also moves every key that refers to it. NeMo's
own key names are mapped onto ours (`dapo.config.nemo`) before validation.
"""

from __future__ import annotations

import difflib
import re
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from dapo.config import nemo
from dapo.config.schema import ConfigWarning, RunConfig

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


def describe_error(error: Mapping[str, Any], model: type[BaseModel] = RunConfig) -> str:
    """One pydantic error of validating `model` as a message naming the key (and a near key, if unknown)."""
    path = ".".join(str(part) for part in error["loc"])
    if error["type"] == "extra_forbidden":
        candidates = _valid_keys(model)
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


def resolve_interpolations(data: Mapping[str, Any]) -> dict[str, Any]:
    """`${...}` values resolved with OmegaConf (a copy; data without any is returned as it is)."""
    if "${" not in repr(data):
        return dict(data)
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    register = getattr(OmegaConf, "register_resolver", None) or OmegaConf.register_new_resolver
    for name, resolver in nemo.RESOLVERS.items():
        register(name, resolver, replace=True)
    try:
        resolved = OmegaConf.to_container(OmegaConf.create(dict(data)), resolve=True)
    except OmegaConfBaseException as exc:
        raise ConfigError(f"cannot resolve an interpolation: {exc}".replace("\n", " ")) from None
    assert isinstance(resolved, dict)
    return {str(k): v for k, v in resolved.items()}


def parse_config(data: Mapping[str, Any] | None) -> RunConfig:
    """Resolve interpolations, map NeMo RL's keys, validate; raise ConfigError with one line per problem.

    NeMo keys for parts we do not have are dropped and named in one ConfigWarning.
    """
    if data is not None and not isinstance(data, Mapping):
        raise ConfigError(f"a run config must be a mapping of sections, got {type(data).__name__}")
    data = resolve_interpolations(data or {})
    data.pop("defaults", None)
    try:
        data, ignored = nemo.translate(data)
    except nemo.NemoKeyError as exc:
        raise ConfigError(str(exc)) from None
    if ignored:
        warnings.warn(
            "ignored NeMo RL keys (backends and settings this system does not have; they do not change "
            f"what is trained): {', '.join(ignored)}",
            ConfigWarning,
            stacklevel=2,
        )
    try:
        return RunConfig.model_validate(data)
    except ValidationError as exc:
        errors = [(tuple(e["loc"]), describe_error(e)) for e in exc.errors()]
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


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, reading `1e-8` (no dot) as a float as NeMo RL's OmegaConf loader does."""


def _construct_str_or_float(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> Any:
    text = loader.construct_scalar(node)
    return float(text) if node.style is None and nemo.is_float_literal(text) else text


_Loader.add_constructor("tag:yaml.org,2002:str", _construct_str_or_float)


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; ConfigError when the file is missing or not a mapping."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    try:
        data = yaml.load(path.read_text(), Loader=_Loader) or {}  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {str(path)!r} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping of sections")
    return data


def _merge(base: Mapping[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    """`top` over `base`, mappings merged key by key, anything else (lists too) replaced."""
    out = _deep_copy(base)
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = _deep_copy(value) if isinstance(value, Mapping) else value
    return out


def read_config_tree(path: str | Path, _chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read `path` with its `defaults:` chain merged under it (each parent relative to its child)."""
    path = Path(path).resolve()
    if path in _chain:
        raise ConfigError(f"defaults: {path} extends itself ({' -> '.join(str(p) for p in (*_chain, path))})")
    data = read_yaml(path)
    parents = data.pop("defaults", None)
    if parents is None:
        return data
    if isinstance(parents, str):
        parents = [parents]
    if not isinstance(parents, list) or not all(isinstance(p, str) for p in parents):
        raise ConfigError(f"{path}: defaults must be a file path or a list of them, got {parents!r}")
    base: dict[str, Any] = {}
    for parent in parents:
        parent_path = path.parent / parent
        if not parent_path.is_file():
            raise ConfigError(f"{path}: defaults names {parent!r}, but {parent_path} does not exist")
        base = _merge(base, read_config_tree(parent_path, (*_chain, path)))
    return _merge(base, data)


_CLIPS = ("ratio_clip_min", "ratio_clip_max", "ratio_clip_c")


def _drop_overridden_spellings(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """An override of a ratio clip under one spelling (grpo./loss_fn.) replaces the file's other one."""
    data = _deep_copy(data)
    for override in overrides:
        key = override.partition("=")[0].strip().lstrip("+")
        section, _, leaf = key.partition(".")
        if leaf in _CLIPS and section in ("grpo", "loss_fn"):
            other = data.get("loss_fn" if section == "grpo" else "grpo")
            if isinstance(other, dict):
                other.pop(leaf, None)
    return data


def load_config(path: str | Path | None = None, overrides: Iterable[str] = ()) -> RunConfig:
    """Load YAML from `path` and its `defaults:` (or start from defaults), apply overrides, validate."""
    overrides = list(overrides)
    data = read_config_tree(path) if path is not None else {}
    data = _drop_overridden_spellings(data, overrides)
    return parse_config(apply_overrides(data, overrides))
