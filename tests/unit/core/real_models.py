"""The real bundled Gemma-3-270M (262k vocabulary), loaded once per session from the shared pool."""

from __future__ import annotations

import pytest

from ensemble_core.pool import ModelPool
from ensemble_core.spec import ModelSpec

GEMMA = ModelSpec(path="bundled:gemma3-270m", name="gemma3", temperature=0.0)


@pytest.fixture(scope="session", name="gemma3")
def gemma3_fixture(pool: ModelPool):  # type: ignore[no-untyped-def]
    return pool.generator(GEMMA)
