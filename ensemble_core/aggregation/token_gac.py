"""``gac`` (``aggregation_level: token``): average the models' next-token distributions.

Algorithm: at every step each selected model gives its full next-token distribution; the
distributions are mapped onto one union vocabulary (each token as the bytes it stands for, so
byte-level ``Ġ``/``Ċ`` and SentencePiece ``▁``/``<0xNN>`` spellings meet), averaged with the
member weights (``uniform``, or ``confidence``: weight times the member's top-1 probability),
and one token is chosen: the most probable at temperature 0, else sampled with the request's
temperature and top-p (without them, the leader's own sampling) from a per-job seeded ``torch.Generator``. Every model extends its own context with the chosen
bytes: its own token id when its vocabulary has them, else by re-tokenizing the answer text
and reusing the common prefix of its KV cache. With ``ensemble_steps: uncertain`` only steps
where the leader's top-1 probability is below ``uncertainty_threshold`` are ensembled; the
other models then skip those steps and catch up in one multi-token forward pass later.
The trace's ``aggregation.summary`` counts ensembled steps and how often the ensemble's token
differed from the leader's own most probable one.

Reference: Yu et al., "Breaking the Ceiling of the LLM Community by Treating Token Generation
as a Classification for Ensembling" (GaC, EMNLP Findings 2024), including its
"ensemble only uncertain tokens" variant; union-vocabulary averaging as in DeePEn/UniTE.
Parameters: see ``TokenLevelParams``. Engines: ``hf`` only (it needs full distributions).
Cost: every token, one decode forward pass per distinct model (members on the same weights
share it); with ``uncertain``, about one pass for the leader per token plus one catch-up pass
per other model per ensembled step. ``max_rounds`` does not apply (``max_tokens`` does).
Structured output: the grammar is compiled for the union vocabulary's byte keys and masks the
averaged distribution, so the chosen key keeps the answer valid (with a grammar every step is
ensembled: ``uncertain`` would pick from the leader's own vocabulary).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from ensemble_core.aggregation.level_base import LevelAggregator, LevelJob, LevelOutcome, LevelParams
from ensemble_core.errors import ConfigError
from ensemble_core.lazy_import import load_object
from ensemble_core.members import Member, request_sampling
from ensemble_core.ports import Sampling
from ensemble_core.result import SegmentEvent

TOKEN_ENGINES = ("hf",)


class TokenLevelParams(LevelParams):
    weighting: Literal["uniform", "confidence"] = Field(
        "uniform", description="uniform: the static weights; confidence: times each model's top-1 probability"
    )
    model_weights: dict[str, float] = Field(
        default_factory=dict, description="static weight per member name (default 1.0)"
    )
    ensemble_steps: Literal["all", "uncertain"] = Field(
        "all", description="all: every token; uncertain: only when the leader is unsure"
    )
    uncertainty_threshold: float = Field(
        0.5,
        gt=0.0,
        le=1.0,
        description="uncertain mode: ensemble when the leader's top-1 probability is below this",
    )
    leader: str | None = Field(None, description="the leading member's name (default: the first selected)")
    loop_max_ngram: int = Field(12, ge=0, description="longest word n-gram checked for a degenerate loop")
    loop_min_repeats: int = Field(
        4, ge=2, description="stop when the answer ends with one n-gram this many times"
    )
    ignore_eos: bool = Field(False, description="benchmarks only: never choose EOS (fixed work per run)")


class GaCTokenAggregator(LevelAggregator):
    Params = TokenLevelParams
    level = "token"

    def run(self, job: LevelJob, members: list[Member]) -> LevelOutcome:
        params = self.params
        assert isinstance(params, TokenLevelParams)
        not_hf = [f"{m.name} ({m.spec.engine})" for m in members if m.spec.engine not in TOKEN_ENGINES]
        if not_hf:
            raise ConfigError(
                "aggregation_level 'token' needs full next-token distributions, which only the "
                f"'hf' engine gives; not hf: {', '.join(not_hf)}"
            )
        names = [m.name for m in members]
        unknown = sorted(set(params.model_weights) - set(names))
        if params.leader is not None and params.leader not in names:
            unknown.append(params.leader)
        if unknown:
            raise ConfigError(f"token level: unknown member name(s) {unknown}; selected: {', '.join(names)}")
        decoder_module = "ensemble_core.backends.token_decoder"
        open_stepper = load_object("ensemble_core.backends.hf_token:open_token_stepper")
        TokenVoter = load_object(f"{decoder_module}:TokenVoter")
        Settings = load_object(f"{decoder_module}:TokenDecodeSettings")
        TokenDecoder = load_object(f"{decoder_module}:TokenDecoder")

        steppers: list[Any] = []
        stepper_of: dict[str, int] = {}
        owners: list[Member] = []
        for member in members:
            if member.session_key not in stepper_of:
                stepper_of[member.session_key] = len(steppers)
                owners.append(member)
                generator = job.pool.generator(member.spec)
                prompt = job.request.prompt_input()
                steppers.append(open_stepper(generator, prompt, member.name, member.style))
        voters = [
            TokenVoter(m.name, stepper_of[m.session_key], params.model_weights.get(m.name, 1.0))
            for m in members
        ]
        stops = list(job.request.stop)
        stops += [s for stepper in steppers for s in stepper.stop_strings if s not in stops]
        leader = names.index(params.leader) if params.leader is not None else 0
        settings = Settings(
            sampling=self._sampling(job, members[leader]),
            seed=self.rng.randrange(2**31),
            max_tokens=job.request.max_tokens,
            stop=tuple(stops),
            weighting=params.weighting,
            ensemble_steps=params.ensemble_steps,
            uncertainty_threshold=params.uncertainty_threshold,
            loop_max_ngram=params.loop_max_ngram,
            loop_min_repeats=params.loop_min_repeats,
            ignore_eos=params.ignore_eos or job.request.ignore_eos,
            min_tokens=job.request.min_tokens,
            include_stop_str=job.request.include_stop_str_in_output,
            should_stop=job.stop_requested,
            grammar=job.request.structured,
        )

        def on_text(step: int, source: str, text: str) -> None:
            if job.on_segment is not None:
                job.on_segment(SegmentEvent(round=step, model=source, text=text))

        run_parallel = job.run_parallel if params.concurrent else None
        decoder = TokenDecoder(steppers, voters, leader, settings, on_text, run_parallel)
        try:
            outcome = decoder.run()
        finally:
            for stepper in steppers:
                stepper.close()
        for owner, stepper in zip(owners, steppers, strict=True):
            usage = job.member_usage(owner.name)
            usage.prompt = stepper.counters.prompt_tokens
            usage.prefilled += stepper.counters.prefilled
            usage.generated += stepper.counters.generated
            usage.forward_passes += stepper.counters.forward_passes
        summary = dict(outcome.summary)
        summary["sampling"] = {"temperature": settings.sampling.temperature, "top_p": settings.sampling.top_p}
        return LevelOutcome(
            text=outcome.text,
            stop_reason=outcome.stop_reason,
            generated_tokens=outcome.steps,
            summary=summary,
            prompt_tokens=steppers[voters[leader].stepper].counters.prompt_tokens,
        )

    @staticmethod
    def _sampling(job: LevelJob, leader: Member) -> Sampling:
        request = job.request
        temperature = request.temperature if request.temperature is not None else leader.sampling.temperature
        top_p = request.top_p if request.top_p is not None else leader.sampling.top_p
        return request_sampling(request, temperature, top_p)
