"""The real bundled SmolLM2-135M-Instruct, loaded once per session: one short run per method
with a fixed seed, and greedy cache reuse equal to the naive path token for token."""

from __future__ import annotations

import pytest

from ensemble_core.engine import run_ensemble
from ensemble_core.pool import ModelPool
from ensemble_core.result import EnsembleResult
from ensemble_core.spec import EnsembleConfig, EnsembleSpec, ModelSpec

from .conftest import ask

pytestmark = pytest.mark.slow

QUESTION = "Name three primary colors."


def _spec(t0: float, t1: float) -> EnsembleSpec:
    return EnsembleSpec(
        model_specs=[
            ModelSpec(path="bundled:smollm2", name="cool", temperature=t0),
            ModelSpec(path="bundled:smollm2", name="warm", temperature=t1),
        ]
    )


def _run(pool: ModelPool, spec: EnsembleSpec, max_tokens: int = 12, **config: object) -> EnsembleResult:
    params = {"segment_tokens": 6, **config.pop("aggregation_params", {})}  # type: ignore[dict-item]
    config.setdefault("model_selection_method", "all")
    cfg = EnsembleConfig(max_rounds=6, score_threshold=None, aggregation_params=params, **config)  # type: ignore[arg-type]
    return run_ensemble(spec, cfg, ask(QUESTION, max_tokens=max_tokens, seed=1234), pool)


@pytest.mark.parametrize("method", ["reward_based", "random", "round_robin", "progressive"])
def test_greedy_cache_reuse_equals_the_naive_path(pool: ModelPool, smollm2, method: str) -> None:  # type: ignore[no-untyped-def]
    spec = _spec(0.0, 0.0)
    extra = {"progressive_mode": "length", "length_thresholds": [6]} if method == "progressive" else {}
    reuse = _run(pool, spec, ensemble_method=method, **extra)
    naive = _run(pool, spec, ensemble_method=method, aggregation_params={"reuse_cache": False}, **extra)
    assert reuse.text == naive.text
    assert [r["winner"] for r in reuse.trace["rounds"]] == [r["winner"] for r in naive.trace["rounds"]]
    assert reuse.usage.per_model["cool"].prefilled < naive.usage.per_model["cool"].prefilled
    assert "red" in reuse.text.lower() or "blue" in reuse.text.lower()


def test_sampled_members_are_replayable_by_seed(pool: ModelPool, smollm2) -> None:  # type: ignore[no-untyped-def]
    first = _run(pool, _spec(0.3, 0.9), ensemble_method="reward_based")
    again = _run(pool, _spec(0.3, 0.9), ensemble_method="reward_based")
    assert first.text == again.text
    assert first.text.strip()
    assert first.usage.completion_tokens <= 12
    assert {c["model"] for c in first.trace["rounds"][0]["candidates"]} == {"cool", "warm"}


@pytest.mark.parametrize("selection", ["all", "random", "zscore", "llm_blender"])
def test_each_selection_method_on_smollm2(pool: ModelPool, smollm2, selection: str) -> None:  # type: ignore[no-untyped-def]
    result = _run(
        pool,
        _spec(0.3, 0.9),
        max_tokens=4,
        model_selection_method=selection,
        model_selection_params={"probe_tokens": 4} if selection == "llm_blender" else {},
        ensemble_method="loop",
    )
    assert result.selected_models
    assert set(result.selected_models) <= {"cool", "warm"}
    assert result.trace["selection"]["method"] == selection
    if selection == "zscore":  # same weights, same prompt: identical numbers, both kept
        details = result.trace["selection"]["details"]
        assert details["cool"]["perplexity"] == details["warm"]["perplexity"] > 1


def test_bundled_default_configuration_answers(pool: ModelPool, smollm2) -> None:  # type: ignore[no-untyped-def]
    from ensemble_core.bundled import default_ensemble_spec

    spec = default_ensemble_spec()
    result = run_ensemble(
        spec, spec.default_ensemble_config, ask("What is the capital of France?", max_tokens=10, seed=0), pool
    )
    assert "Paris" in result.text
    candidates = result.trace["rounds"][0]["candidates"]
    # three whole answers, one per member, each with the vote's three numbers
    assert [c["model"] for c in candidates] == ["smollm2", "smollm2-raw", "gemma3-270m"]
    assert all(set(c["raw_scores"]) == {"agreement", "novelty", "likelihood"} for c in candidates)
