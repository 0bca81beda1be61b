"""Text rules shared by every backend: where a segment ends, where a stop string cuts.

Pure functions on strings, checked after every decoded token (a stopping criterion), so a
segment ends exactly at its boundary and no generated token is thrown away.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ensemble_core.ports import CandidateFinish, SegmentLimits

# sentence punctuation, optionally followed by closing quotes/brackets, at the very end; a
# period right after a digit ("3." in "3.14", "1." of a numbered list) is not an end
_SENTENCE_END = re.compile(r"(?:(?<!\d)[.!?]|[。！？…])[\"'”’)\]]*\s*$")


def ends_segment(text: str, boundary: str) -> bool:
    """Whether ``text`` (the candidate so far) ends at a ``boundary`` of the given kind."""
    if boundary == "none" or not text.strip():
        return False
    if text.rstrip(" \t").endswith("\n"):
        return True
    if boundary == "sentence":
        return bool(_SENTENCE_END.search(text))
    return False


@dataclass(frozen=True)
class StopMatch:
    string: str
    keep_chars: int  # characters of the candidate text to keep (before the stop string)
    trim_accepted: int  # characters to remove from the end of the accepted text (stop string spans both)


def find_stop(
    accepted_tail: str, text: str, stops: tuple[str, ...], *, include: bool = False
) -> StopMatch | None:
    """The earliest stop string that involves the new ``text`` (it may begin in the accepted
    tail). ``include`` (vLLM's ``include_stop_str_in_output``) keeps the stop string."""
    combined = accepted_tail + text
    best: StopMatch | None = None
    best_pos = len(combined) + 1
    for stop in stops:
        if not stop:
            continue
        start = max(0, len(accepted_tail) - len(stop) + 1)
        pos = combined.find(stop, start)
        if pos != -1 and pos < best_pos:
            best_pos = pos
            if include:
                keep, trim = pos + len(stop) - len(accepted_tail), 0
            else:
                keep = max(0, pos - len(accepted_tail))
                trim = max(0, len(accepted_tail) - pos)
            best = StopMatch(string=stop, keep_chars=keep, trim_accepted=trim)
    return best


def check_candidate(
    text: str, token_count: int, limits: SegmentLimits, accepted_tail: str
) -> tuple[CandidateFinish | None, StopMatch | None]:
    """Decide after one more token whether the candidate ends, and why."""
    if limits.stop_strings:
        match = find_stop(accepted_tail, text, limits.stop_strings, include=limits.include_stop_str)
        if match is not None:
            return "stop_string", match
    for marker in limits.boundary_strings:
        if marker and marker in text:
            return "boundary_string", None
    if token_count >= limits.min_tokens and ends_segment(text, limits.boundary):
        return "boundary", None
    if token_count >= limits.max_new_tokens:
        return "length", None
    return None, None
