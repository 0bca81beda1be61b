"""The built-in evaluation items: 480 short questions of four kinds, each in a fixed split.

Kinds (``Item.kind``) and how they are made:

- ``arithmetic`` (120): "What is 23 + 45?" over + - x / and two-operation sums, from a seed;
- ``word_problem`` (120): grade-school templates of ``arithmetic_set`` (8 of them), from a seed;
- ``fact`` (140): capitals, opposites, science and geography from the written lists of
  ``fact_lists`` (topic in ``Item.topic``);
- ``multiple_choice`` (100): four options, the answer is a letter: capitals (a list disjoint
  from the fact capitals), "which of these is a fruit", the largest number, a sum.

Every item has an ``id`` (kind and number), its ``answers`` (the gold answer first, then
accepted aliases) and a ``split``: about 30% ``dev`` and 70% ``test``, decided by a hash of the
id, so an item never changes split when the set grows or the seed changes. Methods and prompts
are chosen on ``dev``; the table in docs/evaluation.md reports ``test``. The same seed always
gives the same items.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal

from evaluation.arithmetic_set import ALL_TEMPLATES
from evaluation.fact_lists import CAPITALS, CATEGORIES, MC_CAPITALS, OPPOSITES, SCIENCE_GEOGRAPHY

Kind = Literal["arithmetic", "word_problem", "fact", "multiple_choice"]
Split = Literal["dev", "test"]
KINDS: tuple[Kind, ...] = ("arithmetic", "word_problem", "fact", "multiple_choice")
LETTERS = "ABCD"
DEV_SHARE = 3  # tenths of the items that go to dev


@dataclass(frozen=True)
class Item:
    id: str
    kind: Kind
    topic: str
    question: str
    answers: tuple[str, ...]  # gold answer first, then accepted aliases
    split: Split
    options: tuple[str, ...] = ()  # multiple choice: the option texts, in letter order

    @property
    def answer(self) -> str:
        return self.answers[0]

    def as_json(self) -> dict[str, object]:
        return {
            "id": self.id,
            "kind": self.kind,
            "topic": self.topic,
            "question": self.question,
            "answer": self.answer,
            "answers": list(self.answers),
            "split": self.split,
            **({"options": list(self.options)} if self.options else {}),
        }


def split_of(item_id: str) -> Split:
    """``dev`` for about 30% of ids, ``test`` for the rest; stable for an id."""
    digest = hashlib.sha256(item_id.encode()).digest()
    return "dev" if digest[0] % 10 < DEV_SHARE else "test"


def _arithmetic(rng: random.Random) -> tuple[str, int]:
    op = rng.choice(["+", "-", "times", "divided by", "two"])
    if op == "+":
        a, b = rng.randint(2, 99), rng.randint(2, 99)
        return f"What is {a} + {b}?", a + b
    if op == "-":
        a = rng.randint(20, 99)
        b = rng.randint(1, a - 1)
        return f"What is {a} - {b}?", a - b
    if op == "times":
        a, b = rng.randint(2, 12), rng.randint(2, 12)
        return f"What is {a} times {b}?", a * b
    if op == "divided by":
        b, q = rng.randint(2, 12), rng.randint(2, 12)
        return f"What is {b * q} divided by {b}?", q
    a, b, c = rng.randint(2, 30), rng.randint(2, 30), rng.randint(1, 20)
    return f"What is {a} + {b} - {c}?", a + b - c


def _choice_question(
    rng: random.Random, stem: str, right: str, wrong: list[str]
) -> tuple[str, str, tuple[str, ...]]:
    options = [right, *wrong]
    rng.shuffle(options)
    lines = [stem] + [f"{LETTERS[i]}) {text}" for i, text in enumerate(options)]
    return "\n".join(lines), LETTERS[options.index(right)], tuple(options)


def _mc_capital(rng: random.Random, index: int) -> tuple[str, str, str, tuple[str, ...]]:
    country, capital = MC_CAPITALS[index % len(MC_CAPITALS)]
    others = [c for _, c in MC_CAPITALS if c != capital]
    q, letter, options = _choice_question(
        rng, f"What is the capital of {country}?", capital, rng.sample(others, 3)
    )
    return "capital", q, letter, options


def _mc_category(rng: random.Random, index: int) -> tuple[str, str, str, tuple[str, ...]]:
    names = sorted(CATEGORIES)
    category = names[index % len(names)]
    right = rng.choice(CATEGORIES[category])
    others = rng.sample([c for c in names if c != category], 3)
    wrong = [rng.choice(CATEGORIES[c]) for c in others]
    article = "an" if category[0] in "aeiou" else "a"
    q, letter, options = _choice_question(rng, f"Which of these is {article} {category}?", right, wrong)
    return "category", q, letter, options


def _mc_largest(rng: random.Random, index: int) -> tuple[str, str, str, tuple[str, ...]]:
    numbers = rng.sample(range(10, 1000), 4)
    right = max(numbers)
    wrong = [str(n) for n in numbers if n != right]
    q, letter, options = _choice_question(rng, "Which number is the largest?", str(right), wrong)
    return "largest", q, letter, options


def _mc_sum(rng: random.Random, index: int) -> tuple[str, str, str, tuple[str, ...]]:
    a, b = rng.randint(5, 60), rng.randint(5, 60)
    total = a + b
    wrong = rng.sample([total + d for d in (-10, -2, -1, 1, 2, 10) if total + d > 0], 3)
    q, letter, options = _choice_question(rng, f"What is {a} + {b}?", str(total), [str(w) for w in wrong])
    return "sum", q, letter, options


MCMaker = Callable[[random.Random, int], tuple[str, str, str, tuple[str, ...]]]
MC_MAKERS: tuple[tuple[MCMaker, int], ...] = (
    (_mc_capital, 30),
    (_mc_category, 28),
    (_mc_largest, 21),
    (_mc_sum, 21),
)


def _items(seed: int) -> Iterator[Item]:
    def item(
        kind: Kind, number: int, topic: str, question: str, answers: tuple[str, ...], options=()
    ) -> Item:
        item_id = f"{kind}-{number:03d}"
        return Item(item_id, kind, topic, question, answers, split_of(item_id), tuple(options))

    seen: set[str] = set()

    def fresh(make: Callable[[random.Random], tuple[str, int]], rng: random.Random) -> tuple[str, int]:
        # a generated question is never asked twice (it could land in both splits)
        while True:
            question, value = make(rng)
            if question not in seen:
                seen.add(question)
                return question, value

    rng = random.Random(f"arithmetic-{seed}")
    for n in range(120):
        question, value = fresh(_arithmetic, rng)
        yield item("arithmetic", n, "arithmetic", question, (str(value),))
    rng = random.Random(f"word_problem-{seed}")
    for n in range(120):
        template = ALL_TEMPLATES[n % len(ALL_TEMPLATES)]
        question, value = fresh(template, rng)
        yield item("word_problem", n, template.__name__.strip("_"), question, (str(value),))
    n = 0
    for country, *capitals in CAPITALS:
        yield item("fact", n, "capital", f"What is the capital of {country}?", tuple(capitals))
        n += 1
    for word, *opposites in OPPOSITES:
        yield item("fact", n, "opposite", f'What is the opposite of "{word}"?', tuple(opposites))
        n += 1
    for question, *answers in SCIENCE_GEOGRAPHY:
        yield item("fact", n, "science_geography", question, tuple(answers))
        n += 1
    rng = random.Random(f"multiple_choice-{seed}")
    n = 0
    for maker, count in MC_MAKERS:
        for index in range(count):
            topic, question, letter, options = maker(rng, index)
            while question in seen:
                topic, question, letter, options = maker(rng, index)
            seen.add(question)
            yield item("multiple_choice", n, topic, question, (letter,), options)
            n += 1


def builtin_items(
    split: Split | Literal["all"] = "all", kinds: tuple[str, ...] | None = None, seed: int = 0
) -> list[Item]:
    """The built-in items of ``split`` (``dev``, ``test`` or ``all``), optionally of some ``kinds``."""
    unknown = set(kinds or ()) - set(KINDS)
    if unknown:
        raise ValueError(f"unknown item kinds {sorted(unknown)}; valid: {', '.join(KINDS)}")
    return [
        it
        for it in _items(seed)
        if (split == "all" or it.split == split) and (kinds is None or it.kind in kinds)
    ]


def interleaved(items: list[Item]) -> list[Item]:
    """The items with their kinds taken in turn, so a ``--limit`` prefix covers every kind."""
    by_kind: dict[str, list[Item]] = {}
    for it in items:
        by_kind.setdefault(it.kind, []).append(it)
    queues = list(by_kind.values())
    out: list[Item] = []
    while any(queues):
        for queue in queues:
            if queue:
                out.append(queue.pop(0))
    return out
