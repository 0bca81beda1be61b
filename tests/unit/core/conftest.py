"""Fixtures of the ensemble_core tests: tiny random models with two different tokenizers
(built once per session in milliseconds), and the real SmolLM2 loaded once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from ensemble_core.pool import ModelPool
from ensemble_core.spec import ChatMessage, EnsembleSpec, GenerationRequest, ModelSpec
from tests.tiny_models import build_tiny_model, build_tiny_prm, build_tiny_reward_model


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("core-tiny")
    return {
        "llama": build_tiny_model(root / "llama", arch="llama", vocab_seed=3),
        "gpt2": build_tiny_model(root / "gpt2", arch="gpt2", vocab_seed=5),
        # a window wider than the tests' rows, so its calls are batched (test_hf_batching)
        "gemma3": build_tiny_model(root / "gemma3", arch="gemma3", vocab_seed=6, sliding_window=128),
        "reward": build_tiny_reward_model(root / "reward", arch="llama", vocab_seed=3),
        "prm": build_tiny_prm(root / "prm", arch="llama", vocab_seed=4),
    }


@pytest.fixture(scope="session")
def pool() -> ModelPool:
    """One pool for the whole session: each model loads once (SmolLM2 included)."""
    return ModelPool()


@pytest.fixture(scope="session")
def tiny_spec(tiny_dirs: dict[str, Path]) -> EnsembleSpec:
    """Two tiny models with different architectures and vocabularies."""
    return EnsembleSpec(
        model_specs=[
            ModelSpec(path=str(tiny_dirs["llama"]), name="llama", temperature=0.0),
            ModelSpec(path=str(tiny_dirs["gpt2"]), name="gpt2", temperature=0.8),
        ]
    )


def ask(content: str = "What is 2+2?", **kwargs: object) -> GenerationRequest:
    return GenerationRequest(messages=[ChatMessage(role="user", content=content)], **kwargs)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def smollm2(pool: ModelPool):  # type: ignore[no-untyped-def]
    """The real bundled SmolLM2-135M-Instruct (converted once into the user cache)."""
    spec = ModelSpec(path="bundled:smollm2", name="smollm2", temperature=0.0)
    return pool.generator(spec)
