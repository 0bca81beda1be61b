"""Cross-job batching in the HF backend (``hf_batching``): concurrent sessions on one model
share decode steps, give the same candidates as decoding alone, keep their prefix caches, and
one failing call does not take the others down."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from ensemble_core.backends import hf_batching
from ensemble_core.backends.hf import HFTextGenerator
from ensemble_core.errors import GenerationError
from ensemble_core.ports import Candidate, Sampling, SegmentLimits
from ensemble_core.spec import ChatMessage, ModelSpec, PromptInput

LIMITS = SegmentLimits(max_new_tokens=10, boundary="none")
HOT = Sampling(1.0, 0.95)


@pytest.fixture(params=["llama", "gpt2"])
def generator(request, tiny_dirs: dict[str, Path]) -> HFTextGenerator:  # type: ignore[no-untyped-def]
    # a generator of its own: the session-wide pool's sessions must not count in its waves
    return HFTextGenerator(
        ModelSpec(
            path=str(tiny_dirs[request.param]), name=request.param, engine_options={"batch_window_ms": 200}
        )
    )


def _messages(i: int) -> list[ChatMessage]:
    # different prompt lengths, so the rows are left-padded by different amounts
    return [ChatMessage(role="user", content="Count: " + " ".join(str(n) for n in range(i * 3 + 1)))]


def _two_rounds(generator: HFTextGenerator, i: int, samplings: list[Sampling]) -> tuple[list[Candidate], int]:
    """Two rounds: the second starts from a kept batch row plus its one unfed token (the
    wave's shared prefill)."""
    session = generator.open_session(PromptInput.chat(_messages(i)), seed=100 + i)
    try:
        first = session.generate("", samplings, LIMITS)
        second = session.generate(first[0].text, samplings, LIMITS)
        return first + second, session.counters.prefilled
    finally:
        session.close()


def _concurrently(count: int, work) -> list:  # type: ignore[no-untyped-def]
    results: list = [None] * count
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            results[i] = work(i)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    if errors:
        raise errors[0]
    return results


def test_concurrent_sessions_share_waves_and_match_decoding_alone(
    generator: HFTextGenerator, monkeypatch: pytest.MonkeyPatch
) -> None:
    # random models' text re-tokenizes differently, so round two's rests run to ~20 tokens:
    # let them all go through the wave's shared prefill
    monkeypatch.setattr(hf_batching, "SHARED_PREFILL_MAX", 64)
    samplings = [HOT, Sampling(0.7)]
    alone = [_two_rounds(generator, i, samplings) for i in range(4)]
    assert generator.batcher is not None and generator.batcher.waves == 0  # one session: direct path
    together = _concurrently(4, lambda i: _two_rounds(generator, i, samplings))
    assert generator.batcher.largest_wave >= 2
    for (solo, solo_prefilled), (batched, batched_prefilled) in zip(alone, together, strict=True):
        for a, b in zip(solo, batched, strict=True):
            # padding changes float rounding only: the seeded draws pick the same tokens
            assert b.token_ids == a.token_ids
            assert b.token_logprobs == pytest.approx(a.token_logprobs, abs=1e-4)
            # the confidence numbers come from the batch's own distributions, as on the direct path
            assert b.token_confidence == pytest.approx(a.token_confidence, abs=1e-3)
            assert b.token_self_certainty == pytest.approx(a.token_self_certainty, abs=1e-3)
            assert len(b.token_confidence) == b.num_tokens
            assert b.finish == a.finish
        # the second round reused the candidate row kept from the batch: no re-prefill of it
        assert batched_prefilled == solo_prefilled


def test_rows_end_at_their_own_limits_and_leave_the_wave(generator: HFTextGenerator) -> None:
    def work(i: int) -> Candidate:
        session = generator.open_session(PromptInput.chat(_messages(i)), seed=i)
        try:
            return session.generate("", [HOT], SegmentLimits(max_new_tokens=2 + 4 * i, boundary="none"))[0]
        finally:
            session.close()

    results = _concurrently(3, work)
    assert [c.num_tokens + (c.finish == "eos") for c in results if c.finish != "eos"] == [
        2 + 4 * i for i, c in enumerate(results) if c.finish != "eos"
    ]
    assert all(c.finish in {"length", "eos"} for c in results)


def test_a_failing_call_fails_alone(generator: HFTextGenerator, monkeypatch: pytest.MonkeyPatch) -> None:
    sessions = [generator.open_session(PromptInput.chat(_messages(i)), seed=i) for i in range(3)]
    broken = sessions[1]

    def refuse(accepted_text: str, shared_max: int):  # type: ignore[no-untyped-def]
        raise GenerationError("this session's prefill failed")

    monkeypatch.setattr(broken, "prepare_for_batch", refuse)
    outcomes = _concurrently(3, lambda i: _catch(lambda: sessions[i].generate("", [HOT], LIMITS)))
    for session in sessions:
        session.close()
    assert isinstance(outcomes[1], GenerationError)
    assert isinstance(outcomes[0], list) and isinstance(outcomes[2], list)
    assert outcomes[0][0].num_tokens > 0


def test_a_closed_session_is_not_waited_for(generator: HFTextGenerator) -> None:
    idle = generator.open_session(PromptInput.chat(_messages(0)))  # opened, never generates
    busy = generator.open_session(PromptInput.chat(_messages(1)), seed=1)
    assert generator.batcher is not None
    started = time.perf_counter()
    busy.generate("", [HOT], LIMITS)  # waits at most the 200 ms window for the idle one
    waited = time.perf_counter() - started
    idle.close()
    started = time.perf_counter()
    busy.generate("", [HOT], LIMITS)  # alone now: the direct path, no window
    alone = time.perf_counter() - started
    busy.close()
    assert waited >= 0.2
    assert alone < waited
    assert generator.batcher.open_sessions == 0


def test_batching_can_be_switched_off(tiny_dirs: dict[str, Path]) -> None:
    spec = ModelSpec(path=str(tiny_dirs["llama"]), name="off", engine_options={"batch_across_jobs": False})
    assert HFTextGenerator(spec).batcher is None


def _catch(action):  # type: ignore[no-untyped-def]
    try:
        return action()
    except GenerationError as exc:
        return exc


def test_a_stopped_call_leaves_the_wave_and_the_others_go_on(generator: HFTextGenerator) -> None:
    # session 0's job is cancelled after its third decode step; the wave keeps decoding the rest
    checks = {"n": 0}

    def stop_after_three() -> bool:
        checks["n"] += 1
        return checks["n"] >= 3

    def work(i: int) -> Candidate:
        session = generator.open_session(PromptInput.chat(_messages(i)), seed=i)
        limits = SegmentLimits(
            max_new_tokens=40,
            boundary="none",
            ignore_eos=True,
            should_stop=stop_after_three if i == 0 else None,
        )
        try:
            return session.generate("", [HOT], limits)[0]
        finally:
            session.close()

    results = _concurrently(3, work)
    assert generator.batcher is not None and generator.batcher.largest_wave >= 2
    assert (results[0].num_tokens, results[0].finish) == (3, "length")
    assert [c.num_tokens for c in results[1:]] == [40, 40]
