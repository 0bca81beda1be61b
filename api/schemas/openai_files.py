"""Wire bodies of OpenAI's Files and Batches API (OpenAI's names kept)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from api.schemas.openai import ChatCompletionRequest, CompletionRequest, PromptFields

# the endpoints a batch line may call, with the request body each one takes
BATCH_ENDPOINTS: dict[str, type[PromptFields]] = {
    "/v1/chat/completions": ChatCompletionRequest,
    "/v1/completions": CompletionRequest,
}


class BatchInputLine(BaseModel):
    """One line of a batch input file."""

    model_config = ConfigDict(extra="forbid")

    custom_id: str = Field(min_length=1, max_length=512)
    method: Literal["POST"]
    url: str
    body: dict[str, Any]


class BatchCreateRequest(BaseModel):
    """``POST /v1/batches``."""

    model_config = ConfigDict(extra="allow")  # e.g. output_expires_after: accepted, not used

    input_file_id: str
    endpoint: str
    completion_window: Literal["24h"] = "24h"
    metadata: dict[str, str] | None = Field(default=None, description="up to 16 key-value pairs")
