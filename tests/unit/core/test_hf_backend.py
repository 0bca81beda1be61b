"""The HF backend on tiny random models (llama and gpt2, two tokenizers): chat template,
segments that end while decoding, batched candidates, prefix-cache reuse and its accounting,
and the load options."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ensemble_core.backends.hf import HFTextGenerator
from ensemble_core.errors import ModelLoadError
from ensemble_core.pool import ModelPool
from ensemble_core.ports import Sampling, SegmentLimits
from ensemble_core.spec import ChatMessage, ModelSpec, PromptInput

MESSAGES = [ChatMessage(role="user", content="What is 2+2?")]
HOT = Sampling(1.0)  # random models decode greedily into loops of one token; sampling is seeded


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def tiny(request, pool: ModelPool, tiny_dirs: dict[str, Path]) -> HFTextGenerator:  # type: ignore[no-untyped-def]
    generator = pool.generator(ModelSpec(path=str(tiny_dirs[request.param]), name=request.param))
    assert isinstance(generator, HFTextGenerator)
    return generator


def test_prompt_uses_the_models_chat_template(tiny: HFTextGenerator) -> None:
    session = tiny.open_session(PromptInput.chat(MESSAGES))
    assert session.prompt_text == "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"
    assert session.counters.prompt_tokens == len(tiny.encode(session.prompt_text))


def test_greedy_is_deterministic_and_batched_rows_match_single(tiny: HFTextGenerator) -> None:
    limits = SegmentLimits(max_new_tokens=12, boundary="none")
    alone = tiny.open_session(PromptInput.chat(MESSAGES)).generate("", [Sampling(0.0)], limits)[0]
    batched = tiny.open_session(PromptInput.chat(MESSAGES)).generate(
        "", [Sampling(0.0), Sampling(1.0)], limits
    )
    assert batched[0].token_ids == alone.token_ids
    assert len(alone.token_logprobs) == alone.num_tokens
    assert all(lp <= 0.0 for lp in alone.token_logprobs)


def test_sampling_is_replayable_by_seed(tiny: HFTextGenerator) -> None:
    limits = SegmentLimits(max_new_tokens=10, boundary="none")
    runs = [
        tiny.open_session(PromptInput.chat(MESSAGES), seed=seed)
        .generate("", [Sampling(1.0, 0.9)], limits)[0]
        .token_ids
        for seed in (7, 7, 8)
    ]
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]


def _marker(tiny: HFTextGenerator, ids: list[int]) -> str:
    """A printable character that first appears in the text with a later generated token."""
    for i in range(1, len(ids)):
        before, after = tiny.decode(ids[:i]), tiny.decode(ids[: i + 1])
        for char in after[len(before) :] if after.startswith(before) else "":
            if char.strip() and char != "\ufffd" and char not in before:
                return char
    pytest.skip("the random model produced no printable character")


def test_segment_ends_at_boundary_found_while_decoding(tiny: HFTextGenerator) -> None:
    """With a boundary string that the model is bound to produce soon, the candidate stops
    right after it: no token is generated past the boundary."""
    probe = tiny.open_session(PromptInput.chat(MESSAGES), seed=11).generate(
        "", [HOT], SegmentLimits(max_new_tokens=20, boundary="none")
    )[0]
    marker = _marker(tiny, probe.token_ids)
    candidate = tiny.open_session(PromptInput.chat(MESSAGES), seed=11).generate(
        "", [HOT], SegmentLimits(max_new_tokens=20, boundary="none", boundary_strings=(marker,))
    )[0]
    assert candidate.finish == "boundary_string"
    assert marker in candidate.text
    assert marker not in tiny.decode(candidate.token_ids[:-1])
    assert candidate.token_ids == probe.token_ids[: candidate.num_tokens]


def test_stop_string_cuts_the_candidate(tiny: HFTextGenerator) -> None:
    probe = tiny.open_session(PromptInput.chat(MESSAGES), seed=11).generate(
        "", [HOT], SegmentLimits(max_new_tokens=20, boundary="none")
    )[0]
    stop = _marker(tiny, probe.token_ids)
    candidate = tiny.open_session(PromptInput.chat(MESSAGES), seed=11).generate(
        "", [HOT], SegmentLimits(max_new_tokens=20, boundary="none", stop_strings=(stop,))
    )[0]
    assert candidate.finish == "stop_string"
    assert candidate.stop_string == stop
    assert candidate.text == probe.text[: probe.text.index(stop)]


def test_cache_reuse_prefills_only_the_new_text_and_logits_match(tiny: HFTextGenerator) -> None:
    """Round after round the reused cache holds the accepted prefix: only new tokens are
    prefilled, and the next-token logits equal a fresh full prefill (by tolerance: tiny random
    models have near-tied logits, so greedy tokens are not compared)."""
    limits = SegmentLimits(max_new_tokens=8, boundary="none")
    reuse = tiny.open_session(PromptInput.chat(MESSAGES), reuse_cache=True)
    naive = tiny.open_session(PromptInput.chat(MESSAGES), reuse_cache=False)
    accepted = ""
    for _ in range(3):
        accepted += reuse.generate(accepted, [Sampling(0.0), Sampling(0.9)], limits)[0].text
        naive.generate(accepted, [Sampling(0.0)], SegmentLimits(max_new_tokens=1, boundary="none"))
    target = tiny.encode(reuse.prompt_text + accepted + " two")
    with torch.inference_mode():
        reused_logits = reuse._prefill(target)
        fresh_logits = naive._prefill(target)
    torch.testing.assert_close(reused_logits, fresh_logits, atol=1e-4, rtol=1e-4)
    assert reuse.counters.prefilled < naive.counters.prefilled / 2


def test_score_continuations_match_a_full_forward(tiny: HFTextGenerator) -> None:
    session = tiny.open_session(PromptInput.chat(MESSAGES))
    session.generate("", [Sampling(0.0)], SegmentLimits(max_new_tokens=4, boundary="none"))
    continuations = [" four", " the answer is four", "4"]
    scores = session.score_continuations("Well,", continuations)
    for text, score in zip(continuations, scores, strict=True):
        base = tiny.encode(session.prompt_text + "Well,")
        full = tiny.encode(session.prompt_text + "Well," + text)
        start = next(i for i, (a, b) in enumerate(zip(base + [-1], full, strict=False)) if a != b)
        with torch.inference_mode():
            logits = tiny.model(input_ids=torch.tensor([full])).logits[0].float()
        logprobs = torch.log_softmax(logits, -1)
        expected = [float(logprobs[p - 1, full[p]]) for p in range(start, len(full))]
        assert score.tokens == len(expected)
        assert score.mean_logprob == pytest.approx(sum(expected) / len(expected), abs=1e-4)


def test_prompt_statistics(tiny: HFTextGenerator) -> None:
    stats = tiny.open_session(PromptInput.chat(MESSAGES)).prompt_statistics()
    assert stats.mean_nll > 0
    assert 0 < stats.mean_top1_prob <= 1
    assert stats.perplexity > 1


def test_load_options_reach_transformers(tiny_dirs: dict[str, Path]) -> None:
    spec = ModelSpec(
        path=str(tiny_dirs["llama"]),
        engine_options={"attn_implementation": "eager", "use_device_map": True, "torch_dtype": "bfloat16"},
    )
    generator = HFTextGenerator(spec)
    assert generator.model.config._attn_implementation == "eager"
    assert generator.model.dtype == torch.bfloat16
    assert generator.device == "cpu"
    candidate = generator.open_session(PromptInput.chat(MESSAGES)).generate(
        "", [Sampling(0.0)], SegmentLimits(max_new_tokens=3)
    )[0]
    assert candidate.num_tokens >= 1


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"quantization": "8bit"}, "needs bitsandbytes and a CUDA GPU"),
        ({"quantization": "4bit"}, "needs bitsandbytes and a CUDA GPU"),
        ({"device": "cuda:1"}, "no CUDA GPU"),
        ({"device": "tpu"}, "unknown or unavailable device"),
        ({"engine_options": {"flash": True}}, "valid: ['attn_implementation'"),
        ({"engine_options": {"torch_dtype": "float99"}}, "unknown torch_dtype"),
        ({"path": "/nonexistent/model"}, "could not load"),
    ],
)
def test_load_failures_are_clear(tiny_dirs: dict[str, Path], changes: dict, message: str) -> None:
    if torch.cuda.is_available() and "device" in changes:
        pytest.skip("this machine has a GPU")
    spec = ModelSpec(path=str(tiny_dirs["llama"])).model_copy(update=changes)
    with pytest.raises(ModelLoadError) as info:
        ModelPool().generator(spec)
    assert message in info.value.message
    assert info.value.code == "model_load_failed"


def test_unavailable_engine_is_a_load_error(tiny_dirs: dict[str, Path]) -> None:
    with pytest.raises(ModelLoadError, match="available: hf"):
        ModelPool().generator(ModelSpec(path=str(tiny_dirs["llama"]), engine="vllm"))


def test_pool_loads_once_per_weights(tiny_dirs: dict[str, Path]) -> None:
    # a pool of its own: the session's shared pool also holds loads of these weights with other
    # load options (other tests), which are separate loads by design
    pool = ModelPool()
    a = pool.generator(ModelSpec(path=str(tiny_dirs["llama"]), name="x", temperature=0.1))
    b = pool.generator(ModelSpec(path=str(tiny_dirs["llama"]), name="y", temperature=0.9))
    assert a is b
    rows = [r for r in pool.loaded() if r["path"] == str(tiny_dirs["llama"])]
    assert len(rows) == 1
    assert set(rows[0]) >= {"name", "path", "engine", "device", "load_seconds"}


def test_sliding_window_cache_crops_past_the_window(tmp_path: Path) -> None:
    """Gemma 3 layers forget states beyond their window; the prefix cache keeps them so that a
    crop far past the window (window 8 here, 60+ tokens) still equals a fresh prefill."""
    from tests.tiny_models import build_tiny_model

    generator = HFTextGenerator(ModelSpec(path=str(build_tiny_model(tmp_path / "gemma3", arch="gemma3"))))
    reuse = generator.open_session(PromptInput.chat(MESSAGES), reuse_cache=True, seed=1)
    naive = generator.open_session(PromptInput.chat(MESSAGES), reuse_cache=False)
    accepted = ""
    for _ in range(5):
        # two candidates of 12 tokens each, then a crop back to the accepted text
        accepted += reuse.generate(accepted, [HOT, HOT], SegmentLimits(max_new_tokens=12, boundary="none"))[
            1
        ].text
    target = generator.encode(reuse.prompt_text + accepted + " ten")
    assert len(target) > 60
    with torch.inference_mode():
        torch.testing.assert_close(reuse._prefill(target), naive._prefill(target), atol=1e-4, rtol=1e-4)


def test_candidates_carry_deepconf_confidence_and_self_certainty(tiny: HFTextGenerator) -> None:
    """Computed while decoding from the untempered distribution; checked against a full forward."""
    session = tiny.open_session(PromptInput.chat(MESSAGES), seed=3)
    candidate = session.generate("", [HOT], SegmentLimits(max_new_tokens=6, boundary="none"))[0]
    assert len(candidate.token_confidence) == len(candidate.token_self_certainty) == candidate.num_tokens
    full = tiny.encode(session.prompt_text) + candidate.token_ids
    start = len(full) - candidate.num_tokens
    with torch.inference_mode():
        logprobs = torch.log_softmax(tiny.model(input_ids=torch.tensor([full])).logits[0].float(), -1)
    for step in range(candidate.num_tokens):
        row = logprobs[start + step - 1]
        assert candidate.token_confidence[step] == pytest.approx(float(-row.topk(20).values.mean()), abs=1e-3)
        kl_uniform = float(-row.mean() - torch.log(torch.tensor(float(row.numel()))))
        assert candidate.token_self_certainty[step] == pytest.approx(kl_uniform, abs=1e-3)
        assert candidate.token_confidence[step] > 0 and candidate.token_self_certainty[step] >= 0
