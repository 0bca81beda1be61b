"""Token level (``gac``): distributions averaged over a union vocabulary, on real transformers
models: a tiny llama with a byte-level BPE tokenizer and a tiny gpt2 with a SentencePiece-style
one (``▁`` spaces, ``<0xNN>`` byte fallback); SmolLM2 + Gemma-3 for the slow ones."""

from __future__ import annotations

from pathlib import Path

import pytest

from ensemble_core.engine import run_ensemble
from ensemble_core.errors import ConfigError
from ensemble_core.pool import ModelPool
from ensemble_core.ports import Sampling, SegmentLimits
from ensemble_core.result import EnsembleResult, SegmentEvent
from ensemble_core.spec import EnsembleConfig, EnsembleSpec, GenerationRequest, ModelSpec
from tests.tiny_sentencepiece import build_tiny_sentencepiece_model

from .conftest import ask
from .real_models import GEMMA, gemma3_fixture  # noqa: F401  (fixture)


def _greedy(pool: ModelPool, spec: ModelSpec, request: GenerationRequest) -> str:
    """The model alone, one uninterrupted greedy decode (the reference)."""
    session = pool.generator(spec).open_session(request.prompt_input(), seed=0)
    limits = SegmentLimits(
        max_new_tokens=request.max_tokens, boundary="none", stop_strings=tuple(request.stop)
    )
    return session.generate("", [Sampling(0.0)], limits)[0].text


def _token(
    pool: ModelPool, specs: list[ModelSpec], request: GenerationRequest, **params: object
) -> EnsembleResult:
    config = EnsembleConfig(
        model_selection_method="all", aggregation_level="token", aggregation_params=params
    )
    return run_ensemble(EnsembleSpec(model_specs=specs), config, request, pool)


@pytest.fixture(scope="module")
def llama(tiny_dirs: dict[str, Path]) -> ModelSpec:
    return ModelSpec(path=str(tiny_dirs["llama"]), name="llama")


@pytest.fixture(scope="module")
def sp_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_sentencepiece_model(tmp_path_factory.mktemp("tiny-sp") / "sp", arch="gpt2")


@pytest.fixture(scope="module")
def gpt2(sp_dir: Path) -> ModelSpec:
    """A gpt2 with a SentencePiece-style tokenizer: another architecture and another vocabulary."""
    return ModelSpec(path=str(sp_dir), name="gpt2")


@pytest.mark.parametrize("arch", ["llama", "gpt2", "sentencepiece"])
def test_a_model_with_itself_reproduces_its_greedy_output(
    pool: ModelPool, tiny_dirs: dict[str, Path], sp_dir: Path, arch: str
) -> None:
    request = ask(max_tokens=40, temperature=0.0)
    path = sp_dir if arch == "sentencepiece" else tiny_dirs[arch]
    alone = ModelSpec(path=str(path), name="alone")
    # a second load of the same weights (another load key): two models, identical distributions
    twin = alone.model_copy(update={"name": "twin", "engine_options": {"torch_dtype": "float32"}})
    reference = _greedy(pool, alone, request)
    for members in ([alone], [alone, twin]):
        result = _token(pool, members, request)
        assert result.text == reference
        summary = result.trace["summary"]
        assert summary["disagreements"] == 0
        assert summary["ensembled_steps"] == summary["steps"] == result.usage.completion_tokens
    assert result.method == "all+gac"
    assert result.usage.per_model["twin"].forward_passes == summary["steps"]


def test_two_vocabularies_vote_and_the_trace_counts_disagreements(
    pool: ModelPool, llama: ModelSpec, gpt2: ModelSpec
) -> None:
    request = ask(max_tokens=24, temperature=0.0)
    events: list[SegmentEvent] = []
    config = EnsembleConfig(model_selection_method="all", aggregation_level="token")
    result = run_ensemble(
        EnsembleSpec(model_specs=[llama, gpt2]), config, request, pool, on_segment=events.append
    )
    summary = result.trace["summary"]
    assert summary["leader"] == "llama"
    assert summary["ensembled_steps"] == summary["steps"] == 24
    assert summary["union_vocabulary"] > 525  # byte-level 400 + SentencePiece 525, partly shared
    assert summary["agreement"]["llama"] == pytest.approx(1 - summary["disagreement_rate"], abs=1e-3)
    assert len(summary["disagreement_examples"]) == min(summary["disagreements"], 20)
    # every step: one forward pass per model, no more
    assert summary["forward_passes"] == {"llama": 24, "gpt2": 24}
    assert "".join(e.text for e in events) == result.text
    assert {e.model for e in events} == {"ensemble"}


def test_a_zero_weight_member_follows_without_changing_the_answer(
    pool: ModelPool, llama: ModelSpec, gpt2: ModelSpec
) -> None:
    """gpt2 keeps extending its own context with llama's tokens (re-tokenizing what its own
    vocabulary lacks) while its vote counts for nothing: the answer is llama's greedy one."""
    request = ask(max_tokens=30, temperature=0.0)
    result = _token(pool, [llama, gpt2], request, model_weights={"gpt2": 0.0})
    assert result.text == _greedy(pool, llama, request)
    summary = result.trace["summary"]
    assert summary["disagreements"] == 0 and summary["sat_out"] == {}
    assert summary["forward_passes"]["gpt2"] == 30


def test_uncertain_steps_only(pool: ModelPool, llama: ModelSpec, gpt2: ModelSpec) -> None:
    request = ask(max_tokens=20, temperature=0.0)
    # a leader always sure of itself: nobody else ever runs, the answer is the leader's
    sure = _token(pool, [llama, gpt2], request, ensemble_steps="uncertain", uncertainty_threshold=1e-9)
    assert sure.text == _greedy(pool, llama, request)
    assert sure.trace["summary"]["ensembled_steps"] == 0
    assert sure.trace["summary"]["forward_passes"]["gpt2"] == 0
    assert sure.trace["summary"]["forward_passes_per_token"] == 1.0
    # a leader never sure: every step is ensembled, exactly as with ensemble_steps "all"
    unsure = _token(pool, [llama, gpt2], request, ensemble_steps="uncertain", uncertainty_threshold=1.0)
    every = _token(pool, [llama, gpt2], request)
    assert unsure.text == every.text
    assert unsure.trace["summary"]["ensembled_steps"] == 20


def test_sampling_is_seeded_per_job(pool: ModelPool, llama: ModelSpec, gpt2: ModelSpec) -> None:
    def sample(seed: int) -> str:
        return _token(pool, [llama, gpt2], ask(max_tokens=16, temperature=1.0, top_p=0.9, seed=seed)).text

    first = sample(3)
    assert sample(3) == first
    assert any(sample(seed) != first for seed in (4, 5, 6))


def test_confidence_weighting_and_stop_strings(pool: ModelPool, llama: ModelSpec, gpt2: ModelSpec) -> None:
    request = ask(max_tokens=30, temperature=0.0)
    full = _token(pool, [llama, gpt2], request, weighting="confidence")
    assert full.trace["aggregation"]["params"]["weighting"] == "confidence"
    stop = full.text[len(full.text) // 2 : len(full.text) // 2 + 2]
    cut = _token(pool, [llama, gpt2], request.model_copy(update={"stop": [stop]}), weighting="confidence")
    assert cut.stop_reason == "stop_string"
    assert cut.text == full.text[: full.text.index(stop)]


def test_token_level_refuses_what_it_cannot_do(pool: ModelPool, llama: ModelSpec) -> None:
    remote = ModelSpec(path="some-model", engine="openai", name="remote")
    with pytest.raises(ConfigError, match="only the 'hf' engine"):
        _token(pool, [llama, remote], ask(max_tokens=4))
    with pytest.raises(ConfigError, match="unknown member"):
        _token(pool, [llama], ask(max_tokens=4), leader="nobody")
    with pytest.raises(ConfigError, match="uncertainty_threshold"):
        _token(pool, [llama], ask(max_tokens=4), uncertainty_threshold=0)


@pytest.mark.slow
def test_smollm2_with_itself_is_its_greedy_answer(pool: ModelPool, smollm2) -> None:  # type: ignore[no-untyped-def]
    request = ask("What is the capital of France?", max_tokens=6, temperature=0.0)
    spec = ModelSpec(path="bundled:smollm2", name="smollm2")
    assert _token(pool, [spec], request).text == _greedy(pool, spec, request)


@pytest.mark.slow
def test_smollm2_and_gemma3_write_together(pool: ModelPool, smollm2, gemma3) -> None:  # type: ignore[no-untyped-def]
    request = ask("What is the capital of France?", max_tokens=6, temperature=0.0)
    smol = ModelSpec(path="bundled:smollm2", name="smollm2")
    result = _token(pool, [smol, GEMMA], request)
    summary = result.trace["summary"]
    assert summary["steps"] == 6 and result.text.strip()
    assert summary["union_vocabulary"] > 262_144
    assert summary["forward_passes"] == {"smollm2": summary["steps"], "gemma3": summary["steps"]}
    assert result.usage.per_model["gemma3"].prompt > 0
    # uncertain steps only: Gemma runs on fewer steps than SmolLM2
    fewer = _token(pool, [smol, GEMMA], request, ensemble_steps="uncertain", uncertainty_threshold=0.5)
    passes = fewer.trace["summary"]["forward_passes"]
    assert passes["gemma3"] <= passes["smollm2"]
    assert fewer.trace["summary"]["ensembled_steps"] < fewer.trace["summary"]["steps"]
