"""A cancel or a deadline stops a run between decode steps, keeping the partial answer."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from ensemble_core.engine import run_ensemble
from ensemble_core.pool import ModelPool
from ensemble_core.result import SegmentEvent
from ensemble_core.spec import EnsembleConfig, EnsembleSpec, ModelSpec
from ensemble_core.stopping import StopSignal

from .conftest import ask

LOOP = EnsembleConfig(
    model_selection_method="all",
    ensemble_method="loop",
    max_rounds=64,
    max_repeat=1,
    aggregation_params={"segment_tokens": 400, "segment_boundary": "none"},
)


def _ticks() -> StopSignal:
    """A deadline five clock reads away: every check advances the clock by one second."""
    clock = itertools.count()
    return StopSignal(deadline_s=5.0, clock=lambda: float(next(clock)))


@pytest.fixture(scope="module")
def llama(tiny_dirs: dict[str, Path]) -> EnsembleSpec:
    return EnsembleSpec(model_specs=[ModelSpec(path=str(tiny_dirs["llama"]), name="llama", temperature=0.0)])


def test_deadline_stops_inside_a_segment(pool: ModelPool, llama: EnsembleSpec) -> None:
    # one 400-token segment would run to the end; the check between decode steps cuts it
    request = ask(max_tokens=400, ignore_eos=True)
    full = run_ensemble(llama, LOOP, request, pool)
    assert full.usage.completion_tokens == 400
    stopped = run_ensemble(llama, LOOP, request, pool, stop=_ticks())
    assert (stopped.stop_reason, stopped.finish_reason) == ("deadline_exceeded", "length")
    assert 1 <= stopped.usage.completion_tokens <= 5
    assert stopped.text and full.text.startswith(stopped.text)  # greedy: the same answer, cut
    assert stopped.usage.per_model["llama"].generated == stopped.usage.completion_tokens
    assert stopped.trace["stop_reason"] == "deadline_exceeded"


def test_cancel_from_another_thread_keeps_the_accepted_segments(pool: ModelPool, llama: EnsembleSpec) -> None:
    # 8-token segments; the listener cancels after the second one is accepted
    config = LOOP.model_copy(update={"aggregation_params": {"segment_tokens": 8, "segment_boundary": "none"}})
    signal = StopSignal()
    events: list[SegmentEvent] = []

    def on_segment(event: SegmentEvent) -> None:
        events.append(event)  # the loop streams tokens (partial) and then each segment's rest
        if sum(not e.partial for e in events) == 2:
            signal.cancel()

    result = run_ensemble(
        llama, config, ask(max_tokens=400, ignore_eos=True), pool, on_segment=on_segment, stop=signal
    )
    assert result.stop_reason == "cancelled"
    assert sum(not e.partial for e in events) == 2 and result.text == "".join(e.text for e in events)
    assert result.usage.completion_tokens == 16


def test_token_level_decoder_checks_every_step(pool: ModelPool, tiny_spec: EnsembleSpec) -> None:
    config = EnsembleConfig(model_selection_method="all", aggregation_level="token")
    result = run_ensemble(tiny_spec, config, ask(max_tokens=200, ignore_eos=True), pool, stop=_ticks())
    assert result.stop_reason == "deadline_exceeded"
    assert 1 <= result.usage.completion_tokens <= 5


def test_response_level_candidates_are_cut_and_still_voted(pool: ModelPool, tiny_spec: EnsembleSpec) -> None:
    config = EnsembleConfig(model_selection_method="all", aggregation_level="response")
    result = run_ensemble(tiny_spec, config, ask(max_tokens=200, ignore_eos=True), pool, stop=_ticks())
    assert result.stop_reason == "deadline_exceeded"
    candidates = result.trace["rounds"][0]["candidates"]
    assert len(candidates) == 2 and all(c["tokens"] <= 5 for c in candidates)


def test_a_signal_that_never_fires_changes_nothing(pool: ModelPool, llama: EnsembleSpec) -> None:
    request = ask(max_tokens=40, ignore_eos=True, seed=1)
    plain = run_ensemble(llama, LOOP, request, pool)
    watched = run_ensemble(llama, LOOP, request, pool, stop=StopSignal(deadline_s=600))
    assert (watched.text, watched.stop_reason) == (plain.text, plain.stop_reason)
