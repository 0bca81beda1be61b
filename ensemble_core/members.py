"""Members: the configured models of one job, with unique names and resolved sampling."""

from __future__ import annotations

from dataclasses import dataclass

from ensemble_core.ports import Sampling
from ensemble_core.spec import GenerationRequest, ModelSpec

DEFAULT_TEMPERATURE = 0.7
DEFAULT_TOP_P = 1.0


@dataclass(frozen=True)
class Member:
    index: int
    name: str
    spec: ModelSpec
    load_key: str
    sampling: Sampling


def build_members(specs: list[ModelSpec], request: GenerationRequest) -> list[Member]:
    """One member per spec. A member's own temperature/top_p win over the request's (that is
    what makes two members on one set of weights differ); the request's apply to the rest."""
    members: list[Member] = []
    seen: dict[str, int] = {}
    for i, spec in enumerate(specs):
        base = spec.display_name
        seen[base] = seen.get(base, 0) + 1
        name = base if seen[base] == 1 else f"{base}#{seen[base]}"
        temperature = spec.temperature
        if temperature is None:
            temperature = request.temperature if request.temperature is not None else DEFAULT_TEMPERATURE
        top_p = spec.top_p if spec.top_p is not None else (request.top_p or DEFAULT_TOP_P)
        members.append(Member(i, name, spec, spec.load_key(), Sampling(temperature, top_p)))
    return members
