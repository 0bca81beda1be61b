"""Every way an answer ends, the events, the result shape and the usage counts."""

from __future__ import annotations

import json

import pytest

from ensemble_core.engine import run_ensemble
from ensemble_core.pool import ModelPool
from ensemble_core.result import SegmentEvent
from ensemble_core.spec import EnsembleConfig, EnsembleSpec

from .conftest import ask
from .scripted import scripted_member

LOOP = EnsembleConfig(model_selection_method="all", ensemble_method="loop", max_rounds=8)


def _run(pool: ModelPool, scripts: list[list[tuple[str, str]]], config=LOOP, **request):  # type: ignore[no-untyped-def]
    specs = [scripted_member(pool, f"m{i}", s) for i, s in enumerate(scripts)]
    return run_ensemble(EnsembleSpec(model_specs=specs), config, ask(**request), pool)


def test_eos_ends_the_answer(pool: ModelPool) -> None:
    result = _run(pool, [[("one.", "boundary")], [("two.", "eos")]])
    assert result.text == "one.two."
    assert (result.stop_reason, result.finish_reason) == ("eos", "stop")


def test_max_rounds(pool: ModelPool) -> None:
    result = _run(
        pool,
        [[("a", "boundary"), ("b", "boundary"), ("c", "boundary")]],
        LOOP.model_copy(update={"max_rounds": 2}),
    )
    assert result.text == "ab"
    assert (result.stop_reason, result.finish_reason) == ("max_rounds", "length")


def test_max_tokens_counts_the_whole_answer_not_rounds(pool: ModelPool) -> None:
    words = " ".join(f"w{i}" for i in range(40))
    result = _run(pool, [[(words, "length")]], max_tokens=50)
    assert result.usage.completion_tokens == 50  # 32-token segment, then an 18-token one
    assert [r["candidates"][0]["tokens"] for r in result.trace["rounds"]] == [32, 18]
    assert (result.stop_reason, result.finish_reason) == ("max_tokens", "length")


def test_stop_string_reported(pool: ModelPool) -> None:
    result = _run(pool, [[("Done.", "stop_string")]])
    assert result.stop_reason == "stop_string"


def test_max_repeat_stops_before_accepting_the_same_segment_again(pool: ModelPool) -> None:
    config = LOOP.model_copy(update={"max_repeat": 3, "max_rounds": 10})
    result = _run(pool, [[("Intro. ", "boundary"), ("Same again. ", "boundary")]], config)
    assert result.text == "Intro. Same again. Same again. "
    assert result.stop_reason == "repeat"
    assert result.trace["rounds"][-1]["accepted"] is False


def test_repeated_ngram_loop_stops(pool: ModelPool) -> None:
    script = [
        ("Alright, alright,", "boundary"),
        (" alright, alright,", "boundary"),
        (" alright,", "boundary"),
    ]
    result = _run(pool, [script], LOOP.model_copy(update={"max_repeat": 10, "max_rounds": 10}))
    assert result.stop_reason == "repeated_ngram"
    assert len(result.trace["rounds"]) == 2
    assert result.trace["rounds"][-1]["loop"] == {"ngram": 1, "repeats": 4}


def test_a_loop_that_ends_at_max_tokens_is_a_length_finish(pool: ModelPool) -> None:
    """OpenAI's finish_reason: an answer cut by max_tokens is "length", even when its tail
    also repeats (guidellm and lm-eval read it)."""
    script = [("Alright, alright, alright, alright,", "length")]
    config = LOOP.model_copy(update={"max_repeat": 10, "max_rounds": 10})
    free = _run(pool, [script], config, max_tokens=200)
    assert free.stop_reason == "repeated_ngram"
    used = free.usage.completion_tokens
    cut = _run(pool, [script], config, max_tokens=used)
    assert cut.text == free.text and cut.usage.completion_tokens == used
    assert (cut.stop_reason, cut.finish_reason) == ("max_tokens", "length")


def test_events_stream_the_accepted_segments_in_order(pool: ModelPool) -> None:
    events: list[SegmentEvent] = []
    specs = [
        scripted_member(pool, "x", [("Hi. ", "boundary")]),
        scripted_member(pool, "y", [("Bye.", "eos")]),
    ]
    result = run_ensemble(EnsembleSpec(model_specs=specs), LOOP, ask(), pool, on_segment=events.append)
    assert [(e.round, e.model, e.text) for e in events] == [(0, "x", "Hi. "), (1, "y", "Bye.")]
    assert "".join(e.text for e in events) == result.text


def test_result_is_json_serialisable_and_complete(pool: ModelPool) -> None:
    result = _run(pool, [[("one. ", "boundary")], [("two.", "eos")]])
    dumped = json.loads(json.dumps(result.model_dump(mode="json")))
    assert dumped["selected_models"] == ["m0", "m1"]
    assert dumped["method"] == "all+round_robin"
    rounds = dumped["trace"]["rounds"]
    assert [r["winner"] for r in rounds] == ["m0", "m1"]
    assert set(rounds[0]["candidates"][0]) >= {"model", "text", "tokens"}
    assert set(dumped["usage"]["per_model"]["m0"]) >= {"prompt", "generated", "prefilled", "discarded"}


def test_output_aggregation_off_lets_one_model_write(pool: ModelPool) -> None:
    config = LOOP.model_copy(update={"use_output_aggregation": False, "max_rounds": 3, "max_repeat": 5})
    result = _run(pool, [[("a ", "boundary")], [("b ", "boundary")]], config)
    assert result.method == "all+single"
    assert result.selected_models == ["m0"]
    assert result.text == "a a a "


@pytest.mark.parametrize("method", ["reward_based", "random", "round_robin", "progressive"])
def test_every_method_stops_at_eos(pool: ModelPool, method: str) -> None:
    config = EnsembleConfig(model_selection_method="all", ensemble_method=method, max_rounds=20)
    result = _run(
        pool, [[("x. ", "boundary"), ("end", "eos")], [("y. ", "boundary"), ("fin", "eos")]], config
    )
    assert result.stop_reason == "eos"
    assert len(result.trace["rounds"]) <= 3
