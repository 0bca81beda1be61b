"""ModelPool: loads each model once per process, keyed by what identifies its weights.

A worker process keeps one pool for its lifetime. Members that differ only in sampling
(``temperature``, ``top_p``, ``name``) share one load, because ``ModelSpec.load_key()`` leaves
those out. Scorer models (reward models, encoders) are kept in the same pool under their own
kind. Loading is lazy and thread-safe: two jobs asking for the same model at once load it once, and
loads run one at a time.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ensemble_core.errors import ModelLoadError
from ensemble_core.lazy_import import load_object
from ensemble_core.ports import TextGenerator
from ensemble_core.spec import ModelSpec


@dataclass
class _Loaded:
    spec: ModelSpec
    kind: str
    engine: str
    obj: Any
    load_seconds: float


class ModelPool:
    def __init__(self, cache_dir: Path | None = None) -> None:
        self.cache_dir = cache_dir
        self._loaded: dict[tuple[str, str], _Loaded] = {}
        self._locks: dict[tuple[str, str], threading.Lock] = {}
        self._guard = threading.Lock()
        # one load at a time per process: transformers' lazy module imports are not
        # thread-safe (two threads loading different models at once saw "cannot import name
        # 'AutoModelForCausalLM'"), and on a CPU two loads at once are no faster anyway
        self._loading = threading.RLock()  # re-entrant: a factory may load what it builds on

    def generator(self, spec: ModelSpec) -> TextGenerator:
        """The text generator for ``spec``, loaded on first use."""
        from ensemble_core.backends import GENERATOR_BACKENDS

        if spec.engine not in GENERATOR_BACKENDS:
            raise ModelLoadError(
                f"engine {spec.engine!r} is not available in this build; available: "
                + ", ".join(sorted(GENERATOR_BACKENDS))
            )
        target = GENERATOR_BACKENDS[spec.engine]
        obj: TextGenerator = self.load(
            "generator", spec, lambda: load_object(target)(spec, cache_dir=self.cache_dir)
        )
        return obj

    def load(self, kind: str, spec: ModelSpec, factory: Callable[[], Any]) -> Any:
        """Load (once) any model-like object of ``kind`` for ``spec`` with ``factory``."""
        key = (kind, spec.load_key())
        with self._guard:
            if key in self._loaded:
                return self._loaded[key].obj
            lock = self._locks.setdefault(key, threading.Lock())
        with lock, self._loading:
            if key in self._loaded:
                return self._loaded[key].obj
            started = time.perf_counter()
            try:
                obj = factory()
            except ModelLoadError:
                raise
            except Exception as exc:
                raise ModelLoadError(f"could not load {spec.display_name!r} ({spec.path}): {exc}") from exc
            entry = _Loaded(spec, kind, spec.engine, obj, time.perf_counter() - started)
            with self._guard:
                self._loaded[key] = entry
            return obj

    def __len__(self) -> int:
        """How many models this process holds (cheap: no descriptions built)."""
        return len(self._loaded)

    def loaded(self) -> list[dict[str, Any]]:
        """What this process holds: name, path, engine, device, load_seconds (and kind)."""
        with self._guard:
            entries = list(self._loaded.values())
        return [
            {
                "name": e.spec.display_name,
                "path": e.spec.path,
                "engine": e.engine,
                "device": str(getattr(e.obj, "device", e.spec.device)),
                "load_seconds": round(e.load_seconds, 3),
                "kind": e.kind,
            }
            for e in entries
        ]

    def unload_all(self) -> None:
        with self._guard:
            self._loaded.clear()
