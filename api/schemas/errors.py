"""The error envelope every non-2xx answer has (OpenAI's shape), for the OpenAPI document."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class ErrorBody(BaseModel):
    model_config = ConfigDict(extra="allow")  # e.g. job_id of a 504

    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorEnvelope(BaseModel):
    error: ErrorBody = Field(description="what went wrong; `code` is stable, `message` is for people")
