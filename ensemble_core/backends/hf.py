"""Hugging Face transformers backend: ``HFTextGenerator`` and its per-job session.

Generation is a hand-written decode loop rather than ``model.generate`` because the engine
needs, in one batch, candidates with different temperatures, a per-row segment boundary
checked on the decoded text, the untempered log-probability of every token (free scores), and
a KV cache that survives between rounds (see ``prefix_cache``). Greedy decoding with and
without cache reuse gives the same tokens (tested on SmolLM2). A session's first prefill starts
from the key/values of the longest prefix its prompt shares with a recent job's of the same
scope (tenant) on the model (``shared_prefixes``).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import threading
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ensemble_core.backends import grouped_attention
from ensemble_core.backends.context_window import full_candidates, mark_window_ends, room_left
from ensemble_core.backends.hf_batching import DecodeLoop, batchable, sliding_window
from ensemble_core.backends.hf_loading import (
    context_window,
    from_pretrained,
    input_device,
    load_tokenizer,
    wide_step_threads,
)
from ensemble_core.backends.prefix_cache import PrefixCache, common_prefix_length
from ensemble_core.backends.sampling import (
    ConfidenceTrail,
    choose_token,
    end_ids,
    extend_candidate,
    step_confidence,
    step_top,
)
from ensemble_core.backends.shared_prefixes import SharedPrefixes
from ensemble_core.errors import GenerationError, ModelLoadError
from ensemble_core.ports import (
    Candidate,
    ContinuationScore,
    PromptStatistics,
    Sampling,
    SegmentLimits,
    SessionCounters,
)
from ensemble_core.prefix_scope import current_scope
from ensemble_core.prompting import (
    RenderedPrompt,
    leading_special_ids,
    render_chat,
    render_prompt,
    with_stops,
)
from ensemble_core.spec import ModelSpec, PromptInput, PromptStyle

__all__ = ["HFGenerationSession", "HFTextGenerator", "eos_token_ids", "render_chat"]


def eos_token_ids(model: Any, tokenizer: Any) -> set[int]:
    ids: set[int] = set()
    configured = getattr(model.generation_config, "eos_token_id", None)
    if isinstance(configured, int):
        ids.add(configured)
    elif configured:
        ids.update(int(i) for i in configured)
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    return ids


def _attention_option(spec: ModelSpec) -> dict[str, str]:
    """On the CPU, grouped-query attention without copying the key/value heads
    (``grouped_attention``), unless the admin's spec names an ``attn_implementation``."""
    if spec.device != "cpu" or spec.engine_options.get("attn_implementation"):
        return {}
    return {"attn_implementation": grouped_attention.register()}


class HFTextGenerator:
    """One causal LM loaded with transformers; open one session per job."""

    engine = "hf"
    supports_concurrency = True

    def __init__(self, spec: ModelSpec, cache_dir: Path | None = None) -> None:
        from transformers import AutoModelForCausalLM

        started = time.perf_counter()
        self.spec = spec
        self.name = spec.display_name
        self.tokenizer = load_tokenizer(spec, cache_dir)
        self.model = from_pretrained(AutoModelForCausalLM, spec, cache_dir, **_attention_option(spec))
        self.device = str(input_device(self.model))
        self.eos_ids = eos_token_ids(self.model, self.tokenizer)
        if not self.eos_ids:
            raise ModelLoadError(f"{self.name!r} has no EOS token id; generation could not stop")
        self.pad_id = self.tokenizer.pad_token_id
        if self.pad_id is None:
            self.pad_id = min(self.eos_ids)
        self.batcher = self._make_batcher(spec)
        self.shared_prefixes = self._make_shared_prefixes(spec)
        self.leading_ids = leading_special_ids(self.tokenizer)
        self.context_window = context_window(self.model.config)
        self._grammars: Any = None  # hf_grammar.VocabularyGrammars, built at the first use
        self._grammar_lock = threading.Lock()
        self.load_seconds = time.perf_counter() - started

    def _make_batcher(self, spec: ModelSpec) -> DecodeLoop | None:
        """Concurrent jobs on this model share one decode loop (see ``hf_batching``) unless the
        spec says ``engine_options.batch_across_jobs: false`` or the model cannot be batched.
        (``batch_window_ms`` is still accepted but no longer used: the loop admits calls at
        every step, so nothing waits for a window.)"""
        options = spec.engine_options
        if not options.get("batch_across_jobs", True) or not batchable(self.model.config):
            return None
        # a new prompt's prefill on the core the decode step leaves free (a CPU's); a GPU runs
        # both on one device, where it would only slow the step down
        side = self.device == "cpu"
        # 128 rows: a job whose members share these weights decodes one row per member (the
        # pair: two), and on the CPU a 128-row step costs 1.85 ms a row against 2.37 at 64
        # (SmolLM2, float32, two threads), so 64 such jobs step together instead of 32
        return DecodeLoop(
            self,
            max_rows=int(options.get("batch_max_rows", 128)),
            side_prefill=side,
            wide_threads=wide_step_threads(spec) if self.device == "cpu" else 1,
            window=sliding_window(self.model.config),
        )

    def _make_shared_prefixes(self, spec: ModelSpec) -> SharedPrefixes | None:
        """Prompts' key/values shared across this model's jobs (``shared_prefixes``), within
        ``engine_options.prefix_sharing_mb`` (0: off), for models whose caches can be cropped."""
        budget = SharedPrefixes.budget_bytes(spec.engine_options)
        if not budget or not batchable(self.model.config):
            return None
        return SharedPrefixes(budget)

    def open_session(
        self,
        prompt: PromptInput,
        *,
        style: PromptStyle | None = None,
        reuse_cache: bool = True,
        seed: int | None = None,
    ) -> HFGenerationSession:
        return HFGenerationSession(self, prompt, style=style, reuse_cache=reuse_cache, seed=seed)

    def render(self, prompt: PromptInput, style: PromptStyle | None = None) -> RenderedPrompt:
        return render_prompt(prompt, style or PromptStyle(), self.tokenizer)

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def encode_prompt(self, rendered: RenderedPrompt, accepted_text: str = "") -> list[int]:
        """Token ids of the prompt followed by ``accepted_text``: for a raw prompt exactly what
        ``tokenizer(prompt + accepted_text)`` gives (its BOS included), for a chat prompt the
        template's text with nothing added."""
        return rendered.token_ids(self.encode, self.leading_ids, accepted_text)

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        # special tokens other than EOS (e.g. a stray <|im_start|>) are control, not text;
        # reasoning markers such as </think> are added tokens that are not "special" and stay
        return str(self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens))

    @torch.inference_mode()
    def prompt_logprobs(self, ids: list[int]) -> torch.Tensor:
        """Log-probabilities [len(ids), vocab] (float32, CPU): row i is the distribution of the
        token after ``ids[: i + 1]`` (one forward pass, no cache kept; for ``echo``)."""
        if not ids:
            return torch.zeros((0, 0))
        tensor = torch.tensor([ids], dtype=torch.long, device=self.device)
        try:
            logits = self.model(input_ids=tensor, use_cache=False).logits[0]
        except RuntimeError as exc:
            raise GenerationError(f"{self.name}: forward pass failed: {exc}") from exc
        return torch.log_softmax(logits.float(), dim=-1).cpu()

    def row_grammars(self, limits: SegmentLimits, accepted_text: str, rows: int) -> Any:
        """Structured output: one grammar matcher per candidate row, each already past
        ``accepted_text`` (``hf_grammar.RowGrammars``); None without a grammar."""
        if limits.grammar is None:
            return None
        from ensemble_core.backends.hf_grammar import VocabularyGrammars

        with self._grammar_lock:
            if self._grammars is None:
                head = self.model.get_output_embeddings()
                size = int(head.weight.shape[0]) if head is not None else len(self.tokenizer)
                self._grammars = VocabularyGrammars.for_tokenizer(self.tokenizer, size, self.eos_ids)
        return self._grammars.rows(limits.grammar, accepted_text, rows)

    def decoder_for(self, limits: SegmentLimits) -> Callable[[list[int]], str]:
        """``decode`` with the request's ``skip_special_tokens``."""
        if limits.skip_special_tokens:
            return self.decode
        return functools.partial(self.decode, skip_special_tokens=False)


class HFGenerationSession:
    """One job's state on one HF model: prompt, prefix KV cache, seeded sampler, counters."""

    def __init__(
        self,
        generator: HFTextGenerator,
        prompt: PromptInput,
        *,
        style: PromptStyle | None,
        reuse_cache: bool,
        seed: int | None,
    ) -> None:
        self.generator = generator
        self.model = generator.model
        self.reuse_cache = reuse_cache
        self.rendered = generator.render(prompt, style)
        self.prompt_text = self.rendered.text
        self.prompt_ids = generator.encode_prompt(self.rendered)
        self.counters = SessionCounters(prompt_tokens=len(self.prompt_ids))
        self.rng = torch.Generator().manual_seed(seed if seed is not None else 0)
        self.device = input_device(self.model)
        self.cache: PrefixCache | None = None
        self._published = False  # the prompt's key/values are in the model's shared prefixes
        self.prefix_scope = current_scope()  # whose shared prefixes it reads and adds to (the job's tenant)
        # single-row caches of this session's candidates decoded in the decode loop, each with
        # the ids it holds: the next round starts from whichever shares most with its text
        self.batch_rows: list[tuple[list[int], list[tuple[torch.Tensor, torch.Tensor]]]] = []
        self.lock = threading.Lock()  # one job may share a session between members
        # a model with one open session decodes directly; a session dropped without close()
        # (a notebook) is counted out when it is garbage-collected
        self._release = None
        if generator.batcher is not None:
            generator.batcher.session_opened()
            self._release = weakref.finalize(self, generator.batcher.session_closed)

    # -- cache bookkeeping ---------------------------------------------------------------
    def _forward(
        self, ids: list[list[int]], keep_logits: int | None = 1, full_mask: bool = False
    ) -> torch.Tensor:
        assert self.cache is not None
        tensor = torch.tensor(ids, dtype=torch.long, device=self.device)
        kwargs: dict[str, Any] = {}
        if full_mask:
            past = len(self.cache.rows[0])
            kwargs["attention_mask"] = torch.ones(
                (len(ids), past + len(ids[0])), dtype=torch.long, device=self.device
            )
        if keep_logits is not None:
            kwargs["logits_to_keep"] = keep_logits
        try:
            out = self.model(input_ids=tensor, past_key_values=self.cache.cache, use_cache=True, **kwargs)
        except RuntimeError as exc:
            raise GenerationError(f"{self.generator.name}: forward pass failed: {exc}") from exc
        self.cache.append(ids)
        self.counters.forward_passes += 1
        logits: torch.Tensor = out.logits
        return logits

    def _sync(self, target: list[int], *, feed_last: bool) -> list[int]:
        """Make the single-row cache a prefix of ``target``; return the ids still to feed.

        With ``feed_last`` at least one id is left to feed (its logits are needed).
        """
        if self.cache is None or not self.reuse_cache:
            self.batch_rows = []
            self.cache = PrefixCache(self.model.config)
            return self._start_from_shared(target, feed_last=feed_last)
        self._adopt_batch_row(target)
        row, shared = self.cache.best_row(target)
        self.cache.keep_row(row)
        if feed_last:
            shared = min(shared, len(target) - 1)
        self.cache.crop_to(shared)
        return list(target[shared:])

    def _start_from_shared(self, target: list[int], *, feed_last: bool) -> list[int]:
        """Start the new cache from the longest prefix of ``target`` that another job's prompt
        left in the model's shared prefixes; return the ids still to feed."""
        shared = self.generator.shared_prefixes
        if shared is None or not self.reuse_cache:
            return list(target)
        assert self.cache is not None
        found = shared.lookup(target, len(target) - 1 if feed_last else len(target), self.prefix_scope)
        if found is None:
            return list(target)
        ids, layers = found
        self.cache.adopt_row(ids, layers)
        return list(target[len(ids) :])

    def _publish_prompt(self, held: list[int], layers: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Once per session: offer the prompt's key/values (the first columns of a row holding
        ``held``) to the model's shared prefixes, for the jobs that follow."""
        shared = self.generator.shared_prefixes
        if shared is None or self._published or not self.reuse_cache:
            return
        n = len(self.prompt_ids)
        if held[:n] != self.prompt_ids:
            return  # this row's text re-tokenized the prompt's end differently
        self._published = True
        shared.publish(self.prompt_ids, layers, self.prefix_scope)

    def _adopt_batch_row(self, target: list[int]) -> None:
        """Install the batch-decoded row that shares most with ``target`` if it beats the cache."""
        if not self.batch_rows or self.cache is None:
            return
        _, current = self.cache.best_row(target)
        best = max(self.batch_rows, key=lambda entry: common_prefix_length(entry[0], target))
        rows, self.batch_rows = self.batch_rows, []
        del rows
        if common_prefix_length(best[0], target) > current:
            self.cache.adopt_row(best[0], best[1])

    def batch_target(self, accepted_text: str) -> list[int]:
        """The ids a decode-loop row starts from: prompt + ``accepted_text``."""
        return self.generator.encode_prompt(self.rendered, accepted_text)

    def start_batch_row(self, target: list[int]) -> list[int]:
        """Bring the cache (one row) to the longest reusable prefix of ``target`` for the
        decode loop, as ``_prefill`` does; return the ids still to feed (at least one)."""
        rest = self._sync(target, feed_last=True)
        self.counters.prefilled += len(rest)
        return rest

    def keep_batch_row(self, fed: list[int], cache: Any, row: int, columns: torch.Tensor) -> None:
        """Keep row ``row`` of the decode loop's batch cache for reuse: its real ``columns`` (the others
        are padding), which hold the keys/values of the ``fed`` ids."""
        if not self.reuse_cache:
            return
        layers = [
            (
                layer.keys[row : row + 1].index_select(2, columns),
                layer.values[row : row + 1].index_select(2, columns),
            )
            for layer in cache.layers
        ]
        self.batch_rows.append((list(fed), layers))
        self._publish_prompt(fed, layers)

    def _prefill(self, target: list[int]) -> torch.Tensor:
        """Bring the cache to ``target`` and return the next-token logits, shape [1, vocab]."""
        rest = self._sync(target, feed_last=True)
        self.counters.prefilled += len(rest)
        logits = self._forward([rest])[:, -1, :]
        assert self.cache is not None
        self._publish_prompt(
            self.cache.rows[0], [(layer.keys, layer.values) for layer in self.cache.cache.layers]
        )
        return logits

    # -- public API ------------------------------------------------------------------------
    def count_tokens(self, text: str) -> int:
        return len(self.generator.encode(text))

    @torch.inference_mode()
    def prompt_statistics(self) -> PromptStatistics:
        with self.lock:
            ids = self.prompt_ids
            self.cache = PrefixCache(self.model.config)
            self.counters.prefilled += len(ids)
            logits = self._forward([ids], keep_logits=None)[0, :-1].float()
            self._publish_prompt(ids, [(layer.keys, layer.values) for layer in self.cache.cache.layers])
            logprobs = torch.log_softmax(logits, dim=-1)
            targets = torch.tensor(ids[1:], device=logprobs.device)
            nll = -logprobs.gather(1, targets[:, None]).squeeze(1)
            top1 = logprobs.exp().max(dim=-1).values
            return PromptStatistics(
                mean_nll=float(nll.mean()) if len(ids) > 1 else 0.0,
                mean_top1_prob=float(top1.mean()) if len(ids) > 1 else 0.0,
                tokens=len(ids),
            )

    @torch.inference_mode()
    def generate(
        self, accepted_text: str, samplings: list[Sampling], limits: SegmentLimits
    ) -> list[Candidate]:
        if not samplings or limits.max_new_tokens <= 0:
            return []
        limits = with_stops(limits, self.rendered)
        room = self._context_room(accepted_text, limits.max_new_tokens)
        if room is not None and room <= 0:
            return full_candidates(len(samplings))
        if room is not None:
            limits = dataclasses.replace(limits, max_new_tokens=room)
        with self.lock:
            batcher = self.generator.batcher
            if (
                batcher is not None
                and batcher.open_sessions > 1
                and self._fits_batch(batcher, accepted_text, limits)
            ):
                candidates = batcher.generate(self, accepted_text, samplings, limits)
            else:
                candidates = self._generate(accepted_text, samplings, limits)
        return candidates if room is None else mark_window_ends(candidates, room)

    def _fits_batch(self, batcher: DecodeLoop, accepted_text: str, limits: SegmentLimits) -> bool:
        """Whether this call's decode-loop row stays within the model's sliding window (always
        for full attention); a longer call decodes directly, where the sliding layers forget
        what lies beyond the window."""
        if batcher.window is None:
            return True
        wanted = limits.max_new_tokens
        if batcher.fits(self._most_tokens(accepted_text) + wanted):
            return True
        return batcher.fits(len(self.batch_target(accepted_text)) + wanted)

    def _most_tokens(self, accepted_text: str) -> int:
        """An upper bound of ``len(batch_target(accepted_text))`` without tokenizing again: a
        byte-level tokenizer spends at most one token per byte (16 spare for the seam)."""
        return len(self.prompt_ids) + len(accepted_text.encode("utf-8")) + 16

    def _context_room(self, accepted_text: str, wanted: int) -> int | None:
        """How many tokens still fit in the model's context window after the prompt and
        ``accepted_text``, when fewer than ``wanted`` do; None when ``wanted`` fit (or the
        model names no window)."""
        window = self.generator.context_window
        if window is None:
            return None
        # most calls stop here without tokenizing the accepted text again
        if self._most_tokens(accepted_text) + wanted <= window:
            return None
        return room_left(window, len(self.batch_target(accepted_text)), wanted)

    def _generate(
        self, accepted_text: str, samplings: list[Sampling], limits: SegmentLimits
    ) -> list[Candidate]:
        gen = self.generator
        target = gen.encode_prompt(self.rendered, accepted_text)
        logits = self._prefill(target)
        n = len(samplings)
        assert self.cache is not None
        self.cache.repeat(n)
        logits = logits.expand(n, -1)
        tail = accepted_text[-64:]
        ids: list[list[int]] = [[] for _ in range(n)]
        logps: list[list[float]] = [[] for _ in range(n)]
        trails = [ConfidenceTrail() for _ in range(n)]
        results: list[Candidate | None] = [None] * n
        ends = end_ids(gen.eos_ids, limits)
        decode = gen.decoder_for(limits)
        prompt_len = len(self.prompt_ids)
        grammars = gen.row_grammars(limits, accepted_text, n)
        for step in range(limits.max_new_tokens):
            # a row that ended draws nothing (it is fed a pad): the seeded generator's stream is
            # then the same as the decode loop's, where an ended row leaves the batch
            chosen = [
                gen.pad_id
                if results[row] is not None
                else choose_token(
                    logits[row],
                    sampling,
                    self.rng,
                    limits,
                    ends=ends,
                    context=lambda row=row: target + ids[row],  # type: ignore[misc]
                    output=lambda row=row: target[prompt_len:] + ids[row],  # type: ignore[misc]
                    generated=len(ids[row]),
                    grammar=None if grammars is None else functools.partial(grammars.mask, row),
                )
                for row, sampling in enumerate(samplings)
            ]
            logprobs = torch.log_softmax(logits.float(), dim=-1)
            confidence, certainty = step_confidence(logprobs)
            tops = step_top(logprobs, limits.top_logprobs)
            for row, token in enumerate(chosen):
                if results[row] is not None:
                    continue
                if grammars is not None:
                    grammars.accept(row, token)
                self.counters.generated += 1
                results[row] = extend_candidate(
                    ids[row],
                    logps[row],
                    token,
                    float(logprobs[row, token]),
                    limits=limits,
                    accepted_tail=tail,
                    eos_ids=gen.eos_ids,
                    decode=decode,
                    trail=trails[row],
                    confidence=(confidence[row], certainty[row]),
                    top=tops[row] if tops is not None else None,
                )
            if all(r is not None for r in results) or step == limits.max_new_tokens - 1:
                break
            if limits.should_stop is not None and limits.should_stop():
                break  # cancelled or past the deadline: the rows end here, finish "length"
            logits = self._forward([[t] for t in chosen])[:, -1, :]
        return [
            r if r is not None else trails[i].attach(Candidate(decode(ids[i]), ids[i], logps[i], "length"))
            for i, r in enumerate(results)
        ]

    @torch.inference_mode()
    def score_continuations(self, accepted_text: str, continuations: list[str]) -> list[ContinuationScore]:
        if not continuations:
            return []
        with self.lock:
            return self._score(accepted_text, continuations)

    def _score(self, accepted_text: str, continuations: list[str]) -> list[ContinuationScore]:
        gen = self.generator
        base = gen.encode_prompt(self.rendered, accepted_text)
        fulls = [gen.encode_prompt(self.rendered, accepted_text + c) for c in continuations]
        starts = [common_prefix_length(base, f) for f in fulls]
        shared = min(starts)
        for f in fulls[1:]:
            shared = min(shared, common_prefix_length(fulls[0], f))
        keep = max(shared - 1, 0)  # the last shared token is fed again: its logits score the first
        rest = self._sync(fulls[0][:keep], feed_last=False)
        if rest:
            self.counters.prefilled += len(rest)
            self._forward([rest], keep_logits=1)
        assert self.cache is not None
        self.cache.repeat(len(fulls))
        rows = [f[keep:] for f in fulls]
        width = max(len(r) for r in rows)
        padded = [r + [gen.pad_id] * (width - len(r)) for r in rows]
        self.counters.scored += sum(len(r) for r in rows)
        # right padding under a causal mask never reaches the real tokens; the all-ones mask
        # only says so to transformers
        logits = self._forward(padded, keep_logits=None, full_mask=True)
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        scores: list[ContinuationScore] = []
        for i, full in enumerate(fulls):
            positions = range(max(starts[i], 1), len(full))
            values = [float(logprobs[i, p - keep - 1, full[p]]) for p in positions]
            mean = sum(values) / len(values) if values else -math.inf
            scores.append(ContinuationScore(mean_logprob=mean, tokens=len(values)))
        return scores

    def close(self) -> None:
        self.cache = None
        self.batch_rows = []
        if self._release is not None:
            self._release()  # runs session_closed at most once
