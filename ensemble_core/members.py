"""Members: the configured models of one job, with unique names and resolved sampling, and the
request's decoding fields turned into what the backends take (``Sampling``, ``SegmentLimits``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ensemble_core.ports import Sampling, SegmentLimits
from ensemble_core.spec import GenerationRequest, ModelSpec, PromptStyle

DEFAULT_TEMPERATURE = 0.7
DEFAULT_TOP_P = 1.0


@dataclass(frozen=True)
class Member:
    index: int
    name: str
    spec: ModelSpec
    load_key: str
    sampling: Sampling
    style: PromptStyle = PromptStyle()

    @property
    def session_key(self) -> str:
        """Members share a session when they share weights and read the prompt alike."""
        style = self.style.key()
        return f"{self.load_key}/{style}" if style else self.load_key


def request_sampling(request: GenerationRequest, temperature: float, top_p: float) -> Sampling:
    """``Sampling`` with the given temperature/top-p and every other field from the request."""
    return Sampling(
        temperature=temperature,
        top_p=top_p,
        top_k=max(request.top_k, 0),
        min_p=request.min_p,
        repetition_penalty=request.repetition_penalty,
        presence_penalty=request.presence_penalty,
        frequency_penalty=request.frequency_penalty,
        logit_bias=tuple(sorted(request.logit_bias.items())),
    )


def segment_limits(request: GenerationRequest, *, generated: int = 0, **fields: Any) -> SegmentLimits:
    """``SegmentLimits`` for a segment that starts after ``generated`` tokens of the answer: the
    request's stop strings and token-level fields, plus the caller's ``fields`` (max_new_tokens,
    boundary...). A caller's ``ignore_eos`` (benchmarks) adds to the request's."""
    # a structured answer ends where its grammar does: EOS is never ignored then
    ignore_eos = (bool(fields.pop("ignore_eos", False)) or request.ignore_eos) and request.structured is None
    fields.setdefault("stop_strings", tuple(request.stop))
    return SegmentLimits(
        ignore_eos=ignore_eos,
        eos_after=max(0, request.min_tokens - generated),
        stop_token_ids=tuple(request.stop_token_ids),
        include_stop_str=request.include_stop_str_in_output,
        skip_special_tokens=request.skip_special_tokens,
        grammar=request.structured,
        top_logprobs=request.logprobs or 0,
        **fields,
    )


def build_members(specs: list[ModelSpec], request: GenerationRequest) -> list[Member]:
    """One member per spec. The request's temperature/top_p win; a member's own are its
    defaults (as a model's generation config is), then 0.7 / 1.0. So ``temperature: 0`` is
    greedy for every member, and members on one set of weights differ when the request
    leaves temperature out."""
    members: list[Member] = []
    seen: dict[str, int] = {}
    for i, spec in enumerate(specs):
        base = spec.display_name
        seen[base] = seen.get(base, 0) + 1
        name = base if seen[base] == 1 else f"{base}#{seen[base]}"
        temperature = _first(request.temperature, spec.temperature, DEFAULT_TEMPERATURE)
        top_p = _first(request.top_p, spec.top_p, DEFAULT_TOP_P)
        sampling = request_sampling(request, temperature, top_p)
        members.append(Member(i, name, spec, spec.load_key(), sampling, spec.prompt_style()))
    return members


def _first(*values: float | None) -> float:
    return next(v for v in values if v is not None)
