"""Final-answer extraction and comparison: what self-consistency votes on and ``eval`` grades.

``extract_answer(text)`` finds the final answer of a written solution, in this order:

1. the last ``\\boxed{...}`` (braces balanced; LaTeX convention of math datasets);
2. the last ``#### X`` line (GSM8K convention);
3. the last "final answer is X" / "the answer is X" / "Answer: X" phrase (to the end of its
   sentence or line);
4. the last number in the text;
5. the last non-empty line.

The answer is then normalised: a number (``1,000``, ``$4.50``, ``75%``, ``3/4``, ``\\frac{3}{4}``,
``2.0``) becomes a canonical decimal string (``1000``, ``4.5``, ``75``, ``0.75``, ``0.75``,
``2``); a single choice letter (``(B)``, ``B.``) becomes ``b``; any other text is lower-cased
with punctuation, articles and extra spaces removed. Two answers match when their normalised
forms are equal (numbers: equal within a relative 1e-6).

Pure Python, no model: cheap enough to grade thousands of answers.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass
from fractions import Fraction
from typing import Literal

AnswerKind = Literal["numeric", "choice", "text"]
AnswerFormat = Literal["auto", "numeric", "text"]

_NUMBER = re.compile(r"(?<![\w.])[-+−]?\$?\s?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:\s?/\s?\d+)?%?")
_FRAC = re.compile(r"\\[dt]?frac\s*\{\s*([-+]?\d+(?:\.\d+)?)\s*\}\s*\{\s*([-+]?\d+(?:\.\d+)?)\s*\}")
_HASHES = re.compile(r"####\s*(.+)")
_MARKER = re.compile(
    r"(?:final answer|the answer|answer)\s*(?:is|:|=)\s*:?\s*(.+)",
    re.IGNORECASE,
)
_CHOICE = re.compile(r"^\(?([A-Ea-e])\)?[.:]?$")
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)


@dataclass(frozen=True)
class ExtractedAnswer:
    """A final answer: the span as written, its normalised form, its kind and where it came from."""

    raw: str
    normalized: str
    kind: AnswerKind
    source: Literal["boxed", "hashes", "marker", "last_number", "last_line"]


def _last_boxed(text: str) -> str | None:
    start = max(text.rfind("\\boxed{"), text.rfind("\\fbox{"))
    if start < 0:
        return None
    i = text.index("{", start) + 1
    depth = 1
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i:j]
    return None


def _sentence(span: str) -> str:
    """A marker's answer: up to the end of its line, and of its sentence (a period before a space)."""
    span = span.strip().splitlines()[0] if span.strip() else ""
    span = re.split(r"(?<!\d)\.(?:\s|$)|\.\s", span, maxsplit=1)[0]
    return span.strip().strip("*").strip()


def parse_number(text: str) -> Fraction | None:
    """The number ``text`` spells (commas, currency, percent, fractions, ``\\frac``), or None."""
    cleaned = text.strip().replace("−", "-").replace("\\$", "$").replace("\\%", "%")
    frac = _FRAC.fullmatch(cleaned.strip("$ "))
    if frac:
        try:
            return Fraction(frac.group(1)) / Fraction(frac.group(2))
        except (ValueError, ZeroDivisionError):
            return None
    cleaned = cleaned.strip().rstrip(".").strip("$").replace("$", "").replace(",", "").replace(" ", "")
    cleaned = cleaned.rstrip("%")
    try:
        if "/" in cleaned:
            num, den = cleaned.split("/", 1)
            return Fraction(num) / Fraction(den)
        return Fraction(cleaned)
    except (ValueError, ZeroDivisionError):
        return None


def format_number(value: Fraction) -> str:
    """Canonical decimal form: ``2``, ``0.75``, ``-3.5``, ``0.333333`` (6 decimals at most)."""
    if value.denominator == 1:
        return str(value.numerator)
    text = f"{float(value):.6f}".rstrip("0").rstrip(".")
    return "0" if text == "-0" else text


def normalize_text(text: str) -> str:
    """Lower case, no punctuation, no articles, single spaces (SQuAD-style)."""
    text = text.lower().translate(_PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def _normalized(raw: str, fmt: AnswerFormat) -> tuple[str, AnswerKind] | None:
    stripped = raw.strip().strip("*").strip()
    if fmt != "text":
        number = parse_number(stripped)
        if number is None:
            # "x = 4", "4 apples": a short answer whose only number is the answer
            found = _FRAC.findall(stripped) or _NUMBER.findall(stripped)
            if len(found) == 1 and len(stripped) <= 40:
                number = parse_number(found[0] if isinstance(found[0], str) else "/".join(found[0]))
        if number is not None:
            return format_number(number), "numeric"
        if fmt == "numeric":
            return None
    choice = _CHOICE.match(stripped)
    if choice:
        return choice.group(1).lower(), "choice"
    normalized = normalize_text(stripped)
    return (normalized, "text") if normalized else None


def extract_answer(text: str, fmt: AnswerFormat = "auto") -> ExtractedAnswer | None:
    """The final answer of ``text`` (see the module docstring), or None when there is none.

    ``fmt="numeric"`` only accepts numbers; ``fmt="text"`` never converts to a number.
    """
    if not text or not text.strip():
        return None
    spans: list[tuple[str, str]] = []
    boxed = _last_boxed(text)
    if boxed is not None:
        spans.append((boxed, "boxed"))
    hashes = _HASHES.findall(text)
    if hashes:
        spans.append((hashes[-1].strip(), "hashes"))
    markers = _MARKER.findall(text)
    if markers:
        spans.append((_sentence(markers[-1]), "marker"))
    for raw, source in spans:
        found = _normalized(raw, fmt)
        if found is not None:
            return ExtractedAnswer(raw, found[0], found[1], source)  # type: ignore[arg-type]
    if fmt != "text":
        last = _last_number(text)
        if last is not None:
            return ExtractedAnswer(last[0], format_number(last[1]), "numeric", "last_number")
        if fmt == "numeric":
            return None
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if not lines:
        return None
    found = _normalized(lines[-1], "text")
    if found is None:
        return None
    return ExtractedAnswer(lines[-1], found[0], found[1], "last_line")


def _last_number(text: str) -> tuple[str, Fraction] | None:
    """The number that ends last in ``text`` (``\\frac{a}{b}`` or a plain number)."""
    best: tuple[int, str, Fraction] | None = None
    for pattern in (_FRAC, _NUMBER):
        for match in pattern.finditer(text):
            value = parse_number(match.group(0))
            if value is not None and (best is None or match.end() > best[0]):
                best = (match.end(), match.group(0).strip(), value)
    return (best[1], best[2]) if best is not None else None


def answers_match(a: ExtractedAnswer | None, b: ExtractedAnswer | None) -> bool:
    """Whether two extracted answers say the same (numbers within a relative 1e-6)."""
    if a is None or b is None:
        return False
    if a.kind == "numeric" and b.kind == "numeric":
        x, y = float(Fraction(a.normalized)), float(Fraction(b.normalized))
        return abs(x - y) <= 1e-6 * max(1.0, abs(x), abs(y))
    return a.normalized == b.normalized


def grade(prediction: str, reference: str, fmt: AnswerFormat = "auto") -> bool:
    """Whether the final answer of ``prediction`` matches ``reference`` (itself an answer or a solution).

    This is what ``ensemblehub eval`` uses to grade an answer against a dataset's reference.
    """
    expected = extract_answer(reference, fmt)
    if expected is None:
        return False
    if expected.kind == "numeric":
        return answers_match(extract_answer(prediction, "numeric"), expected)
    predicted = extract_answer(prediction, fmt)
    if predicted is None:
        return False
    # free text: the reference's words appearing in the final answer count ("Paris" in
    # "the capital of France is Paris")
    return predicted.normalized == expected.normalized or (
        f" {expected.normalized} " in f" {predicted.normalized} "
    )
