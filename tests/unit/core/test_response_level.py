"""Response level: whole answers, then majority vote, best-of-n or pairwise ranking (+ fusion).

Tiny random models (two tokenizers) check the mechanics; scripted members give answers with a
known final answer so the vote itself can be checked; SmolLM2 writes real answers once."""

from __future__ import annotations

from pathlib import Path

import pytest

from ensemble_core.engine import run_ensemble
from ensemble_core.errors import ConfigError
from ensemble_core.pool import ModelPool
from ensemble_core.result import EnsembleResult, SegmentEvent
from ensemble_core.spec import EnsembleConfig, EnsembleSpec, GenerationRequest, ModelSpec

from .conftest import ask
from .scripted import scripted_member


def _response(
    pool: ModelPool,
    specs: list[ModelSpec],
    method: str,
    request: GenerationRequest | None = None,
    **params: object,
) -> EnsembleResult:
    config = EnsembleConfig(
        model_selection_method="all",
        aggregation_level="response",
        aggregation_method=method,
        aggregation_params=params,
    )
    return run_ensemble(EnsembleSpec(model_specs=specs), config, request or ask(max_tokens=12, seed=7), pool)


def _candidates(result: EnsembleResult) -> list[dict]:
    (only_round,) = result.trace["rounds"]
    return only_round["candidates"]


def _winner(result: EnsembleResult) -> dict:
    (only_round,) = result.trace["rounds"]
    return only_round["candidates"][only_round["winner_index"]]


@pytest.fixture(scope="module")
def tiny_members(tiny_dirs: dict[str, Path]) -> list[ModelSpec]:
    return [
        ModelSpec(path=str(tiny_dirs["llama"]), name="llama", temperature=0.9),
        ModelSpec(path=str(tiny_dirs["gpt2"]), name="gpt2", temperature=0.9),
    ]


def test_majority_vote_counts_final_answers(pool: ModelPool) -> None:
    a = scripted_member(
        pool, "a", [("so the answer is 4", "eos"), ("I get 5 here", "eos"), ("which makes 4.0", "eos")]
    )
    b = scripted_member(pool, "b", [("Answer: 4", "eos")])
    events: list[SegmentEvent] = []
    config = EnsembleConfig(
        model_selection_method="all",
        aggregation_level="response",
        ensemble_method="majority_vote",
        aggregation_params={"samples_per_model": 3},
    )
    result = run_ensemble(EnsembleSpec(model_specs=[a, b]), config, ask(max_tokens=8), pool, events.append)
    summary = result.trace["summary"]
    assert summary["votes"] == {"4": 5, "5": 1}
    assert summary["winning_answer"] == "4"
    # the winning answer's most likely candidate per byte (scripted: -1 per word)
    assert result.text == "which makes 4.0"  # 3 words in 15 bytes: -0.2 per byte
    assert [c["answer"] for c in _candidates(result)] == ["4", "5", "4", "4", "4", "4"]
    assert [(c["model"], c["sample"]) for c in _candidates(result)][:4] == [
        ("a", 0),
        ("a", 1),
        ("a", 2),
        ("b", 0),
    ]
    assert result.method == "all+majority_vote"
    assert result.stop_reason == "eos" and result.finish_reason == "stop"
    assert [e.text for e in events] == [result.text]


def test_majority_vote_on_tiny_models(pool: ModelPool, tiny_members: list[ModelSpec]) -> None:
    result = _response(pool, tiny_members, "self_consistency", samples_per_model=2)
    candidates = _candidates(result)
    assert [c["model"] for c in candidates] == ["llama", "llama", "gpt2", "gpt2"]
    assert all("answer" in c and "answer_raw" in c for c in candidates)
    assert result.text == _winner(result)["text"]
    winner_tokens = _winner(result)["tokens"]
    assert result.usage.completion_tokens == winner_tokens
    discarded = sum(u.discarded for u in result.usage.per_model.values())
    assert discarded == sum(c["tokens"] for c in candidates) - winner_tokens
    # replayable: the same seed gives the same candidates
    again = _response(pool, tiny_members, "self_consistency", samples_per_model=2)
    assert [c["text"] for c in _candidates(again)] == [c["text"] for c in candidates]


def test_best_of_n_picks_the_highest_score(pool: ModelPool, tiny_members: list[ModelSpec]) -> None:
    result = _response(pool, tiny_members[:1], "best_of_n", samples_per_model=3)
    candidates = _candidates(result)
    assert len(candidates) == 3 and all("score" in c for c in candidates)
    assert _winner(result)["score"] == max(c["score"] for c in candidates)
    assert result.trace["summary"]["scorers"] == ["likelihood"]
    # own-model likelihood is free: the decode's own log-probabilities, no scoring pass
    # (per UTF-8 byte of the text: one scale for every tokenizer)
    assert all(
        c["raw_scores"]["likelihood"]
        == pytest.approx(c["mean_logprob"] * c["tokens"] / max(len(c["text"].encode()), 1), abs=1e-2)
        for c in candidates
    )


def test_llm_blender_ranks_pairwise_and_fuses(pool: ModelPool, tiny_members: list[ModelSpec]) -> None:
    ranked = _response(pool, tiny_members, "llm_blender", samples_per_model=2)
    summary = ranked.trace["summary"]
    assert summary["comparisons"] == 6
    assert sum(r["wins"] for r in summary["ranking"]) == 6
    assert ranked.text == _candidates(ranked)[summary["ranking"][0]["index"]]["text"]

    fuser = tiny_members[0].path
    fused = _response(pool, tiny_members, "llm_blender", samples_per_model=2, fuser=fuser, fuse_top_k=2)
    summary = fused.trace["summary"]
    assert summary["fused"] is True and summary["fused_from"] == [r["index"] for r in summary["ranking"][:2]]
    usage = fused.usage.per_model[summary["fuser"]]
    assert usage.prompt > 0 and usage.generated >= summary["fused_tokens"]
    assert fused.usage.completion_tokens == summary["fused_tokens"]
    # the fuser read the question and the two best candidates: its prompt is longer than theirs
    assert usage.prompt > fused.usage.per_model["llama"].prompt


def test_response_level_validation() -> None:
    from ensemble_core.methods import plan_for

    plan = plan_for(
        EnsembleConfig(aggregation_level="response")
    )  # ensemble_method "simple": the level's default
    assert (plan.level, plan.aggregator_name) == ("response", "majority_vote")
    with pytest.raises(ConfigError, match="samples_per_model"):
        plan_for(EnsembleConfig(aggregation_level="response", aggregation_params={"samples_per_model": 0}))
    with pytest.raises(ConfigError, match="fuser"):
        plan_for(
            EnsembleConfig(
                aggregation_level="response",
                aggregation_method="llm_blender",
                aggregation_params={"fuser": {"path": "x", "engine": "nope"}},
            )
        )


@pytest.mark.slow
def test_smollm2_self_consistency(pool: ModelPool, smollm2) -> None:  # type: ignore[no-untyped-def]
    spec = ModelSpec(path="bundled:smollm2", name="smollm2", temperature=0.7)
    request = ask("What is 2 + 3? Reply with just the number.", max_tokens=8, seed=1)
    result = _response(pool, [spec], "majority_vote", request, samples_per_model=3)
    summary = result.trace["summary"]
    assert len(_candidates(result)) == 3
    assert summary["winning_answer"] is not None
    assert _winner(result)["answer"] == summary["winning_answer"]
    assert summary["winning_votes"] == max(summary["votes"].values())
