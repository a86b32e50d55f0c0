"""Reading the final answer out of a completion, and checking it.

This is the simple, dependable core that evaluation needs from day one:

* ``extract_answer`` looks for GSM8K's ``#### N`` marker first, then for
  "the answer is N", and finally falls back to the last number in the text.
* ``is_correct`` compares numbers exactly (``18.00`` equals ``18``; ``1,000`` equals
  ``1000``), never by evaluating the model's text.

Neither ever raises on strange input: a reward or a metric must survive whatever a
model writes.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from fractions import Fraction

_NUMBER = r"-?\$?\s?\d[\d,]*(?:\.\d+)?"
_HASHES = re.compile(r"####\s*(" + _NUMBER + r")")
_ANSWER_IS = re.compile(r"answer\s+is\s*:?\s*(" + _NUMBER + r")", re.IGNORECASE)
_ANY_NUMBER = re.compile(_NUMBER)


def normalize_number(text: str) -> str | None:
    """Canonical form of a number string: ``"$1,200.50"`` -> ``"1200.5"``, ``"18.00"`` -> ``"18"``.

    Exact decimal arithmetic (``Decimal``), never floats: ``"1000000.1"`` stays
    ``"1000000.1"`` instead of becoming ``"1e+06"``.
    """
    cleaned = re.sub(r"[\s$,]", "", text)
    try:
        value = Decimal(cleaned)
    except InvalidOperation:
        return None
    if not value.is_finite() or abs(value.adjusted()) > 1000:  # inf, nan, absurd exponents
        return None
    canonical = format(value.normalize(), "f")
    return "0" if canonical == "-0" else canonical


def extract_answer(text: str | None) -> str | None:
    """The final answer in ``text`` as a canonical number string, or ``None``."""
    if not isinstance(text, str) or not text:
        return None
    text = text[-20_000:]  # answers live at the end; bound the regex work on huge inputs
    for pattern in (_HASHES, _ANSWER_IS):
        matches = pattern.findall(text)
        if matches:
            return normalize_number(matches[-1])
    numbers = _ANY_NUMBER.findall(text)
    return normalize_number(numbers[-1]) if numbers else None


def answer_matches(predicted: str | None, answer: str) -> bool:
    """Whether an already extracted answer equals the gold ``answer`` numerically."""
    gold = normalize_number(str(answer))
    return predicted is not None and gold is not None and Fraction(predicted) == Fraction(gold)


def is_correct(text: str | None, answer: str) -> bool:
    """Whether the answer extracted from ``text`` equals the gold ``answer`` numerically."""
    return answer_matches(extract_answer(text), answer)
