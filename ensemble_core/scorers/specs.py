"""Scorer configurations (the items of ``aggregation_params.scorers``), validated like methods.

Each item names its ``type``; unknown types or fields fail validation with the valid names.
Scores of different scorers live on different scales, so the engine normalises each scorer's
scores within a round (``normalization``) before adding them with their ``weight``.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field


class _ScorerSpec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    weight: float = Field(1.0, ge=0.0, description="weight of this scorer's normalised score")


class LikelihoodScorerSpec(_ScorerSpec):
    """Mean log-probability of the candidate under scorer models (default: the round's members)."""

    type: Literal["likelihood"] = "likelihood"
    models: list[str] | None = Field(
        None,
        description="member names, or model paths loaded as extra scorers; None: every selected member",
    )
    include_own: bool = Field(
        False, description="let a model score its own candidate (free: logprobs from decoding)"
    )


class RewardModelScorerSpec(_ScorerSpec):
    """Sequence-classification reward model (one logit) over the conversation plus the candidate."""

    type: Literal["reward_model"] = "reward_model"
    path: str
    device: str = "cpu"
    engine_options: dict[str, object] = Field(default_factory=dict)


class ProcessRewardScorerSpec(_ScorerSpec):
    """Process reward model (Qwen2.5-Math-PRM style): good-class probability at step separators."""

    type: Literal["prm"] = "prm"
    path: str
    device: str = "cpu"
    step_separator: str = Field("<extra_0>", description="token placed after every step")
    good_label_index: int = Field(1, ge=0, description="index of the 'good step' class")
    step_split: Literal["line", "segment"] = Field(
        "line", description="split the candidate into steps at newlines, or keep it as one step"
    )
    engine_options: dict[str, object] = Field(default_factory=dict)


class EmbeddingScorerSpec(_ScorerSpec):
    """Cosine similarity of sentence embeddings (default encoder: the bundled MiniLM)."""

    type: Literal["embedding"] = "embedding"
    path: str = "bundled:minilm"
    device: str = "cpu"
    mode: Literal["relevance", "agreement"] = Field(
        "relevance",
        description="relevance: similarity to the user's prompt; agreement: mean similarity to the other candidates",
    )


class RemoteScorerSpec(_ScorerSpec):
    """An HTTP endpoint: POST {messages, accepted_text, candidates, authors} -> {"scores": [...]}."""

    type: Literal["remote"] = "remote"
    url: str
    timeout_s: float = Field(10.0, gt=0)
    retries: int = Field(2, ge=0)
    headers: dict[str, str] = Field(default_factory=dict)


ScorerSpec = Annotated[
    LikelihoodScorerSpec
    | RewardModelScorerSpec
    | ProcessRewardScorerSpec
    | EmbeddingScorerSpec
    | RemoteScorerSpec,
    Field(discriminator="type"),
]

Normalization = Literal["zscore", "minmax", "rank", "none"]
