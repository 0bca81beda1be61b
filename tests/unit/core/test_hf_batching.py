"""Continuous batching in the HF backend (``hf_batching.DecodeLoop``): concurrent sessions on one
model share one decode loop, give the same candidates as decoding alone (also a row admitted
while another decodes), keep their prefix caches, retire rows the step they end, and one failing
call neither takes the others down nor stops the loop."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from ensemble_core.backends.hf import HFGenerationSession, HFTextGenerator
from ensemble_core.errors import GenerationError
from ensemble_core.ports import Candidate, Sampling, SegmentLimits
from ensemble_core.spec import ChatMessage, ModelSpec, PromptInput

LIMITS = SegmentLimits(max_new_tokens=10, boundary="none")
HOT = Sampling(1.0, 0.95)
GREEDY = Sampling(0.0)


def _generator(path: Path, name: str, **options: Any) -> HFTextGenerator:
    # a generator of its own: the session-wide pool's sessions must not share its loop
    return HFTextGenerator(ModelSpec(path=str(path), name=name, engine_options=options))


@pytest.fixture(params=["llama", "gpt2", "gemma3"])
def generator(request, tiny_dirs: dict[str, Path]) -> HFTextGenerator:  # type: ignore[no-untyped-def]
    return _generator(tiny_dirs[request.param], request.param)


def _messages(i: int) -> list[ChatMessage]:
    # different prompt lengths, so the rows are left-padded by different amounts
    return [ChatMessage(role="user", content="Count: " + " ".join(str(n) for n in range(i * 3 + 1)))]


def _open(generator: HFTextGenerator, i: int) -> HFGenerationSession:
    return generator.open_session(PromptInput.chat(_messages(i)), seed=100 + i)


def _two_rounds(session: HFGenerationSession, samplings: list[Sampling]) -> tuple[list[Candidate], int]:
    """Two rounds: the second starts from a row the loop handed back, plus the accepted text.
    Returns the candidates and the tokens the second round prefilled."""
    first = session.generate("", samplings, LIMITS)
    before = session.counters.prefilled
    second = session.generate(first[0].text, samplings, LIMITS)
    return first + second, session.counters.prefilled - before


def _concurrently(count: int, work: Callable[[int], Any]) -> list[Any]:
    results: list[Any] = [None] * count
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


def _catch(action: Callable[[], Any]) -> Any:
    try:
        return action()
    except Exception as exc:  # noqa: BLE001 - the test looks at which one
        return exc


def _same(a: Candidate, b: Candidate) -> None:
    assert b.token_ids == a.token_ids
    assert b.token_logprobs == pytest.approx(a.token_logprobs, abs=1e-4)
    assert b.finish == a.finish


def _alone(
    generator: HFTextGenerator, i: int, samplings: list[Sampling], limits: SegmentLimits
) -> list[Candidate]:
    session = _open(generator, i)
    try:
        return session.generate("", samplings, limits)
    finally:
        session.close()


def _wait_until(condition: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.001)


def test_concurrent_sessions_match_decoding_alone_and_keep_their_prefixes(generator: HFTextGenerator) -> None:
    samplings = [HOT, Sampling(0.7), GREEDY]
    alone = []
    for i in range(4):
        session = _open(generator, i)
        alone.append(_two_rounds(session, samplings))
        session.close()
    assert generator.batcher is not None and generator.batcher.steps == 0  # one session: direct path
    sessions = [_open(generator, i) for i in range(4)]  # all open: every call goes through the loop
    together = _concurrently(4, lambda i: _two_rounds(sessions[i], samplings))
    for session in sessions:
        session.close()
    assert generator.batcher.admitted == 8
    for (solo, solo_prefilled), (batched, batched_prefilled) in zip(alone, together, strict=True):
        for a, b in zip(solo, batched, strict=True):
            # padding changes float rounding only: the seeded draws pick the same tokens
            _same(a, b)
            # the confidence numbers come from the batch's own distributions, as on the direct path
            assert b.token_confidence == pytest.approx(a.token_confidence, abs=1e-3)
            assert b.token_self_certainty == pytest.approx(a.token_self_certainty, abs=1e-3)
            assert len(b.token_confidence) == b.num_tokens
        # the second round reused the candidate row the loop handed back: no re-prefill of it
        # (the first rounds differ: the batched ones found the prompts the solo runs shared)
        assert batched_prefilled == solo_prefilled


@pytest.mark.parametrize("side", [True, False], ids=["side-prefill", "at-the-boundary"])
def test_a_row_admitted_mid_flight_decodes_as_alone(generator: HFTextGenerator, side: bool) -> None:
    assert generator.batcher is not None and generator.batcher.side_prefill  # on a CPU
    generator.batcher.side_prefill = side
    long = SegmentLimits(max_new_tokens=24, boundary="none", ignore_eos=True)
    solo = [_alone(generator, i, [GREEDY], long)[0] for i in range(2)]
    first, second = _open(generator, 0), _open(generator, 1)
    joined: dict[str, Any] = {}
    seen = {"tokens": 0}

    def second_joins(text: str, stops: tuple[str, ...]) -> None:
        # runs in the loop thread after the first row's tokens: the second call arrives while
        # the first is mid-decode and must wait for the next step boundary, not for the end
        seen["tokens"] += 1
        if seen["tokens"] != 5:
            return
        thread = threading.Thread(target=lambda: joined.update(result=second.generate("", [GREEDY], long)))
        joined["thread"] = thread
        thread.start()
        loop = generator.batcher
        assert loop is not None
        _wait_until(lambda: loop.calls == 2)

    result = first.generate("", [GREEDY], replace(long, on_text=second_joins))[0]
    joined["thread"].join(timeout=60)
    first.close()
    second.close()
    assert generator.batcher is not None and generator.batcher.largest_batch == 2
    assert generator.batcher.side_prefilled == (1 if side else 0)
    _same(solo[0], result)
    _same(solo[1], joined["result"][0])


def test_a_new_prompt_gets_its_first_token_while_the_step_in_progress_runs(
    generator: HFTextGenerator,
) -> None:
    """The side thread prefills a new prompt and picks its first token while the loop is
    still inside a step (here: held inside the first call's ``on_text``); both calls decode as
    alone, the newcomer's sampled row with its session's draws in the same order."""
    long = SegmentLimits(max_new_tokens=16, boundary="none", ignore_eos=True)
    samplings = [HOT, GREEDY]
    solo_first = _alone(generator, 0, [GREEDY], long)[0]
    solo_new = _alone(generator, 1, samplings, LIMITS)
    first, newcomer = _open(generator, 0), _open(generator, 1)
    first_text = threading.Event()
    state: dict[str, Any] = {"tokens": 0}

    def newcomer_text(text: str, stops: tuple[str, ...]) -> None:
        first_text.set()

    def hold_the_loop(text: str, stops: tuple[str, ...]) -> None:
        state["tokens"] += 1
        if state["tokens"] != 3:
            return
        limits = replace(LIMITS, on_text=newcomer_text)
        thread = threading.Thread(target=lambda: state.update(new=newcomer.generate("", samplings, limits)))
        state["thread"] = thread
        thread.start()
        # the loop thread waits here, mid-step: only the side thread can give the first token
        state["in_step"] = first_text.wait(timeout=30)

    result = first.generate("", [GREEDY], replace(long, on_text=hold_the_loop))[0]
    state["thread"].join(timeout=60)
    first.close()
    newcomer.close()
    loop = generator.batcher
    assert loop is not None
    assert state["in_step"] is True
    assert loop.side_prefilled == 1 and loop.largest_batch == 3
    _same(solo_first, result)
    for a, b in zip(solo_new, state["new"], strict=True):
        _same(a, b)


def test_rows_end_at_their_own_limits(generator: HFTextGenerator) -> None:
    sessions = [_open(generator, i) for i in range(3)]

    def work(i: int) -> Candidate:
        return sessions[i].generate("", [HOT], SegmentLimits(max_new_tokens=2 + 4 * i, boundary="none"))[0]

    results = _concurrently(3, work)
    for session in sessions:
        session.close()
    for i, candidate in enumerate(results):
        assert candidate.finish in {"length", "eos"}
        if candidate.finish == "length":
            assert candidate.num_tokens == 2 + 4 * i


def test_a_row_retiring_frees_its_slot_for_a_waiting_call(tiny_dirs: dict[str, Path]) -> None:
    generator = _generator(tiny_dirs["llama"], "two-rows", batch_max_rows=2)
    loop = generator.batcher
    assert loop is not None
    sessions = [_open(generator, i) for i in range(3)]
    finished: list[str] = []
    results: dict[str, Candidate] = {}
    threads: list[threading.Thread] = []

    def start(name: str, session: HFGenerationSession, limits: SegmentLimits) -> None:
        def run() -> None:
            results[name] = session.generate("", [GREEDY], limits)[0]
            finished.append(name)

        thread = threading.Thread(target=run)
        threads.append(thread)
        calls = loop.calls
        thread.start()
        _wait_until(lambda: loop.calls > calls or name in results)

    def hook(then: Callable[[], None]) -> Callable[[str, tuple[str, ...]], None]:
        calls = {"n": 0}

        def on_text(text: str, stops: tuple[str, ...]) -> None:
            calls["n"] += 1
            if calls["n"] == 1:
                then()

        return on_text

    short = SegmentLimits(max_new_tokens=4, boundary="none", ignore_eos=True)
    long = SegmentLimits(max_new_tokens=40, boundary="none", ignore_eos=True)
    waiting = SegmentLimits(max_new_tokens=6, boundary="none", ignore_eos=True)
    # short runs; at its first token long queues; at long's first token the batch is full
    # (2 rows) and "waiting" queues: it gets short's slot when short retires, before long ends
    long_hooked = replace(long, on_text=hook(lambda: start("waiting", sessions[2], waiting)))
    short_hooked = replace(short, on_text=hook(lambda: start("long", sessions[1], long_hooked)))
    start("short", sessions[0], short_hooked)
    _wait_until(lambda: len(finished) == 3, timeout=60)
    for thread in threads:
        thread.join(timeout=10)
    for session in sessions:
        session.close()
    assert finished == ["short", "waiting", "long"]
    assert loop.largest_batch == 2
    assert [results[n].num_tokens for n in ("short", "long", "waiting")] == [4, 40, 6]
    _same(_alone(generator, 2, [GREEDY], waiting)[0], results["waiting"])


def test_a_failing_call_fails_alone_and_the_loop_serves_on(
    generator: HFTextGenerator, monkeypatch: pytest.MonkeyPatch
) -> None:
    sessions = [_open(generator, i) for i in range(4)]

    def refuse(target: list[int]) -> list[int]:
        raise GenerationError("this session's prefill failed")

    monkeypatch.setattr(sessions[1], "start_batch_row", refuse)

    def broken_stream(text: str, stops: tuple[str, ...]) -> None:
        if len(text) > 3:
            raise RuntimeError("the client went away")

    limits = [
        LIMITS,
        LIMITS,
        SegmentLimits(max_new_tokens=10, boundary="none", on_text=broken_stream),
        LIMITS,
    ]
    outcomes = _concurrently(4, lambda i: _catch(lambda: sessions[i].generate("", [HOT], limits[i])))
    assert isinstance(outcomes[1], GenerationError)
    assert isinstance(outcomes[2], RuntimeError) and str(outcomes[2]) == "the client went away"
    for i in (0, 3):
        _same(_alone(generator, i, [HOT], LIMITS)[0], outcomes[i][0])
    loop = generator.batcher
    assert loop is not None and loop.thread is not None and loop.thread.is_alive()
    thread = loop.thread
    # the same loop thread serves the next calls
    again = _concurrently(2, lambda i: sessions[(0, 3)[i]].generate("", [HOT], LIMITS))
    assert all(result[0].num_tokens > 0 for result in again)
    assert loop.thread is thread
    for session in sessions:
        session.close()


def test_a_failed_forward_pass_reaches_its_callers_and_the_loop_survives(
    generator: HFTextGenerator, monkeypatch: pytest.MonkeyPatch
) -> None:
    loop = generator.batcher
    assert loop is not None
    sessions = [_open(generator, i) for i in range(2)]
    real = loop._forward
    calls = {"n": 0}

    def fail_the_third(*args: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 3:
            raise GenerationError("out of memory")
        return real(*args)

    monkeypatch.setattr(loop, "_forward", fail_the_third)
    outcomes = _concurrently(2, lambda i: _catch(lambda: sessions[i].generate("", [HOT], LIMITS)))
    assert any(isinstance(outcome, GenerationError) for outcome in outcomes)
    thread = loop.thread
    assert thread is not None and thread.is_alive()
    monkeypatch.setattr(loop, "_forward", real)
    # greedy: the failed call drew from the sessions' generators already
    after = _concurrently(2, lambda i: sessions[i].generate("", [GREEDY], LIMITS))
    assert loop.thread is thread
    for i in range(2):
        _same(_alone(generator, i, [GREEDY], LIMITS)[0], after[i][0])
    for session in sessions:
        session.close()


def test_a_stopped_call_leaves_the_batch_and_the_others_go_on(generator: HFTextGenerator) -> None:
    # session 0's job is cancelled after its third decode step; the loop keeps decoding the rest
    checks = {"n": 0}

    def stop_after_three() -> bool:
        checks["n"] += 1
        return checks["n"] >= 3

    sessions = [_open(generator, i) for i in range(3)]

    def work(i: int) -> Candidate:
        limits = SegmentLimits(
            max_new_tokens=40,
            boundary="none",
            ignore_eos=True,
            should_stop=stop_after_three if i == 0 else None,
        )
        return sessions[i].generate("", [HOT], limits)[0]

    results = _concurrently(3, work)
    for session in sessions:
        session.close()
    assert generator.batcher is not None and generator.batcher.admitted == 3
    assert (results[0].num_tokens, results[0].finish) == (3, "length")
    assert [c.num_tokens for c in results[1:]] == [40, 40]


def test_an_idle_loop_thread_ends_and_the_next_call_starts_one(tiny_dirs: dict[str, Path]) -> None:
    generator = _generator(tiny_dirs["llama"], "idle")
    loop = generator.batcher
    assert loop is not None
    loop.idle_s = 0.05
    sessions = [_open(generator, i) for i in range(2)]
    sessions[0].generate("", [HOT], LIMITS)
    _wait_until(lambda: loop.thread is None)
    assert sessions[1].generate("", [HOT], LIMITS)[0].num_tokens > 0
    for session in sessions:
        session.close()
    assert loop.open_sessions == 0


def test_a_closed_session_leaves_the_direct_path_to_the_last(generator: HFTextGenerator) -> None:
    idle = _open(generator, 0)  # opened, never generates
    busy = _open(generator, 1)
    loop = generator.batcher
    assert loop is not None
    busy.generate("", [HOT], LIMITS)  # two open sessions: through the loop, nothing waited for
    assert loop.admitted == 1
    idle.close()
    busy.generate("", [HOT], LIMITS)  # alone now: the direct path
    busy.close()
    assert loop.admitted == 1 and loop.open_sessions == 0


def test_batching_can_be_switched_off(tiny_dirs: dict[str, Path]) -> None:
    assert _generator(tiny_dirs["llama"], "off", batch_across_jobs=False).batcher is None


def test_the_prefill_is_chunked_and_padded_rows_still_match(
    generator: HFTextGenerator, monkeypatch: pytest.MonkeyPatch
) -> None:
    loop = generator.batcher
    assert loop is not None
    loop.prefill_slots = 40  # two or three prompts per prefill pass
    samplings = [GREEDY]
    solo = [_alone(generator, i, samplings, LIMITS)[0] for i in range(6)]
    sessions = [_open(generator, i) for i in range(6)]
    passes: list[int] = []
    real = loop._prefill

    def count(chunk: Any) -> Any:
        passes.append(len(chunk))
        # a chunk's padded rests stay within the budget (one long prompt goes alone)
        assert len(chunk) == 1 or len(chunk) * max(len(rest) for _, rest in chunk) <= 40
        return real(chunk)

    monkeypatch.setattr(loop, "_prefill", count)
    results = _concurrently(6, lambda i: sessions[i].generate("", samplings, LIMITS))
    for session in sessions:
        session.close()
    assert sum(passes) == 6
    for a, b in zip(solo, results, strict=True):
        _same(a, b[0])


def test_sampled_rows_replay_as_alone_when_a_sibling_row_ends_early(generator: HFTextGenerator) -> None:
    # row 0 ends at its third token; the hot row goes on: decoding alone must not draw for the
    # ended row either, or the session's seeded generator would run ahead of the loop's
    eos = min(generator.eos_ids)
    samplings = [Sampling(1.0, logit_bias=((eos, 100.0),)), HOT, Sampling(0.8)]  # all draw
    limits = SegmentLimits(max_new_tokens=12, boundary="none", eos_after=2, ignore_eos=False)
    solo = [_alone(generator, i, samplings, limits) for i in range(2)]
    sessions = [_open(generator, i) for i in range(2)]
    together = _concurrently(2, lambda i: sessions[i].generate("", samplings, limits))
    for session in sessions:
        session.close()
    assert generator.batcher is not None and generator.batcher.admitted == 2
    for alone, batched in zip(solo, together, strict=True):
        assert alone[0].finish == "eos" and alone[0].num_tokens == 2
        for a, b in zip(alone, batched, strict=True):
            _same(a, b)


def test_steps_of_many_rows_use_the_wide_thread_count_and_put_it_back(tiny_dirs: dict[str, Path]) -> None:
    """A step of at least ``wide_rows`` rows in the loop thread runs on ``batch_step_threads``
    torch threads; a narrower one, and every other thread, keeps the thread's own count, and
    the output is that of decoding alone."""
    import torch

    generator = _generator(tiny_dirs["llama"], "wide", batch_step_threads=2)
    loop = generator.batcher
    assert loop is not None and loop.step_threads.wide == 2
    loop.step_threads.wide_rows = 3
    seen: list[tuple[int, int]] = []  # (rows, torch threads) of each step the loop ran
    run_step = loop._step

    def recording(batch: Any) -> Any:
        seen.append((len(batch.rows), torch.get_num_threads()))
        return run_step(batch)

    loop._step = recording  # type: ignore[method-assign]
    samplings = [GREEDY, GREEDY]
    alone = [_alone(generator, i, samplings, LIMITS) for i in range(3)]
    before = torch.get_num_threads()
    seen.clear()
    sessions = [_open(generator, i) for i in range(3)]
    together = _concurrently(3, lambda i: sessions[i].generate("", samplings, LIMITS))
    for session in sessions:
        session.close()
    assert torch.get_num_threads() == before
    assert any(rows >= 3 and threads == 2 for rows, threads in seen)
    assert all(threads == before for rows, threads in seen if rows < 3)
    for solo, batched in zip(alone, together, strict=True):
        for a, b in zip(solo, batched, strict=True):
            _same(a, b)


def test_batch_step_threads_must_be_a_positive_integer(tiny_dirs: dict[str, Path]) -> None:
    from ensemble_core.errors import ModelLoadError

    with pytest.raises(ModelLoadError, match="batch_step_threads"):
        _generator(tiny_dirs["llama"], "bad", batch_step_threads=0)


def test_the_batch_cache_layer_moves_only_what_changes_and_holds_what_a_plain_cache_holds() -> None:
    """The decode loop's cache layer (rows retiring by filling holes from the end, newcomers
    joining wider or narrower, leading columns trimmed, tokens appended in place) holds at
    every point exactly the keys/values of a plain layer that concatenates and index-selects."""
    import random

    import torch

    from ensemble_core.backends.hf_batching import _filling_holes, _growing_layer_class, _row_moves

    rng = random.Random(7)
    gen = torch.Generator().manual_seed(7)

    def states(rows: int, width: int) -> torch.Tensor:
        return torch.randn((rows, 2, width, 3), generator=gen)

    layer = _growing_layer_class()()
    first = states(3, 5)
    layer.update(first, first + 1)
    reference = [first.clone(), first.clone() + 1]
    for _ in range(60):
        op = rng.choice(["step", "step", "retire", "join", "trim"])
        rows, width = reference[0].shape[0], reference[0].shape[2]
        if op == "step":
            new = states(rows, 1)
            layer.update(new, new * 2)
            reference = [torch.cat([reference[0], new], 2), torch.cat([reference[1], new * 2], 2)]
        elif op == "retire" and rows > 1:
            keep = sorted(rng.sample(range(rows), rng.randint(1, rows - 1)))
            order = _filling_holes(rows, keep)
            assert sorted(order) == keep
            assert sum(new != old for new, old in enumerate(order)) <= rows - len(keep)
            layer.move_rows(len(order), *_row_moves(order))
            index = torch.tensor(order)
            reference = [t.index_select(0, index) for t in reference]
        elif op == "join":
            added, new_width = rng.randint(1, 20), rng.randint(1, width + 6)
            group = states(added, new_width)
            final = max(width, new_width)
            layer.append_rows(group, group - 1, final)

            def padded(t: torch.Tensor, to: int) -> torch.Tensor:
                return torch.nn.functional.pad(t, [0, 0, to - t.shape[2], 0])

            reference = [
                torch.cat([padded(reference[0], final), padded(group, final)], 0),
                torch.cat([padded(reference[1], final), padded(group - 1, final)], 0),
            ]
        elif op == "trim" and width > 1:
            columns = rng.randint(1, width - 1)
            layer.trim_left(columns)
            reference = [t[:, :, columns:] for t in reference]
        assert torch.equal(layer.keys, reference[0])
        assert torch.equal(layer.values, reference[1])
