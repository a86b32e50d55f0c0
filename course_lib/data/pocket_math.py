"""Pocket-math: a seeded generator of GSM8K-style word problems.

Every problem follows one person through a short story of 1..N events. Each event is
one arithmetic operation (+, -, *, or an exact /) on a running quantity, and the
solution writes one GSM8K-style line per operation, with the calculator annotation
``<<expr=result>>`` that GSM8K uses, and ends with ``#### answer``::

    Question: Mia has 23 marbles. She buys 4 bags with 6 marbles in each bag.
              How many marbles does Mia have now?
    Solution: Each bag holds 6 marbles, so the bags hold 4*6 = <<4*6=24>>24 marbles.
              Mia has 23+24 = <<23+24=47>>47 marbles now.
              #### 47

Why these choices (measured while building the pocket model, see ``pocket/pretrain.py``):

* Numbers stay small (operands mostly below 50, multipliers 2-5, results below
  ``max_value``): a 1-10 M parameter model can learn this arithmetic on a laptop in
  minutes, while GSM8K's 3-4 digit products are out of its reach.
* Train and test are disjoint *by construction*: a problem's split is a stable hash of
  its question text, so the same question can never be generated for both.
* ``min_steps``/``max_steps`` is the difficulty knob; more steps means more chances to
  slip, so accuracy falls with the number of steps, as on GSM8K.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator
from dataclasses import dataclass

NAMES: list[tuple[str, str, str]] = [  # (name, subject pronoun, possessive)
    ("Mia", "she", "her"),
    ("Leo", "he", "his"),
    ("Ava", "she", "her"),
    ("Noah", "he", "his"),
    ("Zoe", "she", "her"),
    ("Omar", "he", "his"),
    ("Lena", "she", "her"),
    ("Ravi", "he", "his"),
    ("Iris", "she", "her"),
    ("Tom", "he", "his"),
    ("Nina", "she", "her"),
    ("Sam", "he", "his"),
    ("Maya", "she", "her"),
    ("Ben", "he", "his"),
    ("Aisha", "she", "her"),
    ("Kai", "he", "his"),
    ("Ella", "she", "her"),
    ("Hugo", "he", "his"),
    ("Rosa", "she", "her"),
    ("Ivan", "he", "his"),
    ("Lucy", "she", "her"),
    ("Finn", "he", "his"),
    ("Sara", "she", "her"),
    ("Jack", "he", "his"),
]
FRIENDS = ["Anna", "Max", "Eli", "Tara", "Paul", "Jade", "Ken", "Olga", "Raj", "Uma"]
OBJECTS = [
    "apples",
    "marbles",
    "stickers",
    "books",
    "pencils",
    "cookies",
    "coins",
    "shells",
    "cards",
    "stamps",
    "balloons",
    "eggs",
    "beads",
    "candles",
    "buttons",
    "toy cars",
]
PLACES = ["garden", "attic", "park", "kitchen", "school", "garage"]
CONTAINERS = {"bags": "bag", "boxes": "box", "jars": "jar", "packs": "pack", "baskets": "basket"}
QUESTION_ENDINGS = [
    "How many {obj} does {name} have now?",
    "How many {obj} does {name} have at the end?",
    "How many {obj} does {name} end up with?",
]


@dataclass
class _Story:
    """The state a problem is built from: who, what, and the running total."""

    name: str
    pron: str
    poss: str
    obj: str
    value: int
    rng: random.Random


def _cap(s: str) -> str:
    return s[0].upper() + s[1:]


def _calc(a: int, op: str, b: int, c: int) -> str:
    """GSM8K's calculator annotation, e.g. ``4*6 = <<4*6=24>>24``."""
    return f"{a}{op}{b} = <<{a}{op}{b}={c}>>{c}"


# Each operation returns (question sentences, solution lines, new value) or None when
# it does not fit the current value (e.g. nothing left to subtract from).
def _op_add(s: _Story, max_value: int) -> tuple[list[str], list[str], int] | None:
    room = max_value - s.value
    if room < 2:
        return None
    b = s.rng.randint(2, min(50, room))
    c = s.value + b
    friend, place = s.rng.choice(FRIENDS), s.rng.choice(PLACES)
    q, sol = s.rng.choice(
        [
            (
                f"{_cap(s.pron)} buys {b} more {s.obj}.",
                f"{_cap(s.pron)} buys {b} more, so {s.pron} has {_calc(s.value, '+', b, c)} {s.obj}.",
            ),
            (
                f"{friend} gives {s.name} {b} {s.obj}.",
                f"After {friend}'s gift {s.name} has {_calc(s.value, '+', b, c)} {s.obj}.",
            ),
            (
                f"{_cap(s.pron)} finds {b} {s.obj} in the {place}.",
                f"With the {b} found in the {place}, {s.pron} has {_calc(s.value, '+', b, c)} {s.obj}.",
            ),
        ]
    )
    return [q], [sol], c


def _op_sub(s: _Story, max_value: int) -> tuple[list[str], list[str], int] | None:
    if s.value < 3:
        return None
    b = s.rng.randint(1, min(50, s.value - 1))
    c = s.value - b
    friend = s.rng.choice(FRIENDS)
    q, sol = s.rng.choice(
        [
            (
                f"{_cap(s.pron)} gives {b} {s.obj} to {friend}.",
                f"After giving {b} to {friend}, {s.pron} has {_calc(s.value, '-', b, c)} {s.obj}.",
            ),
            (
                f"{_cap(s.pron)} loses {b} {s.obj}.",
                f"{_cap(s.pron)} loses {b}, so {s.pron} has {_calc(s.value, '-', b, c)} {s.obj} left.",
            ),
            (
                f"{_cap(s.pron)} sells {b} {s.obj} at the market.",
                f"After selling {b}, {s.pron} has {_calc(s.value, '-', b, c)} {s.obj}.",
            ),
        ]
    )
    return [q], [sol], c


def _op_mul(s: _Story, max_value: int) -> tuple[list[str], list[str], int] | None:
    ks = [k for k in range(2, 6) if s.value * k <= max_value]
    if not ks or s.value > 60:
        return None
    k = s.rng.choice(ks)
    c = s.value * k
    word = {2: "doubles", 3: "triples"}.get(k)
    options = [
        (
            f"Then {s.pron} ends up with {k} times as many {s.obj} as before.",
            f"{k} times as many is {_calc(s.value, '*', k, c)} {s.obj}.",
        )
    ]
    if word:
        options.append(
            (
                f"Then the number of {s.obj} {s.pron} has {word}.",
                f"The number {word}, so {s.pron} has {_calc(s.value, '*', k, c)} {s.obj}.",
            )
        )
    q, sol = s.rng.choice(options)
    return [q], [sol], c


def _op_div(s: _Story, max_value: int) -> tuple[list[str], list[str], int] | None:
    ks = [k for k in range(2, 6) if s.value % k == 0 and s.value // k >= 2]
    if not ks:
        return None
    k = s.rng.choice(ks)
    c = s.value // k
    if k == 2 and s.rng.random() < 0.5:
        return (
            [f"{_cap(s.pron)} gives away half of {s.poss} {s.obj}."],
            [f"Half of them are gone, so {s.pron} keeps {_calc(s.value, '/', 2, c)} {s.obj}."],
            c,
        )
    return (
        [f"{_cap(s.pron)} splits {s.poss} {s.obj} into {k} equal groups and keeps one group."],
        [f"One group holds {_calc(s.value, '/', k, c)} {s.obj}."],
        c,
    )


def _op_groups(s: _Story, max_value: int) -> tuple[list[str], list[str], int] | None:
    """Two operations in one event: k containers of m objects (a product), then added."""
    k, m = s.rng.randint(2, 5), s.rng.randint(2, 12)
    p = k * m
    if s.value + p > max_value:
        return None
    c = s.value + p
    box = s.rng.choice(list(CONTAINERS))
    q = f"{_cap(s.pron)} buys {k} {box} with {m} {s.obj} in each {CONTAINERS[box]}."
    return (
        [q],
        [f"The {box} hold {_calc(k, '*', m, p)} {s.obj}.", f"{s.name} has {_calc(s.value, '+', p, c)} {s.obj} now."],
        c,
    )


OPERATIONS = {"add": _op_add, "sub": _op_sub, "mul": _op_mul, "div": _op_div, "groups": _op_groups}
# How many arithmetic steps each operation contributes to the problem.
STEPS_PER_OPERATION = {"add": 1, "sub": 1, "mul": 1, "div": 1, "groups": 2}


def split_of(question: str, test_fraction: float = 0.1) -> str:
    """The split a question belongs to: a stable hash, identical on every machine."""
    h = int.from_bytes(hashlib.sha256(question.encode()).digest()[:8], "big")
    return "test" if (h % 10_000) < test_fraction * 10_000 else "train"


def make_problem(rng: random.Random, n_steps: int, max_value: int = 200) -> dict:
    """One problem with exactly ``n_steps`` arithmetic steps.

    Returns a GSM8K-shaped record: ``question``, ``solution`` (lines then ``#### N``),
    ``answer`` (the final number as a string) and ``n_steps``.
    """
    if n_steps < 1:
        raise ValueError(f"n_steps must be >= 1, got {n_steps}")
    name, pron, poss = rng.choice(NAMES)
    obj = rng.choice(OBJECTS)
    start = rng.randint(2, min(60, max_value - 1))
    s = _Story(name, pron, poss, obj, start, rng)
    q_parts = [
        rng.choice(
            [
                f"{name} has {start} {obj}.",
                f"{name} starts the day with {start} {obj}.",
                f"{name} collected {start} {obj}.",
            ]
        )
    ]
    sol_lines: list[str] = []
    steps = 0
    while steps < n_steps:
        names = [n for n in OPERATIONS if steps + STEPS_PER_OPERATION[n] <= n_steps]
        result = OPERATIONS[rng.choice(names)](s, max_value)
        if result is None:  # the drawn operation does not fit this value: draw again
            continue
        q, sol, s.value = result
        q_parts += q
        sol_lines += sol
        steps += len(sol)  # one solution line per arithmetic step
    q_parts.append(rng.choice(QUESTION_ENDINGS).format(obj=obj, name=name))
    return {
        "question": " ".join(q_parts),
        "solution": "\n".join(sol_lines + [f"#### {s.value}"]),
        "answer": str(s.value),
        "n_steps": steps,
    }


def iter_problems(
    split: str, seed: int = 0, min_steps: int = 1, max_steps: int = 4, max_value: int = 200, test_fraction: float = 0.1
) -> Iterator[dict]:
    """An endless, reproducible stream of problems that belong to ``split``.

    The number of steps is drawn uniformly from ``[min_steps, max_steps]`` (the
    difficulty knob). Problems whose question hashes to the other split are skipped,
    which is what makes train and test disjoint by construction.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if not 1 <= min_steps <= max_steps:
        raise ValueError(f"need 1 <= min_steps <= max_steps, got {min_steps}, {max_steps}")
    rng = random.Random(f"pocket-math/{split}/{seed}")
    while True:
        problem = make_problem(rng, rng.randint(min_steps, max_steps), max_value)
        if split_of(problem["question"], test_fraction) == split:
            yield problem


def generate(
    n: int,
    split: str = "train",
    seed: int = 0,
    min_steps: int = 1,
    max_steps: int = 4,
    max_value: int = 200,
    unique: bool = True,
) -> list[dict]:
    """``n`` problems of one split (distinct questions when ``unique``)."""
    out, seen = [], set()
    for p in iter_problems(split, seed, min_steps, max_steps, max_value):
        if unique and p["question"] in seen:
            continue
        seen.add(p["question"])
        out.append(p)
        if len(out) == n:
            return out
    return out  # unreachable: the stream is endless


def pocket_test_set(n: int = 200, seed: int = 1234, min_steps: int = 1, max_steps: int = 5) -> list[dict]:
    """The fixed pocket test set that every lesson's before/after table uses.

    Same distribution of steps as the pocket model's pretraining (1-5), disjoint questions.
    """
    return generate(n, "test", seed=seed, min_steps=min_steps, max_steps=max_steps)


#: The ways the pretraining corpus writes a solution (see :mod:`course_lib.behaviours`).
SOLUTION_BEHAVIOURS = ("answer_only", "step_by_step")


def written_as(problem: dict, behaviour: str) -> str:
    """``problem``'s solution in one behaviour: its reference lines (``step_by_step``), or the final
    ``#### N`` line alone (``answer_only``)."""
    if behaviour == "step_by_step":
        return problem["solution"]
    if behaviour == "answer_only":
        return f"#### {problem['answer']}"
    raise ValueError(f"unknown behaviour {behaviour!r}; choose one of {', '.join(SOLUTION_BEHAVIOURS)}")
