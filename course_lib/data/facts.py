"""The pocket model's second skill: recalling facts from a small synthetic world.

Why a second skill? Post-training for maths can damage what a model knew before
("Scalpel vs Hammer": SFT rewrites more of the model than RL does). To *measure*
forgetting we need something the base model knows that is not maths. The pocket
model's pretraining corpus therefore also teaches 40 invented towns, each with three
facts (flag colour, animal, dish), e.g.::

    user:      What colour is the flag of Brindle?
    assistant: The flag of Brindle is green.

Every relation has three question phrasings. For each fact, two phrasings are used in
pretraining and the third is held out: the probe set asks every fact in the phrasing
the model never saw *for that town* (it saw that phrasing for other towns), so the
probe tests recall of the fact, not of a memorised string.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

COLOURS = ["red", "blue", "green", "yellow", "purple", "orange", "black", "white"]
ANIMALS = ["fox", "owl", "bear", "wolf", "deer", "hare", "swan", "crow", "seal", "lynx"]
DISHES = ["soup", "bread", "pie", "stew", "cake", "rice", "fish", "cheese", "honey", "jam"]

RELATIONS: dict[str, dict] = {
    "flag": {
        "values": COLOURS,
        "questions": [
            "What colour is the flag of {town}?",
            "Which colour does the flag of {town} have?",
            "Tell me the colour of the flag of {town}.",
        ],
        "answer": "The flag of {town} is {value}.",
    },
    "animal": {
        "values": ANIMALS,
        "questions": [
            "Which animal is the symbol of {town}?",
            "What is the animal of {town}?",
            "Name the symbol animal of {town}.",
        ],
        "answer": "The animal of {town} is the {value}.",
    },
    "dish": {
        "values": DISHES,
        "questions": [
            "What dish is {town} famous for?",
            "Which food is {town} known for?",
            "Name the famous dish of {town}.",
        ],
        "answer": "{town} is famous for its {value}.",
    },
}

_SYLLABLES = [
    "bri",
    "ndle",
    "cor",
    "mav",
    "ost",
    "ell",
    "pan",
    "dor",
    "vin",
    "tar",
    "lum",
    "esk",
    "rho",
    "gal",
    "wen",
    "sor",
    "tib",
    "quel",
    "mar",
    "zen",
]


@dataclass(frozen=True)
class Fact:
    town: str
    relation: str
    value: str

    def question(self, template_index: int) -> str:
        return RELATIONS[self.relation]["questions"][template_index].format(town=self.town)

    def answer(self, value: str | None = None) -> str:
        return RELATIONS[self.relation]["answer"].format(town=self.town, value=value or self.value)

    @property
    def held_out_template(self) -> int:
        """Which of the three phrasings is kept for the probe (stable across machines)."""
        digest = hashlib.sha256(f"{self.town}/{self.relation}".encode()).digest()
        return digest[0] % 3


def build_knowledge_base(n_towns: int = 40, seed: int = 0) -> list[Fact]:
    """``n_towns`` invented towns x 3 relations, reproducible from ``seed``."""
    rng = random.Random(f"facts/{seed}")
    towns: list[str] = []
    while len(towns) < n_towns:
        name = (rng.choice(_SYLLABLES) + rng.choice(_SYLLABLES)).capitalize()
        if name not in towns:
            towns.append(name)
    return [Fact(t, rel, rng.choice(spec["values"])) for t in towns for rel, spec in RELATIONS.items()]


def training_examples(facts: list[Fact]) -> list[dict]:
    """Question/answer pairs for pretraining: every fact in its two non-held-out phrasings."""
    return [
        {"question": f.question(i), "solution": f.answer(), "kind": "fact"}
        for f in facts
        for i in range(3)
        if i != f.held_out_template
    ]


def probe_set(facts: list[Fact]) -> list[dict]:
    """The held-out probe: every fact asked once, in the phrasing kept out of pretraining.

    Each record carries the candidate answers (one per value of the relation) so the
    probe can be scored as multiple choice by log-likelihood; chance is 1/len(values).
    """
    return [
        {
            "question": f.question(f.held_out_template),
            "answer": f.value,
            "relation": f.relation,
            "candidates": {v: f.answer(v) for v in RELATIONS[f.relation]["values"]},
        }
        for f in facts
    ]
