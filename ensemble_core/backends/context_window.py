"""A member's context window: the most tokens (prompt + answer) one sequence may hold.

A segment is cut where the window ends, and the candidate says so (finish ``context_full``)
so the round loop ends the answer there ("length", stop_reason ``max_context``) instead of
asking the model for tokens it has no positions for: GPT-2's learned position table has no
row past ``n_positions`` (the forward pass raised IndexError and failed the job), and vLLM
refuses a prompt longer than ``max_model_len``."""

from __future__ import annotations

import dataclasses

from ensemble_core.ports import Candidate


def room_left(window: int | None, used: int, wanted: int) -> int | None:
    """How many of ``wanted`` new tokens fit after ``used``; None when all of them do."""
    if window is None:
        return None
    room = window - used
    return room if room < wanted else None


def full_candidates(n: int) -> list[Candidate]:
    """What a member whose window is already full answers: nothing, and that it is full."""
    return [Candidate("", [], [], "context_full") for _ in range(n)]


def mark_window_ends(candidates: list[Candidate], room: int) -> list[Candidate]:
    """A candidate cut by the window (length, ``room`` tokens) ends the answer, not only the
    segment."""
    return [
        dataclasses.replace(c, finish="context_full") if c.finish == "length" and c.num_tokens >= room else c
        for c in candidates
    ]
