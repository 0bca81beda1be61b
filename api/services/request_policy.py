"""What a tenant's request may ask for: methods, numbers and names, never weights or URLs.

A tenant's ``ensemble_config`` is checked before it is merged. Anything that would load
weights, set ``engine_options``, name a device, a path or a URL (a ``reward_model`` scorer's
``path``, a ``remote`` scorer's ``url``, a fuser's model spec) answers 403 with the field in
``param``; the admin defines such things in a config version (named ``scorers`` and
``fusers``, the members) and the request refers to them by name.

The policy is a whitelist: each inline scorer type lists the fields a tenant may set; a type
not listed (including types added later) can only be used by name. Admin keys and the
keyless local mode are trusted and not checked here.
"""

from __future__ import annotations

from typing import Any

from api.errors import ApiError
from ensemble_core.references import PARAMS_FIELDS, scorer_reference
from ensemble_core.spec import EnsembleSpec

# inline scorer types a tenant may configure, with the fields they may set; the rest of each
# type's fields (paths, devices) keep their defaults
# (``models``: member names only, checked below)
TENANT_INLINE_SCORERS: dict[str, frozenset[str]] = {
    "likelihood": frozenset({"type", "weight", "include_own", "include_others", "models", "unit"}),
    "pmi": frozenset({"type", "weight", "models", "neutral_prompt", "neutral", "unit"}),
    "novelty": frozenset({"type", "weight"}),
    "agreement": frozenset({"type", "weight", "mode", "other_authors_only"}),
    "confidence": frozenset({"type", "weight", "window", "reduce"}),
    "self_certainty": frozenset({"type", "weight"}),
    "embedding": frozenset({"type", "weight", "mode"}),
}
# keys that configure loading or connecting, refused wherever they appear in a tenant's config
FORBIDDEN_KEYS = frozenset(
    {
        "path",
        "url",
        "base_url",
        "headers",
        "engine",
        "engine_options",
        "device",
        "trust_remote_code",
        "api_key",
        "api_key_env",
        "model_specs",
        "quantization",
        "torch_dtype",
        "dtype",
    }
)


def _refuse(param: str, why: str) -> ApiError:
    return ApiError(
        403,
        f"{param}: {why}; an admin defines models, scorers and fusers in the config version "
        "(POST /v1/ensemble/config) and requests use them by name",
        code="forbidden_config_field",
        param=param,
    )


def check_tenant_config(
    overrides: dict[str, Any] | None, spec: EnsembleSpec, *, prefix: str = "ensemble_config"
) -> None:
    """Raise 403 naming the first field of ``overrides`` a tenant may not set."""
    if not overrides:
        return
    _no_forbidden_keys(overrides, prefix)
    members = {m.display_name for m in spec.model_specs}
    for field in PARAMS_FIELDS:
        params = overrides.get(field)
        if not isinstance(params, dict):
            continue
        where = f"{prefix}.{field}"
        scorers = params.get("scorers")
        if isinstance(scorers, list):
            for i, item in enumerate(scorers):
                _check_scorer(item, members, f"{where}.scorers.{i}")
        if "fuser" in params:
            _check_fuser(params["fuser"], members, spec, f"{where}.fuser")


def _no_forbidden_keys(value: Any, where: str) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            if key in FORBIDDEN_KEYS:
                raise _refuse(f"{where}.{key}", f"{key!r} cannot be set by a request")
            _no_forbidden_keys(item, f"{where}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _no_forbidden_keys(item, f"{where}.{i}")


def _check_scorer(item: Any, members: set[str], where: str) -> None:
    if scorer_reference(item) is not None:
        return  # a name: resolved (or refused with the valid names) against the version
    if not isinstance(item, dict):
        return  # not a scorer config: validation answers 400 with the valid forms
    kind = item.get("type")
    allowed = TENANT_INLINE_SCORERS.get(str(kind))
    if allowed is None:
        raise _refuse(f"{where}.type", f"a {kind!r} scorer can only be used by name")
    for key in item:
        if key not in allowed:
            raise _refuse(f"{where}.{key}", f"{key!r} of a {kind} scorer cannot be set by a request")
    models = item.get("models")
    if isinstance(models, list):
        for j, name in enumerate(models):
            if name not in members:
                raise _refuse(f"{where}.models.{j}", f"{name!r} is not a member model")


def _check_fuser(fuser: Any, members: set[str], spec: EnsembleSpec, where: str) -> None:
    if fuser is None:
        return
    if isinstance(fuser, str) and (fuser in members or fuser in spec.fusers):
        return
    named = ", ".join(sorted(members | set(spec.fusers)))
    raise _refuse(where, f"the fuser must be a member or a named fuser ({named})")
