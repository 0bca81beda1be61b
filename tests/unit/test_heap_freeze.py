"""WorkerRuntime.freeze_heap: what the worker holds after start-up and after each model load is
frozen out of the garbage collector's sight, once per load (a full collection is ~150 ms)."""

from __future__ import annotations

import gc

from workers.runtime import WorkerRuntime
from workers.settings import WorkerSettings


class _Pool:
    def __init__(self) -> None:
        self.models: list[dict] = []

    def loaded(self) -> list[dict]:
        return self.models

    def __len__(self) -> int:
        return len(self.models)


def test_the_heap_is_frozen_after_start_up_and_again_only_after_a_model_load():
    full_collections: list[int] = []

    def count(phase: str, info: dict) -> None:
        if phase == "start" and info["generation"] == 2:
            full_collections.append(1)

    pool = _Pool()
    runtime = WorkerRuntime(db=None, bus=None, pool=pool, settings=WorkerSettings())  # type: ignore[arg-type]
    gc.callbacks.append(count)
    try:
        kept = [object() for _ in range(10)], {"a": [1, 2]}  # something for the freeze to hold
        runtime.freeze_heap()
        assert gc.get_freeze_count() > 0 and len(full_collections) == 1
        runtime.freeze_heap()  # nothing loaded since: no collection, nothing to freeze
        assert len(full_collections) == 1
        pool.models.append({"name": "m"})
        runtime.freeze_heap()
        assert len(full_collections) == 2
        del kept
    finally:
        gc.callbacks.remove(count)
        gc.unfreeze()
