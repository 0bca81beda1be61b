"""Grouped-query attention without copying the key/value heads (``grouped_attention``): HF
generators on the CPU load with it, and it gives transformers' ``sdpa`` logits under the
decode loop's padded masks, in a prefill and in a decode step over the cache."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ensemble_core.backends import grouped_attention
from ensemble_core.backends.hf import HFTextGenerator
from ensemble_core.spec import ModelSpec
from tests.tiny_models import build_tiny_model


@pytest.fixture(scope="module")
def grouped_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # the tiny Gemma 3 layout: two query heads on one key/value head
    return build_tiny_model(
        tmp_path_factory.mktemp("gqa") / "gemma3", arch="gemma3", vocab_seed=6, sliding_window=64
    )


def _logits(generator: HFTextGenerator) -> tuple[torch.Tensor, torch.Tensor]:
    """A left-padded 3-row prefill, then one decode step over its cache."""
    torch.manual_seed(0)
    model = generator.model
    ids = torch.randint(5, 300, (3, 12))
    mask = torch.ones(3, 12, dtype=torch.long)
    mask[0, :5] = 0
    mask[2, :2] = 0
    with torch.inference_mode():
        first = model(input_ids=ids, attention_mask=mask, use_cache=True)
        step_mask = torch.cat([mask, torch.ones(3, 1, dtype=torch.long)], dim=1)
        step = model(
            input_ids=torch.tensor([[7], [8], [9]]),
            attention_mask=step_mask,
            past_key_values=first.past_key_values,
            use_cache=True,
        )
    return first.logits, step.logits


def test_cpu_generators_load_with_it_unless_the_spec_names_another(grouped_dir: Path) -> None:
    default = HFTextGenerator(ModelSpec(path=str(grouped_dir), name="g"))
    assert default.model.config._attn_implementation == grouped_attention.NAME
    named = HFTextGenerator(
        ModelSpec(path=str(grouped_dir), name="e", engine_options={"attn_implementation": "eager"})
    )
    assert named.model.config._attn_implementation == "eager"


def test_it_gives_the_logits_of_transformers_sdpa_under_a_padded_mask(grouped_dir: Path) -> None:
    grouped = HFTextGenerator(ModelSpec(path=str(grouped_dir), name="g"))
    plain = HFTextGenerator(
        ModelSpec(path=str(grouped_dir), name="p", engine_options={"attn_implementation": "sdpa"})
    )
    assert grouped.model.model.layers[0].self_attn.num_key_value_groups == 2  # the path under test
    for got, want in zip(_logits(grouped), _logits(plain), strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
