"""Tables that turn sampled completions into numbers a lesson can plot.

``reward_table`` scores every completion (one row each); ``group_summary`` folds the rows
of each prompt's group into one row: how many were right, the spread of the rewards, and
whether the group had zero variance (all rewards equal, so GRPO learns nothing from it).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from course_lib.data.gsm8k import solution_steps
from course_lib.losses import KL_ESTIMATORS, grpo_loss
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
        rows.append(
            {
                "prompt": p,
                "sample": row % samples.n,
                "n_steps": steps,
                "gold": problem["answer"],
                "tokens": tokens[row],
                "text": text,
                **reward_breakdown(text, problem["answer"], config, length=tokens[row]),
            }
        )
    return pd.DataFrame(rows)


#: How a completion ends, as the answer extractor meets it (a real model's failures, lesson 02).
ENDINGS = ("one final line", "final line repeated", "no final line")


def ending(text: str) -> str:
    """One of :data:`ENDINGS`: how many GSM8K markers (``####``) the completion writes."""
    markers = text.count("####") if isinstance(text, str) else 0
    return ENDINGS[0] if markers == 1 else ENDINGS[1] if markers > 1 else ENDINGS[2]


def ending_table(table: pd.DataFrame, budget: int) -> pd.DataFrame:
    """Per ending (:func:`ending`) of a :func:`reward_table`: how many completions, the share cut at the
    token ``budget``, the share with an answer extracted, and the share correct."""
    kinds = table.assign(
        ending=table.text.map(ending), cut=table.tokens >= budget, answered=table.extracted.notna()
    ).groupby("ending")
    out = pd.DataFrame(
        {
            "completions": kinds.size(),
            "cut at the budget": kinds.cut.mean(),
            "answer extracted": kinds.answered.mean(),
            "correct": kinds.correct.mean(),
        }
    )
    return out.reindex([e for e in ENDINGS if e in out.index])


def group_summary(table: pd.DataFrame, reward: str = "total") -> pd.DataFrame:
    """One row per prompt: ``n_correct``, ``reward_mean``, ``reward_std`` (unbiased), ``zero_variance``."""
    groups = table.groupby("prompt")
    summary = pd.DataFrame(
        {
            "n_steps": groups["n_steps"].first(),
            "n_correct": groups["correct"].sum(),
            "reward_mean": groups[reward].mean(),
            "reward_std": groups[reward].std(),
            "zero_variance": groups[reward].nunique() == 1,
        }
    )
    return summary


def kl_estimator_table(
    shifts=(0.1, 0.25, 0.5, 1.0, 2.0), vocab: int = 10, n_samples: int = 4096, seed: int = 0
) -> pd.DataFrame:
    """k1, k2, k3 against the exact KL(pi || pi_ref) on small categorical distributions.

    For each ``shift``, pi_ref's logits are pi's plus ``shift`` x one fixed standard normal noise
    vector, so the KL grows with the shift, and the same tokens sampled from pi (as in training)
    serve every shift (:func:`kl_estimator_samples`: the explorer of the same name shows the same
    numbers). Each estimator's mean and std over the ``n_samples`` tokens are compared with the
    exact sum_v pi_v (log pi_v - log ref_v). One row per (shift, estimator).
    """
    rows = []
    for shift in shifts:
        samples = kl_estimator_samples(shift, vocab, n_samples, seed)
        exact = samples["exact"]
        for name in KL_ESTIMATORS:
            values = samples[name]
            rows.append(
                {
                    "shift": shift,
                    "exact_kl": exact,
                    "estimator": name,
                    "mean": float(values.mean()),
                    "std": float(values.std()),
                    "bias": float(values.mean()) - exact,
                    "share_negative": float((values < 0).float().mean()),
                }
            )
    return pd.DataFrame(rows)


def kl_estimator_samples(shift: float, vocab: int = 10, n_samples: int = 4096, seed: int = 0) -> dict:
    """Per-token values of k1, k2 and k3 at one ``shift`` (as in :func:`kl_estimator_table`: pi_ref's
    logits are pi's plus ``shift`` x noise), tokens drawn from pi; ``{"exact": KL, "k1": (n,), ...}``."""
    gen = torch.Generator().manual_seed(seed)
    logits, noise = torch.randn(vocab, generator=gen), torch.randn(vocab, generator=gen)
    logp = torch.log_softmax(logits, dim=0)
    ref = torch.log_softmax(logits + shift * noise, dim=0)
    tokens = torch.multinomial(logp.exp(), n_samples, replacement=True, generator=gen)
    values = {name: estimator(logp[tokens], ref[tokens]) for name, estimator in KL_ESTIMATORS.items()}
    return {"exact": float((logp.exp() * (logp - ref)).sum()), **values}


def kl_gradient_table(vocab: int = 6, seed: int = 0) -> pd.DataFrame:
    """Which KL does the k3 penalty's gradient follow? Exactly, on a small categorical.

    Over tokens y ~ pi, the expected gradient of beta * k3 (beta = 1) is compared with the
    exact gradients of the reverse KL(pi || ref) and of the forward KL(ref || pi), with and
    without the ratio factor r = pi / pi_old (value 1, gradient not). One row per variant:
    the cosine similarity and the norm of the difference to each exact gradient.
    """
    gen = torch.Generator().manual_seed(seed)
    theta = torch.randn(vocab, generator=gen, requires_grad=True)
    ref = torch.log_softmax(theta.detach() + torch.randn(vocab, generator=gen), dim=0)

    def penalty_grad(correction: bool) -> torch.Tensor:
        logp = torch.log_softmax(theta, dim=0)
        out = grpo_loss(
            logp.unsqueeze(1),
            None,
            torch.zeros(vocab),
            torch.ones(vocab, 1),
            ref_logps=ref.unsqueeze(1),
            beta=1.0,
            kl_ratio_correction=correction,
        )
        expected = (out.per_token_loss.squeeze(1) * logp.exp().detach()).sum()  # E_{y ~ pi}
        return torch.autograd.grad(expected, theta)[0]

    def kl_grad(reverse: bool) -> torch.Tensor:
        logp = torch.log_softmax(theta, dim=0)
        kl = (logp.exp() * (logp - ref)).sum() if reverse else (ref.exp() * (ref - logp)).sum()
        return torch.autograd.grad(kl, theta)[0]

    exact = {"reverse KL(π‖ref)": kl_grad(True), "forward KL(ref‖π)": kl_grad(False)}
    rows = []
    for name, correction in (("k3", False), ("r · k3 (TRL 1.16 default)", True)):
        g = penalty_grad(correction)
        row = {"penalty": name}
        for target, e in exact.items():
            row[f"cos to ∇{target}"] = float(torch.nn.functional.cosine_similarity(g, e, dim=0))
            row[f"|diff| to ∇{target}"] = float((g - e).norm())
        rows.append(row)
    return pd.DataFrame(rows).set_index("penalty")


def paired_table(report, arm_a: str, arm_b: str, metric: str) -> pd.DataFrame:
    """How two arms of a study report (:class:`course_lib.report.StudyReport`) compare problem by problem.

    For a 0/1 metric (maj@k, consistency@k; pass@k with n = k) it is the 2x2 table of
    McNemar's test: only the problems where the arms *disagree* carry information about which
    is better, which is why a paired interval is narrower than two separate ones. For a graded
    metric (per-sample accuracy) the rows are "a higher", "equal", "b higher".
    """
    a = np.asarray(report.arms[arm_a].per_problem[metric])
    b = np.asarray(report.arms[arm_b].per_problem[metric])
    la, lb = report.arms[arm_a].label, report.arms[arm_b].label
    if set(np.unique(np.concatenate([a, b]))) <= {0.0, 1.0}:
        table = pd.DataFrame(
            [
                [int(((a == 1) & (b == 1)).sum()), int(((a == 1) & (b == 0)).sum())],
                [int(((a == 0) & (b == 1)).sum()), int(((a == 0) & (b == 0)).sum())],
            ],
            index=[f"{la} right", f"{la} wrong"],
            columns=[f"{lb} right", f"{lb} wrong"],
        )
    else:
        table = pd.DataFrame(
            {"problems": [int((a > b).sum()), int((a == b).sum()), int((a < b).sum())]},
            index=[f"{la} higher", "equal", f"{lb} higher"],
        )
    return table
