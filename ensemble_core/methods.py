"""Listing and validating methods; turning an ``EnsembleConfig`` into a plan the engine runs.

Importing this module never imports torch: method classes are pure Python and heavy scorer
implementations are named by ``"module:Class"`` strings.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ensemble_core.aggregation import AGGREGATORS_BY_LEVEL, LEVEL_DEFAULT_METHODS, LEVELS, SEGMENT_AGGREGATORS
from ensemble_core.errors import ConfigError
from ensemble_core.registry import MethodParams, build_params
from ensemble_core.selection import SELECTORS
from ensemble_core.spec import EnsembleConfig

# ensemble_method names of the user's guide -> aggregation method names
ENSEMBLE_METHOD_ALIASES = {"simple": "reward_based", "loop": "round_robin"}

# EnsembleConfig fields that are also method parameters: the config value is the default,
# aggregation_params / model_selection_params override it
_CONFIG_LEVEL_PARAMS = (
    "max_repeat",
    "score_threshold",
    "progressive_mode",
    "length_thresholds",
    "special_tokens",
)


@dataclass(frozen=True)
class EnsemblePlan:
    selector_name: str
    selector_cls: Any
    selector_params: MethodParams
    aggregator_name: str
    aggregator_cls: Any
    aggregator_params: Any
    ignored_params: tuple[str, ...] = ()
    level: str = "sentence"  # token and response levels run whole answers (aggregation.level_base)

    @property
    def label(self) -> str:
        return f"{self.selector_name}+{self.aggregator_name}"


def aggregation_name(config: EnsembleConfig) -> str:
    """The aggregation method a config asks for: ``aggregation_method`` wins over ``ensemble_method``."""
    name = config.aggregation_method or config.ensemble_method
    return ENSEMBLE_METHOD_ALIASES.get(name, name)


def level_of_method(name: str | None) -> str | None:
    """The aggregation level whose table knows ``name`` (names are unique across levels)."""
    if not isinstance(name, str) or not name:
        return None  # not a name at all: validation reports it
    name = ENSEMBLE_METHOD_ALIASES.get(name, name)
    return next((level for level, table in AGGREGATORS_BY_LEVEL.items() if name in table.names()), None)


def overlay_config(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """``base`` (a version's default config) with ``overrides`` (a request's or a flag's fields).

    A method named without a level brings its own level: the base's level belongs to the
    base's method, so ``{"ensemble_method": "round_robin"}`` over a response-level default runs
    round_robin at the segment level instead of the response level's default method. A level
    named without a method gets that level's default method when the base's method is not one
    of its own. A named ``ensemble_method`` also clears the base's ``aggregation_method``
    (which would otherwise win over it)."""
    data = {**base, **overrides}
    named = overrides.get("aggregation_method") or overrides.get("ensemble_method")
    named = named if isinstance(named, str) else None  # a non-string fails validation later
    if named and "aggregation_method" not in overrides:
        data["aggregation_method"] = None
    if named and "aggregation_level" not in overrides:
        # an unknown name is checked at the segment level (the guide's ensemble_method names
        # that level), so it fails with the valid names instead of falling back silently
        data["aggregation_level"] = level_of_method(named) or "sentence"
    elif not named and "aggregation_level" in overrides:
        level = overrides["aggregation_level"]
        current = base.get("aggregation_method") or base.get("ensemble_method")
        if isinstance(level, str) and level in LEVEL_DEFAULT_METHODS and level_of_method(current) != level:
            data["ensemble_method"], data["aggregation_method"] = LEVEL_DEFAULT_METHODS[level], None
    return data


def _config_defaults(params_cls: Any, config: EnsembleConfig) -> dict[str, Any]:
    return {f: getattr(config, f) for f in _CONFIG_LEVEL_PARAMS if f in params_cls.model_fields}


def _sibling_fields(name: str) -> set[str]:
    fields: set[str] = set()
    for table in AGGREGATORS_BY_LEVEL.values():  # any level: a config may switch level by name too
        for other, entry in table.entries.items():
            if other != name:
                fields.update(entry.load().Params.model_fields)
    return fields


def plan_for(config: EnsembleConfig) -> EnsemblePlan:
    """Resolve and validate every name and parameter of ``config``; raise ConfigError."""
    level = LEVELS.get(config.aggregation_level)
    if level is None or not level["available"]:
        available = [name for name, info in LEVELS.items() if info["available"]]
        raise ConfigError(
            f"aggregation_level {config.aggregation_level!r} is not available in this build; "
            f"available: {', '.join(available)}"
        )
    selector_name = config.model_selection_method if config.use_model_selection else "all"
    selector_entry = SELECTORS.get(selector_name)
    selector_cls = selector_entry.load()
    selector_params = build_params(
        selector_cls,
        dict(config.model_selection_params),
        f"model_selection_params of {selector_entry.name!r}",
    )
    agg_name = aggregation_name(config) if config.use_output_aggregation else "round_robin"
    level_name = config.aggregation_level if config.use_output_aggregation else "sentence"
    table = AGGREGATORS_BY_LEVEL[level_name]
    if level_name != "sentence" and config.aggregation_method is None and agg_name not in table.names():
        agg_name = LEVEL_DEFAULT_METHODS[level_name]  # the guide's ensemble_method names the segment level
    agg_entry = table.get(agg_name)
    agg_cls = agg_entry.load()
    values = _config_defaults(agg_cls.Params, config) | dict(config.aggregation_params)
    # a parameter of another method of the same level (e.g. the default config's `scorers`
    # when the method is switched to `progressive`) is dropped and reported in the trace, so a
    # config can change method by name alone; a name no method knows is still an error
    ignored = tuple(
        sorted(
            k for k in values if k not in agg_cls.Params.model_fields and k in _sibling_fields(agg_entry.name)
        )
    )
    values = {k: v for k, v in values.items() if k not in ignored}
    agg_params = build_params(agg_cls, values, f"aggregation_params of {agg_entry.name!r}")
    return EnsemblePlan(
        selector_name=selector_entry.name,
        selector_cls=selector_cls,
        selector_params=selector_params,
        aggregator_name=agg_entry.name if config.use_output_aggregation else "single",
        aggregator_cls=agg_cls,
        aggregator_params=agg_params,
        ignored_params=ignored,
        level=level_name,
    )


def validate_config(config: EnsembleConfig) -> None:
    """Raise ``ConfigError`` (listing the valid names) for unknown methods or parameters."""
    plan_for(config)


def list_methods() -> dict[str, list[dict[str, Any]]]:
    """Every method by kind with its description and parameter JSON schema (no torch import)."""
    from ensemble_core.scorers import SCORER_TYPES

    return {
        "model_selection": SELECTORS.describe(),
        "aggregation": SEGMENT_AGGREGATORS.describe(),
        "levels": [
            {"name": name, **info, "methods": AGGREGATORS_BY_LEVEL[name].describe()}
            for name, info in LEVELS.items()
        ],
        "ensemble_method_aliases": [
            {"name": k, "aggregation_method": v} for k, v in ENSEMBLE_METHOD_ALIASES.items()
        ],
        "scorers": [
            {"name": name, "description": desc, "params_schema": spec.model_json_schema()}
            for name, (spec, desc) in SCORER_TYPES.items()
        ],
    }
