"""What each service's settings model shares: loading from a file with flags over it, and writing one.

Every service (`dapo controller|reward|rollout|trainer`) has one pydantic settings model. Its fields that
the run config also has are the run config's own fields (`config_field`), so a default or a bound is
written once. A settings file is JSON or YAML holding the model's fields; `dapo run` writes one per
service and starts it with `--settings PATH`. Flags given next to `--settings` win over the file.
Secrets (Redis URLs with passwords, tokens) are never written: they reach a service through its
environment.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from dapo.config.loader import ConfigError, describe_error, read_yaml


class ServiceSettings(BaseModel):
    """Base of the services' settings: unknown keys are errors, each field documented."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)
    secret_fields: ClassVar[frozenset[str]] = frozenset()
    """Fields never written to a settings file (they come from the environment)."""


Settings = TypeVar("Settings", bound=BaseModel)


def config_field(model: type[BaseModel], name: str) -> Any:
    """The run config's field `name` of section `model` (default, bounds, docstring), for a settings model."""
    return copy.copy(model.model_fields[name])


def resolve_settings(
    model: type[Settings],
    settings_path: str | Path | None = None,
    flags: Mapping[str, Any] | None = None,
    fallbacks: Mapping[str, Any] | None = None,
) -> Settings:
    """`model` from the file at `settings_path` (if any) with the flags that were given (not None) over it;
    `fallbacks` (not None: environment variables) fill what neither gives.

    Raises ConfigError naming the field (and the file) that is wrong.
    """
    data = {k: v for k, v in (fallbacks or {}).items() if v is not None}
    if settings_path is not None:
        data.update(read_yaml(settings_path))
    data.update({k: v for k, v in (flags or {}).items() if v is not None})
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        where = f"settings file {str(settings_path)!r}" if settings_path is not None else "settings"
        problems = [
            f"{'.'.join(str(part) for part in error['loc'])}: required"
            if error["type"] == "missing"
            else describe_error(error, model)
            for error in exc.errors()
        ]
        raise ConfigError(f"{where}: " + "; ".join(problems)) from None


def write_settings(settings: ServiceSettings, path: Path) -> Path:
    """Write `settings` as JSON (without its secret fields), readable by the owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = settings.model_dump(mode="json", exclude=set(settings.secret_fields))
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as file:
        json.dump(data, file, indent=2, sort_keys=True)
        file.write("\n")
    return path
