"""A tenant's request never chooses the weight dtype: ``torch_dtype`` (and vLLM's ``dtype``) are
refused wherever they appear in its ``ensemble_config``, like the ``engine_options`` holding them."""

from __future__ import annotations

import pytest

from api.errors import ApiError
from api.services.request_policy import check_tenant_config
from ensemble_core.spec import EnsembleSpec, ModelSpec

SPEC = EnsembleSpec(model_specs=[ModelSpec(path="bundled:smollm2", name="smol")])


@pytest.mark.parametrize(
    ("overrides", "param"),
    [
        (
            {
                "aggregation_params": {
                    "scorers": [{"type": "reward_model", "engine_options": {"torch_dtype": "bfloat16"}}]
                }
            },
            "ensemble_config.aggregation_params.scorers.0.engine_options",
        ),
        ({"aggregation_params": {"torch_dtype": "auto"}}, "ensemble_config.aggregation_params.torch_dtype"),
        ({"selection_params": {"dtype": "bfloat16"}}, "ensemble_config.selection_params.dtype"),
        ({"torch_dtype": "float16"}, "ensemble_config.torch_dtype"),
    ],
)
def test_a_tenant_cannot_set_the_weight_dtype(overrides: dict, param: str) -> None:
    with pytest.raises(ApiError) as info:
        check_tenant_config(overrides, SPEC)
    assert info.value.status == 403
    assert info.value.param == param


def test_a_tenant_config_without_dtype_passes() -> None:
    check_tenant_config({"aggregation_params": {"segment_tokens": 16}}, SPEC)
