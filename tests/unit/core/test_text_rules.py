"""Pure text rules: segment boundaries, stop strings, degenerate loops, score normalisation."""

from __future__ import annotations

import pytest

from ensemble_core.loop_detection import repeated_ngram_tail
from ensemble_core.ports import SegmentLimits
from ensemble_core.scorers.combined import normalise
from ensemble_core.segment_text import check_candidate, ends_segment, find_stop


@pytest.mark.parametrize(
    ("text", "boundary", "expected"),
    [
        ("The capital is Paris.", "sentence", True),
        ("Really?!", "sentence", True),
        ('He said "stop."', "sentence", True),
        ("First line\n", "sentence", True),
        ("First line\n", "line", True),
        ("The capital is Paris.", "line", False),
        ("Pi is 3.", "sentence", False),  # 3.14 continues
        ("1.", "sentence", False),  # a numbered list item is not a sentence
        ("No end yet", "sentence", False),
        ("\n", "sentence", False),  # nothing written yet
        ("Paris.", "none", False),
    ],
)
def test_segment_boundaries(text: str, boundary: str, expected: bool) -> None:
    assert ends_segment(text, boundary) is expected


def test_stop_string_inside_the_candidate() -> None:
    match = find_stop("previous text ", "answer ENDMORE", ("END",))
    assert match is not None and match.keep_chars == len("answer ") and match.trim_accepted == 0


def test_stop_string_spanning_accepted_text_and_candidate() -> None:
    match = find_stop("so the answer is EN", "D of it", ("END",))
    assert match is not None
    assert match.keep_chars == 0 and match.trim_accepted == 2


def test_stop_string_entirely_in_accepted_text_is_not_new() -> None:
    assert find_stop("END here", " more", ("END",)) is None


def test_check_candidate_order_of_reasons() -> None:
    limits = SegmentLimits(
        max_new_tokens=4, stop_strings=("###",), boundary_strings=("</think>",), min_tokens=2
    )
    assert check_candidate("Hi.", 1, limits, "")[0] is None  # below min_tokens
    assert check_candidate("Hi.", 2, limits, "")[0] == "boundary"
    assert check_candidate("a </think>", 2, limits, "")[0] == "boundary_string"
    assert check_candidate("a ###", 2, limits, "")[0] == "stop_string"
    assert check_candidate("a b c", 4, limits, "")[0] == "length"


def test_repeated_ngram_loops() -> None:
    assert repeated_ngram_tail("Alright, alright, alright, alright", 12, 4) == (1, 4)
    assert repeated_ngram_tail("I think so. I think so. I think so. I think so.", 12, 4) == (3, 4)
    assert repeated_ngram_tail("Alright, alright, alright", 12, 4) is None
    assert repeated_ngram_tail("one two three four five six seven eight", 12, 4) is None
    assert repeated_ngram_tail("a a a a", 0, 4) is None  # check switched off


def test_normalisation_methods() -> None:
    assert normalise([1.0, 3.0], "zscore") == [-1.0, 1.0]
    assert normalise([2.0, 4.0, 3.0], "minmax") == [0.0, 1.0, 0.5]
    assert normalise([10.0, -5.0, 0.0], "rank") == [1.0, 0.0, 0.5]
    assert normalise([1.0, 3.0], "none") == [1.0, 3.0]
    assert normalise([2.0, 2.0], "zscore") == [0.0, 0.0]
