"""Request and response models of the controller's REST API."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from dapo.records import RunStatus


class RunRecord(BaseModel):
    """A run as the API shows it."""

    id: str
    name: str | None = None
    status: RunStatus
    step: int = 0
    policy_version: int = 0
    created_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    error: str | None = None
    stop_requested: bool = False
    config: dict[str, Any] = Field(default_factory=dict)
    latest_metrics: dict[str, Any] = Field(default_factory=dict)


class CreateRunRequest(BaseModel):
    """A new run: the config as JSON (`config`) or YAML text (`config_yaml`), plus dotted overrides."""

    model_config = ConfigDict(extra="forbid")

    config: dict[str, Any] | None = None
    config_yaml: str | None = Field(None, max_length=1_000_000)
    overrides: list[str] = Field(default_factory=list, max_length=1000)
    name: str | None = Field(None, max_length=200)


class ErrorItem(BaseModel):
    loc: list[str | int]
    msg: str
    type: str = "value_error"


class ValidationErrorResponse(BaseModel):
    detail: list[ErrorItem]
