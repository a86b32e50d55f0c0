"""Tables that turn sampled completions into numbers a lesson can plot.

``reward_table`` scores every completion (one row each); ``group_summary`` folds the rows
of each prompt's group into one row: how many were right, the spread of the rewards, and
whether the group had zero variance (all rewards equal, so GRPO learns nothing from it).
"""

from __future__ import annotations

import pandas as pd

from course_lib.data.gsm8k import solution_steps
from course_lib.rewards import RewardConfig, reward_breakdown
from course_lib.sampling import Samples


def reward_table(samples: Samples, problems: list[dict], config: RewardConfig = RewardConfig()) -> pd.DataFrame:
    """One row per completion: ``prompt``, ``sample``, ``n_steps``, ``gold``, ``tokens``, ``text``
    and every column of :func:`course_lib.rewards.reward_breakdown` (length measured in tokens).
    ``n_steps`` is the problem's own count (pocket-math) or its reference solution's lines (GSM8K).

    ``problems[i]`` is the problem behind ``samples.prompts[i]``.
    """
    if len(problems) != len(samples.prompts):
        raise ValueError(f"{len(samples.prompts)} prompts were sampled but {len(problems)} problems given")
    tokens = samples.lengths.tolist()
    rows = []
    for row, (text, p) in enumerate(zip(samples.texts, samples.prompt_index)):
        problem = problems[p]
        steps = problem.get("n_steps") or len(solution_steps(problem.get("solution", "")))
        rows.append({"prompt": p, "sample": row % samples.n, "n_steps": steps,
                     "gold": problem["answer"], "tokens": tokens[row], "text": text,
                     **reward_breakdown(text, problem["answer"], config, length=tokens[row])})
    return pd.DataFrame(rows)


def group_summary(table: pd.DataFrame, reward: str = "total") -> pd.DataFrame:
    """One row per prompt: ``n_correct``, ``reward_mean``, ``reward_std`` (unbiased), ``zero_variance``."""
    groups = table.groupby("prompt")
    summary = pd.DataFrame({
        "n_steps": groups["n_steps"].first(),
        "n_correct": groups["correct"].sum(),
        "reward_mean": groups[reward].mean(),
        "reward_std": groups[reward].std(),
        "zero_variance": groups[reward].nunique() == 1,
    })
    return summary
