"""Ensemble configuration versions: the default spec, appends, and per-request merging."""

from __future__ import annotations

import threading
import time
import weakref
from typing import Any

from pydantic import ValidationError

from api.errors import ApiError
from ensemble_core.bundled import default_ensemble_spec
from ensemble_core.errors import ConfigError
from ensemble_core.methods import validate_config
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
        validate_config(spec.default_ensemble_config)
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
    if update.get("model_specs") is not None:
        merged["model_specs"] = update["model_specs"]
    if update.get("default_ensemble_config") is not None:
        merged["default_ensemble_config"] = {
            **merged["default_ensemble_config"],
            **update["default_ensemble_config"],
        }
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
        validate_config(spec.default_ensemble_config)
    except ValidationError as exc:
        raise ApiError(
            422, _pydantic_message(exc), code="invalid_config", param=_pydantic_param(exc)
        ) from exc
    except ConfigError as exc:
        raise ApiError(400, str(exc), code="invalid_config", param="ensemble_config") from exc
    return spec


def merge_config(
    default: EnsembleConfig, overrides: dict[str, Any] | None, **top_level: Any
) -> EnsembleConfig:
    """The version's default config, then the request's ``ensemble_config``, then top-level
    fields such as ``max_rounds`` the guide accepts beside it."""
    data = default.model_dump()
    for key, value in (overrides or {}).items():
        data[key] = value
    for key, value in top_level.items():
        if value is not None:
            data[key] = value
    try:
        config = EnsembleConfig.model_validate(data)
        validate_config(config)
    except ValidationError as exc:
        raise ApiError(
            400,
            _pydantic_message(exc),
            code="invalid_config",
            param="ensemble_config." + (_pydantic_param(exc) or ""),
        ) from exc
    except ConfigError as exc:
        raise ApiError(400, str(exc), code="invalid_config", param="ensemble_config") from exc
    return config


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
