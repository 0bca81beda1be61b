"""Attention for grouped-query models on the CPU that does not copy the key/value heads.

Why: transformers' ``sdpa`` attention repeats a grouped-query model's key/value heads
(``repeat_kv``: a copy of every layer's cached keys and values, at every forward pass) whenever
an attention mask is given, because CUDA's SDPA kernels fall back to their slow path with a
mask and ``enable_gqa``. The decode loop always gives a mask (its rows are left-padded), and
on the CPU that copy is a large part of a many-row step: SmolLM2 has 9 query heads on 3
key/value heads, so a 64-row step 120 tokens wide copies 70 MB per layer, 2 GB over its 30
layers. torch's CPU SDPA takes the grouped heads as they are (``enable_gqa=True``) under a mask,
with the same logits (``tests/unit/core/test_grouped_attention.py``); measured on SmolLM2 in
docs/benchmarks.md ("Grouped-query attention without the copy").

``NAME`` is registered with transformers as an attention function (this one) and a mask
function (transformers' own ``sdpa_mask``: the masks are those of ``sdpa``). HF generators on
the CPU load with it unless the admin's spec names an ``attn_implementation``
(``HFTextGenerator``). Anything this function does not cover (no grouped heads, a device
other than the CPU, a position bias, a paged cache) goes to transformers' ``sdpa`` unchanged.
"""

from __future__ import annotations

import functools
from typing import Any

import torch

NAME = "ensemblehub_grouped_sdpa"


def grouped_sdpa_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers' ``sdpa_attention_forward`` with the grouped heads passed to SDPA as they
    are (``enable_gqa``), mask or not."""
    groups = int(getattr(module, "num_key_value_groups", 1) or 1)
    if (
        groups == 1
        or query.device.type != "cpu"
        or kwargs.get("position_bias") is not None
        or kwargs.get("cache") is not None
        or kwargs.get("output_attentions", False)
    ):
        # imported here, off the hot path: this runs once per layer of every forward pass
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(  # type: ignore[no-any-return]
            module,
            query,
            key,
            value,
            attention_mask,
            dropout=dropout,
            scaling=scaling,
            is_causal=is_causal,
            **kwargs,
        )
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    # as transformers does: SDPA's own causal flag only for a prefill without a mask
    causal = bool(query.shape[2] > 1 and attention_mask is None and causal)
    out = torch.nn.functional.scaled_dot_product_attention(
        query,
        key,
        value,
        attn_mask=attention_mask,
        dropout_p=dropout,
        scale=scaling,
        is_causal=causal,
        enable_gqa=True,
    )
    return out.transpose(1, 2).contiguous(), None


@functools.cache
def register() -> str:
    """Register ``NAME`` with transformers (once per process); returns it."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(NAME, grouped_sdpa_attention)
    AttentionMaskInterface.register(NAME, sdpa_mask)
    return NAME
