"""The pocket model's third skill: putting a few numbers in order (a procedure, not a fact).

A second thing the base model can do that no post-training lesson trains on, beside the facts
of ``facts.py``: the facts test memory, this tests a small procedure. Both are there to measure
how much of each survives SFT and GRPO on maths (the question of Rajani et al., "Scalpel vs. Hammer")::

    user:      Put these numbers in order, smallest first: 34, 12, 56.
    assistant: 12, 34, 56

Lists have 3 to 5 distinct numbers below 100. Like pocket-math, a list's split is a stable hash
of its question, so the probe's lists never appear in pretraining.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator

QUESTION = "Put these numbers in order, smallest first: {numbers}."


def split_of(question: str, test_fraction: float = 0.1) -> str:
    """``"test"`` or ``"train"``, a stable hash of the question (the same on every machine)."""
    h = int.from_bytes(hashlib.sha256(("sort/" + question).encode()).digest()[:8], "big")
    return "test" if (h % 10_000) < test_fraction * 10_000 else "train"


def make_example(rng: random.Random) -> dict:
    """One list and its sorted answer: ``question``, ``solution`` (the sorted list) and ``kind``."""
    numbers = rng.sample(range(1, 100), rng.randint(3, 5))
    return {
        "question": QUESTION.format(numbers=", ".join(map(str, numbers))),
        "solution": ", ".join(map(str, sorted(numbers))),
        "kind": "sorting",
    }


def iter_examples(split: str, seed: int = 0) -> Iterator[dict]:
    """An endless, reproducible stream of examples of one split."""
    rng = random.Random(f"sorting/{split}/{seed}")
    while True:
        example = make_example(rng)
        if split_of(example["question"]) == split:
            yield example


def probe_set(n: int = 100, seed: int = 0) -> list[dict]:
    """``n`` held-out lists (test split): the sorting probe."""
    stream = iter_examples("test", seed)
    return [next(stream) for _ in range(n)]
