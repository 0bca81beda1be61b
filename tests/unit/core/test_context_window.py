"""An answer ends at the model's context window instead of failing its job.

GPT-2 has a learned position table: a position past ``n_positions`` has no row and the
forward pass raised IndexError, failing the whole job (a sampled 4000-token answer of the
tiny GPT-2, whose window is 2048, did). Now a member's segment is cut where the window ends
and the answer ends there: finish_reason "length", stop_reason "max_context"."""

from __future__ import annotations

from pathlib import Path

import pytest

from ensemble_core.engine import run_ensemble
from ensemble_core.pool import ModelPool
from ensemble_core.spec import EnsembleConfig, EnsembleSpec, ModelSpec
from tests.tiny_models import build_tiny_model

from .conftest import ask

WINDOW = 96


@pytest.fixture(scope="module")
def short_gpt2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(
        tmp_path_factory.mktemp("short") / "gpt2", arch="gpt2", vocab_seed=5, max_positions=WINDOW
    )


LOOP = EnsembleConfig(model_selection_method="all", ensemble_method="loop", max_rounds=64, max_repeat=1)
BEST_OF_N = EnsembleConfig(
    model_selection_method="all", aggregation_level="response", aggregation_method="best_of_n"
)


@pytest.mark.parametrize("config", [LOOP, BEST_OF_N], ids=["loop", "best_of_n"])
def test_an_answer_ends_at_the_context_window(
    pool: ModelPool, short_gpt2: Path, config: EnsembleConfig
) -> None:
    spec = EnsembleSpec(model_specs=[ModelSpec(path=str(short_gpt2), name="short", temperature=0.0)])
    request = ask(max_tokens=500, ignore_eos=True)
    result = run_ensemble(spec, config, request, pool)
    assert (result.stop_reason, result.finish_reason) == ("max_context", "length")
    assert result.usage.prompt_tokens + result.usage.completion_tokens == WINDOW
    assert result.text


def test_a_prompt_that_fills_the_window_gets_an_empty_answer(pool: ModelPool, short_gpt2: Path) -> None:
    spec = EnsembleSpec(model_specs=[ModelSpec(path=str(short_gpt2), name="short", temperature=0.0)])
    result = run_ensemble(spec, LOOP, ask("two " * WINDOW, max_tokens=20), pool)
    assert (result.text, result.stop_reason, result.finish_reason) == ("", "max_context", "length")
