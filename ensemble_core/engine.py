"""The round loop: ``run_ensemble(spec, config, request, pool) -> EnsembleResult``.

1. Resolve the config into a plan (selector + aggregator with validated params).
2. Open one generation session per set of weights (members on the same weights share it).
3. Select the members.
4. Round after round the aggregator produces a winning segment; the engine appends it,
   emits a ``SegmentEvent`` and stops at EOS, ``max_tokens`` (generated tokens in total),
   ``max_rounds``, a stop string, ``max_repeat`` identical segments or a repeated n-gram loop;
   or early, when the ``StopSignal`` says so (cancelled, past the deadline: checked between
   segments and, by the step-by-step backends, between decode steps), keeping what it has.
5. Return the text, the trace (selection numbers, every candidate of every round) and usage.
"""

from __future__ import annotations

import contextvars
import dataclasses
import functools
import random
import secrets
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ensemble_core.aggregation.base import CandidateRecord, SegmentAggregator, SegmentParams
from ensemble_core.aggregation.level_base import LevelAggregator, LevelOutcome
from ensemble_core.errors import EnsembleError, GenerationError
from ensemble_core.loop_detection import repeated_ngram_tail
from ensemble_core.members import Member, build_members, segment_limits
from ensemble_core.methods import EnsemblePlan, plan_for
from ensemble_core.pool import ModelPool
from ensemble_core.ports import Candidate, GenerationSession, SegmentLimits
from ensemble_core.result import EnsembleResult, ModelUsage, SegmentEvent, Usage
from ensemble_core.scorers.combined import CombinedScorer, CopyGuard, build_scorer
from ensemble_core.spec import EnsembleConfig, EnsembleSpec, GenerationRequest
from ensemble_core.stopping import STOP_REASONS, StoppableSession, StopSignal

# a cut answer reads as OpenAI's "length" (the job's status says why it was cut)
_LENGTH_REASONS = {"max_tokens", "max_rounds", "max_context", *STOP_REASONS}


def run_ensemble(
    spec: EnsembleSpec,
    config: EnsembleConfig,
    request: GenerationRequest,
    pool: ModelPool,
    on_segment: Callable[[SegmentEvent], None] | None = None,
    stop: StopSignal | None = None,
) -> EnsembleResult:
    """Answer ``request`` with the members of ``spec`` combined as ``config`` says.

    ``stop``: a cancel flag and/or deadline; a stopped run returns its partial answer with
    ``stop_reason`` ``"cancelled"`` or ``"deadline_exceeded"`` (not an error)."""
    if request.echo:  # scoring the prompt, not a round loop (see ``echo``)
        from ensemble_core.echo import echo_prompt

        try:
            return echo_prompt(spec, request, pool)
        except EnsembleError:
            raise
        except Exception as exc:
            raise GenerationError(f"echo failed: {type(exc).__name__}: {exc}") from exc
    plan = plan_for(config)
    job = EnsembleJob(spec, config, request, pool, plan, on_segment, stop)
    try:
        return job.run()
    except EnsembleError:
        raise
    except Exception as exc:  # a backend bug must still fail the job with a stable code
        raise GenerationError(f"ensemble run failed: {type(exc).__name__}: {exc}") from exc
    finally:
        job.close()


class EnsembleJob:
    """State of one run: sessions, selected members, accepted text, usage, trace."""

    def __init__(
        self,
        spec: EnsembleSpec,
        config: EnsembleConfig,
        request: GenerationRequest,
        pool: ModelPool,
        plan: EnsemblePlan,
        on_segment: Callable[[SegmentEvent], None] | None,
        stop: StopSignal | None = None,
    ) -> None:
        self.config = config
        self.stop = stop
        self.request = request
        self.pool = pool
        self.plan = plan
        self.on_segment = on_segment
        # no seed: fresh randomness for every run (each of n choices is a run); the seed drawn
        # is in the trace, so a run can still be replayed
        self.seed = request.seed if request.seed is not None else secrets.randbits(63)
        self.rng = random.Random(self.seed)
        self.members = build_members(spec.model_specs, request)
        self.params: SegmentParams = plan.aggregator_params
        self.sessions: dict[str, GenerationSession] = {}
        self.session_owner: dict[str, str] = {}
        self.usage: dict[str, ModelUsage] = {}
        self.executor: ThreadPoolExecutor | None = None
        self.scorer: CombinedScorer | None = None
        self.selected: list[Member] = []

    # -- resources ------------------------------------------------------------------------
    def session(self, member: Member) -> GenerationSession:
        key = member.session_key
        if key not in self.sessions:
            generator = self.pool.generator(member.spec)
            seed = self.rng.randrange(2**31)
            session = generator.open_session(
                self.request.prompt_input(),
                style=member.style,
                reuse_cache=self.params.reuse_cache,
                seed=seed,
            )
            self.sessions[key] = StoppableSession(session, self.stop) if self.stop else session
            self.session_owner[key] = member.name
        return self.sessions[key]

    def build_scorer(self, scorer_specs: list[Any]) -> CombinedScorer:
        guard = CopyGuard(threshold=getattr(self.params, "copy_threshold", CopyGuard.threshold))
        return build_scorer(scorer_specs, self, getattr(self.params, "normalization", "center"), guard)

    def member_usage(self, name: str) -> ModelUsage:
        return self.usage.setdefault(name, ModelUsage())

    def stop_requested(self) -> bool:
        return self.stop is not None and self.stop.requested()

    def record_discarded(self, member: Member, tokens: int) -> None:
        self.member_usage(member.name).discarded += tokens

    def run_parallel(self, tasks: list[Callable[[], Any]]) -> list[Any]:
        if len(tasks) <= 1 or not self.params.concurrent:
            return [task() for task in tasks]
        if self.executor is None:
            self.executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="ensemble")
        # each task in a copy of this thread's context: the job's prefix scope (a tenant's
        # sessions share prompt key/values only with that tenant's, ``shared_prefixes``)
        futures = [self.executor.submit(contextvars.copy_context().run, task) for task in tasks]
        return [f.result() for f in futures]

    def close(self) -> None:
        for session in self.sessions.values():
            session.close()
        if self.executor is not None:
            self.executor.shutdown(wait=True)

    # -- the run --------------------------------------------------------------------------
    def run(self) -> EnsembleResult:
        started = time.perf_counter()
        selector = self.plan.selector_cls(self.plan.selector_params, random.Random(self.rng.random()))
        outcome = selector.select(self)
        selected = outcome.selected or self.members[:1]
        if self.plan.aggregator_name == "single":
            selected = selected[:1]
        self.selected = selected
        selection_seconds = time.perf_counter() - started
        loop: RoundLoop | LevelOutcome
        if self.plan.level != "sentence":  # token / response level: the method writes the answer
            level_aggregator: LevelAggregator = self.plan.aggregator_cls(
                self.params, random.Random(self.rng.random())
            )
            loop = level_aggregator.run(self, selected)
            text, stop_reason = loop.text, loop.stop_reason
        else:
            aggregator: SegmentAggregator = self.plan.aggregator_cls(
                self.params, random.Random(self.rng.random())
            )
            if aggregator.uses_scorers:
                self.scorer = self.build_scorer(list(getattr(self.params, "scorers", [])))
            loop = RoundLoop(self, aggregator, selected)
            text, stop_reason = loop.run()
        total_seconds = time.perf_counter() - started
        if self.stop is not None and self.stop.reason is not None:
            stop_reason = self.stop.reason  # whatever the loop saw last, it was cut short
        return self._result(
            text, stop_reason, selected, outcome.details, loop, selection_seconds, total_seconds
        )

    def _result(
        self,
        text: str,
        stop_reason: str,
        selected: list[Member],
        selection_details: dict[str, Any],
        loop: RoundLoop | LevelOutcome,
        selection_seconds: float,
        total_seconds: float,
    ) -> EnsembleResult:
        for key, session in self.sessions.items():
            usage = self.member_usage(self.session_owner[key])
            usage.prompt = session.counters.prompt_tokens
            # tokens run through a forward pass only to be scored are prefill work too
            usage.prefilled += session.counters.prefilled + session.counters.scored
            usage.forward_passes += session.counters.forward_passes
        if isinstance(self.scorer, CombinedScorer):
            for name, counts in self.scorer.usage().items():
                self.member_usage(name).prefilled += counts
        first = self.sessions.get(selected[0].session_key)
        trace: dict[str, Any] = {
            "method": self.plan.label,
            "seed": self.seed,
            "selection": {
                "method": self.plan.selector_name,
                "params": self.plan.selector_params.model_dump(mode="json"),
                "candidates": [m.name for m in self.members],
                "selected": [m.name for m in selected],
                "details": selection_details,
            },
            "aggregation": {
                "method": self.plan.aggregator_name,
                "params": self.params.model_dump(mode="json"),
                "ignored_params": list(self.plan.ignored_params),
            },
            "members": {
                m.name: {
                    "temperature": m.sampling.temperature,
                    "top_p": m.sampling.top_p,
                    "weights": self.session_owner.get(m.session_key),
                }
                for m in self.members
            },
            "rounds": loop.trace,
            **({"summary": loop.summary} if isinstance(loop, LevelOutcome) and loop.summary else {}),
            "stop_reason": stop_reason,
            "timings": {"selection_s": round(selection_seconds, 4), "total_s": round(total_seconds, 4)},
        }
        logprobs = self._logprobs(loop, trace) if self.request.logprobs is not None else None
        return EnsembleResult(
            logprobs=logprobs,
            text=text,
            finish_reason="length" if stop_reason in _LENGTH_REASONS else "stop",
            stop_reason=stop_reason,
            selected_models=[m.name for m in selected],
            method=self.plan.label,
            trace=trace,
            usage=Usage(
                prompt_tokens=first.counters.prompt_tokens if first else getattr(loop, "prompt_tokens", 0),
                completion_tokens=loop.generated_tokens,
                per_model=dict(self.usage),
            ),
        )

    def _logprobs(self, loop: RoundLoop | LevelOutcome, trace: dict[str, Any]) -> dict[str, Any] | None:
        """The answer's tokens with their writers' log-probabilities (``answer_logprobs``)."""
        from ensemble_core.answer_logprobs import answer_logprobs

        if any(c.trim_accepted for _, c in loop.pieces) or (
            isinstance(loop, LevelOutcome) and not loop.pieces
        ):
            trace["logprobs"] = "unavailable: no single model wrote this answer's text verbatim"
            return None
        pieces = []
        for member, candidate in loop.pieces:
            generator: Any = self.pool.generator(member.spec)
            if hasattr(generator, "decode"):
                decode = functools.partial(generator.decode, skip_special_tokens=True)
            else:  # a remote model: its token ids are unknown, its tokens are not listed
                trace["logprobs"] = f"unavailable: {member.name} gives no token ids"
                return None
            pieces.append((member.name, candidate, decode))
        return answer_logprobs(pieces, self.request.logprobs or 0)


class RoundLoop:
    """The rounds of one job; also the ``RoundContext`` the aggregator sees."""

    def __init__(self, job: EnsembleJob, aggregator: SegmentAggregator, members: list[Member]) -> None:
        self.job = job
        self.aggregator = aggregator
        self.members = members
        self.params = job.params
        self.rng = aggregator.rng
        self.round = 0
        self.accepted_text = ""
        self.generated_tokens = 0
        self.max_tokens = job.request.max_tokens
        self.history: list[str] = []
        # (writer, accepted candidate) in order: the answer's tokens, for ``logprobs``
        self.pieces: list[tuple[Member, Candidate]] = []
        self.trace: list[dict[str, Any]] = []
        self.limits = SegmentLimits(max_new_tokens=1)
        # token-by-token streaming where one writer decides the text as it is decoded: a method
        # whose round has one writer, or a lone member that no threshold can send back (no
        # threshold; greedy, whose resample would repeat it; or the default scorer, the
        # likelihood under the other members, which has no one to ask)
        self.decided_as_decoded = aggregator.writes_alone or (
            len(members) == 1
            and (
                getattr(self.params, "score_threshold", None) is None
                or members[0].sampling.temperature <= 0
                or not getattr(self.params, "scorers", None)
            )
        )
        self.stream_tokens = job.on_segment is not None and self.decided_as_decoded
        self.streamed = ""  # what the stream has of the current segment

    # -- RoundContext ---------------------------------------------------------------------
    def generate(
        self, members: list[Member], limits: SegmentLimits | None = None, attempt: int = 0
    ) -> list[CandidateRecord]:
        limits = limits or self.limits
        if self.stream_tokens and len(members) == 1 and attempt == 0:
            limits = dataclasses.replace(
                limits, on_text=functools.partial(self._stream_text, members[0].name)
            )
        groups: dict[str, list[Member]] = {}
        for member in members:
            key = (
                member.session_key if self.params.batch_same_model else f"{member.session_key}/{member.name}"
            )
            groups.setdefault(key, []).append(member)
        job = self.job

        def decode(group: list[Member]) -> list[CandidateRecord]:
            session = job.session(group[0])
            candidates = session.generate(self.accepted_text, [m.sampling for m in group], limits)
            return [CandidateRecord(m, c, attempt) for m, c in zip(group, candidates, strict=True)]

        batches = job.run_parallel([functools.partial(decode, g) for g in groups.values()])
        by_member = {r.member.name: r for batch in batches for r in batch}
        records = [by_member[m.name] for m in members]
        for record in records:
            usage = job.member_usage(record.member.name)
            usage.generated += record.candidate.num_tokens + (1 if record.candidate.finish == "eos" else 0)
        return records

    def score(self, records: list[CandidateRecord]) -> None:
        if self.job.scorer is None:
            raise GenerationError("this aggregation method needs scorers but none are configured")
        assert isinstance(self.job.scorer, CombinedScorer)
        self.job.scorer.score_records(self.job.request, self.accepted_text, records)

    # -- the loop -------------------------------------------------------------------------
    def run(self) -> tuple[str, str]:
        params, request = self.params, self.job.request
        repeats, last_segment = 0, None
        for round_index in range(self.job.config.max_rounds):
            self.round = round_index
            if self.job.stop_requested():
                assert self.job.stop is not None and self.job.stop.reason is not None
                return self.accepted_text, self.job.stop.reason
            remaining = request.max_tokens - self.generated_tokens
            if remaining <= 0:
                return self.accepted_text, "max_tokens"
            self.limits = segment_limits(
                request,
                generated=self.generated_tokens,
                max_new_tokens=min(self._segment_tokens(round_index), remaining),
                boundary=params.segment_boundary,
                min_tokens=params.min_segment_tokens,
                ignore_eos=params.ignore_eos,
            )
            outcome = self.aggregator.run_round(self)
            winner = outcome.winner
            candidate = winner.candidate
            segment_key = candidate.text.strip()
            repeats = repeats + 1 if segment_key and segment_key == last_segment else 1
            last_segment = segment_key
            self._record_round(outcome.candidates, winner, outcome.notes)
            if repeats >= params.max_repeat and params.max_repeat > 1:
                self.trace[-1]["accepted"] = False
                return self.accepted_text, "repeat"
            self._accept(winner)
            if candidate.finish == "eos":
                return self.accepted_text, "eos"
            if candidate.finish == "stop_string":
                return self.accepted_text, "stop_string"
            if candidate.finish == "context_full":  # the winner's context window is full
                return self.accepted_text, "max_context"
            # an answer that used up max_tokens ended there ("length"), whatever its tail repeats
            if self.generated_tokens >= request.max_tokens:
                return self.accepted_text, "max_tokens"
            loop = repeated_ngram_tail(self.accepted_text, params.loop_max_ngram, params.loop_min_repeats)
            if loop is not None:
                self.trace[-1]["loop"] = {"ngram": loop[0], "repeats": loop[1]}
                return self.accepted_text, "repeated_ngram"
        return self.accepted_text, "max_rounds"

    def _stream_text(self, model: str, text: str, stop_strings: tuple[str, ...]) -> None:
        """Send what the candidate added since the last call, holding back an incomplete
        character and a tail that may be the start of a stop string (it may yet be cut)."""
        assert self.job.on_segment is not None
        safe = streamable_prefix(self.accepted_text, text, stop_strings)
        if len(safe) > len(self.streamed) and safe.startswith(self.streamed):
            delta, self.streamed = safe[len(self.streamed) :], safe
            self.job.on_segment(SegmentEvent(round=self.round, model=model, text=delta, partial=True))

    def _accept(self, winner: CandidateRecord) -> None:
        candidate = winner.candidate
        streamed, self.streamed = self.streamed, ""
        if candidate.trim_accepted:
            self.accepted_text = self.accepted_text[: -candidate.trim_accepted]
        self.accepted_text += candidate.text
        self.generated_tokens += candidate.num_tokens
        self.history.append(winner.member.name)
        self.pieces.append((winner.member, candidate))
        # the part of the segment the stream does not have yet (all of it when not streamed)
        rest = candidate.text[len(streamed) :] if candidate.text.startswith(streamed) else ""
        if self.job.on_segment is not None and rest:
            self.job.on_segment(SegmentEvent(round=self.round, model=winner.member.name, text=rest))

    def _segment_tokens(self, round_index: int) -> int:
        # reward_based: a short first segment, for a stream's first chunk; not where the text is
        # streamed as decoded anyway (a lone member), whose answer it would only re-segment
        first = getattr(self.params, "first_segment_tokens", None)
        if round_index == 0 and first is not None and not self.decided_as_decoded:
            return min(first, self.params.segment_tokens)
        return self.params.segment_tokens

    def _record_round(
        self, candidates: list[CandidateRecord], winner: CandidateRecord, notes: dict[str, Any]
    ) -> None:
        for record in candidates:
            if record is not winner:
                self.job.record_discarded(record.member, record.candidate.num_tokens)
        entry: dict[str, Any] = {
            "round": self.round,
            "winner": winner.member.name,
            "winner_index": candidates.index(winner),
            "accepted": True,
            "candidates": [r.to_trace() for r in candidates],
        }
        if notes:
            entry["notes"] = notes
        self.trace.append(entry)


def streamable_prefix(accepted: str, text: str, stop_strings: tuple[str, ...]) -> str:
    """``text`` less a trailing replacement character (half of a multi-byte character) and
    less its longest tail that, after ``accepted``, is the beginning of a stop string."""
    text = text.rstrip("\ufffd")
    whole = accepted[-64:] + text
    hold = 0
    for stop in stop_strings:
        for k in range(min(len(stop) - 1, len(whole)), hold, -1):
            if whole.endswith(stop[:k]):
                hold = k
                break
    return text[: max(0, len(text) - hold)]
