"""Stopping a running job early: a cancel request or a wall-clock deadline.

The engine is given a :class:`StopSignal` and asks it between decode steps (the Hugging Face
backends and the token-level decoder check once per token) and between segments (every
backend, remote ones included). The check is cheap: a flag and a clock read, no I/O; whoever
cancels sets the flag from another thread (the worker's job watch).

A stopped run is not an error: it returns what it has, with ``stop_reason`` set to
``"cancelled"`` or ``"deadline_exceeded"``, the text accepted so far and the usage spent.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from ensemble_core.ports import Candidate, GenerationSession, Sampling, SegmentLimits

CANCELLED = "cancelled"
DEADLINE_EXCEEDED = "deadline_exceeded"
STOP_REASONS = (CANCELLED, DEADLINE_EXCEEDED)


class StopSignal:
    """Asks a run to stop: ``cancel()`` (any thread) or ``deadline_s`` seconds after creation.

    ``reason`` is None until the first check that finds a cause; it never changes after."""

    def __init__(
        self, *, deadline_s: float | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._clock = clock
        self._deadline = clock() + deadline_s if deadline_s is not None else None
        self._cancelled = threading.Event()
        self.reason: str | None = None

    def cancel(self) -> None:
        self._cancelled.set()

    def requested(self) -> bool:
        """True once the run should stop (cancelled, or past its deadline)."""
        if self.reason is None:
            if self._cancelled.is_set():
                self.reason = CANCELLED
            elif self._deadline is not None and self._clock() >= self._deadline:
                self.reason = DEADLINE_EXCEEDED
        return self.reason is not None

    def remaining_s(self) -> float | None:
        return None if self._deadline is None else max(0.0, self._deadline - self._clock())


class StoppableSession:
    """A session whose every decode checks ``signal`` once per step (``SegmentLimits.should_stop``):
    a stop ends the candidates where they are, as if they had reached ``max_new_tokens``."""

    def __init__(self, session: GenerationSession, signal: StopSignal) -> None:
        self._session = session
        self._signal = signal

    def generate(
        self, accepted_text: str, samplings: list[Sampling], limits: SegmentLimits
    ) -> list[Candidate]:
        return self._session.generate(
            accepted_text, samplings, replace(limits, should_stop=self._signal.requested)
        )

    def __getattr__(self, name: str) -> Any:  # counters, scoring, close: the session's own
        return getattr(self._session, name)
