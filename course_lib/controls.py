"""Controls: the runs that show what GRPO does *not* do on the pocket world (lesson 05).

A gain means something only next to the runs that should not produce it. Each control here is
a real run with the course's own code, on the same test problems and seeds as the real one:

* **A random reward** (:func:`random_reward`): the same loop and settings, a reward that knows
  nothing about the answer (a seeded coin per completion). What moves here is what sampling,
  clipping and the optimiser do without a signal.
* **Temperature alone** (:func:`temperature_sweep`): the base at lower temperatures and greedy.
  Sharpening a distribution makes its *majority* behaviour more likely, whichever that is; it
  does not choose the reliable one.
* **No reliable behaviour in the corpus** (:func:`answer_only_base`): the base's own mid-training
  recipe with every solution written as the answer line alone. RL can only choose among the
  behaviours pretraining showed.
* **pass@k against k** (:func:`course_lib.evaluation.paired_pass_at_k`): does a gain at k = 1
  come with problems solved at large k that the base could not solve with 64 tries?

:func:`train_and_evaluate` is the one run all of them share: GRPO on fresh problems, then the
profile's evaluation.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import pandas as pd

from course_lib.behaviours import result_table
from course_lib.config import Profile
from course_lib.evaluation import EvalResult, evaluate, evaluate_profile
from course_lib.models import REPO_ROOT, load_pocket_model
from course_lib.rewards import RewardConfig
from course_lib.train.grpo import GRPOLoop, GRPOSettings


@dataclass
class GRPORun:
    """One GRPO run and its evaluation: the loop's history, the result on the test problems, and
    the seconds spent training (probes excluded)."""

    history: pd.DataFrame
    after: EvalResult
    train_seconds: float


def train_and_evaluate(
    model,
    tokenizer,
    problems: list[dict],
    settings: GRPOSettings,
    test_problems: list[dict],
    profile: Profile,
    callbacks=(),
    progress: bool = True,
) -> GRPORun:
    """GRPO on ``problems`` with ``settings``, then :func:`~course_lib.evaluation.evaluate_profile`
    on ``test_problems`` (the same seeds as every before/after table)."""
    loop = GRPOLoop(model, tokenizer, problems, settings, system_prompt=profile.system_prompt)
    history = loop.train(callbacks=callbacks, progress=progress)
    after = evaluate_profile(loop.policy, tokenizer, test_problems, profile, progress=progress)
    return GRPORun(history, after, float(history["seconds"].sum()))


def random_reward(settings: GRPOSettings, seed: int = 0) -> GRPOSettings:
    """``settings`` with a reward of 0 or 1 from a seeded coin per completion, nothing else."""
    return dataclasses.replace(
        settings, reward=RewardConfig(correctness_weight=0.0, random_weight=1.0, random_seed=seed)
    )


def temperature_sweep(
    model, tokenizer, problems: list[dict], profile: Profile, temperatures=(1.0, 0.7, 0.4, 0.0)
) -> pd.DataFrame:
    """Per-sample accuracy and each behaviour's share at each temperature (0: greedy, one sample).

    Returns one row per temperature: ``accuracy`` and its interval, ``share_<behaviour>``.
    """
    rows = []
    for t in temperatures:
        k = 1 if t == 0 else profile.eval_k
        result = evaluate(
            model,
            tokenizer,
            problems,
            k=k,
            temperature=t,
            max_new_tokens=profile.max_new_tokens,
            batch_size=profile.sample_batch_size,
            system_prompt=profile.system_prompt,
            progress=False,
        )
        table = result_table(result)
        estimate = result.estimate("per_sample_accuracy")
        rows.append(
            {"temperature": t, "samples": k, "accuracy": estimate.value}
            | {"ci_low": estimate.ci_low, "ci_high": estimate.ci_high}
            | {f"share_{name}": share for name, share in table["share"].items()}
        )
    return pd.DataFrame(rows).set_index("temperature")


def answer_only_base(profile: Profile):
    """The profile's control base, or None where it has none (a real model's corpus is not ours to
    change). On the pocket track: ``data/pocket_answer_only``, the base's mid-training recipe with no
    step-by-step solution in its corpus (``pretrain.RECIPES["answer_only"]``: the same teacher, steps,
    data stream and seed, every solution the answer line alone). Returns ``(model, tokenizer)``."""
    if profile.control_model is None:
        return None
    return load_pocket_model(REPO_ROOT / "data" / profile.control_model)
