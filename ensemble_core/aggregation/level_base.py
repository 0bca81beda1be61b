"""What token- and response-level aggregators share: the job they see and what they return.

A segment-level aggregator plays one round at a time inside the engine's round loop. Token and
response levels have no rounds: the aggregator runs the whole answer itself (a token loop, or
whole candidate answers and a vote) and returns a ``LevelOutcome``; the engine still owns
selection, sessions, usage totals and the result's trace and usage.
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from pydantic import Field

from ensemble_core.members import Member
from ensemble_core.pool import ModelPool
from ensemble_core.ports import Candidate, GenerationSession
from ensemble_core.registry import MethodParams
from ensemble_core.result import ModelUsage, SegmentEvent
from ensemble_core.spec import EnsembleConfig, GenerationRequest


class LevelParams(MethodParams):
    """Parameters every token- and response-level method accepts."""

    reuse_cache: bool = Field(True, description="keep each model's KV cache (False: naive re-prefill)")
    concurrent: bool = Field(True, description="run different models concurrently")


class LevelJob(Protocol):
    """What the engine's job offers a token- or response-level aggregator."""

    config: EnsembleConfig
    request: GenerationRequest
    pool: ModelPool
    members: list[Member]
    on_segment: Callable[[SegmentEvent], None] | None

    def session(self, member: Member) -> GenerationSession: ...

    def member_usage(self, name: str) -> ModelUsage: ...

    def record_discarded(self, member: Member, tokens: int) -> None: ...

    def stop_requested(self) -> bool:
        """True once the job is cancelled or past its deadline (cheap: no I/O)."""
        ...

    def run_parallel(self, tasks: list[Callable[[], Any]]) -> list[Any]: ...

    def build_scorer(self, scorer_specs: list[Any]) -> Any: ...


@dataclass
class LevelOutcome:
    """A whole answer of a token- or response-level method.

    ``trace`` takes the place of the segment level's rounds (response level: one round with
    every candidate); ``summary`` goes to ``trace.summary``.
    """

    text: str
    stop_reason: str
    generated_tokens: int
    trace: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    prompt_tokens: int = 0
    # (writer, candidate) when the answer is one model's text verbatim (for ``logprobs``)
    pieces: list[tuple[Member, Candidate]] = field(default_factory=list)


class LevelAggregator(ABC):
    """Base of every ``aggregation_level: token`` or ``response`` method."""

    Params: ClassVar[type[LevelParams]] = LevelParams
    level: ClassVar[str] = "response"

    def __init__(self, params: LevelParams, rng: random.Random) -> None:
        self.params = params
        self.rng = rng

    @abstractmethod
    def run(self, job: LevelJob, members: list[Member]) -> LevelOutcome: ...
