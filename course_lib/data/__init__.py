"""Data: real GSM8K, the synthetic pocket-math problems, and the small world of facts."""

from course_lib.data import facts, pocket_math
from course_lib.data.gsm8k import (GSM8KFormatError, gsm8k_stats, load_gsm8k, read_jsonl,
                                   solution_steps, strip_annotations)

__all__ = ["facts", "pocket_math", "GSM8KFormatError", "gsm8k_stats", "load_gsm8k",
           "read_jsonl", "solution_steps", "strip_annotations", "eval_problems", "train_problems"]


def eval_problems(profile, n: int | None = None, data_dir=None) -> list[dict]:
    """The test problems a profile is evaluated on: the fixed pocket test set, or GSM8K test.

    ``n`` defaults to ``profile.n_eval_problems`` (GSM8K: the first n of the 1,319).
    """
    n = profile.n_eval_problems if n is None else n
    if profile.dataset == "pocket_math":
        return pocket_math.pocket_test_set(n)
    if profile.dataset == "gsm8k":
        return load_gsm8k("test", data_dir)[:n]
    raise ValueError(f"profile {profile.name!r} names an unknown dataset {profile.dataset!r}; "
                     "use 'pocket_math' or 'gsm8k'")


def train_problems(profile, n: int, seed: int = 0, min_steps: int = 1, max_steps: int = 5,
                   data_dir=None) -> list[dict]:
    """``n`` training problems for a profile: fresh pocket-math problems (``min_steps`` to
    ``max_steps`` steps: the difficulty knob), or the first n of GSM8K train."""
    if profile.dataset == "pocket_math":
        return pocket_math.generate(n, "train", seed=seed, min_steps=min_steps, max_steps=max_steps)
    if profile.dataset == "gsm8k":
        return load_gsm8k("train", data_dir)[:n]
    raise ValueError(f"profile {profile.name!r} names an unknown dataset {profile.dataset!r}; "
                     "use 'pocket_math' or 'gsm8k'")
