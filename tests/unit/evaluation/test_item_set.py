"""The built-in evaluation items: counts, splits, determinism, and the grader on them."""

from __future__ import annotations

from collections import Counter

import pytest

from evaluation.grading import chosen_letter, is_correct
from evaluation.item_set import KINDS, builtin_items, interleaved, split_of


def test_counts_per_kind_and_split():
    items = builtin_items()
    assert Counter(it.kind for it in items) == {
        "arithmetic": 120,
        "word_problem": 120,
        "fact": 140,
        "multiple_choice": 100,
    }
    test = builtin_items("test")
    dev = builtin_items("dev")
    assert len(test) >= 300 and len(dev) >= 100
    assert len(test) + len(dev) == len(items)
    for kind in KINDS:  # every kind is in both splits
        assert any(it.kind == kind for it in dev) and any(it.kind == kind for it in test)


def test_splits_are_disjoint_and_fixed_by_id():
    dev_ids = {it.id for it in builtin_items("dev")}
    test_ids = {it.id for it in builtin_items("test")}
    assert not dev_ids & test_ids
    assert len({it.id for it in builtin_items()}) == len(builtin_items())
    # a question is never in both splits either (no leak through duplicates)
    dev_q = {it.question for it in builtin_items("dev")}
    assert not dev_q & {it.question for it in builtin_items("test")}
    # another seed changes the generated numbers, not which id is in which split
    other = builtin_items(seed=7)
    assert [(it.id, it.split) for it in other] == [(it.id, it.split) for it in builtin_items()]
    assert [it.question for it in other] != [it.question for it in builtin_items()]
    assert all(split_of(it.id) == it.split for it in other)


def test_same_seed_same_items():
    assert builtin_items(seed=3) == builtin_items(seed=3)


def test_every_gold_answer_is_graded_right_in_the_short_forms():
    for it in builtin_items():
        for gold in it.answers:
            for said in (gold, f"{gold}.", f"The answer is {gold}.", f" {gold}\nQ: next question"):
                assert is_correct(it, said), (it.id, said)


def test_an_echo_of_the_question_is_graded_wrong():
    wrong = [it.id for it in builtin_items() if is_correct(it, it.question)]
    assert wrong == []


def test_other_items_gold_is_graded_wrong():
    items = builtin_items()
    mistakes = 0
    for it, other in zip(items, items[1:], strict=False):
        if other.answer.lower() not in {a.lower() for a in it.answers}:
            mistakes += is_correct(it, other.answer)
    assert mistakes == 0


@pytest.mark.parametrize(
    ("said", "letter"),
    [
        ("B", "B"),
        ("(B)", "B"),
        ("B) violin", "B"),
        ("Answer: B", "B"),
        ("The answer is B.", "B"),
        ("violin", "B"),
        ("A) hammer B) violin", None),
        ("I am not sure", None),
    ],
)
def test_multiple_choice_letters(said, letter):
    assert chosen_letter(said, ("hammer", "violin", "banana", "bus")) == letter


def test_facts_accept_a_sentence_and_aliases():
    items = {it.question: it for it in builtin_items()}
    paris = items["What is the capital of France?"]
    assert is_correct(paris, "The capital of France is Paris.")
    assert not is_correct(paris, "Lyon")
    spider = items["How many legs does a spider have?"]
    assert is_correct(spider, "A spider has eight legs.") and is_correct(spider, "8 legs")
    assert not is_correct(spider, "6")


def test_interleaved_prefix_covers_every_kind():
    first = interleaved(builtin_items("test"))[:8]
    assert {it.kind for it in first} == set(KINDS)
