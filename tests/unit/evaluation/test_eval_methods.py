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
