"""Bodies of the guide's ensemble endpoints."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from ensemble_core.spec import ModelSpec


class InferenceRequest(BaseModel):
    """``POST /v1/ensemble/inference`` (the guide's body)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"instruction": "Answer briefly.", "input": "What is 2+2?", "max_tokens": 8}]
        },
    )

    instruction: str | None = Field(default=None, description="system prompt")
    input: str = Field(description="the user's message")
    output: str | None = Field(default=None, description="ignored; accepted for dataset compatibility")
    ensemble_config: dict[str, Any] | None = None
    max_rounds: int | None = Field(default=None, ge=1)
    score_threshold: float | None = None
    max_tokens: int = Field(default=256, ge=1)
    temperature: float | None = Field(default=None, ge=0)
    top_p: float | None = Field(default=None, gt=0, le=1)
    seed: int | None = None
    stop: list[str] | str | None = None
    timeout: float | None = Field(default=None, description="seconds to wait before answering 504 (capped)")
    deadline_s: float | None = Field(
        default=None, description="seconds the job may run; past it: deadline_exceeded, partial answer kept"
    )
    webhook_url: str | None = None


class ConfigUpdate(BaseModel):
    """``POST /v1/ensemble/config``: a partial update that becomes version n+1."""

    model_config = ConfigDict(extra="forbid")

    model_specs: list[ModelSpec] | None = None
    default_ensemble_config: dict[str, Any] | None = None
    scorers: dict[str, dict[str, Any]] | None = Field(
        default=None, description="named scorers (replace the current ones); requests use them by name"
    )
    fusers: dict[str, ModelSpec] | None = Field(
        default=None, description="named fuser models (replace the current ones); `fuser: NAME`"
    )
    note: str | None = None
