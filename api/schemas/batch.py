"""Body of ``POST /v1/ensemble/batch`` (the guide's form)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class BatchExample(BaseModel):
    """One item: its own instruction, input and (optional) ensemble config."""

    model_config = ConfigDict(extra="forbid")

    instruction: str | None = None
    input: str
    output: str | None = Field(default=None, description="ignored; accepted for dataset compatibility")
    ensemble_config: dict[str, Any] | None = None
    max_tokens: int | None = Field(default=None, ge=1)


class BatchRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"examples": [{"input": "What is 2+2?"}, {"input": "Name a colour."}], "max_tokens": 8}
            ]
        },
    )

    examples: list[BatchExample] = Field(min_length=1)
    batch_size: int | None = Field(
        default=None,
        ge=1,
        description="accepted for compatibility with the guide; every item is its own job, a model "
        "worker runs ENSEMBLEHUB_CONCURRENCY of them at once and decodes them in one batch",
    )
    ensemble_config: dict[str, Any] | None = Field(
        default=None, description="defaults for every item; an item's own ensemble_config wins"
    )
    max_tokens: int = Field(default=256, ge=1)
    max_rounds: int | None = Field(default=None, ge=1)
    score_threshold: float | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    seed: int | None = None
    webhook_url: str | None = Field(default=None, description="POSTed a signed event when the batch ends")
    metadata: dict[str, str] | None = None
