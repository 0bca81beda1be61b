"""Token-by-token streaming (``SegmentEvent.partial``) on tiny models: where one writer
decides the text as it is decoded the events come per token and add up to the answer;
reward_based streams whole segments, its first one short."""

from __future__ import annotations

from pathlib import Path

from ensemble_core.engine import run_ensemble, streamable_prefix
from ensemble_core.pool import ModelPool
from ensemble_core.result import SegmentEvent
from ensemble_core.spec import EnsembleConfig, EnsembleSpec, ModelSpec
from tests.unit.core.conftest import ask
from workers.stream_events import SegmentCoalescer


def _stream(pool: ModelPool, spec: EnsembleSpec, config: EnsembleConfig, **fields: object):  # type: ignore[no-untyped-def]
    events: list[SegmentEvent] = []
    result = run_ensemble(
        spec, config, ask("Tell me a story.", temperature=0, **fields), pool, on_segment=events.append
    )
    return result, events


def test_a_lone_member_streams_each_token_and_the_stream_is_the_answer(
    pool: ModelPool, tiny_dirs: dict[str, Path]
) -> None:
    spec = EnsembleSpec(model_specs=[ModelSpec(path=str(tiny_dirs["llama"]), name="llama")])
    config = EnsembleConfig(aggregation_method="reward_based")
    result, events = _stream(pool, spec, config, max_tokens=32, ignore_eos=True)
    assert result.usage.completion_tokens == 32
    # per token, not per segment (each segment's last token comes with its accept event)
    assert sum(e.partial for e in events) >= 16 and len(events) > len(result.trace["rounds"]) * 4
    assert "".join(e.text for e in events) == result.text
    plain = run_ensemble(
        spec, config, ask("Tell me a story.", temperature=0, max_tokens=32, ignore_eos=True), pool
    )
    assert plain.text == result.text  # streaming does not change the answer


def test_round_robin_streams_tokens_and_reward_based_streams_a_short_first_segment(
    pool: ModelPool, tiny_spec: EnsembleSpec
) -> None:
    robin = EnsembleConfig(
        model_selection_method="all",
        aggregation_method="round_robin",
        aggregation_params={"segment_tokens": 6, "segment_boundary": "none"},
    )
    result, events = _stream(pool, tiny_spec, robin, max_tokens=24, ignore_eos=True)
    assert "".join(e.text for e in events) == result.text
    assert sum(e.partial for e in events) >= 12
    assert {e.model for e in events} == {"llama", "gpt2"}

    scored = EnsembleConfig(
        model_selection_method="all",
        aggregation_method="reward_based",
        aggregation_params={"segment_tokens": 32, "segment_boundary": "none"},
    )
    result, events = _stream(pool, tiny_spec, scored, max_tokens=40, ignore_eos=True)
    assert not any(e.partial for e in events)  # a segment goes out once it has won
    assert "".join(e.text for e in events) == result.text
    rounds = result.trace["rounds"]
    first = rounds[0]["candidates"][rounds[0]["winner_index"]]
    assert first["tokens"] == 8 and events[0].text == first["text"]  # the short first segment
    assert rounds[1]["candidates"][rounds[1]["winner_index"]]["tokens"] == 32


def test_the_stream_holds_back_what_may_start_a_stop_string() -> None:
    assert streamable_prefix("", "Hello wor", ("world!",)) == "Hello "
    assert streamable_prefix("", "Hello", ("lo there",)) == "Hel"
    assert streamable_prefix("", "abc\ufffd", ()) == "abc"
    assert streamable_prefix("x", "yz", ()) == "yz"


def test_the_coalescer_sends_at_most_one_message_per_interval() -> None:
    sent: list[dict] = []  # type: ignore[type-arg]
    slow = SegmentCoalescer(sent.append, 0, interval_s=0.0)
    for token in "abcd":
        slow(SegmentEvent(round=0, model="m", text=token, partial=True))
    assert [m["text"] for m in sent] == list("abcd")  # idle: every token at once
    sent.clear()
    fast = SegmentCoalescer(sent.append, 1, interval_s=60.0)
    for token in "abcd":
        fast(SegmentEvent(round=0, model="m", text=token, partial=True))
    fast(SegmentEvent(round=0, model="m", text="e"))  # the accept event flushes the buffer
    fast(SegmentEvent(round=1, model="n", text="f", partial=True))
    fast.close()
    assert [(m["text"], m["model"], m["index"]) for m in sent] == [
        ("a", "m", 1),
        ("bcde", "m", 1),
        ("f", "n", 1),
    ]
