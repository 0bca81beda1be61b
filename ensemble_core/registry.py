"""Method tables: one explicit table per kind, entries resolved by name or alias.

Entries point at a class or at a ``"module:Class"`` string (loaded only when used), so the
tables can be imported and listed without importing torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from ensemble_core.errors import ConfigError
from ensemble_core.lazy_import import load_object


class MethodParams(BaseModel):
    """Base of every method's ``Params``: frozen, unknown names rejected."""

    model_config = ConfigDict(frozen=True, extra="forbid")


@dataclass(frozen=True)
class MethodEntry:
    name: str
    target: Any  # a class, or "module:Class"
    description: str
    aliases: tuple[str, ...] = ()

    def load(self) -> Any:
        return load_object(self.target)


class MethodTable:
    def __init__(self, kind: str, entries: list[MethodEntry]) -> None:
        self.kind = kind
        self.entries = {e.name: e for e in entries}
        self.aliases = {a: e.name for e in entries for a in e.aliases}

    def names(self) -> list[str]:
        return sorted([*self.entries, *self.aliases])

    def canonical(self, name: str) -> str:
        if name in self.entries:
            return name
        if name in self.aliases:
            return self.aliases[name]
        raise ConfigError(f"unknown {self.kind} method {name!r}; valid names: {', '.join(self.names())}")

    def get(self, name: str) -> MethodEntry:
        return self.entries[self.canonical(name)]

    def describe(self) -> list[dict[str, Any]]:
        described = []
        for entry in self.entries.values():
            cls = entry.load()
            described.append(
                {
                    "name": entry.name,
                    "aliases": list(entry.aliases),
                    "description": entry.description,
                    "params_schema": cls.Params.model_json_schema(),
                }
            )
        return described


def build_params(cls: Any, values: dict[str, Any], where: str) -> Any:
    """``cls.Params(**values)``, turning pydantic errors into a ConfigError naming valid fields."""
    params_cls = cls.Params
    unknown = sorted(set(values) - set(params_cls.model_fields))
    if unknown:
        raise ConfigError(
            f"unknown parameter(s) {unknown} in {where}; valid names: "
            + ", ".join(sorted(params_cls.model_fields))
        )
    try:
        return params_cls(**values)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors())
        raise ConfigError(f"invalid {where}: {problems}") from exc
