"""Config validation: every guide name resolves, anything unknown fails with the valid names."""

from __future__ import annotations

import json

import pytest

from ensemble_core.bundled import default_ensemble_spec
from ensemble_core.errors import ConfigError
from ensemble_core.methods import list_methods, plan_for, validate_config
from ensemble_core.spec import EnsembleConfig


@pytest.mark.parametrize("selection", ["all", "random", "zscore", "llm_blender"])
@pytest.mark.parametrize("method", ["simple", "reward_based", "progressive", "random", "loop", "round_robin"])
def test_every_guide_name_resolves(selection: str, method: str) -> None:
    validate_config(EnsembleConfig(model_selection_method=selection, ensemble_method=method))


def test_aliases_map_to_canonical_methods() -> None:
    assert plan_for(EnsembleConfig(ensemble_method="simple")).aggregator_name == "reward_based"
    assert plan_for(EnsembleConfig(ensemble_method="loop")).aggregator_name == "round_robin"
    # aggregation_method wins over ensemble_method
    plan = plan_for(EnsembleConfig(ensemble_method="loop", aggregation_method="random"))
    assert plan.aggregator_name == "random"
    assert plan.label == "zscore+random"


def test_selection_and_aggregation_switches() -> None:
    plan = plan_for(EnsembleConfig(model_selection_method="zscore", use_model_selection=False))
    assert plan.selector_name == "all"
    assert plan_for(EnsembleConfig(use_output_aggregation=False)).aggregator_name == "single"


@pytest.mark.parametrize(
    ("config", "names"),
    [
        ({"ensemble_method": "bogus"}, ["reward_based", "round_robin", "progressive", "simple", "loop"]),
        ({"aggregation_method": "vote"}, ["reward_based", "random"]),
        ({"model_selection_method": "best"}, ["all", "zscore", "llm_blender", "random"]),
        ({"aggregation_params": {"segment_token": 3}}, ["segment_tokens", "max_resamples"]),
        ({"model_selection_method": "zscore", "model_selection_params": {"topk": 1}}, ["top_k", "threshold"]),
        (
            {"aggregation_params": {"scorers": [{"type": "oracle"}]}},
            ["likelihood", "reward_model", "prm", "embedding", "remote"],
        ),
        (
            {"aggregation_params": {"scorers": [{"type": "remote", "uri": "x"}]}},
            ["url", "timeout_s", "retries"],
        ),
        ({"aggregation_level": "token", "aggregation_method": "reward_based"}, ["gac"]),
        ({"aggregation_level": "response", "aggregation_method": "vot"}, ["majority_vote", "best_of_n"]),
    ],
)
def test_unknown_names_list_the_valid_ones(config: dict, names: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        validate_config(EnsembleConfig(**config))
    assert info.value.code == "invalid_config"
    for name in names:
        assert name in info.value.message


def test_bad_values_are_rejected() -> None:
    with pytest.raises(ConfigError, match="segment_tokens"):
        validate_config(EnsembleConfig(aggregation_params={"segment_tokens": 0}))
    with pytest.raises(ConfigError, match="length_thresholds"):
        validate_config(
            EnsembleConfig(ensemble_method="progressive", aggregation_params={"length_thresholds": [5, 3]})
        )


def test_config_fields_are_method_defaults_and_params_override() -> None:
    config = EnsembleConfig(max_repeat=5, score_threshold=-3.0, aggregation_params={"max_repeat": 2})
    params = plan_for(config).aggregator_params
    assert params.max_repeat == 2
    assert params.score_threshold == -3.0
    progressive = plan_for(
        EnsembleConfig(ensemble_method="progressive", progressive_mode="token", special_tokens=["</think>"])
    ).aggregator_params
    assert progressive.progressive_mode == "token"
    assert progressive.special_tokens == ["</think>"]


def test_a_sibling_methods_param_is_ignored_and_reported() -> None:
    # a config with reward_based's scorers; switching the method by name works
    base = EnsembleConfig(
        ensemble_method="reward_based", aggregation_params={"scorers": [{"type": "novelty"}]}
    )
    plan = plan_for(base.model_copy(update={"ensemble_method": "progressive"}))
    assert plan.ignored_params == ("scorers",)


def test_list_methods_is_json_with_schemas() -> None:
    methods = list_methods()
    json.dumps(methods)
    assert {m["name"] for m in methods["model_selection"]} == {"all", "random", "zscore", "llm_blender"}
    aggregation = {m["name"]: m for m in methods["aggregation"]}
    assert set(aggregation) == {"reward_based", "random", "round_robin", "progressive"}
    assert "simple" in aggregation["reward_based"]["aliases"]
    assert "loop" in aggregation["round_robin"]["aliases"]
    assert "segment_tokens" in aggregation["reward_based"]["params_schema"]["properties"]
    assert [lv["name"] for lv in methods["levels"]] == ["sentence", "token", "response"]
    assert {s["name"] for s in methods["scorers"]} == {
        "likelihood",
        "pmi",
        "agreement",
        "novelty",
        "confidence",
        "self_certainty",
        "reward_model",
        "prm",
        "embedding",
        "remote",
    }


def test_default_bundled_spec_is_valid() -> None:
    spec = default_ensemble_spec()
    validate_config(spec.default_ensemble_config)
    assert {m.path for m in spec.model_specs} == {"bundled:smollm2", "bundled:gemma3-270m"}
    # SmolLM2 chat and raw share one load; the base model Gemma is prompted raw; all greedy
    assert len({m.load_key() for m in spec.model_specs}) == 2
    assert {m.name: m.prompt_format for m in spec.model_specs} == {
        "smollm2": "chat",
        "smollm2-raw": "raw",
        "gemma3-270m": "raw",
    }
    assert {m.temperature for m in spec.model_specs} == {0.0}
    assert plan_for(spec.default_ensemble_config).level == "response"


def test_a_method_named_without_a_level_brings_its_own_level() -> None:
    """Over the response-level bundled default, naming a segment method runs that method."""
    from ensemble_core.methods import overlay_config

    base = default_ensemble_spec().default_ensemble_config.model_dump()
    loop = EnsembleConfig.model_validate(overlay_config(base, {"ensemble_method": "loop"}))
    assert loop.aggregation_level == "sentence" and plan_for(loop).aggregator_name == "round_robin"
    gac = EnsembleConfig.model_validate(overlay_config(base, {"aggregation_method": "gac"}))
    assert gac.aggregation_level == "token"
    # a level alone gets that level's default method when the base's is not one of its own
    sentence = EnsembleConfig.model_validate(overlay_config(base, {"aggregation_level": "sentence"}))
    assert plan_for(sentence).aggregator_name == "reward_based"
    # both given: the request's choice stands
    vote = overlay_config(base, {"aggregation_level": "response", "ensemble_method": "majority_vote"})
    assert plan_for(EnsembleConfig.model_validate(vote)).aggregator_name == "majority_vote"
    # the default's own method keeps its level when only numbers change
    # values that are not names pass through to validation (a 400 there, never a TypeError here)
    for junk in ({"ensemble_method": ["x"]}, {"aggregation_level": ["x"]}, {"aggregation_method": 5}):
        assert overlay_config(base, junk)["aggregation_level"] in ("response", "sentence", ["x"])
    same = EnsembleConfig.model_validate(overlay_config(base, {"max_rounds": 3}))
    assert same.aggregation_level == "response" and same.ensemble_method == "best_of_n"
