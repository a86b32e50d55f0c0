"""Honest evaluation: pass@k, maj@k, consistency@k and per-sample accuracy, with intervals.

For each problem we draw ``n`` samples and count ``c`` correct ones. Then

* **per-sample accuracy** = c / n: how often one sample is right.
* **pass@k** = 1 - C(n-c, k) / C(n, k): the chance that at least one of k samples is
  right, estimated without bias from all n samples (Chen et al. 2021). With n = k it
  is simply "any of the k is right".
* **maj@k**: take the k samples' final answers, vote, and check the most common
  answer (ties: the tied answer that appeared first among the k). This is what papers
  call majority voting / self-consistency (Wang et al. 2022).
* **consistency@k**: at least ``threshold`` of k samples are right (default a strict
  majority, 5 of 8). Trelis Research's "Should you even do GRPO?" (Ronan McGovern,
  https://trelis.substack.com/p/sft-vs-grpo) reports this as "Majority@8"; it is *not* maj@k: maj@8
  can be right with only 3 of 8 correct samples when the wrong ones disagree with each
  other, while consistency@8 needs 5.

Every metric is a mean over problems; its 95% interval comes from a seeded bootstrap
over problems (the problems are the random sample we want to generalise from).
"""

from __future__ import annotations

import gzip
import json
import math
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from statistics import NormalDist

import numpy as np
import pandas as pd
import torch

from course_lib import behaviours
from course_lib.config import Profile
from course_lib.losses import log_likelihood
from course_lib.prompts import format_prompt
from course_lib.rewards import answer_matches, extract_answer
from course_lib.sampling import sample

METRICS = ("per_sample_accuracy", "pass@k", "maj@k", "consistency@k")


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct: 1 - C(n-c, k) / C(n, k).

    Computed as 1 - prod_{i=n-c+1}^{n} (1 - k / i), which avoids huge binomials.
    """
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"need 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - float(np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def majority_answer(answers: list[str | None]) -> str | None:
    """The most common non-empty answer; a tie goes to the tied answer that appears first in ``answers``."""
    votes = Counter(a for a in answers if a is not None)
    return votes.most_common(1)[0][0] if votes else None


def maj_at_k(answers: list[str | None], gold: str, k: int) -> bool:
    """Whether majority voting over the first k answers gives the gold answer."""
    return answer_matches(majority_answer(answers[:k]), gold)


def consistency_at_k(correct: list[bool], k: int, threshold: int | None = None) -> bool:
    """Whether at least ``threshold`` (default k // 2 + 1) of the first k samples are right."""
    threshold = k // 2 + 1 if threshold is None else threshold
    return sum(correct[:k]) >= threshold


def bootstrap_ci(values, n_boot: int = 2000, alpha: float = 0.05, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval for the mean of ``values`` (resampling problems)."""
    values = np.asarray(values, dtype=float)
    if len(values) == 0:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(n_boot, len(values)))].mean(axis=1)
    return float(np.quantile(means, alpha / 2)), float(np.quantile(means, 1 - alpha / 2))


@dataclass(frozen=True)
class Estimate:
    """A metric (a share in [0, 1]) with its 95 % interval; prints in % as ``39.9 [34.9, 45.1]``."""

    value: float
    ci_low: float
    ci_high: float

    def __str__(self) -> str:
        return f"{100 * self.value:.1f} [{100 * self.ci_low:.1f}, {100 * self.ci_high:.1f}]"


@dataclass(frozen=True)
class PairedChange:
    """``after - before`` over the same problems, in points, with its paired 95 % interval.

    ``str(change)`` is the course's one way to write a change: ``+2.0 [+0.4, +3.6]``.
    """

    points: float
    ci_low: float
    ci_high: float

    def __str__(self) -> str:
        return f"{self.points:+.1f} [{self.ci_low:+.1f}, {self.ci_high:+.1f}]"

    @property
    def verdict(self) -> str:
        """ "better", "worse", or "cannot tell" (the interval contains 0)."""
        return "better" if self.ci_low > 0 else "worse" if self.ci_high < 0 else "cannot tell"

    def read_against(self, spread: float) -> str:
        """The verdict, read against a seed spread (points): a paired interval covers only which test
        problems were drawn, so a change no larger than what another training seed gives is
        "cannot tell" whatever its interval."""
        if self.verdict != "cannot tell" and abs(self.points) <= spread:
            gap = abs(self.points)
            return f"cannot tell (the interval excludes 0, but {gap:.1f} points <= the seed spread {spread:.1f})"
        return self.verdict


def paired_difference(after, before, n_boot: int = 2000, seed: int = 0, scale: float = 100) -> PairedChange:
    """Mean of ``after - before`` over the same problems, in points, with a paired bootstrap
    interval: both models are resampled on the *same* problems, so problem difficulty cancels
    and the interval is narrower than two separate intervals side by side. ``scale`` turns the
    values' unit into the change's (100: shares into points; 1: e.g. log-probs in nats)."""
    diff = scale * (np.asarray(after, dtype=float) - np.asarray(before, dtype=float))
    low, high = bootstrap_ci(diff, n_boot=n_boot, seed=seed)
    return PairedChange(float(diff.mean()), low, high)


def wilson_interval(successes: int, n: int, alpha: float = 0.05) -> tuple[float, float]:
    """Wilson score interval for a proportion (better than p ± 1.96·se near 0 or 1)."""
    if n == 0:
        return (math.nan, math.nan)
    z = NormalDist().inv_cdf(1 - alpha / 2)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (centre - half, centre + half)


def score_problems(problems: list[dict], completions: list[list[str]], k: int) -> pd.DataFrame:
    """One row per problem: answers, correctness and every metric (n samples each, n >= k)."""
    rows = []
    for problem, texts in zip(problems, completions, strict=True):
        if len(texts) < k:
            raise ValueError(f"need at least k={k} samples per problem, got {len(texts)}")
        answers = [extract_answer(t) for t in texts]
        correct = [answer_matches(a, problem["answer"]) for a in answers]
        rows.append(
            {
                "question": problem["question"],
                "answer": problem["answer"],
                "predictions": answers,
                "n": len(texts),
                "n_correct": sum(correct),
                "per_sample_accuracy": sum(correct) / len(texts),
                "pass@k": pass_at_k(len(texts), sum(correct), k),
                "maj@k": float(maj_at_k(answers, problem["answer"], k)),
                "consistency@k": float(consistency_at_k(correct, k)),
            }
        )
    return pd.DataFrame(rows)


def summarize(per_problem: pd.DataFrame, k: int, seed: int = 0) -> pd.DataFrame:
    """The tidy table: one row per metric with its mean and 95% bootstrap interval."""
    rows = []
    for metric in METRICS:
        low, high = bootstrap_ci(per_problem[metric], seed=seed)
        rows.append(
            {
                "metric": metric.replace("@k", f"@{k}"),
                "value": float(per_problem[metric].mean()),
                "ci_low": low,
                "ci_high": high,
                "n_problems": len(per_problem),
            }
        )
    return pd.DataFrame(rows).set_index("metric")


@dataclass
class EvalResult:
    summary: pd.DataFrame  # metric -> value, ci_low, ci_high
    per_problem: pd.DataFrame  # one row per problem
    completions: list[list[str]]
    k: int

    def value(self, metric: str) -> float:
        """e.g. ``result.value("pass@8")``."""
        return float(self.summary.loc[metric, "value"])

    def estimate(self, metric: str) -> Estimate:
        """The metric with its 95 % interval, e.g. ``result.estimate("pass@8")``."""
        row = self.summary.loc[metric]
        return Estimate(float(row["value"]), float(row["ci_low"]), float(row["ci_high"]))


def evaluate(
    model,
    tokenizer,
    problems: list[dict],
    k: int = 8,
    *,
    n: int | None = None,
    temperature: float = 1.0,
    top_p: float = 1.0,
    max_new_tokens: int = 200,
    batch_size: int = 64,
    seed: int = 0,
    system_prompt: str | None = None,
    progress: bool = True,
) -> EvalResult:
    """Sample ``n`` (default k) completions per problem and score them."""
    prompts = [format_prompt(tokenizer, p["question"], system_prompt) for p in problems]
    samples = sample(
        model,
        tokenizer,
        prompts,
        n=n or k,
        temperature=temperature,
        top_p=top_p,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        seed=seed,
        progress=progress,
    )
    completions = samples.grouped_texts()
    per_problem = score_problems(problems, completions, k)
    return EvalResult(summarize(per_problem, k, seed), per_problem, completions, k)


def evaluate_profile(
    model,
    tokenizer,
    problems: list[dict],
    profile: Profile,
    seed: int = 0,
    progress: bool = True,
    n: int | None = None,
) -> EvalResult:
    """:func:`evaluate` with the profile's k, temperature, token budget, batch size and system
    prompt: the one evaluation every before/after table of the course runs, so that tables of
    different lessons compare like with like. ``n``: samples per problem when more than k are
    wanted (pass@k for larger k, :func:`pass_at_k_curve`)."""
    return evaluate(
        model,
        tokenizer,
        problems,
        k=profile.eval_k,
        n=n,
        temperature=profile.temperature,
        max_new_tokens=profile.max_new_tokens,
        batch_size=profile.sample_batch_size,
        seed=seed,
        system_prompt=profile.system_prompt,
        progress=progress,
    )


def save_result(result: EvalResult, path: str | Path, about: dict | None = None) -> Path:
    """Write an evaluation (every problem's answers and every completion) as gzipped JSON, with
    ``about``: what produced it (model, settings, time), for a lesson to show beside the numbers."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "about": about or {},
        "k": result.k,
        "problems": [{"question": r.question, "answer": r.answer} for r in result.per_problem.itertuples()],
        "completions": result.completions,
    }
    with gzip.open(path, "wt", encoding="utf-8") as f:
        json.dump(record, f)
    return path


def load_result(path: str | Path) -> tuple[EvalResult, dict]:
    """``(result, about)`` from :func:`save_result`'s file, re-scored with today's extractor (the
    completions are stored, the scores are not, so a fix to the extractor reaches old runs)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no saved evaluation at {path}: `python -m course_lib evaluate --help` makes one")
    with gzip.open(path, "rt", encoding="utf-8") as f:
        record = json.load(f)
    k, completions = record["k"], record["completions"]
    per_problem = score_problems(record["problems"], completions, k)
    return EvalResult(summarize(per_problem, k), per_problem, completions, k), record["about"]


def paired_changes(before: EvalResult, after: EvalResult) -> dict[str, PairedChange]:
    """``{metric: after - before}`` as paired changes (points, 95 % paired interval) over the same problems.

    Raises ``ValueError`` when the two evaluations are not of the same problems in the same order.
    """
    if list(before.per_problem["question"]) != list(after.per_problem["question"]):
        raise ValueError("before and after were evaluated on different problems: evaluate both on the same list")
    return {
        name: paired_difference(after.per_problem[metric], before.per_problem[metric])
        for metric, name in zip(METRICS, before.summary.index)
    }


def before_after(before: EvalResult, after: EvalResult) -> pd.DataFrame:
    """One row per metric: ``before``, ``after``, and the paired change in points with its 95 % interval
    (``change (points)``, ``change_low``, ``change_high``; ``verdict``: better, worse or cannot tell)."""
    changes = paired_changes(before, after)
    table = before.summary[["value"]].rename(columns={"value": "before"})
    table["after"] = after.summary["value"]
    table["change (points)"] = [changes[m].points for m in table.index]
    table["change_low"] = [changes[m].ci_low for m in table.index]
    table["change_high"] = [changes[m].ci_high for m in table.index]
    table["verdict"] = [changes[m].verdict for m in table.index]
    return table


def pass_at_k_curve(result: EvalResult, ks: list[int] | None = None) -> pd.DataFrame:
    """pass@k for every k in ``ks`` (default 1, 2, 4, ... up to the samples per problem), estimated
    without bias from all n samples of each problem, with a 95 % bootstrap interval over problems."""
    return pass_at_k_from_counts(list(result.per_problem["n_correct"]), int(result.per_problem["n"].min()), ks)


def pass_at_k_from_counts(n_correct: list[int], n: int, ks: list[int] | None = None) -> pd.DataFrame:
    """:func:`pass_at_k_curve` from each problem's count of correct samples out of ``n``."""
    ks = ks or [2**i for i in range(n.bit_length()) if 2**i <= n]
    rows = []
    for k in ks:
        values = [pass_at_k(n, int(c), k) for c in n_correct]
        low, high = bootstrap_ci(values)
        rows.append({"k": k, "pass@k": float(np.mean(values)), "ci_low": low, "ci_high": high})
    return pd.DataFrame(rows).set_index("k")


def paired_pass_at_k(before: EvalResult, after: EvalResult, ks: list[int] | None = None) -> pd.DataFrame:
    """pass@k of both evaluations for each k, and the paired change with its interval."""
    b, a = pass_at_k_curve(before, ks), pass_at_k_curve(after, ks)
    rows = []
    for k in b.index:
        per = [
            [pass_at_k(int(r.n), int(r.n_correct), k) for r in result.per_problem.itertuples()]
            for result in (before, after)
        ]
        change = paired_difference(per[1], per[0])
        rows.append({"k": k, "before": b.loc[k, "pass@k"], "after": a.loc[k, "pass@k"], "change": change})
    table = pd.DataFrame(rows).set_index("k")
    table["change (points)"] = [c.points for c in table["change"]]
    return table.assign(change=[str(c) for c in table["change"]])


class HeldOutProbe:
    """A training callback that measures a small fixed set of held-out problems every ``every`` steps.

    Pass it to a training loop before the live curves (``callbacks=[probe, curves]``): it adds
    ``heldout_accuracy`` (per-sample accuracy of ``k`` samples per problem at ``temperature``) and
    ``heldout_<behaviour>`` shares (:mod:`course_lib.behaviours`) to the step's row, so they land in
    the history and the curves. Its sampling has its own seed: the training run is unchanged by it.
    """

    def __init__(self, model, tokenizer, problems: list[dict], every: int = 2, k: int = 4, **sampling):
        self.model, self.tokenizer, self.problems, self.every, self.k = model, tokenizer, problems, every, k
        self.sampling = {"temperature": 1.0, "max_new_tokens": 200, "batch_size": 256, "seed": 12345, **sampling}
        self.seconds = 0.0  # time spent probing, kept out of the training time

    def measure(self) -> dict[str, float]:
        """The probe's numbers for the model as it is now."""
        start = time.perf_counter()
        result = evaluate(self.model, self.tokenizer, self.problems, k=self.k, progress=False, **self.sampling)
        table = behaviours.result_table(result)
        self.seconds += time.perf_counter() - start
        return {"heldout_accuracy": result.value("per_sample_accuracy")} | {
            f"heldout_{name}": float(table.loc[name, "share"]) for name in behaviours.BEHAVIOURS
        }

    def __call__(self, row: dict) -> None:
        if row["step"] == 1 or row["step"] % self.every == 0:
            row.update(self.measure())


def _summary_path(name: str, profile: Profile, runs_dir) -> Path:
    mode = f"{profile.n_eval_problems}x{profile.eval_k}"  # fast mode evaluates fewer problems
    return Path(runs_dir) / f"{name}-{profile.name}-{mode}.csv"


def save_summary(result: EvalResult, name: str, profile: Profile, runs_dir="runs") -> Path:
    """Write ``result.summary`` where later lessons find it: one file per run name, profile and
    evaluation size (so a fast-mode run never lands in a full-mode table). Returns the path."""
    path = _summary_path(name, profile, runs_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    result.summary.to_csv(path)
    return path


def saved_values(names: dict[str, str], profile: Profile, runs_dir="runs") -> dict[str, pd.Series]:
    """``{label: metric values}`` for the runs of ``names`` (``{label: run name}``) that were saved
    by :func:`save_summary` with this profile and evaluation size; runs not found are left out."""
    found = {}
    for label, name in names.items():
        path = _summary_path(name, profile, runs_dir)
        if path.is_file():
            found[label] = pd.read_csv(path, index_col="metric")["value"]
    return found


def facts_item_scores(model, tokenizer, probe: list[dict]) -> list[dict]:
    """Each held-out fact scored as multiple choice by log-likelihood: one dict per item with
    ``correct`` (the gold candidate scores highest), ``gold_logprob`` (the sum of its tokens'
    log-probs after the prompt) and ``chance`` (1 / candidates). Per item, so that two models
    can be compared item by item (a paired change)."""
    items = []
    for item in probe:
        prompt = format_prompt(tokenizer, item["question"])
        candidates = list(item["candidates"].items())
        scores = log_likelihood(
            model, tokenizer, [prompt] * len(candidates), [text + tokenizer.eos_token for _, text in candidates]
        )
        best = candidates[int(torch.argmax(scores))][0]
        gold = float(scores[[v for v, _ in candidates].index(item["answer"])])
        items.append({"correct": best == item["answer"], "gold_logprob": gold, "chance": 1 / len(candidates)})
    return items


def facts_probe(model, tokenizer, probe: list[dict]) -> dict[str, float]:
    """Score the held-out facts probe as multiple choice by log-likelihood.

    For each question, every candidate answer sentence is scored by the sum of its
    token log-probs after the prompt; the probe item is right when the gold candidate
    scores highest. Returns ``accuracy``, ``chance`` and ``mean_gold_logprob`` (a
    smooth measure that moves before accuracy does: useful for spotting forgetting).
    """
    items = facts_item_scores(model, tokenizer, probe)
    return {
        "accuracy": float(np.mean([i["correct"] for i in items])),
        "chance": float(np.mean([i["chance"] for i in items])),
        "mean_gold_logprob": float(np.mean([i["gold_logprob"] for i in items])),
        "n_items": len(items),
    }


def sorting_item_scores(model, tokenizer, items: list[dict], batch_size: int = 128) -> list[bool]:
    """Whether each held-out sorting list (``data.sorting.probe_set``) is answered exactly, greedily."""
    prompts = [format_prompt(tokenizer, item["question"]) for item in items]
    samples = sample(model, tokenizer, prompts, n=1, temperature=0.0, max_new_tokens=40, batch_size=batch_size)
    return [text.strip() == item["solution"] for text, item in zip(samples.texts, items)]


def sorting_probe(model, tokenizer, items: list[dict], batch_size: int = 128) -> dict[str, float]:
    """The held-out sorting lists (``data.sorting.probe_set``), answered greedily: ``accuracy`` (the
    whole list in order, exactly) and ``n_items``. A skill no post-training lesson trains."""
    right = sorting_item_scores(model, tokenizer, items, batch_size)
    return {"accuracy": sum(right) / len(items), "n_items": len(items)}
