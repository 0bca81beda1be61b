"""Grading one short answer against an item: robust to "Paris", "Paris.", "The answer is 12".

Only the first non-empty line of the answer counts (the runner stops generation at a newline;
a model that answers and then rambles is graded on its answer). Then, by the gold answer:

- a letter (multiple choice): the letter the line starts with ("B", "(B)", "B) violin",
  "Answer: B"), or else the one option whose text the line names; a line that lists two or more
  options ("A) 12 B) 14", an echo of the question) is wrong;
- a number: the final number of the line (``answer_extraction.grade`` in numeric mode, so
  "5 + 7 = 12" and "The answer is 12." are right and an echo "What is 5 + 7?" is wrong); number
  words listed as aliases ("eight") count as text;
- text: any accepted alias, equal after normalising or as whole words inside the line
  ("The capital of France is Paris.").
"""

from __future__ import annotations

import re

from ensemble_core.answer_extraction import grade, normalize_text, parse_number
from evaluation.item_set import LETTERS, Item

_LEADING_LETTER = re.compile(
    rf"^\s*(?:(?:the\s+)?(?:correct\s+)?answer\s*(?:is|:)\s*:?\s*)?\(?([{LETTERS}])\)?(?=[\s.):,]|$)",
    re.IGNORECASE,
)
_MARKED_LETTER = re.compile(rf"answer\s*(?:is|:)\s*:?\s*\(?([{LETTERS}])\)?(?=[\s.):,]|$)", re.IGNORECASE)
_OPTION_LABEL = re.compile(rf"(?:^|\s)\(?[{LETTERS}]\)")


def first_line(text: str) -> str:
    for line in text.splitlines():
        if line.strip():
            return line.strip()
    return ""


def chosen_letter(line: str, options: tuple[str, ...]) -> str | None:
    """The option letter ``line`` picks, or None (no pick, or several options listed)."""
    if len(_OPTION_LABEL.findall(line)) > 1:
        return None
    for pattern in (_LEADING_LETTER, _MARKED_LETTER):
        found = pattern.search(line) if pattern is _MARKED_LETTER else pattern.match(line)
        if found:
            return found.group(1).upper()
    said = f" {normalize_text(line)} "
    named = [LETTERS[i] for i, text in enumerate(options) if f" {normalize_text(text)} " in said]
    return named[0] if len(named) == 1 else None


def is_correct(item: Item, answer: str) -> bool:
    """Whether ``answer`` (a model's output) answers ``item`` right."""
    line = first_line(answer)
    if not line:
        return False
    if item.kind == "multiple_choice":
        return chosen_letter(line, item.options) == item.answer.upper()
    for gold in item.answers:
        if parse_number(gold) is not None:
            if grade(line, gold, "numeric"):
                return True
        elif grade(line, gold, "text"):
            return True
    return False
