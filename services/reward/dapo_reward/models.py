"""REST request and response models of `POST /v1/score` (same meaning as the gRPC `Score`)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from dapo.config.schema import MathVerifyConfig
from dapo.records import VerifierName
from dapo_reward.scoring import MAX_ITEMS


class ScoreItemModel(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(max_length=1000)
    response: str
    ground_truth: str


class ScoreRequestModel(BaseModel):
    model_config = ConfigDict(extra="forbid")

    verifier: VerifierName = "math_verify"
    binary: bool = False
    items: list[ScoreItemModel] = Field(max_length=MAX_ITEMS)
    math_verify: MathVerifyConfig | None = None
    """Grading options of verifier math_verify; the fields given override the service's defaults."""


class ScoreResultModel(BaseModel):
    id: str
    score: float
    correct: bool
    extracted: str
    error: Literal["", "timeout", "too_large", "unparsable_gold", "crash"]


class ScoreResponseModel(BaseModel):
    results: list[ScoreResultModel]
