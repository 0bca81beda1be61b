"""A KV cache that remembers which token ids it holds, row by row, so rounds can reuse it.

After every forward pass each batch row of the cache holds the KV states of a known list of
token ids. When the next call needs ``target`` ids, the row with the longest common prefix is
kept, cropped to that prefix, and only the rest is prefilled. This is what turns the
segment loop's quadratic re-prefill into a linear one.

Sliding-window layers (Gemma 3) normally forget states beyond their window, which would make
cropping impossible; the cache is created with ``activate_past_recording`` so those layers keep
all states, and ``crop_to`` slices every layer directly (keys, values and the running length
together), never through ``DynamicSlidingWindowLayer.crop``, whose window restriction assumes
it is called after every forward pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch


def common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix of two id sequences of the same type (list, tuple).

    A binary search over slice comparisons, which run in C: prompts of thousands of tokens are
    compared against several cached rows per call."""
    lo, hi = 0, min(len(a), len(b))
    while lo < hi:  # a[:lo] == b[:lo], and the prefix is at most hi long
        mid = (lo + hi + 1) // 2
        if a[lo:mid] == b[lo:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


class PrefixCache:
    def __init__(self, model_config: Any) -> None:
        from transformers import DynamicCache

        self.cache = DynamicCache(config=model_config)
        recorder: Any = self.cache
        if hasattr(recorder, "activate_past_recording"):
            recorder.activate_past_recording()
        self.rows: list[list[int]] = [[]]

    @property
    def batch_size(self) -> int:
        return len(self.rows)

    def best_row(self, target: list[int]) -> tuple[int, int]:
        """The row sharing the longest prefix with ``target`` and that prefix's length."""
        best, best_len = 0, -1
        for i, ids in enumerate(self.rows):
            n = common_prefix_length(ids, target)
            if n > best_len:
                best, best_len = i, n
        return best, max(best_len, 0)

    def keep_row(self, row: int) -> None:
        if self.batch_size == 1:
            return
        self.cache.batch_select_indices(torch.tensor([row]))
        self.rows = [self.rows[row]]

    def repeat(self, n: int) -> None:
        """Copy the single row ``n`` times, for a batch of candidates over one prefix."""
        if n == 1:
            return
        if self.batch_size != 1:
            raise ValueError("repeat needs a single-row cache")
        self.cache.batch_repeat_interleave(n)
        self.rows = [list(self.rows[0]) for _ in range(n)]

    def adopt_row(self, ids: list[int], layers: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Replace the cache by one row given as per-layer (keys, values) holding ``ids``."""
        own: list[Any] = list(self.cache.layers)
        for layer, (keys, values) in zip(own, layers, strict=True):
            if not getattr(layer, "is_initialized", False):
                layer.lazy_initialization(keys, values)
            layer.keys = keys
            layer.values = values
            if hasattr(layer, "cumulative_length"):  # a sliding-window layer's token count
                layer.cumulative_length = len(ids)
        self.rows = [list(ids)]

    def crop_to(self, length: int) -> None:
        current = len(self.rows[0])
        if length >= current:
            return
        layers: list[Any] = list(self.cache.layers)
        for layer in layers:
            keys = getattr(layer, "keys", None)
            if keys is None or keys.numel() == 0:
                continue
            layer.keys = layer.keys[..., :length, :]
            layer.values = layer.values[..., :length, :]
            if hasattr(layer, "cumulative_length"):
                layer.cumulative_length = length
        self.rows = [ids[:length] for ids in self.rows]

    def append(self, fed: list[list[int]]) -> None:
        """Record the ids just fed through the model, one list per row."""
        for ids, new in zip(self.rows, fed, strict=True):
            ids.extend(new)
