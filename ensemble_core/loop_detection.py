"""Detecting degenerate loops at the end of an answer ("Alright, alright, alright, ...")."""

from __future__ import annotations

import re

_WORD = re.compile(r"\w+", re.UNICODE)


def repeated_ngram_tail(text: str, max_ngram: int, min_repeats: int) -> tuple[int, int] | None:
    """If ``text`` ends with one word n-gram (n <= ``max_ngram``) repeated at least
    ``min_repeats`` times in a row, return ``(n, repeats)``; else ``None``.

    Words are compared lower-cased, punctuation ignored, so "Alright, alright. ALRIGHT" is a
    run of three.
    """
    if max_ngram <= 0:
        return None
    words = [w.lower() for w in _WORD.findall(text[-4000:])]
    for n in range(1, max_ngram + 1):
        if len(words) < n * min_repeats:
            break
        unit = words[-n:]
        repeats = 1
        while len(words) >= n * (repeats + 1) and words[-n * (repeats + 1) : -n * repeats] == unit:
            repeats += 1
        if repeats >= min_repeats:
            return n, repeats
    return None
