"""Decoding the segments of several jobs in one batch (one ``DecodeBatcher`` per loaded model).

Why: on this kind of hardware one decode step of a small model costs about the same for one row
as for sixteen (measured for SmolLM2 on one CPU thread: 86 ms for 1 row, 170 ms for 16, 494 ms
for 64), so a worker that runs several jobs at once (a batch, or concurrent chat requests) gets
several times the tokens per second if their decode steps share forward passes.

How: every ``HFGenerationSession.generate`` call of a model with more than one open session
goes through the model's batcher. Calls that arrive together form a *wave*: the first caller
waits until every open session has a call queued (or ``window_s`` passes, or ``max_rows`` rows
are waiting), then leads the wave while the others wait for their own results:

1. each call's session brings its own prefix cache up to date (the longest cached prefix of
   prompt + accepted text, as on the direct path); a first round or a long new text is
   prefilled there, alone (prompt prefill is compute-bound: a batch would not make it cheaper);
2. the single-row caches are copied into one batch, left-padded with zero keys that the
   attention mask hides, with explicit position ids; the short rests (typically the segment
   accepted last round, up to ``SHARED_PREFILL_MAX`` tokens) are fed for all calls in one
   forward pass (a forward pass of one row costs almost as much as one of sixty-four);
3. each row is copied once per candidate sampling, and one decode loop runs every row; a row that reaches its segment end leaves the batch at once
   (its KV row is handed back to its session as a reusable prefix for the next round), and a
   call whose rows are all done is released immediately, so its job can score and queue its
   next round while the others finish.

A wave of one call takes the direct path, token for token the same as without a batcher. In a
wave, padding changes the shapes of the matrix products, so greedy rows agree with the direct
path up to float rounding (a near-tie may pick the other token); sampled rows use each job's own
seeded generator, so a job replays the same way under the same batching.

Only models whose cache layers are all plain ``DynamicLayer`` (full attention) are batched;
sliding-window models such as Gemma 3 keep the direct path.
"""

from __future__ import annotations

import functools
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from ensemble_core.backends.sampling import (
    ConfidenceTrail,
    choose_token,
    end_ids,
    extend_candidate,
    step_confidence,
    step_top,
)
from ensemble_core.errors import EnsembleError, GenerationError
from ensemble_core.ports import Candidate, Sampling, SegmentLimits

if TYPE_CHECKING:
    from ensemble_core.backends.hf import HFGenerationSession
    from ensemble_core.backends.prefix_cache import PrefixCache

# a rest longer than this is prefilled alone: padding every row of the wave to it would cost more
SHARED_PREFILL_MAX = 8


@dataclass
class _Call:
    """One ``generate`` call waiting for (or taking part in) a wave."""

    session: HFGenerationSession
    accepted_text: str
    samplings: list[Sampling]
    limits: SegmentLimits
    arrived: float = field(default_factory=time.monotonic)
    results: list[Candidate | None] = field(default_factory=list)
    rows_left: int = 0
    taken: bool = False  # in a wave
    done: bool = False
    finished: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None
    grammars: Any = None  # hf_grammar.RowGrammars (structured output): one matcher per sampling


@dataclass
class _Row:
    """One candidate being decoded in the wave's batch."""

    call: _Call
    index: int  # which of the call's samplings
    fed: list[int]  # token ids whose keys/values this row holds (prefix + generated so far)
    position: int  # position id of the next token fed
    ids: list[int] = field(default_factory=list)
    logps: list[float] = field(default_factory=list)
    trail: ConfidenceTrail = field(default_factory=ConfidenceTrail)


def batchable(model_config: Any) -> bool:
    """Whether every cache layer of this model is a plain full-attention ``DynamicLayer``."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    cache = DynamicCache(config=model_config)
    layers = list(getattr(cache, "layers", []))
    return bool(layers) and all(type(layer) is DynamicLayer for layer in layers)


class DecodeBatcher:
    """Groups concurrent ``generate`` calls on one model into shared decode steps."""

    def __init__(self, generator: Any, *, window_s: float = 0.02, max_rows: int = 64) -> None:
        self.generator = generator
        self.window_s = window_s
        self.max_rows = max_rows
        self._cond = threading.Condition()
        self._queue: list[_Call] = []
        self._leading = False
        self._open_sessions = 0
        self.waves = 0  # statistics, for tests and benchmarks
        self.largest_wave = 0

    # -- session bookkeeping ----------------------------------------------------------------
    def session_opened(self) -> None:
        with self._cond:
            self._open_sessions += 1

    def session_closed(self) -> None:
        with self._cond:
            self._open_sessions = max(0, self._open_sessions - 1)
            self._cond.notify_all()  # one fewer session to wait for

    @property
    def open_sessions(self) -> int:
        return self._open_sessions

    # -- the rendezvous ---------------------------------------------------------------------
    def generate(
        self,
        session: HFGenerationSession,
        accepted_text: str,
        samplings: list[Sampling],
        limits: SegmentLimits,
    ) -> list[Candidate]:
        call = _Call(session, accepted_text, samplings, limits)
        with self._cond:
            self._queue.append(call)
            self._cond.notify_all()
        while not call.taken:
            wave = self._await_wave(call)
            if wave is None:
                break  # our call is in another thread's wave
            try:
                self._run_wave(wave)
            finally:
                with self._cond:
                    self._leading = False
                    self._cond.notify_all()  # the queued calls may form the next wave
                for member in wave:  # a failed wave must not leave anyone waiting
                    if not member.done:
                        member.error = member.error or GenerationError("batched decoding stopped")
                        self._finish(member)
        call.finished.wait()
        if call.error is not None:
            raise call.error
        return [c for c in call.results if c is not None]

    def _await_wave(self, call: _Call) -> list[_Call] | None:
        """Wait until ``call`` is taken into a wave; return the wave if this thread leads it.

        Only queued callers wait here, on the shared condition: without a timeout while a wave
        runs (its end notifies), with the remaining window otherwise. Callers in a running wave
        wait on their own event, so finishing one call wakes one thread."""
        with self._cond:
            while not call.taken:
                if self._leading:
                    self._cond.wait()
                    continue
                wave = self._take_wave()
                if wave is not None:
                    self._leading = True
                    return wave
                self._cond.wait(timeout=self._wait_time())
        return None

    def _wait_time(self) -> float:
        if not self._queue:
            return self.window_s
        return max(0.001, self.window_s - (time.monotonic() - self._queue[0].arrived))

    def _take_wave(self) -> list[_Call] | None:
        """The calls of the next wave, once it is worth starting (called under the lock)."""
        if not self._queue:
            return None
        rows = sum(len(c.samplings) for c in self._queue)
        everyone_here = len(self._queue) >= self._open_sessions
        waited = time.monotonic() - self._queue[0].arrived >= self.window_s
        if not (everyone_here or waited or rows >= self.max_rows):
            return None
        wave: list[_Call] = []
        taken = 0
        while self._queue and (not wave or taken + len(self._queue[0].samplings) <= self.max_rows):
            call = self._queue.pop(0)
            call.taken = True
            wave.append(call)
            taken += len(call.samplings)
        return wave

    def _finish(self, call: _Call) -> None:
        call.done = True
        call.finished.set()

    # -- the wave ---------------------------------------------------------------------------
    @torch.inference_mode()
    def _run_wave(self, wave: list[_Call]) -> None:
        self.waves += 1
        self.largest_wave = max(self.largest_wave, len(wave))
        if len(wave) == 1:  # nothing to share: the direct path, exactly
            call = wave[0]
            try:
                call.results = list(call.session._generate(call.accepted_text, call.samplings, call.limits))
            except BaseException as exc:  # noqa: BLE001 - handed to the waiting caller
                call.error = exc
            self._finish(call)
            return
        prepared: list[tuple[_Call, list[int], torch.Tensor | None]] = []
        for call in wave:
            try:
                rest, logits = call.session.prepare_for_batch(call.accepted_text, SHARED_PREFILL_MAX)
                prepared.append((call, rest, logits))
            except BaseException as exc:  # noqa: BLE001
                call.error = exc
                self._finish(call)
        if prepared:
            try:
                self._decode(prepared)
            except BaseException as exc:  # noqa: BLE001 - every call still waiting gets the error
                for call, _, _ in prepared:
                    if not call.done:
                        call.error = (
                            exc
                            if isinstance(exc, EnsembleError)
                            else GenerationError(f"{self.generator.name}: batched decoding failed: {exc}")
                        )
                        self._finish(call)

    def _decode(self, prepared: list[tuple[_Call, list[int], torch.Tensor | None]]) -> None:
        gen = self.generator
        model = gen.model
        calls = [call for call, _, _ in prepared]
        prefixes = [_prefix_cache(call) for call in calls]
        lengths = [len(prefix.rows[0]) for prefix in prefixes]
        width = max(lengths)
        cache = _merged_cache(model.config, [prefix.cache for prefix in prefixes], lengths, width)
        mask = torch.zeros((len(calls), width), dtype=torch.long)
        for i, length in enumerate(lengths):
            mask[i, width - length :] = 1
        mask, logits = self._shared_prefill(cache, mask, prepared, lengths)
        rows: list[_Row] = []
        source: list[int] = []  # which call each row copies
        for i, ((call, rest, _), length, prefix) in enumerate(zip(prepared, lengths, prefixes, strict=True)):
            call.results = [None] * len(call.samplings)
            call.rows_left = len(call.samplings)
            call.grammars = gen.row_grammars(call.limits, call.accepted_text, len(call.samplings))
            fed = list(prefix.rows[0]) + rest
            for j in range(len(call.samplings)):
                rows.append(_Row(call, j, list(fed), length + len(rest)))
                source.append(i)
        index = torch.tensor(source)
        cache.batch_select_indices(index)
        mask = mask.index_select(0, index)
        logits = logits.index_select(0, index)
        tails = {id(call): call.accepted_text[-64:] for call in calls}
        while rows:
            chosen = _sample_rows(logits, rows)
            logprobs = torch.log_softmax(logits.float(), dim=-1)
            confidence, certainty = step_confidence(logprobs)
            tops = step_top(logprobs, max(row.call.limits.top_logprobs for row in rows))
            keep: list[int] = []
            sessions_seen: set[int] = set()
            for r, (row, token) in enumerate(zip(rows, chosen, strict=True)):
                session = row.call.session
                session.counters.generated += 1
                finished = self._advance(
                    row,
                    token,
                    float(logprobs[r, token]),
                    (confidence[r], certainty[r]),
                    tails[id(row.call)],
                    tops[r] if tops is not None else None,
                )
                limits = row.call.limits
                if not finished and (
                    len(row.ids) >= limits.max_new_tokens
                    or (limits.should_stop is not None and limits.should_stop())
                ):
                    decode = gen.decoder_for(row.call.limits)
                    row.call.results[row.index] = row.trail.attach(
                        Candidate(decode(row.ids), row.ids, row.logps, "length")
                    )
                    finished = True
                if finished:
                    session.keep_batch_row(row.fed, cache, r, mask[r].nonzero().squeeze(1))
                    row.call.rows_left -= 1
                    if row.call.rows_left == 0:
                        self._finish(row.call)
                else:
                    keep.append(r)
                    if id(session) not in sessions_seen:
                        sessions_seen.add(id(session))
                        session.counters.forward_passes += 1
            if not keep:
                return
            if len(keep) < len(rows):
                kept = torch.tensor(keep)
                cache.batch_select_indices(kept)
                mask = mask.index_select(0, kept)
                rows = [rows[r] for r in keep]
                chosen = [chosen[r] for r in keep]
            mask = torch.cat([mask, torch.ones((len(rows), 1), dtype=torch.long)], dim=1)
            positions = torch.tensor([[row.position] for row in rows], dtype=torch.long)
            inputs = torch.tensor([[t] for t in chosen], dtype=torch.long)
            logits = self._forward(inputs, mask, positions, cache).logits[:, -1, :]
            for row, token in zip(rows, chosen, strict=True):
                row.fed.append(token)
                row.position += 1

    def _shared_prefill(
        self,
        cache: Any,
        mask: torch.Tensor,
        prepared: list[tuple[_Call, list[int], torch.Tensor | None]],
        lengths: list[int],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Feed every call's short rest (the last accepted segment) in one forward pass over the
        merged cache; return the extended mask and each call's next-token logits.

        Rests are right-aligned: a shorter rest is preceded by pad columns that the mask hides
        (every row already holds real keys, so no query attends to nothing). A call prefilled
        on its own (first round, or a long rest) feeds only pads here and keeps its logits."""
        gen = self.generator
        rests = [rest for _, rest, _ in prepared]
        span = max(len(rest) for rest in rests)
        if span == 0:
            return mask, torch.cat([lg for _, _, lg in prepared if lg is not None], dim=0)
        inputs = torch.full((len(rests), span), gen.pad_id, dtype=torch.long)
        positions = torch.zeros((len(rests), span), dtype=torch.long)
        new_mask = torch.zeros((len(rests), span), dtype=torch.long)
        for i, (rest, length) in enumerate(zip(rests, lengths, strict=True)):
            pad = span - len(rest)
            if rest:
                inputs[i, pad:] = torch.tensor(rest)
                new_mask[i, pad:] = 1
            positions[i] = torch.clamp(torch.arange(span) - pad, min=0) + length
        mask = torch.cat([mask, new_mask], dim=1)
        out = self._forward(inputs, mask, positions, cache)
        fed_logits = out.logits[:, -1, :]
        for call, _, _ in prepared:
            call.session.counters.forward_passes += 1
        logits = [own if own is not None else fed_logits[i : i + 1] for i, (_, _, own) in enumerate(prepared)]
        return mask, torch.cat(logits, dim=0)

    def _forward(self, inputs: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache: Any) -> Any:
        gen = self.generator
        try:
            return gen.model(
                input_ids=inputs.to(gen.device),
                attention_mask=mask.to(gen.device),
                position_ids=positions.to(gen.device),
                past_key_values=cache,
                use_cache=True,
                logits_to_keep=1,
            )
        except RuntimeError as exc:
            raise GenerationError(f"{gen.name}: batched forward pass failed: {exc}") from exc

    def _advance(
        self,
        row: _Row,
        token: int,
        logprob: float,
        confidence: tuple[float, float],
        tail: str,
        top: list[tuple[int, float]] | None = None,
    ) -> bool:
        """Add ``token`` to ``row``; return whether its candidate ended (result recorded)."""
        gen = self.generator
        if row.call.grammars is not None:
            row.call.grammars.accept(row.index, token)
        candidate = extend_candidate(
            row.ids,
            row.logps,
            token,
            logprob,
            limits=row.call.limits,
            accepted_tail=tail,
            eos_ids=gen.eos_ids,
            decode=gen.decoder_for(row.call.limits),
            trail=row.trail,
            confidence=confidence,
            top=top,
        )
        if candidate is None:
            return False
        row.call.results[row.index] = candidate
        return True


def _prefix_cache(call: _Call) -> PrefixCache:
    """The call's session cache, which ``prepare_for_batch`` has just brought up to date."""
    if call.session.cache is None:
        raise GenerationError("a session joined a batch wave without a prefix cache")
    return call.session.cache


def _merged_cache(model_config: Any, caches: list[Any], lengths: list[int], width: int) -> Any:
    """One batch cache from single-row caches, each left-padded with zeros to ``width``."""
    from transformers import DynamicCache

    merged = DynamicCache(config=model_config)
    merged_layers: list[Any] = list(merged.layers)
    for layer_index, layer in enumerate(merged_layers):
        keys, values = [], []
        for cache, length in zip(caches, lengths, strict=True):
            source = cache.layers[layer_index]
            pad = width - length
            k, v = source.keys, source.values
            if pad:
                k = torch.nn.functional.pad(k, (0, 0, pad, 0))
                v = torch.nn.functional.pad(v, (0, 0, pad, 0))
            keys.append(k)
            values.append(v)
        first = keys[0]
        layer.lazy_initialization(first, values[0])
        layer.keys = torch.cat(keys, dim=0)
        layer.values = torch.cat(values, dim=0)
    return merged


def _sample_rows(logits: torch.Tensor, rows: list[_Row]) -> list[int]:
    """One token per row, each with its own call's sampling and its session's generator
    (``row.fed`` is the prompt, the accepted text and the row's tokens so far)."""
    chosen = []
    for r, row in enumerate(rows):
        call = row.call
        prompt_len = len(call.session.prompt_ids)
        token = choose_token(
            logits[r],
            call.samplings[row.index],
            call.session.rng,
            call.limits,
            ends=end_ids(call.session.generator.eos_ids, call.limits),
            context=lambda row=row: row.fed,  # type: ignore[misc]
            output=lambda row=row, start=prompt_len: row.fed[start:],  # type: ignore[misc]
            generated=len(row.ids),
            grammar=None if call.grammars is None else functools.partial(call.grammars.mask, row.index),
        )
        chosen.append(token)
    return chosen
