"""What every model-selection method shares: the context it gets and what it returns.

Selection runs once per job, before generation, and decides which members take part.
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from ensemble_core.members import Member
from ensemble_core.ports import GenerationSession, Scorer
from ensemble_core.registry import MethodParams
from ensemble_core.spec import GenerationRequest


class SelectionContext(Protocol):
    members: list[Member]
    request: GenerationRequest

    def session(self, member: Member) -> GenerationSession:
        """The job's session on the member's weights (shared by members on the same weights)."""
        ...

    def build_scorer(self, scorer_specs: list[Any]) -> Scorer:
        """A combined scorer for ``scorer_specs`` (the aggregation scorer config format)."""
        ...

    def record_discarded(self, member: Member, tokens: int) -> None:
        """Count tokens generated only to select (probes) as discarded."""
        ...


@dataclass
class SelectionOutcome:
    selected: list[Member]
    details: dict[str, Any] = field(default_factory=dict)


class Selector(ABC):
    Params: ClassVar[type[MethodParams]] = MethodParams

    def __init__(self, params: MethodParams, rng: random.Random) -> None:
        self.params = params
        self.rng = rng

    @abstractmethod
    def select(self, ctx: SelectionContext) -> SelectionOutcome: ...
