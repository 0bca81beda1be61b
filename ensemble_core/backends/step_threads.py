"""How many torch threads the decode loop's steps of many rows use: measured, not assumed.

Why measured: on an idle CPU a step of many rows is compute-bound matrix products that split
well over every core (SmolLM2, float32, idle 2-core machine: a 64-row decode pass 237 -> 152 ms
with two threads; a 64-item batch 100.5 -> 111.7 tok/s), but with the other core busy (the
API, scorers, other processes) OpenMP's threads wait for each other at every parallel region,
hundreds a step, and the same batch fell from 66.3 to 47.3 tok/s (load average ~4). Which one
wins depends on what else the machine runs at the moment, so the loop keeps the cost per row of
its recent decode steps (sampling and one pass, no prefill) under each thread count, uses the cheaper one, and re-measures the
other every ``explore_every`` steps (one step in 16 at the slower count costs at most a few
percent, and follows the machine when its load changes).
"""

from __future__ import annotations


class StepThreads:
    """Chooses between ``narrow`` (the loop thread's own count) and ``wide`` torch threads for
    steps of at least ``wide_rows`` rows; narrower steps always get ``narrow``."""

    def __init__(
        self, narrow: int, wide: int, *, wide_rows: int = 16, explore_every: int = 16, weight: float = 0.25
    ) -> None:
        self.narrow, self.wide = narrow, wide
        self.wide_rows = wide_rows
        self.explore_every = explore_every
        self.weight = weight  # of the newest measurement in the running mean
        self.per_row: dict[int, float] = {}  # thread count -> seconds per row of a decode step
        self._many_row_steps = 0

    def choose(self, rows: int) -> int:
        """The thread count for a step of ``rows`` rows."""
        if self.wide <= self.narrow or rows < self.wide_rows:
            return self.narrow
        self._many_row_steps += 1
        for threads in (self.wide, self.narrow):  # each measured once before any comparison
            if threads not in self.per_row:
                return threads
        better, worse = sorted((self.wide, self.narrow), key=lambda t: self.per_row[t])
        return worse if self._many_row_steps % self.explore_every == 0 else better

    def measured(self, threads: int, rows: int, seconds: float) -> None:
        """A decode step (sampling and one pass, no prefill) of ``rows`` rows took ``seconds``."""
        if rows < self.wide_rows or rows <= 0:
            return
        cost = seconds / rows
        previous = self.per_row.get(threads)
        self.per_row[threads] = cost if previous is None else previous + self.weight * (cost - previous)
