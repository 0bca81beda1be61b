"""Final-answer extraction: what majority_vote counts and `ensemblehub eval` grades."""

from __future__ import annotations

import pytest

from ensemble_core.answer_extraction import answers_match, extract_answer, grade


@pytest.mark.parametrize(
    ("text", "normalized", "kind", "source"),
    [
        ("2 + 2 = 4, so the answer is 4.", "4", "numeric", "marker"),
        ("First 3 apples, then 5. Final answer: 8", "8", "numeric", "marker"),
        (r"So we get $\boxed{\frac{3}{4}}$.", "0.75", "numeric", "boxed"),
        (r"\boxed{x^{2}+1}", "x21", "text", "boxed"),
        ("She pays 10 + 8 = 18 dollars.\n#### 18", "18", "numeric", "hashes"),
        ("The total is $1,250.00 in all", "1250", "numeric", "last_number"),
        ("It grows by 12.5% a year", "12.5", "numeric", "last_number"),
        ("x = -3/4", "-0.75", "numeric", "last_number"),
        ("The answer is (B).", "b", "choice", "marker"),
        ("Let me think.\nThe capital of France is Paris.", "capital of france is paris", "text", "last_line"),
        ("The answer is: The Eiffel Tower.", "eiffel tower", "text", "marker"),
        ("The answer is 4.0", "4", "numeric", "marker"),
    ],
)
def test_final_answers_are_found_and_normalised(text: str, normalized: str, kind: str, source: str) -> None:
    answer = extract_answer(text)
    assert answer is not None
    assert (answer.normalized, answer.kind, answer.source) == (normalized, kind, source)


def test_formats_and_empty_text() -> None:
    assert extract_answer("") is None and extract_answer("   \n") is None
    assert extract_answer("no digits here", "numeric") is None
    text_only = extract_answer("The answer is 4 apples", "text")
    assert text_only is not None and text_only.normalized == "4 apples"


def test_matching_and_grading() -> None:
    assert answers_match(extract_answer("so it is 4"), extract_answer("#### 4.000"))
    assert not answers_match(extract_answer("so it is 4"), extract_answer("#### 5"))
    assert not answers_match(None, extract_answer("4"))
    assert grade("Adding them gives 72 in total. The answer is 72.", "#### 72")
    assert not grade("The answer is 71.", "#### 72")
    assert grade("I believe the capital of France is Paris.", "Paris")
    assert not grade("It is Lyon.", "Paris")
    assert grade(r"\boxed{0.5}", r"\frac{1}{2}")
