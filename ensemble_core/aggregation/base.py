"""What every segment-level aggregator shares: its parameters, the round it sees, what it returns.

A round: the aggregator picks which members write (``ctx.generate``), optionally scores their
candidates (``ctx.score``), and returns the winner. The engine owns everything around it:
stopping (EOS, ``max_tokens``, ``max_rounds``, stop strings, repeats), usage, trace, events.
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Protocol

from pydantic import Field

from ensemble_core.members import Member
from ensemble_core.ports import Candidate, SegmentLimits
from ensemble_core.registry import MethodParams


class SegmentParams(MethodParams):
    """Parameters every segment-level method accepts (in ``aggregation_params``)."""

    segment_tokens: int = Field(32, ge=1, description="most tokens in one segment")
    segment_boundary: Literal["sentence", "line", "none"] = Field(
        "sentence", description="where a segment ends early: sentence end or newline, newline only, or never"
    )
    min_segment_tokens: int = Field(1, ge=1, description="tokens before a boundary may end a segment")
    max_repeat: int = Field(
        3, ge=1, description="stop when the same segment would be accepted this many times in a row"
    )
    loop_max_ngram: int = Field(
        12, ge=0, description="longest word n-gram checked for a degenerate loop (0 turns the check off)"
    )
    loop_min_repeats: int = Field(
        4, ge=2, description="stop when the answer ends with one n-gram repeated this many times"
    )
    ignore_eos: bool = Field(
        False, description="benchmarks only: keep decoding past EOS so every run does the same work"
    )
    reuse_cache: bool = Field(True, description="keep each model's KV cache across rounds (False: naive)")
    concurrent: bool = Field(True, description="run the models of a round concurrently")
    batch_same_model: bool = Field(
        True, description="decode candidates of members sharing weights in one batch"
    )


@dataclass
class CandidateRecord:
    """One member's candidate in one round, with its scores once scored."""

    member: Member
    candidate: Candidate
    attempt: int = 0
    score: float | None = None
    raw_scores: dict[str, float] = field(default_factory=dict)
    copied: float = 0.0  # share of its words copied from the prompt / accepted text (copy guard)
    vetoed: bool = False  # the copy guard ranked it last

    def to_trace(self) -> dict[str, Any]:
        row: dict[str, Any] = {
            "model": self.member.name,
            "text": self.candidate.text,
            "tokens": self.candidate.num_tokens,
            "finish": self.candidate.finish,
            "mean_logprob": round(self.candidate.mean_logprob, 4),
        }
        if self.attempt:
            row["attempt"] = self.attempt
        if self.score is not None:
            row["score"] = round(self.score, 4)
        if self.raw_scores:
            row["raw_scores"] = {k: round(v, 4) for k, v in self.raw_scores.items()}
        if self.copied:
            row["copied"] = round(self.copied, 4)
        if self.vetoed:
            row["vetoed"] = True
        return row


@dataclass
class RoundOutcome:
    winner: CandidateRecord
    candidates: list[CandidateRecord]
    notes: dict[str, Any] = field(default_factory=dict)


class RoundContext(Protocol):
    """What the engine offers an aggregator during one round."""

    round: int
    members: list[Member]
    accepted_text: str
    generated_tokens: int
    max_tokens: int  # the request's budget of generated tokens for the whole answer
    history: list[str]
    limits: SegmentLimits
    rng: random.Random

    def generate(
        self, members: list[Member], limits: SegmentLimits | None = None, attempt: int = 0
    ) -> list[CandidateRecord]: ...

    def score(self, records: list[CandidateRecord]) -> None:
        """Fill ``score`` (combined, normalised within the round) and ``raw_scores``."""
        ...


class SegmentAggregator(ABC):
    """Base of every segment-level (``aggregation_level: sentence``) method."""

    Params: ClassVar[type[SegmentParams]] = SegmentParams
    uses_scorers: ClassVar[bool] = False
    # each round has one writer whose candidate wins whatever it writes (round_robin, random,
    # progressive): its text is streamed token by token as it is decoded
    writes_alone: ClassVar[bool] = False

    def __init__(self, params: SegmentParams, rng: random.Random) -> None:
        self.params = params
        self.rng = rng

    @abstractmethod
    def run_round(self, ctx: RoundContext) -> RoundOutcome: ...

    def trace_params(self) -> dict[str, Any]:
        return self.params.model_dump(mode="json")
