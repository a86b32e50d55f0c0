"""Data: real GSM8K, the synthetic pocket-math problems, and the small world of facts.

A profile names its data source (``profile.dataset``); :data:`SOURCES` maps that name to
the functions that give its training and test problems, so no caller branches on the track.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from course_lib.config import Profile
from course_lib.data import facts, pocket_math, sorting
from course_lib.data.gsm8k import (
    GSM8KFormatError,
    gsm8k_stats,
    load_gsm8k,
    read_jsonl,
    solution_steps,
    strip_annotations,
)

__all__ = [
    "facts",
    "pocket_math",
    "sorting",
    "GSM8KFormatError",
    "gsm8k_stats",
    "load_gsm8k",
    "read_jsonl",
    "solution_steps",
    "strip_annotations",
    "SOURCES",
    "DataSource",
    "eval_problems",
    "train_problems",
    "facts_probe_items",
]


@dataclass(frozen=True)
class DataSource:
    """Where a profile's problems come from.

    ``test(n, data_dir)``: the first ``n`` test problems. ``train(n, seed, min_steps, max_steps,
    data_dir)``: ``n`` training problems (a generator draws fresh ones from ``seed`` with
    ``min_steps`` to ``max_steps`` steps; a fixed data set ignores those and gives its first n).
    """

    test: Callable[..., list[dict]]
    train: Callable[..., list[dict]]


SOURCES: dict[str, DataSource] = {
    "pocket_math": DataSource(
        test=lambda n, data_dir=None: pocket_math.pocket_test_set(n),
        train=lambda n, seed, min_steps, max_steps, data_dir=None: pocket_math.generate(
            n, "train", seed=seed, min_steps=min_steps, max_steps=max_steps
        ),
    ),
    "gsm8k": DataSource(
        test=lambda n, data_dir=None: load_gsm8k("test", data_dir)[:n],
        train=lambda n, seed, min_steps, max_steps, data_dir=None: load_gsm8k("train", data_dir)[:n],
    ),
}


def _source(profile: Profile) -> DataSource:
    if profile.dataset not in SOURCES:
        raise ValueError(
            f"profile {profile.name!r} names an unknown dataset {profile.dataset!r}; "
            f"use one of {', '.join(sorted(SOURCES))}"
        )
    return SOURCES[profile.dataset]


def eval_problems(profile: Profile, n: int | None = None, data_dir=None) -> list[dict]:
    """The test problems a profile is evaluated on: the fixed pocket test set, or GSM8K test.

    ``n`` defaults to ``profile.n_eval_problems`` (GSM8K: the first n of the 1,319).
    """
    return _source(profile).test(profile.n_eval_problems if n is None else n, data_dir=data_dir)


def train_problems(
    profile: Profile, n: int, seed: int = 0, min_steps: int = 1, max_steps: int = 5, data_dir=None
) -> list[dict]:
    """``n`` training problems for a profile: fresh pocket-math problems (``min_steps`` to
    ``max_steps`` steps: the difficulty knob), or the first n of GSM8K train."""
    return _source(profile).train(n, seed, min_steps, max_steps, data_dir=data_dir)


def facts_probe_items(profile: Profile) -> list[dict] | None:
    """The held-out facts probe of the profile's model (its first ``profile.facts_probe_size``
    items), or None when the model has no facts of its own to forget (the GPU track)."""
    if not profile.facts_probe_size:
        return None
    return facts.probe_set(facts.build_knowledge_base())[: profile.facts_probe_size]
