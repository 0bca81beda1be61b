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


def _price(rng: random.Random) -> tuple[str, int]:
    name = rng.choice(NAMES)
    count, price = rng.randint(2, 9), rng.randint(2, 15)
    thing = rng.choice(["pens", "cakes", "tickets", "plants", "cups"])
    return f"{name} buys {count} {thing} that cost {price} dollars each. How many dollars does {name} pay?", (
        count * price
    )


def _share(rng: random.Random) -> tuple[str, int]:
    name, thing = rng.choice(NAMES), rng.choice(THINGS)
    friends = rng.randint(2, 8)
    # never as many each as there are friends: an echo of the question would end on the answer
    each = rng.choice([n for n in range(2, 10) if n != friends])
    return (
        f"{name} shares {friends * each} {thing} equally among {friends} friends. "
        f"How many {thing} does each friend get?",
        each,
    )


def _compare(rng: random.Random) -> tuple[str, int]:
    first, second = rng.sample(NAMES, 2)
    thing = rng.choice(THINGS)
    a, b = rng.randint(3, 40), rng.randint(41, 95)
    return (
        f"{first} has {a} {thing} and {second} has {b} {thing}. How many more {thing} does {second} have?",
        (b - a),
    )


def _time(rng: random.Random) -> tuple[str, int]:
    name = rng.choice(NAMES)
    days, minutes = rng.randint(2, 7), rng.choice([10, 15, 20, 25, 30, 40, 45])
    return (
        f"{name} reads for {minutes} minutes every day for {days} days. How many minutes does {name} read in total?",
        days * minutes,
    )


TEMPLATES: tuple[Template, ...] = (_add, _subtract, _multiply, _two_step)
# the wider set that the built-in evaluation items draw on
ALL_TEMPLATES: tuple[Template, ...] = TEMPLATES + (_price, _share, _compare, _time)


def builtin_problems(count: int = 20, seed: int = 0) -> list[dict[str, str]]:
    """``count`` items ``{"question", "answer"}``, cycling through the templates."""
    rng = random.Random(seed)
    items = []
    for index in range(count):
        question, answer = TEMPLATES[index % len(TEMPLATES)](rng)
        items.append({"question": question, "answer": str(answer)})
    return items
