"""Decoding the segments of several jobs in one batch (one ``DecodeBatcher`` per loaded model).

Why: on this kind of hardware one decode step of a small model costs about the same for one row
as for sixteen (measured for SmolLM2 on one CPU thread: 86 ms for 1 row, 170 ms for 16, 494 ms
for 64), so a worker that runs several jobs at once (a batch, or concurrent chat requests) gets
several times the tokens per second if their decode steps share forward passes.

How: every ``HFGenerationSession.generate`` call of a model with more than one open session
goes through the model's batcher. Calls that arrive together form a *wave*: the first caller
waits until every open session has a call queued (or ``window_s`` passes, or ``max_rows`` rows
are waiting), then leads the wave while the others wait for their own results:

1. each call's prompt + accepted text is prefilled on its own session cache (batch of one:
   prefill is compute-bound already, a batch would not make it cheaper, and the session keeps
   its per-job prefix cache exactly as on the direct path);
2. the single-row caches are copied into one batch, left-padded with zero keys that the
   attention mask hides, each row once per candidate sampling, with explicit position ids;
3. one decode loop runs every row; a row that reaches its segment end leaves the batch at once
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

import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from ensemble_core.backends.sampling import sample_token
from ensemble_core.errors import GenerationError
from ensemble_core.ports import Candidate, Sampling, SegmentLimits
from ensemble_core.segment_text import check_candidate

if TYPE_CHECKING:
    from ensemble_core.backends.hf import HFGenerationSession


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


@dataclass
class _Row:
    """One candidate being decoded in the wave's batch."""

    call: _Call
    index: int  # which of the call's samplings
    left_pad: int  # zero columns before this row's real keys
    fed: list[int]  # token ids whose keys/values this row holds (prefix + generated so far)
    position: int  # position id of the next token fed
    ids: list[int] = field(default_factory=list)
    logps: list[float] = field(default_factory=list)


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
        prepared: list[tuple[_Call, torch.Tensor]] = []
        for call in wave:
            try:
                prepared.append((call, call.session.prefill_for_batch(call.accepted_text)))
            except BaseException as exc:  # noqa: BLE001
                call.error = exc
                self._finish(call)
        if prepared:
            try:
                self._decode(prepared)
            except BaseException as exc:  # noqa: BLE001 - every call still waiting gets the error
                for call, _ in prepared:
                    if not call.done:
                        call.error = (
                            exc
                            if isinstance(exc, GenerationError)
                            else GenerationError(f"{self.generator.name}: batched decoding failed: {exc}")
                        )
                        self._finish(call)

    def _decode(self, prepared: list[tuple[_Call, torch.Tensor]]) -> None:
        gen = self.generator
        model = gen.model
        lengths = [len(call.session.cache.rows[0]) for call, _ in prepared]
        width = max(lengths)
        rows: list[_Row] = []
        source: list[int] = []  # which prepared call each row copies
        for i, ((call, _), length) in enumerate(zip(prepared, lengths, strict=True)):
            call.results = [None] * len(call.samplings)
            call.rows_left = len(call.samplings)
            prefix = list(call.session.cache.rows[0])
            for j in range(len(call.samplings)):
                rows.append(_Row(call, j, width - length, list(prefix), length))
                source.append(i)
        cache = _merged_cache(
            model.config, [call.session.cache.cache for call, _ in prepared], lengths, width
        )
        index = torch.tensor(source)
        for layer in cache.layers:
            layer.keys = layer.keys.index_select(0, index)
            layer.values = layer.values.index_select(0, index)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for r, row in enumerate(rows):
            mask[r, row.left_pad :] = 1
        logits = torch.cat([lg for _, lg in prepared], dim=0).index_select(0, index)
        tails = {id(call): call.accepted_text[-64:] for call, _ in prepared}
        step = 0
        while rows:
            chosen = _sample_rows(logits, rows)
            logprobs = torch.log_softmax(logits.float(), dim=-1)
            keep: list[int] = []
            sessions_seen: set[int] = set()
            for r, (row, token) in enumerate(zip(rows, chosen, strict=True)):
                session = row.call.session
                session.counters.generated += 1
                finished = self._advance(row, token, float(logprobs[r, token]), tails[id(row.call)])
                if not finished and len(row.ids) >= row.call.limits.max_new_tokens:
                    row.call.results[row.index] = Candidate(gen.decode(row.ids), row.ids, row.logps, "length")
                    finished = True
                if finished:
                    session.keep_batch_row(row.fed, cache, r, row.left_pad)
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
            try:
                out = model(
                    input_ids=inputs.to(gen.device),
                    attention_mask=mask.to(gen.device),
                    position_ids=positions.to(gen.device),
                    past_key_values=cache,
                    use_cache=True,
                    logits_to_keep=1,
                )
            except RuntimeError as exc:
                raise GenerationError(f"{gen.name}: batched forward pass failed: {exc}") from exc
            logits = out.logits[:, -1, :]
            for row, token in zip(rows, chosen, strict=True):
                row.fed.append(token)
                row.position += 1
            step += 1

    def _advance(self, row: _Row, token: int, logprob: float, tail: str) -> bool:
        """Add ``token`` to ``row``; return whether its candidate ended (result recorded)."""
        gen = self.generator
        limits = row.call.limits
        if token in gen.eos_ids and not limits.ignore_eos:
            row.call.results[row.index] = Candidate(gen.decode(row.ids), row.ids, row.logps, "eos")
            return True
        row.ids.append(token)
        row.logps.append(logprob)
        text = gen.decode(row.ids)
        finish, stop = check_candidate(text, len(row.ids), limits, tail)
        if finish is None:
            return False
        candidate = Candidate(text, row.ids, row.logps, finish)
        if stop is not None:
            candidate.text = text[: stop.keep_chars]
            candidate.stop_string = stop.string
            candidate.trim_accepted = stop.trim_accepted
        row.call.results[row.index] = candidate
        return True


def _merged_cache(model_config: Any, caches: list[Any], lengths: list[int], width: int) -> Any:
    """One batch cache from single-row caches, each left-padded with zeros to ``width``."""
    from transformers import DynamicCache

    merged = DynamicCache(config=model_config)
    for layer_index, layer in enumerate(merged.layers):
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
    """One token per row, each with its own call's sampling and its session's generator."""
    return [
        sample_token(logits[r], row.call.samplings[row.index], row.call.session.rng)
        for r, row in enumerate(rows)
    ]
