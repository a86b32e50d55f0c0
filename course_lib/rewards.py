"""Rewards for math reasoning: read the final answer, check it, score the format.

Three layers, each usable on its own:

1. **Answers.** :func:`extract_answer` reads the final answer out of a completion or a
   GSM8K solution; :func:`is_correct` compares it with the gold answer *exactly*
   (``18.00`` = ``18``, ``3/4`` = ``0.75``, but ``0.333`` != ``1/3``).
2. **Reward components.** :func:`reward_breakdown` scores one completion: correctness,
   the four 0.5-point format components (below), and an optional length penalty.
3. **TRL reward functions.** ``correctness_reward``, ``format_reward``,
   ``make_length_reward`` and :func:`make_reward` have the signature TRL's
   ``GRPOTrainer`` calls, ``f(completions, **dataset_columns) -> list[float]``, and accept
   plain-text completions (``str``) and conversational ones
   (``[{"role": "assistant", "content": ...}]``).

Safety: nothing here raises on model output or evaluates it. Numbers are parsed with
regular expressions and exact arithmetic (``Fraction``). Only a short ``\\boxed{...}``
content without powers or factorials is handed to math-verify, whose LaTeX parser turns
``\\frac{3}{4}`` or ``5\\text{ apples}`` into a number better than we would by hand; its
lexer passes sympy nothing but number tokens (a test records every ``eval`` to prove it).

The format reward
-----------------
Trelis Research's "Should you even do GRPO?" (Ronan McGovern,
https://trelis.substack.com/p/sft-vs-grpo) trained GRPO with a reward of this shape: correctness
worth 0 or 2 plus four format components worth 0.5 each, the layout of the widely copied GRPO
GSM8K demo (strict layout, soft layout,
tag count, integer answer). The course's answer format is GSM8K's ``#### N`` final line,
so the four components here are those four ideas for that format:

=================  ==========================================================================
``strict_format``  the whole completion is reasoning (without a marker), a newline, then
                   a last line ``#### <number>`` and nothing after it
``soft_format``    some reasoning, then somewhere a ``####`` marker followed by a number
``single_answer``  exactly one ``####`` marker (no hedging with several answers)
``plain_number``   the text after the last marker is a bare number: digits, an optional
                   sign and decimal part, no units, ``$`` or commas
=================  ==========================================================================

The first two are regular expressions over many lines, so they need ``re.DOTALL``:
without it ``.`` stops at a newline, and any multi-line reasoning fails to match. That
is the most common bug in public GRPO code; ``dotall=False`` reproduces it.

**Format credit only for correct answers** (``format_needs_correct=True``, the default).
If a wrong answer earns format points, then in a group where every answer is wrong the
format points are the only differences left, and GRPO's per-group normalisation blows
them up into advantages as large as the ones correctness produces. The policy learns
to format wrong answers, which is how format rewards get optimised at the expense of
accuracy. With the option on, format only ranks correct answers against each other.
"""

from __future__ import annotations

import hashlib
import re
import threading
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from typing import Any

MAX_CHARS = 50_000  # only the last 50k characters are read: answers live at the end
MAX_DIGITS = 50  # a longer digit string is not an answer (and keeps arithmetic cheap)
FORMAT_POINTS = 0.5  # each format component is worth 0.5 (Trelis Research's reward shape)
FORMAT_COMPONENTS = ("strict_format", "soft_format", "single_answer", "plain_number")

# A number as people write it: optional sign (not glued to a previous word, so the "-3"
# in "5-3" is not negative), optional "$", digits with or without thousands commas, an
# optional decimal part, an optional "/denominator".
_NUMBER = (
    r"(?:(?<![\w)])[-+])?\$?\s?"
    r"(?:[0-9]{1,3}(?:,[0-9]{3})+(?:\.[0-9]+)?|[0-9]+(?:\.[0-9]+)?|\.[0-9]+)"
    r"(?:/[0-9]+)?"
)
_ANSWER_IS = re.compile(r"\banswer\b(?:\s+is)?[\s:*=]*(" + _NUMBER + r")", re.IGNORECASE)
_ANY_NUMBER = re.compile(_NUMBER)
_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_PLAIN_NUMBER = r"-?[0-9]+(?:\.[0-9]+)?"


# --------------------------------------------------------------------------- numbers
def _to_ascii(text: str) -> str:
    """NFKC-normalise (full-width digits, ½ -> 1⁄2) and map any Unicode digit and minus to ASCII."""
    text = unicodedata.normalize("NFKC", text).replace("\u2212", "-").replace("\u2044", "/")
    if text.isascii():
        return text
    return re.sub(r"\d", lambda m: str(unicodedata.decimal(m.group(), 0)), text)


def _parse_number(token: str) -> Fraction | None:
    """``"$1,200.50"`` -> ``Fraction(2401, 2)``; ``"3/4"`` -> ``Fraction(3, 4)``; junk -> ``None``."""
    cleaned = re.sub(r"[\s$,+]", "", token)
    numerator, _, denominator = cleaned.partition("/")
    if sum(c.isdigit() for c in cleaned) > MAX_DIGITS:
        return None
    try:
        value = Fraction(Decimal(numerator))
        if denominator:
            value /= Fraction(Decimal(denominator))
    except (InvalidOperation, ValueError, ZeroDivisionError):
        return None
    return value


def canonical(value: Fraction) -> str:
    """Shortest exact string for a number: ``18``, ``-2.5``, ``0.75``; ``1/3`` when no decimal is exact."""
    den, k = value.denominator, 0
    while den % 2 == 0 or den % 5 == 0:  # a terminating decimal needs a denominator 2^a 5^b
        den //= 2 if den % 2 == 0 else 5
        k += 1
    if den != 1:
        return f"{value.numerator}/{value.denominator}"
    scaled = value * 10**k  # an integer now
    sign, digits = ("-" if scaled < 0 else ""), str(abs(scaled.numerator)).rjust(k + 1, "0")
    whole, frac = digits[: len(digits) - k], digits[len(digits) - k :].rstrip("0")
    return sign + whole + ("." + frac if frac else "")


def normalize_number(text: str) -> str | None:
    """Canonical form of a number string: ``"$1,200.50"`` -> ``"1200.5"``, ``"18.00"`` -> ``"18"``.

    Exact arithmetic, never floats: ``"1000000.1"`` stays ``"1000000.1"`` instead of
    becoming ``"1e+06"``. Returns ``None`` for anything that is not one number.
    """
    value = _parse_number(text) if isinstance(text, str) and _ANY_NUMBER.fullmatch(text.strip()) else None
    return None if value is None else canonical(value)


# --------------------------------------------------------------------------- \boxed{}
def _boxed_content(text: str) -> str | None:
    """The content of the last ``\\boxed{...}`` (balanced braces), or ``None``."""
    matches = list(_BOXED.finditer(text))
    if not matches:
        return None
    start, depth = matches[-1].end(), 1
    for i in range(start, min(len(text), start + 1000)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            return text[start:i]
    return None


def _boxed_value(content: str) -> Fraction | None:
    """A number from ``\\boxed{content}``: plain numbers directly, LaTeX through math-verify.

    Only short contents without powers or factorials reach sympy (``9^{9^{9}}`` would
    never finish), and with a timeout whenever we run in the main thread.
    """
    content = content.replace("\\%", "").replace("%", "").strip()  # GSM8K writes 25 % as 25
    if _ANY_NUMBER.fullmatch(content):  # a plain number needs no LaTeX parser
        return _parse_number(content)
    if len(content) > 100 or re.search(r"\^|!|\*\*|\\sqrt|\\int|\\sum|\\prod", content):
        return None
    return _math_verify_number(content)


def _math_verify_number(content: str) -> Fraction | None:
    try:
        from math_verify import LatexExtractionConfig, parse  # lazy: sympy loads in seconds, needed only for LaTeX

        main = threading.current_thread() is threading.main_thread()
        # LaTeX extraction only: math-verify's plain-expression fallback calls sympy's
        # parse_expr, which evaluates Python code.
        parsed = parse(
            f"$\\boxed{{{content}}}$", extraction_config=[LatexExtractionConfig()], parsing_timeout=2 if main else None
        )
        if not parsed:
            return None
        expr = parsed[0].doit() if hasattr(parsed[0], "doit") else parsed[0]
        if getattr(expr, "is_Rational", False):
            return Fraction(int(expr.p), int(expr.q))
        if getattr(expr, "is_Float", False):
            return _parse_number(str(expr))
    except Exception:  # noqa: BLE001 - a reward must survive any parser failure
        return None
    return None


# --------------------------------------------------------------------------- answers
def extract_answer(text: Any) -> str | None:
    """The final answer in ``text`` as a canonical number string, or ``None``.

    Looked for in this order, the last occurrence of each winning:

    1. GSM8K's marker ``#### N`` (how the course's models and GSM8K solutions end): the
       first number on the line after the *last* marker. If that line holds no number
       the answer is ``None``: a marked answer is never replaced by a guess.
    2. else ``\\boxed{...}`` (how many instruct models end): its content, LaTeX read by
       math-verify; ``None`` if it is not a number (``\\boxed{x+1}``).
    3. else "the answer is N" / "Answer: N", the last one;
    4. fallback: the last number anywhere in the text.

    Numbers may carry commas (``1,000``), ``$``, a sign (also ``−``), decimals
    (``18.00`` -> ``18``), a fraction (``3/4`` -> ``0.75``, ``1/3`` stays ``1/3``), units or
    trailing punctuation after them (``18 dollars.`` -> ``18``), and Unicode digits.
    Not read: scientific notation and mixed numbers (``1 1/2`` reads as ``1/2``); GSM8K
    answers use neither. Only the last ``MAX_CHARS`` characters are read.
    """
    if not isinstance(text, str) or not text:
        return None
    text = _to_ascii(text[-MAX_CHARS:])
    if "####" in text:  # the last marker decides, even if unreadable
        after = text.rsplit("####", 1)[1].strip()
        found = _ANY_NUMBER.search(after.split("\n", 1)[0])
        value = _parse_number(found.group()) if found else None
    elif (content := _boxed_content(text)) is not None:
        value = _boxed_value(content)
    else:
        found = _ANSWER_IS.findall(text) or _ANY_NUMBER.findall(text)
        value = _parse_number(found[-1]) if found else None
    return None if value is None else canonical(value)


def gold_answer(answer: Any) -> str | None:
    """The gold answer as a canonical number: accepts ``"72"``, ``72``, ``"1,000"`` or a full solution."""
    text = str(answer) if answer is not None else ""
    return normalize_number(text) if "####" not in text else extract_answer(text)


def answer_matches(predicted: str | None, answer: Any) -> bool:
    """Whether an already extracted answer equals the gold ``answer`` exactly."""
    gold = gold_answer(answer)
    return predicted is not None and gold is not None and Fraction(predicted) == Fraction(gold)


def is_correct(text: Any, answer: Any) -> bool:
    """Whether the final answer in ``text`` equals the gold ``answer`` exactly (never raises)."""
    return answer_matches(extract_answer(text), answer)


# --------------------------------------------------------------------------- format
def format_components(text: Any, dotall: bool = True) -> dict[str, float]:
    """The four format components of one completion, each 0 or 1 (see the module docstring).

    ``dotall=False`` drops ``re.DOTALL`` from the two layout patterns, reproducing the
    bug that makes them fail on every multi-line completion.
    """
    text = completion_text(text)[-MAX_CHARS:].strip()
    flags = re.DOTALL if dotall else 0
    work = r"(?!####)\S"  # reasoning starts with something other than a marker
    strict = re.fullmatch(work + r"(?:(?!####).)*\n####[ \t]*" + _PLAIN_NUMBER, text, flags)
    soft = re.match(work + r".*####\s*" + _NUMBER, text, flags)  # anchored: linear time
    markers = text.count("####")
    last = text.rsplit("####", 1)[-1].strip() if markers else ""
    return {
        "strict_format": float(strict is not None),
        "soft_format": float(soft is not None),
        "single_answer": float(markers == 1),
        "plain_number": float(re.fullmatch(_PLAIN_NUMBER, last) is not None),
    }


# --------------------------------------------------------------------------- length
def overlong_penalty(length: int, max_length: int, buffer: int) -> float:
    """DAPO's soft overlong punishment, in ``[-1, 0]``.

    .. math:: R_{len} = \\begin{cases} 0 & L \\le L_{max} - L_{buf} \\\\
              \\frac{(L_{max} - L_{buf}) - L}{L_{buf}} & L_{max} - L_{buf} < L \\le L_{max} \\\\
              -1 & L > L_{max} \\end{cases}
    """
    free = max_length - buffer
    if length <= free:
        return 0.0
    if length > max_length:
        return -1.0
    return (free - length) / buffer


#: Completions worth looking at, as ``name -> (completion, gold answer)``, for lessons and widgets.
EXAMPLE_COMPLETIONS: dict[str, tuple[str, str]] = {
    "well formed, correct": ("She has 3+4=<<3+4=7>>7 apples.\nShe doubles them: 7*2=<<7*2=14>>14.\n#### 14", "14"),
    "well formed, wrong (format hack)": ("She has 3+4=<<3+4=7>>7 apples.\n#### 13", "14"),
    "correct, no marker": ("She has 7 apples and doubles them, so 14 apples.", "14"),
    "dollars and commas": ("The total is $1,250.00.\n#### $1,250.00", "1250"),
    "hedging with two answers": ("It is 14.\n#### 14\n#### 15", "14"),
    "units after the answer": ("7 doubled is 14.\n#### 14 apples", "14"),
    "LaTeX boxed fraction": ("Half of 28 is $\\boxed{\\frac{28}{2}}$", "14"),
    "the answer is ...": ("7 and 7 make 14. The answer is 14.", "14"),
    "marker with no number": ("7 and 7 make 14.\n#### fourteen", "14"),
    "rambling after the answer": ("7*2=14\n#### 14\nLet me also compute 3+3=6 and 6*9=54", "14"),
    "empty": ("", "14"),
}


# --------------------------------------------------------------------------- one completion
@dataclass(frozen=True)
class RewardConfig:
    """How the total reward is put together.

    ``total = correctness_weight * correct
            + format_weight * 0.5 * sum(format components)   (0 for wrong answers if format_needs_correct)
            + brevity_weight * (1 + overlong_penalty(length))  (likewise)
            + length_weight * overlong_penalty(length)
            + random_weight * coin(text)``

    The brevity bonus is DAPO's overlong shape turned into a bonus: 1 up to ``max_length -
    length_buffer``, falling linearly to 0 at ``max_length``. The coin is a seeded hash of the
    completion's text, 0 or 1 with equal odds: a reward that knows nothing about the answer
    (the control of lesson 05).
    """

    correctness_weight: float = 1.0
    format_weight: float = 0.0
    brevity_weight: float = 0.0
    length_weight: float = 0.0
    random_weight: float = 0.0
    format_needs_correct: bool = True  # format and brevity are paid to correct answers only
    dotall: bool = True
    max_length: int = 256  # tokens when token ids are known, else characters
    length_buffer: int = 64
    random_seed: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.length_buffer <= self.max_length:
            raise ValueError(f"length_buffer must be in (0, max_length={self.max_length}], got {self.length_buffer}")


#: A reward of the shape Trelis Research trained GRPO with (and Will Brown's widely copied GRPO demo):
#: correctness 0/2 plus four 0.5-point format components, paid to every answer.
TRELIS_SHAPED_REWARD = RewardConfig(correctness_weight=2.0, format_weight=1.0, format_needs_correct=False)


def reward_breakdown(
    text: Any, answer: Any, config: RewardConfig = RewardConfig(), length: int | None = None
) -> dict[str, Any]:
    """Every part of the reward for one completion, plus the extracted answer.

    ``length`` is the completion's length in tokens; by default its length in characters.
    Returns ``extracted``, ``correct`` (bool), the four format components (0/1),
    ``format_paid`` (whether format and brevity earn anything here), and the weighted terms
    ``correctness``, ``format``, ``brevity``, ``length``, ``random`` and their sum ``total``.
    """
    text = completion_text(text)
    extracted = extract_answer(text)
    correct = answer_matches(extracted, answer)
    parts = format_components(text, config.dotall)
    paid = correct or not config.format_needs_correct
    length = len(text) if length is None else length
    row: dict[str, Any] = {"extracted": extracted, "correct": correct, **parts, "format_paid": paid}
    row["correctness"] = config.correctness_weight * float(correct)
    row["format"] = config.format_weight * FORMAT_POINTS * sum(parts.values()) * paid
    overlong = overlong_penalty(length, config.max_length, config.length_buffer)
    row["brevity"] = config.brevity_weight * (1.0 + overlong) * paid
    row["length"] = config.length_weight * overlong
    row["random"] = config.random_weight * coin(text, config.random_seed) if config.random_weight else 0.0
    row["total"] = row["correctness"] + row["format"] + row["brevity"] + row["length"] + row["random"]
    return row


def coin(text: str, seed: int = 0) -> float:
    """0.0 or 1.0 with equal odds: a seeded hash of ``text``, the same for the same text and seed,
    unrelated to what the text says (a random reward that still is a function of the completion)."""
    digest = hashlib.sha256(f"{seed}/{text}".encode()).digest()
    return float(digest[0] & 1)


# --------------------------------------------------------------------------- TRL signature
def completion_text(completion: Any) -> str:
    """The text of one completion as TRL passes it: a string, or chat messages.

    ``"..."``, ``[{"role": "assistant", "content": "..."}]``, content given as parts
    ``[{"type": "text", "text": "..."}]``; anything else (``None``, numbers) gives ``""``.
    """
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        content = completion.get("content", "")
        if isinstance(content, list):
            return "".join(p.get("text", "") for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
        return content if isinstance(content, str) else ""
    if isinstance(completion, (list, tuple)):
        return "".join(
            completion_text(m) for m in completion if isinstance(m, dict) and m.get("role", "assistant") == "assistant"
        )
    return ""


def _column(values: Any, name: str, n: int, reward: str, required: bool = True) -> list:
    if values is None and not required:
        return [None] * n
    if values is None:
        raise TypeError(
            f"{reward} needs the data set's '{name}' column (the gold answers); "
            f"pass it as {name}=[...] or keep it in the training data set."
        )
    values = list(values) if isinstance(values, (list, tuple)) else [values] * n
    if len(values) != n:
        raise ValueError(f"{reward}: {n} completions but {len(values)} values in '{name}'")
    return values


def _token_counts(completion_ids: Sequence | None, n: int) -> list[int | None]:
    """Token counts from TRL's ``completion_ids``; ``None`` where unknown (characters are used)."""
    if completion_ids is None or len(completion_ids) != n:
        return [None] * n
    return [len(ids) if hasattr(ids, "__len__") else None for ids in completion_ids]


def make_reward(config: RewardConfig = RewardConfig(), name: str = "reward") -> Callable[..., list[float]]:
    """A TRL reward function returning each completion's ``total`` under ``config``."""

    def reward(
        completions: Sequence, answer: Any = None, completion_ids: Sequence | None = None, **kwargs: Any
    ) -> list[float]:
        needs_answers = bool(config.correctness_weight or config.format_weight or config.brevity_weight)
        golds = _column(answer, "answer", len(completions), name, required=needs_answers)
        lengths = _token_counts(completion_ids, len(completions))
        return [reward_breakdown(c, g, config, n)["total"] for c, g, n in zip(completions, golds, lengths)]

    reward.__name__ = reward.__qualname__ = name  # TRL logs each reward under its function's name
    return reward


def make_correctness_reward(scale: float = 1.0) -> Callable[..., list[float]]:
    """``scale`` for a correct final answer, else 0 (Trelis Research used ``scale=2``)."""
    return make_reward(RewardConfig(correctness_weight=scale), name="correctness_reward")


def make_format_reward(needs_correct: bool = True, dotall: bool = True) -> Callable[..., list[float]]:
    """0.5 per format component, 0 to 2; only for correct answers when ``needs_correct``."""
    config = RewardConfig(correctness_weight=0.0, format_weight=1.0, format_needs_correct=needs_correct, dotall=dotall)
    return make_reward(config, name="format_reward")


def make_length_reward(max_length: int = 256, buffer: int = 64) -> Callable[..., list[float]]:
    """DAPO's overlong penalty in ``[-1, 0]``, on token counts when TRL passes ``completion_ids``."""
    config = RewardConfig(correctness_weight=0.0, length_weight=1.0, max_length=max_length, length_buffer=buffer)
    return make_reward(config, name="length_reward")


def make_brevity_reward(
    needs_correct: bool = True, max_length: int = 256, buffer: int = 64
) -> Callable[..., list[float]]:
    """The brevity bonus in ``[0, 1]`` (1 up to ``max_length - buffer`` tokens, 0 from ``max_length``);
    only for correct answers when ``needs_correct``."""
    config = RewardConfig(
        correctness_weight=0.0,
        brevity_weight=1.0,
        format_needs_correct=needs_correct,
        max_length=max_length,
        length_buffer=buffer,
    )
    return make_reward(config, name="brevity_reward")


def make_random_reward(seed: int = 0) -> Callable[..., list[float]]:
    """0 or 1 from a seeded hash of each completion (:func:`coin`): a reward with no signal."""
    return make_reward(RewardConfig(correctness_weight=0.0, random_weight=1.0, random_seed=seed), name="random_reward")


correctness_reward = make_correctness_reward(1.0)
format_reward = make_format_reward()


def trl_reward_funcs(config: RewardConfig = RewardConfig()) -> tuple[list[Callable], list[float]]:
    """``(reward_funcs, reward_weights)`` for ``GRPOTrainer``/``GRPOConfig`` equal to ``make_reward(config)``.

    Separate functions make TRL log each term (``rewards/format_reward/mean`` …), which is
    how one sees format being optimised while correctness stalls.
    """
    funcs: list[Callable] = [correctness_reward]
    weights = [config.correctness_weight]
    if config.format_weight:
        funcs.append(make_format_reward(config.format_needs_correct, config.dotall))
        weights.append(config.format_weight)
    if config.brevity_weight:
        funcs.append(make_brevity_reward(config.format_needs_correct, config.max_length, config.length_buffer))
        weights.append(config.brevity_weight)
    if config.length_weight:
        funcs.append(make_length_reward(config.max_length, config.length_buffer))
        weights.append(config.length_weight)
    if config.random_weight:
        funcs.append(make_random_reward(config.random_seed))
        weights.append(config.random_weight)
    return funcs, weights
