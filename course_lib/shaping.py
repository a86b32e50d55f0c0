"""When the reward pays for the wrong behaviour: the mechanism behind Trelis Research's GRPO result.

Trelis Research ("Should you even do GRPO?", Ronan McGovern, https://trelis.substack.com/p/sft-vs-grpo)
trained GRPO on GSM8K with a reward of correctness 0 or 2 plus four 0.5-point format components
paid to *every* answer, right or wrong, and saw pass@8 fall from 79 % to 75 % while the format
reward was optimised. The pocket world lets us take that mechanism apart, because its base holds
two behaviours whose accuracy we know (:mod:`course_lib.behaviours`).

The reward here is that shape plus a brevity bonus of weight ``w`` (DAPO's overlong shape turned
into a bonus: 1 up to 8 tokens, 0 from 48), all of it paid whether the answer is right or not:

.. math:: R = 2\\,[\\text{correct}] + 0.5 \\sum_{j=1}^{4} f_j + w \\cdot \\text{brevity}.

Because the behaviour is chosen at the first tokens, the same on every problem, GRPO moves
towards the behaviour with the larger expected reward,
:math:`\\mathbb{E}[R \\mid b] = 2 a_b + F_b + w B_b` (accuracy :math:`a_b`, mean format points
:math:`F_b`, mean brevity bonus :math:`B_b` of behaviour :math:`b`, all measured on the base's
own samples). So the outcome flips from step by step (s) to answer only (o) at

.. math:: w^* = \\frac{2 (a_s - a_o) + (F_s - F_o)}{B_o - B_s}.

:func:`behaviour_rewards` measures those terms, :func:`flip_weight` predicts :math:`w^*` (with the
shaping paid to every answer, or to correct answers only, the course's default, where the
unreliable behaviour collects it so rarely that the flip moves far out), and :func:`sweep`
trains GRPO at several weights to see where the outcome really flips. The prediction is for the
first steps: it ignores the per-group scaling of the advantages and the accuracies changing
while the model trains.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import pandas as pd

from course_lib.behaviours import behaviour
from course_lib.config import Profile
from course_lib.controls import GRPORun, train_and_evaluate
from course_lib.evaluation import EvalResult, paired_changes
from course_lib.rewards import RewardConfig, reward_breakdown
from course_lib.train.grpo import GRPOSettings

BREVITY_MAX_TOKENS = 48  # the bonus is 0 from here on
BREVITY_BUFFER = 40  # and 1 up to 48 - 40 = 8 tokens


def shaped_reward(weight: float, gated: bool = False) -> RewardConfig:
    """Trelis Research's shape (correctness 0/2, four 0.5-point format components) plus a brevity
    bonus of ``weight``; ``gated``: format and brevity paid to correct answers only."""
    return RewardConfig(
        correctness_weight=2.0,
        format_weight=1.0,
        brevity_weight=weight,
        format_needs_correct=gated,
        max_length=BREVITY_MAX_TOKENS,
        length_buffer=BREVITY_BUFFER,
    )


def behaviour_rewards(result: EvalResult, tokenizer) -> pd.DataFrame:
    """Per behaviour of an evaluation's completions: ``share``, ``accuracy`` (a), the mean ``format``
    points (F) and ``brevity`` bonus (B) paid to every answer, and the same paid to correct answers
    only (``format_correct``, ``brevity_correct``: the gated reward's terms), on token counts with the EOS."""
    config = shaped_reward(1.0, gated=False)
    rows = []
    for row, texts in zip(result.per_problem.itertuples(), result.completions):
        for text in texts:
            length = len(tokenizer(text, add_special_tokens=False)["input_ids"]) + 1  # + EOS, as the sampler counts
            parts = reward_breakdown(text, row.answer, config, length)
            right = float(parts["correct"])
            rows.append(
                {
                    "behaviour": behaviour(text),
                    "accuracy": right,
                    "format": parts["format"],
                    "brevity": parts["brevity"],
                }
                | {"format_correct": right * parts["format"], "brevity_correct": right * parts["brevity"]}
            )
    frame = pd.DataFrame(rows)
    table = frame.groupby("behaviour")[["accuracy", "format", "brevity", "format_correct", "brevity_correct"]].mean()
    table.insert(0, "share", frame["behaviour"].value_counts(normalize=True))
    return table


def flip_weight(
    table: pd.DataFrame, gated: bool = False, reliable: str = "step_by_step", unreliable: str = "answer_only"
) -> float:
    """The brevity weight :math:`w^*` at which the two behaviours' expected rewards are equal: with the
    shaping paid to every answer, or (``gated``) to correct answers only, where a behaviour that is
    rarely right collects it rarely, and the flip moves far out.

    ``math.inf`` when the bonus pays the reliable behaviour at least as much per sample (then no
    weight flips the outcome). Raises ``ValueError`` when one of the two behaviours never occurs in
    ``table`` (nothing to balance: a model that never answers with the line alone has no flip point).
    """
    missing = [b for b in (reliable, unreliable) if b not in table.index]
    if missing:
        raise ValueError(f"no {' or '.join(missing)} completions in the table: the flip needs both behaviours")
    s, o = table.loc[reliable], table.loc[unreliable]
    fmt, brevity = ("format_correct", "brevity_correct") if gated else ("format", "brevity")
    pull = 2 * (s["accuracy"] - o["accuracy"]) + (s[fmt] - o[fmt])  # towards the reliable behaviour
    push = o[brevity] - s[brevity]  # per unit of w, towards the unreliable one
    return float(pull / push) if push > 0 else math.inf  # inf: the bonus never favours the unreliable one


def sweep(
    load: Callable[[], tuple],
    problems: list[dict],
    settings: GRPOSettings,
    test_problems: list[dict],
    profile: Profile,
    before: EvalResult,
    weights=(0.0, 1.5, 3.0, 4.5),
    gated_weight: float | None = 4.5,
    progress: bool = True,
) -> tuple[pd.DataFrame, dict[str, GRPORun]]:
    """GRPO from a fresh base (``load()`` -> ``(model, tokenizer)``) at each brevity weight, paid to
    every answer; then once at ``gated_weight`` paid to correct answers only.

    Returns a table (one row per run: the training reward and accuracy of the first and last
    quarter of the steps, the test accuracy with its paired change against ``before``, the
    step-by-step share after) and the runs by name, for their curves.
    """
    plan = [(f"w = {w:g}", shaped_reward(w, gated=False)) for w in weights]
    if gated_weight is not None:
        plan.append((f"w = {gated_weight:g}, gated", shaped_reward(gated_weight, gated=True)))
    rows, runs = [], {}
    for name, reward in plan:
        model, tokenizer = load()
        run = train_and_evaluate(
            model,
            tokenizer,
            problems,
            dataclasses.replace(settings, reward=reward),
            test_problems,
            profile,
            progress=progress,
        )
        runs[name] = run
        rows.append(_sweep_row(name, reward, run, before))
    return pd.DataFrame(rows).set_index("run"), runs


def _sweep_row(name: str, reward: RewardConfig, run: GRPORun, before: EvalResult) -> dict:
    """One line of the sweep's table."""
    quarter = max(1, len(run.history) // 4)
    first, last = run.history.head(quarter), run.history.tail(quarter)
    change = paired_changes(before, run.after)["per_sample_accuracy"]
    return {
        "run": name,
        "brevity weight": reward.brevity_weight,
        "gated": reward.format_needs_correct,
        "reward, first steps": first["reward"].mean(),
        "reward, last steps": last["reward"].mean(),
        "accuracy, first steps": first["accuracy"].mean(),
        "accuracy, last steps": last["accuracy"].mean(),
        "test accuracy": run.after.value("per_sample_accuracy"),
        "change (points)": change.points,
        "change_low": change.ci_low,
        "change_high": change.ci_high,
        "change": str(change),
        "step-by-step share": float(run.history["share_step_by_step"].tail(quarter).mean()),
        "train seconds": run.train_seconds,
    }
