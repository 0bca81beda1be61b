"""The version's default config is validated once per spec, not once per request."""

from __future__ import annotations

import pytest

from api.errors import ApiError
from api.services import config_service
from ensemble_core.bundled import default_ensemble_spec
from ensemble_core.spec import EnsembleConfig


def test_the_default_config_is_validated_once_per_spec_and_overrides_every_time(monkeypatch):
    calls = []
    validate = EnsembleConfig.model_validate.__func__  # type: ignore[attr-defined]

    def counting(cls, data, *args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(data)
        return validate(cls, data, *args, **kwargs)

    monkeypatch.setattr(EnsembleConfig, "model_validate", classmethod(counting))
    spec = default_ensemble_spec()
    first = config_service.merge_config(spec, None)
    assert config_service.merge_config(spec, {}, max_rounds=None) is first
    assert len(calls) == 1
    assert first == spec.default_ensemble_config

    changed = config_service.merge_config(spec, {"max_rounds": 2})
    assert changed.max_rounds == 2 and len(calls) == 2
    with pytest.raises(ApiError):
        config_service.merge_config(spec, {"max_rounds": 0})

    # a new config version is a new spec: its own default
    other = spec.model_copy(update={"default_ensemble_config": first.model_copy(update={"max_rounds": 3})})
    assert config_service.merge_config(other, None).max_rounds == 3
    assert config_service.merge_config(spec, None) is first
