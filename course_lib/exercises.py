"""Checkers for the lessons' "implement it yourself" exercises.

Each lesson asks the learner to write a small function the library already has; a checker runs
the learner's function and the library's on the same inputs (random ones and the edge cases
that catch the usual mistakes) and says what differs: the case, the shape, the first element
that disagrees and by how much, never just "wrong". A function that still raises
``NotImplementedError`` is reported as not attempted, so a lesson runs top to bottom before the
learner has written anything. Solutions live in ``notebooks/solutions/``.

    from course_lib.exercises import check
    check("group_advantages", my_group_advantages)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from course_lib.advantages import group_advantages
from course_lib.evaluation import pass_at_k
from course_lib.losses import aggregate, clipped_surrogate, kl_k3, log_odds
from course_lib.rewards import overlong_penalty
from course_lib.train.rejection_sampling import SampledPool, sft_records


@dataclass(frozen=True)
class Verdict:
    """What a checker found: ``passed`` and a message for the learner."""

    exercise: str
    passed: bool
    message: str

    def __str__(self) -> str:
        return f"{'PASSED' if self.passed else 'NOT YET'} · {self.exercise}: {self.message}"

    def _repr_markdown_(self) -> str:
        return f"**{'✅ passed' if self.passed else '❌ not yet'}** · `{self.exercise}`: {self.message}"


@dataclass(frozen=True)
class Case:
    """One input to both functions: a name the learner can act on, and the arguments."""

    name: str
    args: tuple


@dataclass(frozen=True)
class Exercise:
    """An exercise: the library's function (the reference) and the cases both are run on."""

    signature: str
    reference: Callable
    cases: Callable[[], list[Case]]
    atol: float = 1e-5


def _advantage_cases() -> list[Case]:
    g = torch.Generator().manual_seed(0)
    return [
        Case("random rewards, 4 groups of 8", (torch.randn(32, generator=g), 8)),
        Case("0/1 correctness, groups of 4 (std of few values: unbiased, as torch.std)", (_bits(12, g), 4)),
        Case("a group whose rewards are all equal (its advantages must be exactly 0, not NaN)", (torch.ones(8), 4)),
        Case("groups of 2 (where the unbiased and the population std differ most)", (torch.tensor([0.0, 1, 3, 5]), 2)),
    ]


def _bits(n: int, g: torch.Generator) -> torch.Tensor:
    return (torch.rand(n, generator=g) > 0.5).float()


def _reference_advantages(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    return group_advantages(rewards, group_size).advantages


def _surrogate_cases() -> list[Case]:
    g = torch.Generator().manual_seed(1)
    ratio = torch.exp(0.5 * torch.randn(6, 5, generator=g))
    advantages = torch.randn(6, 1, generator=g)
    return [
        Case("random ratios and advantages (B=6, T=5)", (ratio, advantages, 0.2, 0.2)),
        Case(
            "A > 0 and r far above 1 + eps_high (the clip binds)",
            (torch.tensor([[1.5, 0.5]]), torch.tensor([[1.0]]), 0.2, 0.2),
        ),
        Case(
            "A < 0 and r far below 1 - eps_low (the clip binds)",
            (torch.tensor([[0.5, 1.5]]), torch.tensor([[-1.0]]), 0.2, 0.2),
        ),
        Case("clip-higher: eps_high = 0.28, eps_low = 0.2", (ratio, advantages, 0.2, 0.28)),
    ]


def _one(value: float) -> torch.Tensor:
    return torch.tensor([[value]])


def _k3_cases() -> list[Case]:
    g = torch.Generator().manual_seed(2)
    logps = -torch.rand(4, 6, generator=g) * 3
    return [
        Case("random log-probs (B=4, T=6)", (logps, logps + 0.3 * torch.randn(4, 6, generator=g))),
        Case("policy equal to the reference (k3 must be exactly 0)", (logps, logps.clone())),
        Case("reference far more likely than the policy", (torch.tensor([[-5.0]]), torch.tensor([[-0.1]]))),
    ]


def _pass_at_k_cases() -> list[Case]:
    return [
        Case("n=10, c=3, k=1 (pass@1 is c / n)", (10, 3, 1)),
        Case("n=10, c=3, k=5", (10, 3, 5)),
        Case("n=8, c=0, k=4 (nothing right: 0)", (8, 0, 4)),
        Case("n=8, c=6, k=4 (fewer wrong samples than k: always 1)", (8, 6, 4)),
        Case("n=200, c=13, k=50 (large n: use a product, not factorials)", (200, 13, 50)),
    ]


def _log_odds_cases() -> list[Case]:
    return [
        Case("mean log-probs of ordinary completions", (torch.tensor([-0.1, -0.7, -2.0, -5.0]),)),
        Case("a completion almost certain (log p = -1e-6: log(1 - p) needs care)", (torch.tensor([-1e-6]),)),
        Case("a completion almost impossible (log p = -30)", (torch.tensor([-30.0]),)),
    ]


def _aggregate_cases() -> list[Case]:
    g = torch.Generator().manual_seed(3)
    loss = torch.randn(3, 6, generator=g)
    mask = torch.tensor([[1.0, 1, 1, 1, 1, 1], [1, 1, 0, 0, 0, 0], [1, 1, 1, 0, 0, 0]])  # lengths 6, 2, 3
    return [
        Case("loss_type 'grpo' (a mean per completion, then over completions)", (loss, mask, "grpo", 6)),
        Case("loss_type 'dapo' (one mean over every real token of the batch)", (loss, mask, "dapo", 6)),
        Case("loss_type 'dr_grpo' (a constant: completions x max_completion_length)", (loss, mask, "dr_grpo", 8)),
        Case("padding holds garbage (it must not count)", (loss.masked_fill(mask == 0, 1e3), mask, "dapo", 6)),
    ]


def _reference_aggregate(loss, mask, loss_type, max_completion_length):
    return aggregate(loss, mask, loss_type, max_completion_length=max_completion_length)


def _overlong_cases() -> list[Case]:
    return [
        Case("length 100, max 160, buffer 40 (well inside: 0)", (100, 160, 40)),
        Case("length 120 = max - buffer (the last free length: 0)", (120, 160, 40)),
        Case("length 140, halfway into the buffer (-0.5)", (140, 160, 40)),
        Case("length 160 = max (-1)", (160, 160, 40)),
        Case("length 300, past the budget (-1, not less)", (300, 160, 40)),
    ]


def _reference_keep(texts: list[str], correct: list[bool], dedup: bool, cap: int | None) -> list[str]:
    pool = SampledPool([{}], ["prompt"], [list(texts)], [list(correct)])
    return [row["completion"] for row in sft_records(pool, dedup=dedup, max_per_question=cap)]


def _keep_cases() -> list[Case]:
    texts = ["c", "b", "c", "a", "d", "a", "e"]
    correct = [True, False, True, True, True, True, False]
    return [
        Case("dedup on, no cap", (texts, correct, True, None)),
        Case("dedup on, cap 2 (dedup first, then the first 2 in sampling order)", (texts, correct, True, 2)),
        Case("dedup off, cap 3", (texts, correct, False, 3)),
        Case("no correct sample (nothing kept)", (texts, [False] * 7, True, 4)),
    ]


EXERCISES: dict[str, Exercise] = {
    "group_advantages": Exercise(
        "group_advantages(rewards: (N,) tensor, group_size: int) -> (N,) tensor",
        _reference_advantages,
        _advantage_cases,
    ),
    "clipped_surrogate": Exercise(
        "clipped_surrogate(ratio: (B, T), advantages: (B, 1), eps_low, eps_high) -> (B, T) loss",
        clipped_surrogate,
        _surrogate_cases,
    ),
    "k3": Exercise("k3(logps: (B, T), ref_logps: (B, T)) -> (B, T)", kl_k3, _k3_cases),
    "pass_at_k": Exercise("pass_at_k(n: int, c: int, k: int) -> float", pass_at_k, _pass_at_k_cases, atol=1e-9),
    "log_odds": Exercise("log_odds(mean_logp: (B,) tensor) -> (B,) tensor", log_odds, _log_odds_cases, atol=1e-4),
    "aggregate": Exercise(
        "aggregate(per_token_loss: (B, T), mask: (B, T), loss_type: str, max_completion_length: int) -> scalar",
        _reference_aggregate,
        _aggregate_cases,
    ),
    "overlong_penalty": Exercise(
        "overlong_penalty(length: int, max_length: int, buffer: int) -> float", overlong_penalty, _overlong_cases
    ),
    "keep": Exercise(
        "keep(texts: list[str], correct: list[bool], dedup: bool, cap: int | None) -> list[str]",
        _reference_keep,
        _keep_cases,
    ),
}


def check(exercise: str, fn: Callable) -> Verdict:
    """Run the learner's ``fn`` against the library on every case of ``exercise``: each case that
    differs, explained (the case, then the shape or the first value that disagrees), or a pass."""
    if exercise not in EXERCISES:
        raise ValueError(f"unknown exercise {exercise!r}; choose one of {', '.join(EXERCISES)}")
    spec = EXERCISES[exercise]
    cases, failures = spec.cases(), []
    for case in cases:
        try:
            got = fn(*_copies(case.args))
        except NotImplementedError:
            return Verdict(exercise, False, f"not attempted yet: write the body of {spec.signature}, then run again")
        except Exception as error:  # the learner's code: any error is news to report, not to raise
            failures.append(f"on {case.name}, your function raised {type(error).__name__}: {error}")
            continue
        problem = _difference(got, spec.reference(*_copies(case.args)), spec.atol)
        if problem:
            failures.append(f"on {case.name}: {problem}")
    if failures:
        return Verdict(exercise, False, f"{len(failures)} of {len(cases)} cases differ. " + " | ".join(failures))
    return Verdict(exercise, True, f"all {len(cases)} cases agree with the library")


def _copies(args: tuple) -> tuple:
    """Fresh copies of tensor arguments, so an in-place edit by one function cannot reach the other."""
    return tuple(a.clone() if isinstance(a, torch.Tensor) else a for a in args)


def _difference(got, expected, atol: float) -> str | None:
    """None when ``got`` matches ``expected``; else what differs, in words."""
    if isinstance(expected, list):
        return None if got == expected else f"expected {expected}, got {got}"
    if not isinstance(expected, torch.Tensor):
        if not isinstance(got, (int, float)) and not (isinstance(got, torch.Tensor) and got.numel() == 1):
            return f"expected a number, got {type(got).__name__}"
        got = float(got)
        return None if abs(got - expected) <= atol + 1e-6 * abs(expected) else f"expected {expected:.6g}, got {got:.6g}"
    if not isinstance(got, torch.Tensor):
        return f"expected a tensor of shape {tuple(expected.shape)}, got {type(got).__name__}"
    if got.shape != expected.shape:
        return f"expected shape {tuple(expected.shape)}, got {tuple(got.shape)}"
    got, expected = got.double(), expected.double()
    if torch.isnan(got).any() and not torch.isnan(expected).any():
        return f"NaN at index {_index(torch.isnan(got))} where the library gives {expected[torch.isnan(got)][0]:.6g}"
    wrong = (got - expected).abs() > atol + 1e-5 * expected.abs()
    if wrong.any():
        at = _index(wrong)
        return (
            f"{int(wrong.sum())} of {wrong.numel()} values differ; first at index {at}: "
            f"expected {expected[at].item():.6g}, got {got[at].item():.6g}"
        )
    return None


def _index(where: torch.Tensor) -> tuple[int, ...]:
    return tuple(int(i) for i in where.nonzero()[0])
