"""Prompt key/values shared across jobs on one model: a new job skips the prefill of the prefix
its prompt shares with a recent one (the chat template's system prompt, a few-shot block).

Why: a prompt's prefill is compute-bound and dominates the time to first token on a CPU
(SmolLM2, float32, one thread on the 2-vCPU EPYC: 263 ms for a 45-token chat prompt, of which
~22 tokens are the template and default system prompt every chat request starts with). vLLM
does the same with its automatic prefix caching (there by hashed blocks of 16 tokens; here by
token ids, since one model holds only a few distinct prompts at once).

What is kept: after a job's first prefill its session publishes the prompt's key/values
(``publish``: one row, cloned, so nothing a session does later touches them). A session's first
round asks ``lookup`` for the entry sharing the longest prefix with its prompt and starts its
cache from that prefix (views of the entry: a forward pass concatenates into new tensors, it
never writes into these); only the rest is prefilled. Entries are kept least recently used
first out, within ``max_bytes``; an entry whose ids extend another's replaces it.

Output: the same as prefilling the whole prompt up to float rounding of the different shapes
(the same holds for the rounds' own prefix reuse, ``prefix_cache``): tests compare tokens and
log-probabilities (1e-4) against a model without sharing. Models whose cache layers are plain
full-attention or sliding-window layers share prefixes (``hf_batching.batchable``): a session's
sliding-window layers record their whole past (``prefix_cache``), so an entry holds every
column of the prompt, and ``PrefixCache.adopt_row`` sets their token count.

Scope: one store per loaded model in one worker process, partitioned by *scope*: whether a
prompt's prefix was cached shows as a shorter time to first token, which would tell one tenant
that another sent the same system prompt (the side channel vLLM's ``cache_salt`` closes). The
worker runs each job inside ``prefix_scope(its tenant)`` (None without auth: every job shares);
a session takes the scope current where it is opened (the engine's member threads copy the
job's context) and only ever reads and leaves entries of that scope. An admin can also turn
sharing off (``engine_options.prefix_sharing_mb: 0``).
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import torch

from ensemble_core.backends.prefix_cache import common_prefix_length
from ensemble_core.errors import ModelLoadError

Layers = list[tuple[torch.Tensor, torch.Tensor]]
Key = tuple[str | None, tuple[int, ...]]  # (scope, token ids)

DEFAULT_MB = 256
# a shorter shared prefix (a BOS, a template's first tag) saves less than it costs to look up
MIN_SHARED_TOKENS = 8


class SharedPrefixes:
    """The recent prompts' key/values of one model, looked up by their token ids."""

    def __init__(self, max_bytes: int, min_tokens: int = MIN_SHARED_TOKENS) -> None:
        self.max_bytes = max_bytes
        self.min_tokens = min_tokens
        self._entries: OrderedDict[Key, tuple[Layers, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        # statistics, for tests and benchmarks
        self.hits = 0
        self.reused_tokens = 0

    @staticmethod
    def budget_bytes(engine_options: dict[str, object]) -> int:
        """``prefix_sharing_mb`` (an admin's engine option; default 256, 0 turns sharing off) in bytes."""
        mb = engine_options.get("prefix_sharing_mb", DEFAULT_MB)
        if isinstance(mb, bool) or not isinstance(mb, (int, float)) or mb < 0:
            raise ModelLoadError(f"prefix_sharing_mb must be a number of MiB >= 0, got {mb!r}")
        return int(mb * 2**20)

    @property
    def entries(self) -> int:
        return len(self._entries)

    @property
    def bytes(self) -> int:
        return self._bytes

    def scopes(self) -> set[str | None]:
        with self._lock:
            return {scope for scope, _ in self._entries}

    def lookup(
        self, target: list[int], limit: int, scope: str | None = None
    ) -> tuple[list[int], Layers] | None:
        """The longest prefix of ``target`` (at most ``limit`` tokens) kept in ``scope``, as ids
        and per-layer (keys, values) views, or None when no entry shares ``min_tokens``."""
        wanted = tuple(target)
        with self._lock:
            best: Key | None = None
            best_len = 0
            for key in self._entries:
                if key[0] != scope:
                    continue
                n = common_prefix_length(key[1], wanted)
                if n > best_len:
                    best, best_len = key, n
            n = min(best_len, limit)
            if best is None or n < self.min_tokens:
                return None
            self._entries.move_to_end(best)
            layers, _ = self._entries[best]
            self.hits += 1
            self.reused_tokens += n
        return list(best[1][:n]), [(k[..., :n, :], v[..., :n, :]) for k, v in layers]

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0

    def publish(self, ids: list[int], layers: Layers, scope: str | None = None) -> None:
        """Keep ``layers`` (one row; at least ``len(ids)`` columns) as the key/values of ``ids``
        in ``scope``."""
        if len(ids) < self.min_tokens:
            return
        key = tuple(ids)
        n = len(key)
        with self._lock:
            for kept in self._entries:
                if kept[0] == scope and len(kept[1]) >= n and kept[1][:n] == key:
                    self._entries.move_to_end(kept)  # already covered by a longer entry
                    return
        # outside the lock: a clone of a long prompt's 30 layers is the expensive part
        copied = [(k[..., :n, :].clone(), v[..., :n, :].clone()) for k, v in layers]
        size = sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in copied)
        if size > self.max_bytes:
            return
        with self._lock:
            extended = [
                kept
                for kept in self._entries
                if kept[0] == scope and len(kept[1]) < n and key[: len(kept[1])] == kept[1]
            ]
            for kept in extended:
                self._bytes -= self._entries.pop(kept)[1]  # this one extends it
            if (scope, key) in self._entries:
                return  # another session published the same prompt meanwhile
            self._entries[(scope, key)] = (copied, size)
            self._bytes += size
            while self._bytes > self.max_bytes:
                _, (_, dropped) = self._entries.popitem(last=False)
                self._bytes -= dropped
