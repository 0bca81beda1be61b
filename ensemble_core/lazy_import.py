"""Resolve ``"package.module:Attribute"`` strings, so heavy classes load only when used."""

from __future__ import annotations

import importlib
from typing import Any


def load_object(target: str | Any) -> Any:
    if not isinstance(target, str):
        return target
    module_name, _, attribute = target.partition(":")
    module = importlib.import_module(module_name)
    return getattr(module, attribute)
