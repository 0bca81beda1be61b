"""A small built-in set of arithmetic word problems, generated here so ``eval`` runs offline.

Deterministic for a seed: the same items every time, with exact integer answers. The templates
cover addition, subtraction, multiplication and two-step problems, worded the way grade-school
math sets are.
"""

from __future__ import annotations

import random
from collections.abc import Callable

NAMES = ["Ana", "Ben", "Chen", "Dara", "Eli", "Fatima", "Goran", "Hana", "Ivan", "Jun"]
THINGS = ["apples", "books", "coins", "pencils", "stickers", "marbles", "cards", "shells"]

Template = Callable[[random.Random], tuple[str, int]]


def _add(rng: random.Random) -> tuple[str, int]:
    name, thing = rng.choice(NAMES), rng.choice(THINGS)
    a, b = rng.randint(2, 40), rng.randint(2, 40)
    return f"{name} has {a} {thing} and gets {b} more. How many {thing} does {name} have now?", a + b


def _subtract(rng: random.Random) -> tuple[str, int]:
    name, thing = rng.choice(NAMES), rng.choice(THINGS)
    a = rng.randint(20, 90)
    b = rng.randint(1, a - 1)
    return f"{name} had {a} {thing} and gave away {b}. How many {thing} are left?", a - b


def _multiply(rng: random.Random) -> tuple[str, int]:
    name, thing = rng.choice(NAMES), rng.choice(THINGS)
    boxes, each = rng.randint(2, 9), rng.randint(2, 12)
    return (
        f"{name} buys {boxes} boxes with {each} {thing} in each box. How many {thing} is that in total?",
        boxes * each,
    )


def _two_step(rng: random.Random) -> tuple[str, int]:
    name, thing = rng.choice(NAMES), rng.choice(THINGS)
    a, bags, each = rng.randint(5, 30), rng.randint(2, 6), rng.randint(1, 10)
    question = (
        f"{name} has {a} {thing}. A friend gives {name} {bags} bags with {each} {thing} in each bag. "
        f"How many {thing} does {name} have now?"
    )
    return question, a + bags * each


TEMPLATES: tuple[Template, ...] = (_add, _subtract, _multiply, _two_step)


def builtin_problems(count: int = 20, seed: int = 0) -> list[dict[str, str]]:
    """``count`` items ``{"question", "answer"}``, cycling through the templates."""
    rng = random.Random(seed)
    items = []
    for index in range(count):
        question, answer = TEMPLATES[index % len(TEMPLATES)](rng)
        items.append({"question": question, "answer": str(answer)})
    return items
