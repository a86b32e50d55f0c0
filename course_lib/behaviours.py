"""Which way of solving did a completion take? The pocket world's solution behaviours.

The pocket base's mid-training corpus answers the same kind of question in two ways, chosen at
random and never announced in the prompt (``course_lib.pocket.pretrain``):

* ``answer_only``: the final line alone, ``#### 47``. Short, and unreliable: the model must do
  every step of the arithmetic in its head, in one go.
* ``step_by_step``: one line per calculation, ``23+24 = <<23+24=47>>47``, then ``#### 47``.
  Longer, and reliable: each line is one small sum the model can do.

Real corpora hold many such behaviours (short answers, worked solutions, checks), most of them
a minority; RL post-training mostly *chooses* among the ones the base already has. The pocket
world is that situation made exact, so that it can be measured: :func:`behaviour` names the
behaviour of any completion, :func:`behaviour_table` gives each behaviour's share and its
accuracy, and :func:`selection_and_skill` splits a change in accuracy into the part that comes
from choosing another behaviour and the part that comes from getting better inside one.

The names are the pocket world's. On a real model's GSM8K completions they still apply (a
bare ``#### N`` is ``answer_only``, worked lines with arithmetic are ``step_by_step``), but
answers in ``\\boxed{}`` or prose without the marker are all ``other``: there the split says little.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

import pandas as pd

from course_lib.rewards import answer_matches, completion_text

BEHAVIOURS = ("answer_only", "step_by_step", "other")
_CALCULATION = re.compile(r"[0-9]\s*[-+*/]\s*[0-9].*=|<<")  # "23+24 = 47" or a calculator annotation


def behaviour(text) -> str:
    """``"answer_only"`` (nothing but a ``####`` line), ``"step_by_step"`` (at least one calculation
    line before the final answer), or ``"other"`` (no marker, or words without a calculation).

    Never raises: any completion, even ``None`` or chat messages, gets a name.
    """
    text = completion_text(text).strip()
    if "####" not in text:
        return "other"
    work = text.rsplit("####", 1)[0].strip()
    if not work:
        return "answer_only"
    return "step_by_step" if any(_CALCULATION.search(line) for line in work.splitlines()) else "other"


def behaviour_table(texts: Sequence, correct: Sequence[bool]) -> pd.DataFrame:
    """One row per behaviour: ``share`` of the completions, ``accuracy`` within it, ``n``.

    Behaviours that never occur get share 0 and accuracy NaN (there is nothing to be right about).
    """
    if len(texts) != len(correct):
        raise ValueError(f"{len(texts)} completions but {len(correct)} verdicts")
    frame = pd.DataFrame({"behaviour": [behaviour(t) for t in texts], "correct": [bool(c) for c in correct]})
    counts = frame.groupby("behaviour")["correct"].agg(["size", "mean"]).reindex(BEHAVIOURS)
    return pd.DataFrame(
        {
            "share": counts["size"].fillna(0) / max(len(frame), 1),
            "accuracy": counts["mean"],
            "n": counts["size"].fillna(0).astype(int),
        },
        index=pd.Index(BEHAVIOURS, name="behaviour"),
    )


def length_table(texts: Sequence, lengths: Sequence[int], threshold: int) -> pd.DataFrame:
    """One row per behaviour: its ``share`` of the completions, their mean length in tokens, and the
    share of them longer than ``threshold`` tokens (e.g. where DAPO's overlong shaping starts)."""
    if len(texts) != len(lengths):
        raise ValueError(f"{len(texts)} completions but {len(lengths)} lengths")
    frame = pd.DataFrame({"behaviour": [behaviour(t) for t in texts], "tokens": [int(n) for n in lengths]})
    frame["over"] = frame["tokens"] > threshold
    stats = frame.groupby("behaviour").agg(n=("tokens", "size"), tokens=("tokens", "mean"), over=("over", "mean"))
    stats = stats.reindex(BEHAVIOURS)
    return pd.DataFrame(
        {
            "share": stats["n"].fillna(0) / max(len(frame), 1),
            "mean tokens": stats["tokens"],
            f"share over {threshold} tokens": stats["over"],
        },
        index=pd.Index(BEHAVIOURS, name="behaviour"),
    )


def shares(texts: Sequence) -> dict[str, float]:
    """``{behaviour: share of texts}`` for every behaviour (0 for the ones absent)."""
    names = [behaviour(t) for t in texts]
    return {b: names.count(b) / max(len(names), 1) for b in BEHAVIOURS}


def result_table(result) -> pd.DataFrame:
    """:func:`behaviour_table` over every completion of an evaluation (an ``evaluation.EvalResult``)."""
    texts = [t for group in result.completions for t in group]
    correct = [answer_matches(a, row.answer) for row in result.per_problem.itertuples() for a in row.predictions]
    return behaviour_table(texts, correct)


def shift_table(results: dict) -> pd.DataFrame:
    """Each behaviour's share and accuracy under several evaluations, side by side:
    ``{"base": before, "after GRPO": after}`` gives columns ``share (base)``, ``accuracy (base)``, ..."""
    columns = {}
    for name, result in results.items():
        table = result_table(result)
        columns[f"share ({name})"] = table["share"]
        columns[f"accuracy ({name})"] = table["accuracy"]
    return pd.DataFrame(columns)


def selection_and_skill(before, after) -> dict[str, float]:
    """Split the change in per-sample accuracy (in points) into **selection** and **skill**.

    With share :math:`s_b` and accuracy :math:`a_b` of each behaviour :math:`b` (primes: after),
    accuracy is :math:`\\sum_b s_b a_b`, and its change splits exactly into

    .. math:: \\Delta = \\underbrace{\\sum_b (s'_b - s_b)\\, a_b}_{\\text{selection}}
              + \\underbrace{\\sum_b s'_b\\, (a'_b - a_b)}_{\\text{skill}}.

    Selection: what the new mix of behaviours gains at the accuracies each had before. Skill: what
    better accuracy inside each behaviour adds, weighed by how often the model now uses it (so a
    behaviour the model abandoned counts for nothing, however its few last samples did). A
    behaviour absent before counts with its accuracy after.
    """
    b, a = result_table(before), result_table(after)
    acc_b = b["accuracy"].fillna(a["accuracy"]).fillna(0.0)
    acc_a = a["accuracy"].fillna(acc_b)
    selection = float(((a["share"] - b["share"]) * acc_b).sum())
    skill = float((a["share"] * (acc_a - acc_b)).sum())
    return {"total": 100 * (selection + skill), "selection": 100 * selection, "skill": 100 * skill}


def by_steps(result, steps: Sequence[int]) -> pd.DataFrame:
    """Per number of solution steps (``steps[i]`` for problem i of ``result``): per-sample accuracy,
    the step-by-step share, and the accuracy inside each of the two behaviours."""
    rows = []
    for row, texts, n_steps in zip(result.per_problem.itertuples(), result.completions, steps, strict=True):
        for text, predicted in zip(texts, row.predictions):
            rows.append(
                {"steps": n_steps, "behaviour": behaviour(text), "correct": answer_matches(predicted, row.answer)}
            )
    frame = pd.DataFrame(rows)
    table = frame.groupby("steps").agg(accuracy=("correct", "mean"))
    table["share step_by_step"] = frame.assign(s=frame["behaviour"] == "step_by_step").groupby("steps")["s"].mean()
    for name in ("step_by_step", "answer_only"):
        table[f"accuracy {name}"] = frame[frame["behaviour"] == name].groupby("steps")["correct"].mean()
    return table


def behaviour_reward(name: str) -> Callable[..., list[float]]:
    """A function in TRL's reward signature that gives 1.0 to completions of behaviour ``name``, else
    0.0. With weight 0 in ``reward_weights`` it trains nothing, and TRL logs its mean: the share."""

    def reward(completions: Sequence, **kwargs: Any) -> list[float]:
        return [float(behaviour(c) == name) for c in completions]

    reward.__name__ = reward.__qualname__ = name  # TRL logs it as rewards/<name>/mean
    return reward
