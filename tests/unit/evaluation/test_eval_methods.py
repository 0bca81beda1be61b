"""`ensemblehub eval --method LABEL=JSON`: a named row runs every member unless it says otherwise."""

from __future__ import annotations

import pytest

from ensemblehub.eval_command import _named_methods


def test_a_named_row_selects_every_member_by_default() -> None:
    named = _named_methods(['vote={"aggregation_level": "response", "ensemble_method": "best_of_n"}'])
    assert named["vote"].model_selection_method == "all"
    kept = _named_methods(['z={"model_selection_method": "zscore", "ensemble_method": "round_robin"}'])
    assert kept["z"].model_selection_method == "zscore"
    with pytest.raises(ValueError, match="object"):
        _named_methods(["bad=[1]"])


def test_the_bundled_default_is_the_evaluated_trio_vote() -> None:
    """docs/evaluation.md reports the `trio-vote` row as the bundled default: keep them one."""
    from ensemble_core.bundled import DEFAULT_VOTE_SCORERS, default_ensemble_spec

    evaluated = [
        {"type": "agreement", "weight": 2},
        {"type": "novelty", "weight": 1.5},
        {"type": "likelihood", "include_own": True, "include_others": False, "weight": 0.3},
    ]
    config = default_ensemble_spec().default_ensemble_config
    assert DEFAULT_VOTE_SCORERS == evaluated
    assert config.aggregation_params["scorers"] == evaluated
    assert (config.model_selection_method, config.aggregation_level, config.ensemble_method) == (
        "all",
        "response",
        "best_of_n",
    )
