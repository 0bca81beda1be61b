"""Confidence and agreement at the response level with fixed per-token numbers: the DeepConf
vote, the cascade (who runs, who decides), echoes that must not vote, and zscore preferring the
member that is sure of its answer. The generators are scripted inputs (text + fixed token
confidences); the methods are the things under test."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from ensemble_core.engine import run_ensemble
from ensemble_core.errors import ConfigError
from ensemble_core.pool import ModelPool
from ensemble_core.ports import (
    Candidate,
    ContinuationScore,
    PromptStatistics,
    Sampling,
    SegmentLimits,
    SessionCounters,
)
from ensemble_core.selection.zscore import calibrate
from ensemble_core.spec import ChatMessage, EnsembleConfig, EnsembleSpec, GenerationRequest, ModelSpec

QUESTION = "What is 2+3?"
Script = list[tuple[str, float]]  # (text, token confidence of every token)


class _ConfidentSession:
    def __init__(self, script: Script, calls: list[int]) -> None:
        self.script, self.calls = script, calls
        self.turn = 0
        self.counters = SessionCounters(prompt_tokens=4)

    def generate(
        self, accepted_text: str, samplings: list[Sampling], limits: SegmentLimits
    ) -> list[Candidate]:
        self.calls.append(len(samplings))
        out = []
        for _ in samplings:
            text, confidence = self.script[min(self.turn, len(self.script) - 1)]
            self.turn += 1
            n = min(max(len(text.split()), 1), limits.max_new_tokens)
            self.counters.generated += n
            out.append(Candidate(text, list(range(n)), [-0.5] * n, "eos", token_confidence=[confidence] * n))
        return out

    def prompt_statistics(self) -> PromptStatistics:
        return PromptStatistics(mean_nll=2.0, mean_top1_prob=0.5, tokens=4)

    def score_continuations(self, accepted_text: str, continuations: list[str]) -> list[ContinuationScore]:
        return [ContinuationScore(-1.0, 1) for _ in continuations]

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def close(self) -> None:
        pass


class _ConfidentGenerator:
    engine, device, load_seconds, supports_concurrency = "hf", "cpu", 0.0, True

    def __init__(self, name: str, script: Script) -> None:
        self.name, self.script = name, script
        self.calls: list[int] = []

    def open_session(self, messages: Any, **kwargs: Any) -> _ConfidentSession:
        return _ConfidentSession(self.script, self.calls)


def _member(pool: ModelPool, name: str, script: Script) -> tuple[ModelSpec, _ConfidentGenerator]:
    spec = ModelSpec(path=f"confident/{name}/{abs(hash(tuple(script)))}", name=name, temperature=0.7)
    generator = _ConfidentGenerator(name, script)
    pool.load("generator", spec, lambda: generator)
    return spec, pool.generator(spec)  # type: ignore[return-value]


def _run(pool: ModelPool, specs: list[ModelSpec], method: str, **params: Any) -> Any:
    selection = params.pop("selection", {})
    config = EnsembleConfig(
        aggregation_level="response",
        aggregation_method=method,
        aggregation_params=params,
        **selection,
    )
    request = GenerationRequest(messages=[ChatMessage(role="user", content=QUESTION)], max_tokens=16)
    return run_ensemble(EnsembleSpec(model_specs=specs), config, request, pool)


def test_confidence_weighted_vote_beats_a_plain_majority() -> None:
    pool = ModelPool()
    # two unsure "6"s against one sure "5"
    spec, _ = _member(pool, "solo", [("It is 6.", 1.0), ("It is 6.", 1.2), ("The answer is 5.", 6.0)])
    plain = _run(pool, [spec], "majority_vote", samples_per_model=3)
    assert plain.trace["summary"]["winning_answer"] == "6"
    weighted = _run(pool, [spec], "deepconf_vote", samples_per_model=3)
    summary = weighted.trace["summary"]
    assert summary["winning_answer"] == "5" and weighted.text == "The answer is 5."
    assert summary["weights"] == {"6": pytest.approx(2.2), "5": pytest.approx(6.0)}
    assert [c["raw_scores"]["confidence"] for c in weighted.trace["rounds"][0]["candidates"]] == [
        1.0,
        1.2,
        6.0,
    ]
    # keep_fraction filters before voting: DeepConf-low keeps the top 10% (here one)
    spec2, _ = _member(pool, "solo2", [("It is 6.", 4.0), ("It is 6.", 4.0), ("The answer is 5.", 6.0)])
    assert _run(pool, [spec2], "deepconf_vote", samples_per_model=3).trace["summary"]["winning_answer"] == "6"
    low = _run(pool, [spec2], "confidence_vote", samples_per_model=3, keep_fraction=0.1)
    assert low.trace["summary"]["winning_answer"] == "5" and low.trace["summary"]["kept"] == 1


def test_echoes_of_the_question_do_not_vote() -> None:
    """An echo of "What is 2+3?" would vote "3", very confidently; it must abstain."""
    pool = ModelPool()
    echo, _ = _member(pool, "echo", [(QUESTION, 9.0)])
    other_echo, _ = _member(pool, "echo2", [(QUESTION + " What is 2+3?", 9.0)])
    answer, _ = _member(pool, "answer", [("5", 1.0)])
    for method in ("majority_vote", "deepconf_vote"):
        result = _run(pool, [echo, other_echo, answer], method)
        assert result.text == "5", method
        rows = result.trace["rounds"][0]["candidates"]
        assert [r.get("vetoed", False) for r in rows] == [True, True, False]
        assert result.trace["summary"]["copies"] == 2


def test_cascade_runs_the_next_member_only_when_unsure() -> None:
    pool = ModelPool()
    cheap_sure, cheap_gen = _member(pool, "cheap", [("The answer is 5.", 5.0)])
    big, big_gen = _member(pool, "big", [("The answer is 7.", 9.0)])
    result = _run(pool, [cheap_sure, big], "cascade", min_confidence=3.0)
    assert result.text == "The answer is 5."
    assert big_gen.calls == [] and cheap_gen.calls == [1]  # the big model never ran
    assert result.usage.per_model.get("big") is None or result.usage.per_model["big"].generated == 0
    summary = result.trace["summary"]
    assert summary["stages_run"] == 1 and summary["decided_by"] == "cheap"

    cheap_unsure, _ = _member(pool, "cheap_unsure", [("The answer is 5.", 2.0)])
    result = _run(pool, [cheap_unsure, big], "cascade", min_confidence=3.0)
    assert result.text == "The answer is 7."
    stages = result.trace["summary"]["stages"]
    assert [s["member"] for s in stages] == ["cheap_unsure", "big"]
    assert stages[0]["reasons"] == ["low_confidence"] and stages[0]["went_on"]
    # order names the cheapest first, whatever the configured order
    reordered = _run(pool, [big, cheap_sure], "cascade", min_confidence=3.0, order=["cheap"])
    assert reordered.text == "The answer is 5."
    with pytest.raises(ConfigError, match="cascade order"):
        _run(pool, [big, cheap_sure], "cascade", order=["nobody"])


def test_cascade_goes_on_when_the_answer_only_repeats_the_question() -> None:
    pool = ModelPool()
    # "3" is a number of "What is 2+3?": sure, but it says nothing the question did not
    repeater, _ = _member(pool, "repeater", [("3", 9.0)])
    big, big_gen = _member(pool, "big_r", [("5", 4.0)])
    result = _run(pool, [repeater, big], "cascade", min_confidence=3.0)
    assert result.text == "5"
    assert result.trace["summary"]["stages"][0]["reasons"] == ["repeats_question"]
    kept = _run(pool, [repeater, big], "cascade", min_confidence=3.0, escalate_on_repeat=False)
    assert kept.text == "3" and kept.trace["summary"]["stages_run"] == 1


def test_cascade_goes_on_when_samples_disagree_and_can_vote_over_everything() -> None:
    pool = ModelPool()
    cheap, _ = _member(pool, "split", [("It is 5.", 5.0), ("It is 6.", 5.0)])
    big, _ = _member(pool, "big2", [("It is 6.", 4.0), ("It is 6.", 4.0)])
    result = _run(pool, [cheap, big], "agreement_cascade", min_confidence=1.0, samples_per_model=2)
    stages = result.trace["summary"]["stages"]
    assert stages[0]["reasons"] == ["samples_disagree"] and len(stages) == 2
    assert result.trace["summary"]["winning_answer"] == "6"
    voted = _run(pool, [cheap, big], "cascade", min_confidence=1.0, samples_per_model=2, final="vote")
    assert voted.trace["summary"]["weights"] == {"5": pytest.approx(5.0), "6": pytest.approx(13.0)}


def test_cascade_threshold_from_calibrated_answer_confidence() -> None:
    pool = ModelPool()
    cheap, _ = _member(pool, "calibrated", [("The answer is 5.", 2.0)])
    big, big_gen = _member(pool, "big3", [("The answer is 7.", 9.0)])
    usual = {"mean": 2.5, "std": 1.0}
    stats = {
        "calibrated": {
            "mean_nll": {"mean": 2.0, "std": 0.1},
            "mean_top1_prob": {"mean": 0.5, "std": 0.1},
            "prompts": 10,
            "answer_confidence": usual,
        }
    }
    # 2.0 is within half a std of this member's usual 2.5: confident enough for it
    result = _run(pool, [cheap, big], "cascade", reference_stats=stats)
    assert result.trace["summary"]["stages"][0]["threshold_source"] == "calibrated"
    assert result.text == "The answer is 5." and big_gen.calls == []
    strict = _run(pool, [cheap, big], "cascade", reference_stats=stats, min_confidence_z=0.0)
    assert strict.text == "The answer is 7."


def test_zscore_prefers_the_member_sure_of_its_answer() -> None:
    pool = ModelPool()
    unsure, _ = _member(pool, "unsure", [("maybe 4", 1.0)])
    sure, _ = _member(pool, "sure", [("5", 7.0)])
    selection = {
        "model_selection_method": "zscore",
        "model_selection_params": {"top_k": 1, "answer_confidence_weight": 1.0, "probe_tokens": 4},
    }
    result = _run(pool, [unsure, sure], "majority_vote", selection=selection)
    assert result.selected_models == ["sure"]
    details = result.trace["selection"]["details"]
    assert details["answer_confidence"] == {"unsure": 1.0, "sure": 7.0}
    assert details["sure"]["z_answer_confidence"] > details["unsure"]["z_answer_confidence"]
    assert result.usage.per_model["unsure"].discarded >= 1  # the probe is counted as thrown away
    # without the answer-confidence term the prompt statistics tie and both are equal
    plain = {"model_selection_method": "zscore", "model_selection_params": {"top_k": 1}}
    assert _run(pool, [unsure, sure], "majority_vote", selection=plain).selected_models == ["unsure"]


def test_calibrate_stores_answer_confidence(pool: ModelPool, tiny_dirs: dict[str, Path]) -> None:
    spec = ModelSpec(path=str(tiny_dirs["llama"]), name="llama")
    stats = calibrate([spec], ["What is 2+2?", "Name a colour."], pool, answer_tokens=4)
    answer = stats[spec.path]["answer_confidence"]
    assert answer["mean"] > 0 and answer["std"] >= 0
    assert stats[spec.path]["answer_logprob"]["mean"] < 0
    assert "answer_confidence" not in calibrate([spec], ["What is 2+2?"], pool)[spec.path]


def _stats(mean: float, std: float) -> dict[str, Any]:
    return {
        "mean_nll": {"mean": 2.0, "std": 0.1},
        "mean_top1_prob": {"mean": 0.5, "std": 0.1},
        "prompts": 10,
        "answer_confidence": {"mean": mean, "std": std},
    }


def test_calibrated_vote_puts_members_with_different_vocabularies_on_one_scale() -> None:
    """A model whose confidences run high by habit must not outvote a model that is, for its
    own habits, unusually sure."""
    pool = ModelPool()
    loud, _ = _member(pool, "loud", [("It is 6.", 9.0)])  # usual 10 +/- 1: below its habit
    quiet, _ = _member(pool, "quiet", [("It is 5.", 3.0)])  # usual 1 +/- 1: very sure for it
    raw = _run(pool, [loud, quiet], "deepconf_vote")
    assert raw.trace["summary"]["winning_answer"] == "6"
    stats = {"loud": _stats(10.0, 1.0), "quiet": _stats(1.0, 1.0)}
    calibrated = _run(pool, [loud, quiet], "deepconf_vote", reference_stats=stats)
    summary = calibrated.trace["summary"]
    assert summary["winning_answer"] == "5"
    assert summary["weights"] == {
        "6": pytest.approx(math.exp(-1.0), abs=1e-4),
        "5": pytest.approx(math.exp(2.0), abs=1e-4),
    }


def test_copy_guard_reads_a_raw_prompt_too() -> None:
    pool = ModelPool()
    echo, _ = _member(pool, "raw_echo", [("Q: What is 2+3?", 9.0)])
    answer, _ = _member(pool, "raw_answer", [("5", 1.0)])
    config = EnsembleConfig(aggregation_level="response", aggregation_method="deepconf_vote")
    request = GenerationRequest(prompt="Q: What is 1+1?\nA: 2\nQ: What is 2+3?\nA:", max_tokens=8)
    result = run_ensemble(EnsembleSpec(model_specs=[echo, answer]), config, request, pool)
    assert result.text == "5"
    assert result.trace["rounds"][0]["candidates"][0]["vetoed"] is True


@pytest.mark.slow
def test_smollm2_confidence_drives_the_vote_and_the_cascade(pool: ModelPool) -> None:
    """Real decoding: the confidences come from SmolLM2's own distributions."""
    members = [
        ModelSpec(path="bundled:smollm2", name="careful", temperature=0.0),
        ModelSpec(path="bundled:smollm2", name="bold", temperature=0.8),
    ]
    vote = _run(pool, members, "deepconf_vote", samples_per_model=2)
    weights = [c["raw_scores"]["confidence"] for c in vote.trace["rounds"][0]["candidates"]]
    assert len(weights) == 4 and all(w > 0 for w in weights)
    sure = _run(pool, members, "cascade", min_confidence=0.0)
    assert sure.trace["summary"]["stages_run"] == 1 and sure.usage.per_model.get("bold") is None
    unsure = _run(pool, members, "cascade", min_confidence=1e6)
    stages = unsure.trace["summary"]["stages"]
    assert [s["member"] for s in stages] == ["careful", "bold"] and stages[0]["reasons"] == ["low_confidence"]
    assert 0 < stages[0]["confidence"] < 1e6


def test_cascade_on_the_answers_own_log_probability_per_byte() -> None:
    """signal: logprob compares the winner's own log-probability per byte (scripted: -0.5 per
    word): -1/3 per byte for "5 5", -1/8 for "The answer is 7."."""
    pool = ModelPool()
    terse, _ = _member(pool, "terse", [("5 5", 9.0)])  # confident by DeepConf, unlikely per byte
    big, _ = _member(pool, "big4", [("The answer is 7.", 1.0)])
    by_confidence = _run(pool, [terse, big], "cascade", min_confidence=3.0)
    assert by_confidence.trace["summary"]["stages_run"] == 1
    by_logprob = _run(pool, [terse, big], "cascade", signal="logprob", min_confidence=-0.2)
    stages = by_logprob.trace["summary"]["stages"]
    assert stages[0]["confidence"] == pytest.approx(-1.0 / 3, abs=1e-3)
    assert stages[0]["reasons"] == ["low_confidence"]
    assert by_logprob.text == "The answer is 7."
