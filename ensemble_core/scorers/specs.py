"""Scorer configurations (the items of ``aggregation_params.scorers``), validated like methods.

Each item names its ``type``; unknown types or fields fail validation with the valid names.
Each scorer reports raw scores in a documented unit (log-likelihoods and PMI in nats per byte
of the candidate's UTF-8 text, agreement in [0, 1], confidence in nats); the combination
centres each scorer's scores within a round (``normalization: center``, the default), keeping
its scale, and adds them with their ``weight``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from ensemble_core.errors import ConfigError

LikelihoodUnit = Literal["byte", "char", "token"]


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
    include_others: bool = Field(
        True,
        description="let a model score candidates of other models (False with include_own: each "
        "candidate by its author only, free)",
    )
    unit: LikelihoodUnit = Field(
        "byte",
        description="byte: total log-probability per UTF-8 byte (one scale across tokenizers); "
        "char: per character; token: mean per token (the old, tokenizer-dependent number)",
    )


class PmiScorerSpec(_ScorerSpec):
    """Pointwise mutual information: log p(candidate | question) - log p(candidate | neutral prompt)."""

    type: Literal["pmi"] = "pmi"
    models: list[str] | None = Field(
        None, description="member names or model paths; None: every selected member (authors included)"
    )
    neutral_prompt: str = Field(
        "Answer:", description="the user message that replaces the question for the unconditional term"
    )
    neutral: Literal["prompt", "question"] = Field(
        "prompt",
        description="prompt: the neutral message replaces the whole prompt; question: only the last "
        "user message (few-shot turns and system prompt kept, so the answer format's prior cancels)",
    )
    unit: LikelihoodUnit = Field("byte", description="byte, char or token (as for likelihood)")


class NoveltyScorerSpec(_ScorerSpec):
    """1 when the candidate has a word the question does not (an answer, not a repeat), else 0."""

    type: Literal["novelty"] = "novelty"


class AgreementScorerSpec(_ScorerSpec):
    """Agreement with the other candidates: same extracted answer, else word overlap (F1)."""

    type: Literal["agreement"] = "agreement"
    mode: Literal["auto", "answer", "words"] = Field(
        "auto",
        description="answer: 1 when the extracted final answers match; words: word-overlap F1; "
        "auto: answers where both have one, else words",
    )
    other_authors_only: bool = Field(
        False, description="count only candidates of other members (not the author's own samples)"
    )


class ConfidenceScorerSpec(_ScorerSpec):
    """DeepConf trace confidence of the author's own decoding (free: no forward pass)."""

    type: Literal["confidence"] = "confidence"
    window: int = Field(
        16, ge=1, description="tokens per sliding window; the trace confidence is the lowest window mean"
    )
    reduce: Literal["lowest_window", "mean", "tail"] = Field(
        "lowest_window",
        description="lowest_window: weakest stretch (DeepConf lowest group); mean: all tokens; "
        "tail: the last window",
    )


class SelfCertaintyScorerSpec(_ScorerSpec):
    """Self-certainty: mean KL(uniform || p) over the author's own decoding steps (free)."""

    type: Literal["self_certainty"] = "self_certainty"


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
    | PmiScorerSpec
    | AgreementScorerSpec
    | NoveltyScorerSpec
    | ConfidenceScorerSpec
    | SelfCertaintyScorerSpec
    | RewardModelScorerSpec
    | ProcessRewardScorerSpec
    | EmbeddingScorerSpec
    | RemoteScorerSpec,
    Field(discriminator="type"),
]

# center (default): minus the round mean, scale kept; zscore/minmax/rank erase the scale (a gap of
# 0.01 and of 10 both become +/-1 with two candidates) and are kept for old configs
Normalization = Literal["center", "zscore", "minmax", "rank", "none"]

_SPEC_LIST = TypeAdapter(list[ScorerSpec])
_SPEC_TYPES: dict[str, type[BaseModel]] = {
    "likelihood": LikelihoodScorerSpec,
    "pmi": PmiScorerSpec,
    "agreement": AgreementScorerSpec,
    "novelty": NoveltyScorerSpec,
    "confidence": ConfidenceScorerSpec,
    "self_certainty": SelfCertaintyScorerSpec,
    "reward_model": RewardModelScorerSpec,
    "prm": ProcessRewardScorerSpec,
    "embedding": EmbeddingScorerSpec,
    "remote": RemoteScorerSpec,
}


def parse_scorer_specs(raw: list[Any]) -> list[Any]:
    """Validate scorer configs; errors name the valid types or fields."""
    for i, item in enumerate(raw):
        if not isinstance(item, dict) or item.get("type") not in _SPEC_TYPES:
            got = item.get("type") if isinstance(item, dict) else item
            raise ConfigError(
                f"scorers[{i}]: unknown scorer type {got!r}; valid types: {', '.join(_SPEC_TYPES)}"
            )
        fields = _SPEC_TYPES[item["type"]].model_fields
        unknown = sorted(set(item) - set(fields))
        if unknown:
            raise ConfigError(
                f"scorers[{i}] ({item['type']}): unknown field(s) {unknown}; valid: {', '.join(sorted(fields))}"
            )
    try:
        return list(_SPEC_LIST.validate_python(raw))
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"invalid scorers: {problems}") from exc
