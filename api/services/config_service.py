"""Ensemble configuration versions: the default spec, appends, and per-request merging."""

from __future__ import annotations

import threading
import time
import weakref
from typing import Any

from pydantic import ValidationError

from api.errors import ApiError
from api.services import request_policy
from ensemble_core.bundled import default_ensemble_spec
from ensemble_core.errors import ConfigError
from ensemble_core.methods import overlay_config, validate_config
from ensemble_core.references import resolve_references
from ensemble_core.scorers.specs import parse_scorer_specs
from ensemble_core.spec import EnsembleConfig, EnsembleSpec
from persistence import repository
from persistence.db import Database
from persistence.models import ConfigVersion


def ensure_startup_version(db: Database, startup_spec: EnsembleSpec | None) -> ConfigVersion:
    """Make the flags' spec the current version (append only if it differs from the latest);
    with no flags keep the latest version, or store the bundled default on an empty database."""
    with db.transaction() as session:
        latest = repository.latest_config_version(session)
        spec = startup_spec
        if spec is None:
            if latest is not None:
                return latest
            spec = default_ensemble_spec()
        validate_config(resolve_references(spec.default_ensemble_config, spec))
        if latest is not None and latest.content_hash == spec.content_hash():
            return latest
        note = "from server start-up flags" if startup_spec is not None else "bundled default"
        return repository.append_config_version(
            session, spec=spec.model_dump(mode="json"), content_hash=spec.content_hash(), note=note
        )


# The current version is read on every submission; caching it per process for a second saves
# a query and a spec validation per request. A change made through this process shows at once
# (the cache is dropped), one made through another API replica within CURRENT_VERSION_TTL_S.
CURRENT_VERSION_TTL_S = 1.0
_current_cache: weakref.WeakKeyDictionary[Database, tuple[float, ConfigVersion, EnsembleSpec]] = (
    weakref.WeakKeyDictionary()
)
_cache_lock = threading.Lock()


def current_version(db: Database) -> tuple[ConfigVersion, EnsembleSpec]:
    now = time.monotonic()
    with _cache_lock:
        cached = _current_cache.get(db)
    if cached is not None and cached[0] > now:
        return cached[1], cached[2]
    with db.transaction() as session:
        row = repository.latest_config_version(session)
    if row is None:
        row = ensure_startup_version(db, None)
    spec = EnsembleSpec.model_validate(row.spec)
    with _cache_lock:
        _current_cache[db] = (now + CURRENT_VERSION_TTL_S, row, spec)
    return row, spec


def forget_current_version(db: Database) -> None:
    with _cache_lock:
        _current_cache.pop(db, None)


def append_version(db: Database, update: dict[str, Any], note: str | None) -> ConfigVersion:
    """Apply a partial update (``model_specs`` and/or ``default_ensemble_config``) to the
    current spec, validate it fully, and store it as version n+1."""
    _, current = current_version(db)
    merged: dict[str, Any] = current.model_dump(mode="json")
    for part in ("model_specs", "scorers", "fusers"):
        if update.get(part) is not None:
            merged[part] = update[part]
    if update.get("default_ensemble_config") is not None:
        merged["default_ensemble_config"] = overlay_config(
            merged["default_ensemble_config"], update["default_ensemble_config"]
        )
    spec = parse_spec(merged)
    with db.transaction() as session:
        row = repository.append_config_version(
            session, spec=spec.model_dump(mode="json"), content_hash=spec.content_hash(), note=note
        )
    forget_current_version(db)
    return row


def parse_spec(data: dict[str, Any]) -> EnsembleSpec:
    try:
        spec = EnsembleSpec.model_validate(data)
        check_named_parts(spec)
        validate_config(resolve_references(spec.default_ensemble_config, spec))
    except ValidationError as exc:
        raise ApiError(
            422, _pydantic_message(exc), code="invalid_config", param=_pydantic_param(exc)
        ) from exc
    except ConfigError as exc:
        raise ApiError(400, str(exc), code="invalid_config", param="ensemble_config") from exc
    return spec


def check_named_parts(spec: EnsembleSpec) -> None:
    """Named scorers must be valid scorer configs; keys are never stored, only the name of
    the environment variable that holds one (``api_key_env``, read by the worker)."""
    parse_scorer_specs(list(spec.scorers.values()))
    for where, model in [
        *(("model_specs", m) for m in spec.model_specs),
        *(("fusers", f) for f in spec.fusers.values()),
    ]:
        if "api_key" in model.engine_options:
            raise ApiError(
                400,
                f"{where}: {model.display_name!r} has engine_options.api_key; config versions are shown "
                "and stored, keys must not be: put the key in an environment variable of the workers "
                "and name it with engine_options.api_key_env",
                code="secret_in_config",
                param=f"{where}.engine_options.api_key",
            )


def merge_config(
    spec: EnsembleSpec,
    overrides: dict[str, Any] | None,
    *,
    restricted: bool = False,
    param_prefix: str = "ensemble_config",
    **top_level: Any,
) -> EnsembleConfig:
    """The version's default config, then the request's ``ensemble_config``, then top-level
    fields such as ``max_rounds`` the guide accepts beside it.

    ``restricted`` (a tenant's request): the overrides may only choose methods, numbers and
    names (403 otherwise, see ``request_policy``). Named scorers and fusers are checked
    against ``spec`` but stay names in the returned config; the worker resolves them."""
    if restricted:
        request_policy.check_tenant_config(overrides, spec, prefix=param_prefix)
    given = dict(overrides or {})
    given.update({key: value for key, value in top_level.items() if value is not None})
    if not given:
        # most requests take the version's config as it is: validate it once per version
        return _default_config(spec, param_prefix)
    return _validated_config(spec, given, param_prefix)


# the validated default config of the last few specs, by identity (the spec is kept in the
# entry, so its id cannot be reused while the entry lives); specs and configs are frozen
_DEFAULTS: dict[int, tuple[EnsembleSpec, EnsembleConfig]] = {}


def _default_config(spec: EnsembleSpec, param_prefix: str) -> EnsembleConfig:
    entry = _DEFAULTS.get(id(spec))
    if entry is not None and entry[0] is spec:
        return entry[1]
    config = _validated_config(spec, {}, param_prefix)
    if len(_DEFAULTS) >= 16:
        _DEFAULTS.clear()
    _DEFAULTS[id(spec)] = (spec, config)
    return config


def _validated_config(spec: EnsembleSpec, given: dict[str, Any], param_prefix: str) -> EnsembleConfig:
    data = overlay_config(spec.default_ensemble_config.model_dump(), given)
    try:
        config = EnsembleConfig.model_validate(data)
        validate_config(resolve_references(config, spec))
    except ValidationError as exc:
        raise ApiError(
            400,
            _pydantic_message(exc),
            code="invalid_config",
            param=f"{param_prefix}." + (_pydantic_param(exc) or ""),
        ) from exc
    except ConfigError as exc:
        raise ApiError(400, str(exc), code="invalid_config", param=param_prefix) from exc
    return config


# how a model is loaded or reached, and credentials: an admin's business, never a tenant's
REDACTED_KEYS = frozenset({"engine_options", "headers", "url", "base_url", "api_key", "api_key_env"})


def redacted(value: Any) -> Any:
    """A stored spec (or config) with every ``REDACTED_KEYS`` field, at any depth, left out."""
    if isinstance(value, dict):
        return {k: redacted(v) for k, v in value.items() if k not in REDACTED_KEYS}
    if isinstance(value, list):
        return [redacted(v) for v in value]
    return value


def _pydantic_message(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(p) for p in err.get("loc", ()))
        parts.append(f"{loc}: {err.get('msg')}" if loc else str(err.get("msg")))
    return "; ".join(parts)


def _pydantic_param(exc: ValidationError) -> str | None:
    errors = exc.errors()
    if not errors:
        return None
    return ".".join(str(p) for p in errors[0].get("loc", ())) or None
