"""Continuous batching: one decode loop per loaded model shares decode steps across jobs.

Why: on a CPU (and more so a GPU) one decode step of a small model costs about the same for one
row as for sixteen (SmolLM2 on one CPU thread: 86 ms for 1 row, 170 ms for 16, 494 ms for 64),
so a worker running several jobs at once gets several times the tokens per second when their
decode steps share forward passes.

Who does what: a job's thread only *enqueues* its ``generate`` call (``DecodeLoop.generate``)
and waits on the call's own ``threading.Event``. The model's loop thread (a daemon, started at
the first call, gone after ``idle_s`` without work, restarted by the next call) does all the
work, in one loop (``_run``), one step at a time:

1. **admit**: take the waiting calls that fit (at most ``max_rows`` rows in all, and at most
   ``max_slots`` padded key/value slots: rows x width). For each call its session brings its
   own single-row prefix cache up to date, exactly as the direct path does
   (``HFGenerationSession.start_batch_row``: the longest cached prefix of prompt + accepted
   text, including a row this loop handed back last round); what is not cached is the call's
   *rest* (the whole prompt in a first round, the last accepted segment later).
2. **prefill**: the newcomers' rests are fed together, in chunks of at most
   ``prefill_slots`` padded tokens (and not mostly padding: a new prompt is not fed with the
   few-token rests of other jobs' next rounds), over one cache merged from their prefix rows. The
   newcomers then join the running batch; each call's row is copied once per sampling.
3. **step**: every row picks its next token from its logits (its own sampling, its session's
   seeded generator, grammar, penalties: ``sampling.choose_token``) and adds it to its
   candidate (``sampling.extend_candidate``: EOS, stop strings, boundary, streaming text).
4. **retire**: a row that ended (or hit ``max_new_tokens``, or whose ``should_stop`` says so)
   leaves the batch in that same step: its real key/value columns are handed back to its
   session (``keep_batch_row``) as a reusable prefix for the next round, and a call whose rows
   have all ended is released at once. The rows left are fed their new token in one forward
   pass, and the loop goes back to 1, so a newcomer waits at most one step for its prefill.

Costs (CPU): a step of at least 16 rows runs on every core while that is measured cheaper per
row than one thread (``step_threads``); the batch cache's rows and columns live in buffers with
headroom, so a decode step, a retiring row and a joining newcomer copy only what changes
(``_growing_layer_class``).

A new prompt that arrives while a step is in progress does not wait for it (on a CPU, with
``side_prefill``): a *side thread* prefills it at once, on the core the step does not use (a
prompt's prefill is compute-bound, the step reads weights), picks its first token (steps 2-4
for that group alone: a stream's first token is out as soon as its prompt is read) and hands
the group to the loop, which joins it at the next step boundary and feeds that token with the
other rows' tokens. Only first rounds go there (a later round's rest is a few tokens, cheaper
to prefill in the loop), one group at a time, a streaming call's first; the rows it holds
count against ``max_rows``.

Padding scheme (the simplest correct one): every row of a batch cache is *left*-padded to the
batch's width with zero keys/values that the attention mask hides, and every forward pass gets
explicit position ids, so a row's positions are those of decoding it alone. A group of
newcomers is built the same way: prefix rows left-padded to the longest prefix, rests
right-aligned after them (pad columns before a shorter rest are masked too). Joining two
batches left-pads the narrower one to the wider width; when rows retire, columns that no
remaining row uses are cut from the left. Masked columns get exactly zero weight, so a row's
tokens are those of decoding it alone up to float rounding of the different matrix shapes
(a greedy near-tie could pick the other token); sampled rows draw from their own session's
generator, so a job replays the same way.

Errors: an error in one call (its prefix sync, its grammar, its sampling, its ``on_text`` or
``should_stop`` callback) ends that call's rows and reaches its caller; the others go on. A
failed shared forward pass fails the calls whose rows were in it (a newcomer group is retried
call by call first, so one bad prompt fails alone). The loop thread itself never dies of
either.

A call made while its model has only one open session takes the direct path
(``HFGenerationSession._generate``), token for token the same as without a loop.

Sliding-window models (Gemma 3: five layers in six see only the last 512 tokens) are batched
too, within their window. The batch cache's layers all keep every column, and transformers
builds the sliding layers' mask from *column* distances (query column minus key column), which
for a row equal its token distances only where the row has no padding between its own columns.
So a row must never span more columns than the window: then no column of its own is out of the
window, and decoding alone (its length within the window too) sees the same keys. The loop
keeps that true: a call goes to the loop only if its prompt, accepted text and
``max_new_tokens`` fit in the window (``fits``; a longer one decodes directly, where the
sliding layers forget what lies beyond it), and a prefill chunk only takes a call whose prefix
plus the chunk's longest rest plus its ``max_new_tokens`` fit (``_chunks``: a shorter rest is
right-aligned, leaving padding inside the row).
"""

from __future__ import annotations

import functools
import threading
import time
from collections import deque
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
from ensemble_core.backends.step_threads import StepThreads
from ensemble_core.errors import GenerationError
from ensemble_core.ports import Candidate, Sampling, SegmentLimits

if TYPE_CHECKING:
    from ensemble_core.backends.hf import HFGenerationSession
    from ensemble_core.backends.prefix_cache import PrefixCache


@dataclass(eq=False)
class _Call:
    """One ``generate`` call: queued, then its rows in the batch, then done."""

    session: HFGenerationSession
    accepted_text: str
    samplings: list[Sampling]
    limits: SegmentLimits
    finished: threading.Event = field(default_factory=threading.Event)
    results: list[Candidate | None] = field(default_factory=list)
    error: BaseException | None = None
    rows_left: int = 0
    target: list[int] | None = None  # prompt + accepted text ids, once admitted
    grammars: Any = None  # hf_grammar.RowGrammars (structured output): one matcher per sampling

    @property
    def done(self) -> bool:
        return self.finished.is_set()


@dataclass(eq=False)
class _Row:
    """One candidate being decoded in the batch."""

    call: _Call
    index: int  # which of the call's samplings
    fed: list[int]  # token ids whose keys/values this row holds (prefix + generated so far)
    position: int  # position id of the next token fed
    ids: list[int] = field(default_factory=list)
    logps: list[float] = field(default_factory=list)
    trail: ConfidenceTrail = field(default_factory=ConfidenceTrail)
    ended: bool = False
    pending: int | None = None  # a token picked (by the side thread) but not yet fed


@dataclass
class _Batch:
    """The rows being decoded: their cache [rows, heads, width, dim] per layer, the mask
    [rows, width] (1 = a real column), and each row's next-token logits [rows, vocab]."""

    rows: list[_Row]
    cache: Any
    mask: torch.Tensor
    logits: torch.Tensor

    @property
    def width(self) -> int:
        return int(self.mask.shape[1])


def _cache_layers(model_config: Any) -> list[Any]:
    """The layers of the cache transformers builds for this model (one per attention layer)."""
    from transformers import DynamicCache

    return list(getattr(DynamicCache(config=model_config), "layers", []))


def batchable(model_config: Any) -> bool:
    """Whether every cache layer of this model is a plain full-attention ``DynamicLayer`` or
    a ``DynamicSlidingWindowLayer`` (batched within its window: ``sliding_window``)."""
    from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

    layers = _cache_layers(model_config)
    return bool(layers) and all(type(layer) in (DynamicLayer, DynamicSlidingWindowLayer) for layer in layers)


def sliding_window(model_config: Any) -> int | None:
    """The smallest window of the model's sliding-window layers (tokens a query sees, itself
    included); None when every layer attends to the whole sequence."""
    from transformers.cache_utils import DynamicSlidingWindowLayer

    layers = _cache_layers(model_config)
    windows = [int(layer.sliding_window) for layer in layers if isinstance(layer, DynamicSlidingWindowLayer)]
    return min(windows) if windows else None


class DecodeLoop:
    """One model's decode loop: jobs enqueue ``generate`` calls, one thread decodes them all."""

    def __init__(
        self,
        generator: Any,
        *,
        max_rows: int = 128,
        max_slots: int = 64 * 512,
        prefill_slots: int = 2048,
        idle_s: float = 5.0,
        side_prefill: bool = False,
        wide_threads: int = 1,
        wide_rows: int = 16,
        window: int | None = None,
    ) -> None:
        self.generator = generator
        # the model's sliding window: every row stays within it (see the module's docstring)
        self.window = window
        self.max_rows = max_rows
        self.max_slots = max_slots  # rows x padded width, bounds the batch cache's memory
        self.prefill_slots = prefill_slots  # rows x padded rest of one prefill forward pass
        self.idle_s = idle_s
        self.side_prefill = side_prefill
        # torch threads for the loop's steps of many rows: every core or one, whichever its
        # recent steps found cheaper (``step_threads``; ``narrow`` is set by the loop thread)
        self.step_threads = StepThreads(1, wide_threads, wide_rows=wide_rows)
        self._cond = threading.Condition()
        self._waiting: deque[_Call] = deque()
        self._thread: threading.Thread | None = None
        self._open_sessions = 0
        # the side thread's work: new prompts to prefill, then their groups for the next boundary
        self._side_waiting: deque[_Call] = deque()
        self._side_thread: threading.Thread | None = None
        self._ready: list[_Batch] = []
        self._rows = 0  # rows in the step in progress (0: the loop is not stepping)
        self._side_rows = 0  # rows of the side thread's calls and of the groups it made
        # statistics, for tests and benchmarks
        self.steps = 0
        self.admitted = 0
        self.largest_batch = 0  # rows
        self.calls = 0  # generate calls enqueued
        self.side_prefilled = 0  # calls whose prefill and first token the side thread did

    # -- session bookkeeping (a model with one open session decodes directly) ----------------
    def session_opened(self) -> None:
        with self._cond:
            self._open_sessions += 1

    def session_closed(self) -> None:
        with self._cond:
            self._open_sessions = max(0, self._open_sessions - 1)

    @property
    def open_sessions(self) -> int:
        return self._open_sessions

    @property
    def thread(self) -> threading.Thread | None:
        return self._thread

    def fits(self, tokens: int) -> bool:
        """Whether a row of ``tokens`` tokens (target + ``max_new_tokens``) may be batched:
        always, unless the model has a sliding window it would pass."""
        return self.window is None or tokens <= self.window

    # -- the job's side: enqueue, wait for its own rows --------------------------------------
    def generate(
        self,
        session: HFGenerationSession,
        accepted_text: str,
        samplings: list[Sampling],
        limits: SegmentLimits,
    ) -> list[Candidate]:
        call = _Call(session, accepted_text, samplings, limits)
        with self._cond:
            self.calls += 1
            if self._to_side(call):
                self._side_waiting.append(call)
                self._side_rows += len(samplings)
                if self._side_thread is None:
                    self._side_thread = threading.Thread(
                        target=self._run_side, name=f"decode-side:{self.generator.name}", daemon=True
                    )
                    self._side_thread.start()
            else:
                self._waiting.append(call)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name=f"decode-loop:{self.generator.name}", daemon=True
                )
                self._thread.start()
            self._cond.notify_all()
        call.finished.wait()
        if call.error is not None:
            raise call.error
        return [c for c in call.results if c is not None]

    def _to_side(self, call: _Call) -> bool:
        """Whether the side thread should prefill this call now (under ``_cond``): a first
        round (nothing cached: its whole prompt is the rest) while a step is in progress,
        rows permitting."""
        return (
            self.side_prefill
            and self._rows > 0
            and call.session.cache is None
            and self._rows + self._side_rows + len(call.samplings) <= self.max_rows
        )

    # -- the loop ------------------------------------------------------------------------
    def _run(self) -> None:
        """admit -> prefill -> step -> retire, until there has been nothing to do for ``idle_s``."""
        batch: _Batch | None = None
        narrow = self.step_threads.narrow = torch.get_num_threads()
        with torch.inference_mode():
            while True:
                taken = self._take_waiting(batch)
                if taken is None:
                    torch.set_num_threads(narrow)
                    return  # idle: the next call starts a new thread
                newcomers, ready = taken
                threads = self._set_threads(batch, newcomers, ready)
                try:
                    for group in ready:
                        batch = _join(batch, group)
                    if newcomers:
                        batch = self._admit(batch, newcomers)
                    if batch is not None:
                        # the step alone (sampling and one decode pass), not the admissions'
                        # prefills: its cost per row compares the two thread counts
                        rows, stepping = len(batch.rows), time.perf_counter()
                        batch = self._step(batch)
                        self.step_threads.measured(threads, rows, time.perf_counter() - stepping)
                except BaseException as exc:  # noqa: BLE001 - a bug here must not strand callers
                    for call in {row.call for row in batch.rows} if batch is not None else ():
                        self._fail(call, exc)
                    for call in [*newcomers, *(row.call for group in ready for row in group.rows)]:
                        self._fail(call, exc)
                    batch = None

    def _set_threads(self, batch: _Batch | None, newcomers: list[_Call], ready: list[_Batch]) -> int:
        """Torch threads for this step, as ``step_threads`` chooses for its rows (the count
        is the calling thread's own, OpenMP's and MKL's: the side thread keeps one, its point
        is the other core)."""
        rows = (len(batch.rows) if batch is not None else 0) + sum(len(g.rows) for g in ready)
        rows += sum(len(call.samplings) for call in newcomers)
        threads = self.step_threads.choose(rows)
        if threads != torch.get_num_threads():
            torch.set_num_threads(threads)
        return threads

    def _take_waiting(self, batch: _Batch | None) -> tuple[list[_Call], list[_Batch]] | None:
        """The waiting calls to admit now (rows permitting) and the side thread's groups to
        join (slots permitting); None when the loop should end.

        With rows in the batch this never blocks: the next step runs at once. With none it
        waits for a call or a group, up to ``idle_s`` (not while the side thread works)."""
        with self._cond:
            if batch is None:
                self._rows = 0
                while not self._waiting and not self._ready:
                    if self._side_thread is not None:
                        self._cond.wait()  # its group, or its end, notifies
                        continue
                    if not self._cond.wait(timeout=self.idle_s) and self._idle():
                        self._thread = None
                        return None
            rows = len(batch.rows) if batch is not None else 0
            width = batch.width if batch is not None else 0
            ready: list[_Batch] = []
            for group in list(self._ready):
                wider = max(width, group.width)
                if rows and (rows + len(group.rows)) * wider > self.max_slots:
                    continue  # waits for rows to retire
                self._ready.remove(group)
                self._side_rows -= len(group.rows)
                ready.append(group)
                rows += len(group.rows)
                width = wider
            taken: list[_Call] = []
            while self._waiting and (
                rows == 0 or rows + self._side_rows + len(self._waiting[0].samplings) <= self.max_rows
            ):
                call = self._waiting.popleft()
                taken.append(call)
                rows += len(call.samplings)
            self._rows = rows
            return taken, ready

    def _first_tokens(self, group: _Batch) -> _Batch | None:
        """The side thread's step 3-4 for a prefilled group: each row picks its first token
        (the stream has it now), rows that ended retire, the others keep it ``pending``: the
        loop feeds it in its next step, with every other row's token."""
        chosen = self._take_tokens(group)
        keep = [r for r, row in enumerate(group.rows) if not row.ended and not row.call.done]
        if not keep:
            return None
        for r in keep:
            group.rows[r].pending = chosen[r]
        return _select(group, keep)

    def _idle(self) -> bool:
        return not self._waiting and not self._ready and self._side_thread is None

    # -- the side thread: a new prompt's prefill and first token while a step runs ----------
    def _run_side(self) -> None:
        """Prefill the new prompts handed to the side thread, pick their first tokens, and
        leave each group for the loop's next boundary; end when none is left."""
        with torch.inference_mode():
            while True:
                with self._cond:
                    if not self._side_waiting:
                        self._side_thread = None
                        self._cond.notify_all()
                        return
                    # a stream's first token first: other new prompts wait for the next round
                    calls = [call for call in self._side_waiting if call.limits.on_text is not None]
                    calls = calls or list(self._side_waiting)
                    for call in calls:
                        self._side_waiting.remove(call)
                group: _Batch | None = None
                try:
                    group = self._admit(None, calls)
                    if group is not None:
                        self.side_prefilled += len({id(row.call) for row in group.rows})
                        group = self._first_tokens(group)
                except BaseException as exc:  # noqa: BLE001 - a bug here must not strand callers
                    for call in calls:
                        self._fail(call, exc)
                    group = None
                with self._cond:
                    self._side_rows -= sum(len(call.samplings) for call in calls)
                    if group is not None:
                        self._ready.append(group)
                        self._side_rows += len(group.rows)
                    self._cond.notify_all()

    def _defer(self, calls: list[_Call]) -> None:
        """Put calls back at the head of the queue (they did not fit this step)."""
        with self._cond:
            self._waiting.extendleft(reversed(calls))

    # -- 1 + 2: admit and prefill ----------------------------------------------------------
    def _admit(self, batch: _Batch | None, newcomers: list[_Call]) -> _Batch | None:
        """Sync each newcomer's prefix cache, prefill the rests together, join the batch."""
        ready: list[tuple[_Call, list[int]]] = []
        deferred: list[_Call] = []
        rows = len(batch.rows) if batch is not None else 0
        width = batch.width if batch is not None else 0
        for call in newcomers:
            try:
                if call.target is None:
                    call.target = call.session.batch_target(call.accepted_text)
                if not self.fits(len(call.target) + call.limits.max_new_tokens):
                    # the session checks before it enqueues: this would be a bug there
                    raise GenerationError(
                        f"{self.generator.name}: a call past the sliding window reached the loop"
                    )
                wider = max(width, len(call.target))
                added = len(call.samplings)
                if rows and (rows + added) * wider > self.max_slots:
                    deferred.append(call)  # waits for rows to retire
                    continue
                rest = call.session.start_batch_row(call.target)
                call.grammars = self.generator.row_grammars(call.limits, call.accepted_text, added)
            except BaseException as exc:  # noqa: BLE001 - this call's own failure
                self._fail(call, exc)
                continue
            ready.append((call, rest))
            rows += added
            width = wider
        if deferred:
            self._defer(deferred)
        ready.sort(key=lambda item: len(item[1]))  # similar rests in one chunk: less padding
        for chunk in self._chunks(ready):
            group = self._prefill_isolating_errors(chunk)
            if group is not None:
                batch = _join(batch, group)
        return batch

    def _chunks(self, ready: list[tuple[_Call, list[int]]]) -> list[list[tuple[_Call, list[int]]]]:
        """Consecutive groups (``ready`` is sorted by rest length) whose padded rests stay within
        ``prefill_slots`` tokens and are mostly real: padding a round's few-token rests to a
        new prompt's length would multiply the work of a compute-bound pass, while one more
        pass costs about one weight read (a decode step). With a sliding window, every row's
        span (its prefix, the chunk's longest rest, its ``max_new_tokens``) stays within it."""
        chunks: list[list[tuple[_Call, list[int]]]] = []
        real = 0  # tokens of the last chunk's rests
        reach = 0  # the last chunk's longest prefix + max_new_tokens
        for item in ready:
            call, rest = item
            assert call.target is not None
            own = len(call.target) - len(rest) + call.limits.max_new_tokens
            if chunks:
                padded = (len(chunks[-1]) + 1) * len(rest)  # the last rest is the longest
                if (
                    padded <= self.prefill_slots
                    and padded <= 1.5 * (real + len(rest)) + 64
                    and self.fits(max(reach, own) + len(rest))
                ):
                    chunks[-1].append(item)
                    real += len(rest)
                    reach = max(reach, own)
                    continue
            chunks.append([item])
            real, reach = len(rest), own
        return chunks

    def _prefill_isolating_errors(self, chunk: list[tuple[_Call, list[int]]]) -> _Batch | None:
        try:
            return self._prefill(chunk)
        except BaseException as exc:  # noqa: BLE001
            if len(chunk) == 1:
                self._fail(chunk[0][0], exc)
                return None
        groups = [self._prefill_isolating_errors([item]) for item in chunk]  # find the culprit
        batch: _Batch | None = None
        for group in groups:
            if group is not None:
                batch = _join(batch, group)
        return batch

    def _prefill(self, chunk: list[tuple[_Call, list[int]]]) -> _Batch:
        """Feed the chunk's rests (right-aligned) over its merged prefix rows in one forward
        pass; return the chunk as a batch, each call's row copied once per sampling."""
        gen = self.generator
        calls = [call for call, _ in chunk]
        prefixes = [_prefix_cache(call) for call in calls]
        lengths = [len(prefix.rows[0]) for prefix in prefixes]
        width = max(lengths)
        cache = _merged_cache(gen.model.config, [prefix.cache for prefix in prefixes], lengths, width)
        span = max(len(rest) for _, rest in chunk)
        inputs = torch.full((len(chunk), span), gen.pad_id, dtype=torch.long)
        positions = torch.zeros((len(chunk), span), dtype=torch.long)
        mask = torch.zeros((len(chunk), width + span), dtype=torch.long)
        for i, ((_, rest), length) in enumerate(zip(chunk, lengths, strict=True)):
            pad = span - len(rest)
            inputs[i, pad:] = torch.tensor(rest)
            positions[i] = torch.clamp(torch.arange(span) - pad, min=0) + length
            mask[i, width - length : width] = 1
            mask[i, width + pad :] = 1
        logits = self._forward(inputs, mask, positions, cache)
        rows: list[_Row] = []
        source: list[int] = []
        for i, ((call, rest), length) in enumerate(zip(chunk, lengths, strict=True)):
            call.session.counters.forward_passes += 1
            call.results = [None] * len(call.samplings)
            call.rows_left = len(call.samplings)
            assert call.target is not None
            for j in range(len(call.samplings)):
                rows.append(_Row(call, j, list(call.target), length + len(rest)))
                source.append(i)
        with self._cond:  # the side thread prefills too
            self.admitted += len(calls)
        if len(source) > len(chunk):
            index = torch.tensor(source)
            cache.batch_select_indices(index)
            mask = mask.index_select(0, index)
            logits = logits.index_select(0, index)
        return _Batch(rows, cache, mask, logits)

    # -- 3 + 4: step and retire -------------------------------------------------------------
    def _step(self, batch: _Batch) -> _Batch | None:
        """Every row takes its next token; rows that ended retire; the rest are fed one token."""
        self.steps += 1
        self.largest_batch = max(self.largest_batch, len(batch.rows))
        chosen = self._take_tokens(batch)
        keep = [r for r, row in enumerate(batch.rows) if not row.ended and not row.call.done]
        if not keep:
            return None
        order = _filling_holes(len(batch.rows), keep)
        return self._feed(_select(batch, order), [chosen[r] for r in order])

    def _take_tokens(self, batch: _Batch) -> list[int]:
        """Every row picks its next token and adds it to its candidate; rows that ended retire.
        A row the side thread prefilled has its first token picked and added already
        (``pending``): it is only fed."""
        chosen = self._choose_tokens(batch)
        logprobs = torch.log_softmax(batch.logits.float(), dim=-1)
        confidence, certainty = step_confidence(logprobs)
        tops = step_top(logprobs, max(row.call.limits.top_logprobs for row in batch.rows))
        for r, row in enumerate(batch.rows):
            if row.call.done:
                continue  # its call failed this step
            if row.pending is not None:
                row.pending = None
                continue
            try:
                row.ended = self._advance(
                    row,
                    chosen[r],
                    float(logprobs[r, chosen[r]]),
                    (confidence[r], certainty[r]),
                    tops[r] if tops is not None else None,
                )
            except BaseException as exc:  # noqa: BLE001 - e.g. the caller's on_text callback
                self._fail(row.call, exc)
                continue
            if row.ended:
                self._retire(batch, r)
        return chosen

    def _choose_tokens(self, batch: _Batch) -> list[int]:
        """Every row's next token. A call's rows draw from its session's one generator in the
        order of their samplings, as decoding alone does, wherever retiring rows moved them in
        the batch (``_filling_holes``)."""
        rows = batch.rows
        chosen = [self.generator.pad_id] * len(rows)
        for r in sorted(range(len(rows)), key=lambda r: rows[r].index):
            row = rows[r]
            if row.pending is not None:
                chosen[r] = row.pending
                continue
            try:
                chosen[r] = _choose(batch.logits[r], row)
            except BaseException as exc:  # noqa: BLE001 - this call's sampling or grammar failed
                self._fail(row.call, exc)
        return chosen

    def _advance(
        self,
        row: _Row,
        token: int,
        logprob: float,
        confidence: tuple[float, float],
        top: list[tuple[int, float]] | None,
    ) -> bool:
        """Add ``token`` to ``row``'s candidate; return whether the row ended (result recorded)."""
        call, gen = row.call, self.generator
        call.session.counters.generated += 1
        if call.grammars is not None:
            call.grammars.accept(row.index, token)
        decode = gen.decoder_for(call.limits)
        candidate = extend_candidate(
            row.ids,
            row.logps,
            token,
            logprob,
            limits=call.limits,
            accepted_tail=call.accepted_text[-64:],
            eos_ids=gen.eos_ids,
            decode=decode,
            trail=row.trail,
            confidence=confidence,
            top=top,
        )
        if candidate is None and (
            len(row.ids) >= call.limits.max_new_tokens
            or (call.limits.should_stop is not None and call.limits.should_stop())
        ):
            candidate = row.trail.attach(Candidate(decode(row.ids), row.ids, row.logps, "length"))
        if candidate is None:
            return False
        call.results[row.index] = candidate
        return True

    def _retire(self, batch: _Batch, r: int) -> None:
        """Hand row ``r``'s key/values back to its session; release its call if it was the last."""
        row = batch.rows[r]
        row.call.session.keep_batch_row(row.fed, batch.cache, r, batch.mask[r].nonzero().squeeze(1))
        row.call.rows_left -= 1
        if row.call.rows_left == 0:
            row.call.finished.set()

    def _feed(self, batch: _Batch, tokens: list[int]) -> _Batch | None:
        """One forward pass of every row's new token; None (calls failed) if it fails."""
        mask = torch.cat([batch.mask, torch.ones((len(batch.rows), 1), dtype=torch.long)], dim=1)
        positions = torch.tensor([[row.position] for row in batch.rows], dtype=torch.long)
        inputs = torch.tensor([[t] for t in tokens], dtype=torch.long)
        try:
            logits = self._forward(inputs, mask, positions, batch.cache)
        except BaseException as exc:  # noqa: BLE001 - every call in the pass gets the error
            for call in {row.call for row in batch.rows}:
                self._fail(call, exc)
            return None
        for session in {id(row.call.session): row.call.session for row in batch.rows}.values():
            session.counters.forward_passes += 1
        for row, token in zip(batch.rows, tokens, strict=True):
            row.fed.append(token)
            row.position += 1
        return _Batch(batch.rows, batch.cache, mask, logits)

    def _forward(
        self, inputs: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache: Any
    ) -> torch.Tensor:
        """Next-token logits [rows, vocab] after feeding ``inputs`` over ``cache``."""
        gen = self.generator
        try:
            out = gen.model(
                input_ids=inputs.to(gen.device),
                attention_mask=mask.to(gen.device),
                position_ids=positions.to(gen.device),
                past_key_values=cache,
                use_cache=True,
                logits_to_keep=1,
            )
        except RuntimeError as exc:
            raise GenerationError(f"{gen.name}: batched forward pass failed: {exc}") from exc
        logits: torch.Tensor = out.logits[:, -1, :]
        return logits

    def _fail(self, call: _Call, exc: BaseException) -> None:
        if call.done:
            return
        if not isinstance(exc, Exception):
            exc = GenerationError(f"{self.generator.name}: batched decoding stopped: {exc!r}")
        call.error = exc
        call.finished.set()


# -- helpers: sampling one row, and the batch cache's layout --------------------------------
def _prefix_cache(call: _Call) -> PrefixCache:
    """The call's session cache (one row), which ``start_batch_row`` has just synced."""
    if call.session.cache is None:
        raise GenerationError("a session joined the decode loop without a prefix cache")
    return call.session.cache


def _choose(logits: torch.Tensor, row: _Row) -> int:
    """Row's next token with its call's sampling and its session's generator (``row.fed`` is
    the prompt, the accepted text and the row's tokens so far)."""
    call = row.call
    prompt_len = len(call.session.prompt_ids)
    return choose_token(
        logits,
        call.samplings[row.index],
        call.session.rng,
        call.limits,
        ends=end_ids(call.session.generator.eos_ids, call.limits),
        context=lambda: row.fed,
        output=lambda: row.fed[prompt_len:],
        generated=len(row.ids),
        grammar=None if call.grammars is None else functools.partial(call.grammars.mask, row.index),
    )


def _left_pad(tensor: torch.Tensor, pad: int, dim_from_end: int) -> torch.Tensor:
    """``tensor`` with ``pad`` zeros prepended along the dimension ``dim_from_end`` from the end
    (1: the last dimension, 2: the one before)."""
    if pad <= 0:
        return tensor
    spec = [0, 0] * (dim_from_end - 1) + [pad, 0]
    return torch.nn.functional.pad(tensor, spec)


def _merged_cache(model_config: Any, caches: list[Any], lengths: list[int], width: int) -> Any:
    """One batch cache from single-row caches, each left-padded with zeros to ``width``
    (a row with nothing cached is all padding)."""
    from transformers import DynamicCache

    merged = DynamicCache(config=model_config)
    growing = _growing_layer_class()
    merged.layers = [growing() for _ in merged.layers]
    if width == 0:
        return merged  # nothing cached anywhere: the forward pass initializes the layers
    reference = caches[lengths.index(width)]
    for layer_index, layer in enumerate(merged.layers):
        ref = reference.layers[layer_index]
        keys, values = [], []
        for cache, length in zip(caches, lengths, strict=True):
            if length == 0:  # nothing cached: all padding
                keys.append(ref.keys.new_zeros((1, ref.keys.shape[1], width, ref.keys.shape[3])))
                values.append(ref.values.new_zeros((1, ref.values.shape[1], width, ref.values.shape[3])))
                continue
            source = cache.layers[layer_index]
            keys.append(_left_pad(source.keys, width - length, 2))
            values.append(_left_pad(source.values, width - length, 2))
        layer.lazy_initialization(keys[0], values[0])
        layer.keys = torch.cat(keys, dim=0)
        layer.values = torch.cat(values, dim=0)
    return merged


@functools.cache
def _growing_layer_class() -> type:
    """A ``DynamicLayer`` whose keys/values are views ``[:rows, :, start:end]`` of buffers with
    room for more rows and for ``HEADROOM`` more tokens, so the decode loop's changes cost in
    proportion to what changes, not to the whole batch cache (SmolLM2 keeps 46 KB a token a
    row: 128 rows 150 wide are 880 MB):

    - ``update`` (a decode step) writes the new token in place. ``DynamicLayer.update``
      concatenates, copying the whole cache every step (81 ms of a 616 ms step for 64 rows 90
      wide).
    - ``move_rows`` (rows retire) copies the rows that fill the holes, usually a few, where
      ``batch_select_indices`` copied every remaining row and the next update all of them again.
    - ``trim_left`` (columns no row uses any more) only moves ``start``.
    - ``append_rows`` (newcomers join) copies the newcomers, and zeroes the columns a wider
      group adds on the left of the rows already there.

    Whoever replaces ``keys``/``values`` some other way (transformers' own methods) just gives
    it new tensors: the next update or move copies them into a fresh buffer once."""
    from transformers.cache_utils import DynamicLayer

    class GrowingLayer(DynamicLayer):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self._views: tuple[torch.Tensor, torch.Tensor] | None = None
            self._buffers: tuple[torch.Tensor, torch.Tensor] | None = None
            self._start = 0  # first column of the views in the buffers

        def _own(self) -> tuple[torch.Tensor, torch.Tensor] | None:
            """The buffers, if ``keys``/``values`` are still the views this layer made."""
            views = self._views
            if views is None or views[0] is not self.keys or views[1] is not self.values:
                return None
            return self._buffers

        def _show(self, rows: int, start: int, end: int) -> None:
            assert self._buffers is not None
            keys, values = self._buffers
            self._start = start
            self.keys, self.values = keys[:rows, :, start:end], values[:rows, :, start:end]
            self._views = (self.keys, self.values)

        def _reallocate(self, rows: int, left: int, right: int) -> None:
            """Fresh buffers holding the current keys/values with ``left`` zero columns before
            them, room for ``rows`` rows and ``right`` more columns after them."""
            old_keys, old_values = self.keys, self.values
            count, heads, length, dim = old_keys.shape
            self._buffers = tuple(  # type: ignore[assignment]
                t.new_empty((max(rows, count), heads, left + length + right, dim))
                for t in (old_keys, old_values)
            )
            assert self._buffers is not None
            for buffer, old in zip(self._buffers, (old_keys, old_values), strict=True):
                buffer[:count, :, :left] = 0
                buffer[:count, :, left : left + length] = old
            self._show(count, 0, left + length)

        def update(
            self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
        ) -> tuple[torch.Tensor, torch.Tensor]:
            if not self.is_initialized or self.keys is None or self.keys.numel() == 0:
                self.lazy_initialization(key_states, value_states)
                self.keys, self.values = key_states, value_states
                self._views = self._buffers = None
                return self.keys, self.values
            rows, length, added = self.keys.shape[0], self.keys.shape[-2], key_states.shape[-2]
            buffers = self._own()
            if buffers is None or self._start + length + added > buffers[0].shape[-2]:
                self._reallocate(rows + ROW_HEADROOM, 0, added + HEADROOM)
            assert self._buffers is not None
            keys, values = self._buffers
            end = self._start + length
            keys[:rows, :, end : end + added] = key_states
            values[:rows, :, end : end + added] = value_states
            self._show(rows, self._start, end + added)
            return self.keys, self.values

        def move_rows(self, kept: int, target: torch.Tensor, source: torch.Tensor) -> None:
            """Keep the first ``kept`` rows, row ``target[i]`` becoming old row ``source[i]``
            (the rows that change place, the only ones copied: ``_row_moves``)."""
            if self.keys is None or self.keys.numel() == 0:
                return
            if self._own() is None:
                self._reallocate(self.keys.shape[0] + ROW_HEADROOM, 0, HEADROOM)
            start, end = self._start, self._start + self.keys.shape[-2]
            if target.numel():
                assert self._buffers is not None
                for buffer in self._buffers:
                    span = buffer[:, :, start:end]
                    span.index_copy_(0, target, span.index_select(0, source))
            self._show(kept, start, end)

        def trim_left(self, columns: int) -> None:
            """Drop the first ``columns`` columns (no row uses them any more)."""
            if self.keys is None or self.keys.numel() == 0 or columns <= 0:
                return
            if self._own() is None:
                self.keys, self.values = self.keys[:, :, columns:], self.values[:, :, columns:]
                return
            self._show(self.keys.shape[0], self._start + columns, self._start + self.keys.shape[-2])

        def append_rows(self, keys: torch.Tensor, values: torch.Tensor, width: int) -> None:
            """Add rows holding ``keys``/``values`` (right-aligned, zero columns on their
            left), the batch becoming ``width`` columns wide (never narrower than now)."""
            rows, added = self.keys.shape[0], keys.shape[0]
            buffers = self._own()
            wider = width - self.keys.shape[-2]  # zero columns the rows here get on the left
            if buffers is None or rows + added > buffers[0].shape[0] or self._start < wider:
                self._reallocate(rows + added + ROW_HEADROOM, wider, HEADROOM)  # now `width` wide
            length = self.keys.shape[-2]
            wider = width - length
            assert self._buffers is not None
            start, end = self._start - wider, self._start + length
            for buffer, new in zip(self._buffers, (keys, values), strict=True):
                if wider > 0:
                    buffer[:rows, :, start : self._start] = 0
                buffer[rows : rows + added, :, start : end - new.shape[-2]] = 0
                buffer[rows : rows + added, :, end - new.shape[-2] : end] = new
            self._show(rows + added, start, end)

    return GrowingLayer


HEADROOM = 32  # tokens of room a batch cache's buffers keep for the next decode steps
ROW_HEADROOM = 16  # rows of room a batch cache's buffers keep for newcomers


def _join(batch: _Batch | None, group: _Batch) -> _Batch:
    """Two batches as one: the narrower left-padded to the wider's width, rows stacked."""
    if batch is None:
        return group
    width = max(batch.width, group.width)
    pads = (width - batch.width, width - group.width)
    for own, new in zip(batch.cache.layers, group.cache.layers, strict=True):
        own.append_rows(new.keys, new.values, width)
    mask = torch.cat([_left_pad(batch.mask, pads[0], 1), _left_pad(group.mask, pads[1], 1)], dim=0)
    logits = torch.cat([batch.logits, group.logits], dim=0)
    return _Batch(batch.rows + group.rows, batch.cache, mask, logits)


def _select(batch: _Batch, order: list[int]) -> _Batch:
    """The rows ``order`` names (row ``i`` becomes old row ``order[i]``), without the leading
    columns none of them uses."""
    rows, cache, mask, logits = batch.rows, batch.cache, batch.mask, batch.logits
    if order != list(range(len(rows))):
        target, source = _row_moves(order)  # once for every layer
        for layer in cache.layers:
            layer.move_rows(len(order), target, source)
        index = torch.tensor(order)
        mask = mask.index_select(0, index)
        logits = logits.index_select(0, index)
        rows = [rows[r] for r in order]
    used = torch.nonzero(mask.any(dim=0))
    start = int(used[0]) if used.numel() else 0
    if start > 0:
        for layer in cache.layers:
            layer.trim_left(start)
        mask = mask[:, start:]
    return _Batch(rows, cache, mask, logits)


def _row_moves(order: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """The (target, source) rows of ``order`` that change place."""
    moves = [(new, old) for new, old in enumerate(order) if new != old]
    return torch.tensor([new for new, _ in moves], dtype=torch.long), torch.tensor(
        [old for _, old in moves], dtype=torch.long
    )


def _filling_holes(count: int, keep: list[int]) -> list[int]:
    """An order of the ``keep`` rows (of ``count``) that moves as few as possible: a row that
    stays where it is stays; each hole a retired row leaves is filled by a kept row from the
    end."""
    kept = len(keep)
    stays = set(keep)
    holes = [r for r in range(kept) if r not in stays]
    tail = [r for r in keep if r >= kept]
    order = list(range(kept))
    for hole, source in zip(holes, tail, strict=True):
        order[hole] = source
    return order
