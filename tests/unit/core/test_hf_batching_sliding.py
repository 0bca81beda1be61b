"""A sliding-window model (Gemma 3's layout) in the decode loop: a call is batched only while its
row stays within the window, a prefill chunk never leaves padding that stretches a row past it,
and every candidate is the one decoding alone gives (tokens; log-probabilities to 1e-4)."""

from __future__ import annotations

import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from ensemble_core.backends.hf import HFGenerationSession, HFTextGenerator
from ensemble_core.backends.hf_batching import sliding_window
from ensemble_core.ports import Candidate, Sampling, SegmentLimits
from ensemble_core.spec import ChatMessage, ModelSpec, PromptInput
from tests.tiny_models import build_tiny_model

GREEDY = Sampling(0.0)
HOT = Sampling(1.0, 0.95)
LIMITS = SegmentLimits(max_new_tokens=10, boundary="none", ignore_eos=True)
WINDOW = 44


@pytest.fixture(scope="module")
def gemma_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(
        tmp_path_factory.mktemp("sliding") / "gemma3", arch="gemma3", vocab_seed=6, sliding_window=WINDOW
    )


def _generator(path: Path) -> HFTextGenerator:
    # no shared prefixes: each first round prefills its whole prompt, so rest lengths are known
    return HFTextGenerator(ModelSpec(path=str(path), name="gemma", engine_options={"prefix_sharing_mb": 0}))


def _open(generator: HFTextGenerator, i: int) -> HFGenerationSession:
    # prompts of 19, 24, 29, 35 tokens for i = 0..3 with this tokenizer
    content = "Count: " + " ".join(str(n) for n in range(i * 3 + 1))
    return generator.open_session(PromptInput.chat([ChatMessage(role="user", content=content)]), seed=50 + i)


def _alone(generator: HFTextGenerator, i: int, work: Any) -> list[Candidate]:
    session = _open(generator, i)  # the only open session: the direct path
    try:
        return list(work(session))
    finally:
        session.close()


def _same(a: Candidate, b: Candidate) -> None:
    assert b.token_ids == a.token_ids
    assert b.token_logprobs == pytest.approx(a.token_logprobs, abs=1e-4)


def _run_together(work: list[Any]) -> list[Any]:
    results: list[Any] = [None] * len(work)
    threads = [
        threading.Thread(target=lambda i=i: results.__setitem__(i, work[i]())) for i in range(len(work))
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return results


def test_the_window_is_read_from_the_model_config(gemma_dir: Path, tiny_dirs: dict[str, Path]) -> None:
    gemma, llama = _generator(gemma_dir), _generator(tiny_dirs["llama"])
    assert sliding_window(gemma.model.config) == WINDOW
    assert gemma.batcher is not None and gemma.batcher.window == WINDOW
    assert llama.batcher is not None and llama.batcher.window is None


def test_calls_within_the_window_are_batched_and_longer_ones_decode_directly(gemma_dir: Path) -> None:
    generator = _generator(gemma_dir)
    samplings = [GREEDY, HOT]
    alone = []
    for i in range(4):
        session = _open(generator, i)
        alone.append(session.generate("", samplings, LIMITS))
        session.close()
    sessions = [_open(generator, i) for i in range(4)]
    lengths = [len(session.prompt_ids) for session in sessions]
    fitting = [n + LIMITS.max_new_tokens <= WINDOW for n in lengths]
    assert True in fitting and False in fitting, lengths  # the test needs both kinds
    together = _run_together([lambda s=s: s.generate("", samplings, LIMITS) for s in sessions])
    for session in sessions:
        session.close()
    assert generator.batcher is not None and generator.batcher.admitted == sum(fitting)
    for solo, batched in zip(alone, together, strict=True):
        for a, b in zip(solo, batched, strict=True):
            _same(a, b)


def test_a_prefill_chunk_never_stretches_a_row_past_the_window(
    gemma_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A next round's short rest beside a new prompt's long one is right-aligned after padding:
    the row would span prefix + the long rest + its new tokens, past the window, and the
    sliding layers would drop its first columns. Such calls are prefilled in separate passes."""
    generator = _generator(gemma_dir)
    loop = generator.batcher
    assert loop is not None
    loop.side_prefill = False  # both newcomers are admitted together, at a step boundary

    def two_rounds(session: HFGenerationSession) -> list[Candidate]:
        first = session.generate("", [GREEDY], LIMITS)
        return first + session.generate(first[0].text, [GREEDY], LIMITS)

    driver_limits = SegmentLimits(max_new_tokens=16, boundary="none", ignore_eos=True)
    solo_a = _alone(generator, 0, two_rounds)  # 19-token prompt: its second round rests ~1 token
    solo_b = _alone(generator, 2, lambda s: s.generate("", [GREEDY], LIMITS))  # 29 tokens to prefill
    solo_driver = _alone(generator, 1, lambda s: s.generate("", [GREEDY], driver_limits))

    a, b, driver = _open(generator, 0), _open(generator, 2), _open(generator, 1)
    first_a = a.generate("", [GREEDY], LIMITS)  # three sessions open, one call: the loop alone
    chunks: list[list[int]] = []
    real_prefill = loop._prefill

    def record(chunk: Any) -> Any:
        chunks.append([len(rest) for _, rest in chunk])
        return real_prefill(chunk)

    monkeypatch.setattr(loop, "_prefill", record)
    results: dict[str, list[Candidate]] = {}
    threads: list[threading.Thread] = []

    def newcomers_join(text: str, stops: tuple[str, ...]) -> None:
        # in the loop thread, mid-decode of the driver: both calls queue before the next step
        if threads:
            return
        calls_before = loop.calls
        threads.extend(
            [
                threading.Thread(
                    target=lambda: results.update(a=a.generate(first_a[0].text, [GREEDY], LIMITS))
                ),
                threading.Thread(target=lambda: results.update(b=b.generate("", [GREEDY], LIMITS))),
            ]
        )
        for thread in threads:
            thread.start()
        while loop.calls < calls_before + 2:
            threading.Event().wait(0.001)

    chunks.clear()
    driven = driver.generate("", [GREEDY], replace(driver_limits, on_text=newcomers_join))
    for thread in threads:
        thread.join(timeout=60)
    for session in (a, b, driver):
        session.close()
    _same(solo_driver[0], driven[0])
    _same(solo_a[0], first_a[0])
    _same(solo_a[1], results["a"][0])
    _same(solo_b[0], results["b"][0])
    # the driver's prefill, then the newcomers: the short rest and the long one apart
    assert chunks[0] == [len(driver.prompt_ids)]
    assert sorted(map(len, chunks[1:])) == [1, 1], chunks
