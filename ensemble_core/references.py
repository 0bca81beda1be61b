"""Named scorers and fusers: a config refers to what the spec defines, by name.

A config version (``EnsembleSpec``) may define ``scorers`` (name -> scorer config) and
``fusers`` (name -> model spec). A config's method parameters then refer to them:

- an item of ``scorers`` may be a name (``"quality_rm"``) or ``{"ref": "quality_rm",
  "weight": 2.0}`` (the weight replaces the named scorer's);
- ``fuser`` may be the name of a named fuser (a member's name keeps meaning that member).

``resolve_references`` replaces the names with what they stand for, so the engine only ever
sees full scorer configs. Jobs store the config with its names and resolve it against the
version they ran with: what a tenant's job shows is the names, never the paths behind them.
"""

from __future__ import annotations

from typing import Any

from ensemble_core.errors import ConfigError
from ensemble_core.spec import EnsembleConfig, EnsembleSpec

PARAMS_FIELDS = ("model_selection_params", "aggregation_params")


def scorer_reference(item: Any) -> str | None:
    """The name an item of ``scorers`` refers to, or None for an inline scorer config."""
    if isinstance(item, str):
        return item
    if isinstance(item, dict) and "ref" in item:
        return str(item["ref"])
    return None


def resolve_references(config: EnsembleConfig, spec: EnsembleSpec) -> EnsembleConfig:
    """The config with every named scorer and fuser replaced by its definition in ``spec``."""
    update: dict[str, Any] = {}
    for field in PARAMS_FIELDS:
        params: dict[str, Any] = getattr(config, field)
        resolved = _resolve_params(params, spec, field)
        if resolved is not params:
            update[field] = resolved
    return config.model_copy(update=update) if update else config


def _resolve_params(params: dict[str, Any], spec: EnsembleSpec, field: str) -> dict[str, Any]:
    out = params
    scorers = params.get("scorers")
    if isinstance(scorers, list) and any(scorer_reference(s) is not None for s in scorers):
        out = {
            **out,
            "scorers": [_resolve_scorer(s, spec, f"{field}.scorers.{i}") for i, s in enumerate(scorers)],
        }
    fuser = params.get("fuser")
    if isinstance(fuser, str) and fuser in spec.fusers:
        out = {**out, "fuser": spec.fusers[fuser].model_dump(mode="json")}
    return out


def _resolve_scorer(item: Any, spec: EnsembleSpec, where: str) -> Any:
    name = scorer_reference(item)
    if name is None:
        return item
    if name not in spec.scorers:
        known = ", ".join(sorted(spec.scorers)) or "none (an admin defines them in the config version)"
        raise ConfigError(f"{where}: no named scorer {name!r}; named scorers: {known}")
    resolved = dict(spec.scorers[name])
    if isinstance(item, dict):
        extra = sorted(set(item) - {"ref", "weight"})
        if extra:
            raise ConfigError(f"{where}: a scorer reference takes only 'ref' and 'weight', not {extra}")
        if "weight" in item:
            resolved["weight"] = item["weight"]
    return resolved


def restore_names(trace: dict[str, Any], config: EnsembleConfig) -> dict[str, Any]:
    """A result trace whose method params show the names the config used, not what they
    resolved to (the trace is shown to whoever sent the job)."""
    parts = {"selection": config.model_selection_params, "aggregation": config.aggregation_params}
    for part, original in parts.items():
        section = trace.get(part)
        if not isinstance(section, dict) or not isinstance(section.get("params"), dict):
            continue
        for key in ("scorers", "fuser"):
            if key in original:
                section["params"][key] = original[key]
    return trace
