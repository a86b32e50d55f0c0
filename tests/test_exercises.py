"""The exercises' checkers: every solution passes, every planted mistake is caught and explained."""

import importlib.util
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from course_lib.exercises import EXERCISES, check

SOLUTIONS = Path(__file__).resolve().parents[1] / "notebooks" / "solutions" / "exercises.py"
spec = importlib.util.spec_from_file_location("solutions", SOLUTIONS)
solutions = importlib.util.module_from_spec(spec)
spec.loader.exec_module(solutions)


@pytest.mark.parametrize("name", list(EXERCISES))
def test_each_solution_passes_its_checker(name):
    verdict = check(name, getattr(solutions, name))
    assert verdict.passed, str(verdict)


def _population_std(rewards, group_size):
    groups = rewards.float().view(-1, group_size)
    centred = groups - groups.mean(1, keepdim=True)
    return torch.nan_to_num(centred / (groups.std(1, unbiased=False, keepdim=True) + 1e-4)).reshape(-1)


def _nan_for_flat_groups(rewards, group_size):
    groups = rewards.float().view(-1, group_size)
    return ((groups - groups.mean(1, keepdim=True)) / groups.std(1, keepdim=True)).reshape(-1)


def _aggregate_with_real_lengths_for_dr_grpo(loss, mask, kind, max_length):
    masked = loss * mask
    if kind == "grpo":
        return (masked.sum(1) / mask.sum(1)).mean()
    return masked.sum() / mask.sum()  # dr_grpo divided by the real token count: its length bias is back


def _pass_at_k_as_text_when_certain(n, c, k):
    return 1 - math.comb(n - c, k) / math.comb(n, k) if k <= n - c else "1"


def _top_p_without_the_crossing_token(logits, top_p):
    probs, order = logits.softmax(-1).sort(-1, descending=True)
    drop = probs.cumsum(-1) > top_p  # drops the token that reaches top_p: the nucleus comes out too small
    drop[:, 0] = False
    return logits.masked_fill(torch.zeros_like(drop).scatter(1, order, drop), float("-inf"))


def _top_p_that_may_drop_everything(logits, top_p):
    probs, order = logits.softmax(-1).sort(-1, descending=True)
    drop = probs.cumsum(-1) - probs >= top_p
    drop |= probs > top_p  # "a token above top_p alone is too likely": wrong, and can empty the row
    return logits.masked_fill(torch.zeros_like(drop).scatter(1, order, drop), float("-inf"))


def _wald_interval(successes, n):
    p = successes / n
    half = 1.96 * math.sqrt(p * (1 - p) / n)  # the textbook interval: [0, 0] at 0 successes
    return p - half, p + half


def _first_stop(ids, stop_ids):
    is_stop = torch.isin(ids, torch.tensor(stop_ids))
    return torch.where(is_stop.any(1), is_stop.int().argmax(1), ids.shape[1])


def _unpaired_interval(after, before, scale=100.0):
    after, before = scale * np.asarray(after, float), scale * np.asarray(before, float)
    rng = np.random.default_rng(0)
    n = len(after)
    means = after[rng.integers(0, n, (2000, n))].mean(1) - before[rng.integers(0, n, (2000, n))].mean(1)
    return float(after.mean() - before.mean()), float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


def _lora_with_square_attention(shape, rank, targets):
    h, i = shape.hidden_size, shape.intermediate_size
    square = {"gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}  # every attention layer h x h
    return shape.n_layers * sum(rank * sum(square.get(t, (h, h))) for t in targets)


def _area_past_the_budget(x, y, budget):
    """The whole run's trapezoid area divided by the budget: a run that overshoots counts its extra."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    return (np.diff(x)[:, None] * (y[1:] + y[:-1]) / 2).sum(axis=0) / budget


PLANTED = [  # (exercise, a common mistake, words the explanation must contain)
    ("group_advantages", _population_std, "groups of 2"),
    ("group_advantages", _nan_for_flat_groups, "all equal (its advantages must be exactly 0, not NaN): NaN"),
    ("clipped_surrogate", lambda r, a, lo, hi: -(r.clamp(1 - lo, 1 + hi) * a), "differ"),  # no min: no pessimism
    ("clipped_surrogate", lambda r, a, lo, hi: -torch.minimum(r * a, (r * a).clamp(1 - lo, 1 + hi)), "clip binds"),
    ("clipped_surrogate", lambda r, a, lo, hi: -torch.minimum(r * a, r.clamp(1 - lo, 1 + lo) * a), "clip-higher"),
    ("k3", lambda logp, ref: logp - ref, "random log-probs"),  # k1, not k3
    ("k3", lambda logp, ref: (logp - ref).exp() - (logp - ref) - 1, "random log-probs"),  # the wrong direction
    ("pass_at_k", lambda n, c, k: 1 - (1 - c / n) ** k, "n=10, c=3, k=5"),  # the biased estimator
    ("pass_at_k", _pass_at_k_as_text_when_certain, "always 1): expected a number"),
    ("log_odds", lambda ell: ell - torch.log(1 - torch.exp(ell)), "almost certain"),  # unstable log(1 - p)
    ("log_odds", lambda ell: ell - torch.log1p(-ell), "ordinary"),  # log(1 - log p): mixes up p and log p
    ("overlong_penalty", lambda n, m, b: 0.0 if n <= m - b else max(-1.0, (m - n) / b), "halfway into the buffer"),
    ("aggregate", lambda loss, mask, kind, L: (loss * mask).sum() / mask.sum(), "'grpo'"),  # one rule for all
    ("aggregate", lambda loss, mask, kind, L: loss.mean(), "'dapo'"),  # padding counted
    ("aggregate", _aggregate_with_real_lengths_for_dr_grpo, "'dr_grpo'"),
    ("overlong_penalty", lambda n, m, b: 0.0 if n <= m - b else (m - b - n) / b, "past the budget"),  # no floor
    ("keep", lambda t, c, d, cap: sorted(set(x for x, ok in zip(t, c) if ok))[:cap], "dedup on, no cap"),  # order lost
    ("keep", lambda t, c, d, cap: list(dict.fromkeys([x for x, ok in zip(t, c) if ok][:cap])), "cap 2"),  # cap first
    ("keep", lambda t, c, d, cap: list(dict.fromkeys(t))[:cap], "dedup on, no cap"),  # keeps the wrong ones too
    ("wilson_interval", _wald_interval, "0 right of 20"),
    ("same_number", lambda p, g: p == g, "'18.00' and '18'"),  # strings, not numbers
    ("same_number", lambda p, g: p is not None and float(p) == float(g), "a thousands separator"),  # raises
    ("same_number", lambda p, g: p is not None and float(p.strip("$").replace(",", "")) == float(g), "as floats"),
    ("rloo_advantages", lambda r, g: r - r.view(-1, g).mean(1).repeat_interleave(g), "random rewards"),  # self in
    ("zero_std_share", lambda r, g: (r.view(-1, g).sum(1) == 0).float().mean().item(), "one all right"),
    ("dpo_pair_losses", lambda pc, pr, rc, rr, b: -torch.nn.functional.logsigmoid(b * (pc - pr)), "random summed"),
    (
        "dpo_pair_losses",
        lambda pc, pr, rc, rr, b: -torch.nn.functional.logsigmoid(b * (pc - rc - pr + rr)).mean(),
        "expected shape",
    ),  # the batch mean, not one loss per pair
    ("count_parameters", lambda m: sum(v.numel() for v in m.state_dict().values()), "tied"),  # tied twice, buffers
    ("count_parameters", lambda m: sum(p.numel() for p in m.parameters() if p.requires_grad), "frozen"),
    ("top_p_filter", _top_p_without_the_crossing_token, "random logits"),
    ("top_p_filter", _top_p_that_may_drop_everything, "0.01"),
    ("token_logprobs", lambda z, y: z.softmax(-1).log().gather(-1, y.unsqueeze(-1)).squeeze(-1), "large logits"),
    ("token_logprobs", lambda z, y: z.log_softmax(-1).gather(-1, y.unsqueeze(-1)).squeeze(-1), "bfloat16"),
    ("completion_lengths", lambda ids, s: _first_stop(ids, s), "the stop token counts"),  # the stop left out
    ("completion_lengths", lambda ids, s: _first_stop(ids, s[:1]) + 1, "two stop ids"),  # only the first EOS id
    ("completion_lengths", lambda ids, s: torch.isin(ids, torch.tensor(s)).int().argmax(1) + 1, "no stop token"),
    ("majority_answer", lambda a: Counter(a).most_common(1)[0][0], "not votes"),  # None counted as an answer
    ("majority_answer", lambda a: max(reversed([x for x in a if x]), key=a.count, default=None), "tie"),
    ("paired_interval", _unpaired_interval, "same difficulty"),
    ("paired_interval", lambda after, before: _unpaired_interval(after, before, scale=1.0), "element 0"),  # not points
    ("lora_params", lambda shape, r, ts: sum(r * sum(shape.linear_shapes()[t]) for t in ts), "Qwen2.5-1.5B"),
    ("lora_params", _lora_with_square_attention, "grouped-query"),
    ("optimizer_bytes", lambda n, prec, z, g, off: 0 if off else 8 * n / (g if z else 1), "bf16 mixed precision"),
    ("optimizer_bytes", lambda n, prec, z, g, off: 0 if off else n * (12 if prec == "bf16" else 8) / g, "plain data"),
    ("optimizer_bytes", lambda n, prec, z, g, off: n * (12 if prec == "bf16" else 8) / (g if z else 1), "offloaded"),
    ("relative_change", lambda a, b: float((a - b).norm() / a.norm()), "scaled by 1.5"),  # after's norm below
    ("relative_change", lambda a, b: float(((a - b).abs() / b.abs().clamp_min(1e-12)).mean()), "random 40 x 24"),
    (
        "group_relative_change",
        lambda a, b: sum(float((x - y).norm() / y.norm()) for x, y in zip(a, b)) / len(a),
        "big matrix unchanged",
    ),  # the mean of the ratios: the small vector dominates
    ("refill", lambda flat, p: [i for i, f in enumerate(flat) if not f][:p], "the draws ran out"),  # no top-up
    ("refill", lambda flat, p: list(range(len(flat)))[:p], "5 groups drawn"),  # flat groups kept where they fall
    ("learning_area", lambda x, y, b: np.asarray(y, dtype=float).mean(axis=0), "uneven checkpoints"),  # not by width
    ("learning_area", _area_past_the_budget, "overshoots the budget"),  # not cut at the budget
]


@pytest.mark.parametrize("name,mistake,words", PLANTED, ids=[f"{p[0]}-{i}" for i, p in enumerate(PLANTED)])
def test_each_checker_rejects_a_planted_mistake_and_says_where(name, mistake, words):
    verdict = check(name, mistake)
    assert not verdict.passed
    assert words in verdict.message, verdict.message
    assert "expected" in verdict.message or "raised" in verdict.message  # what differs, not just "wrong"


def test_not_attempted_and_crashing_functions_are_reported_not_raised():
    def untouched(*args):
        raise NotImplementedError

    assert "not attempted" in check("k3", untouched).message
    crashed = check("k3", lambda logp, ref: logp @ ref)  # (B, T) @ (B, T): a shape error inside
    assert not crashed.passed and "raised RuntimeError" in crashed.message
    wrong_shape = check("k3", lambda logp, ref: (logp - ref).sum(1))
    assert "expected shape" in wrong_shape.message
    with pytest.raises(ValueError, match="unknown exercise"):
        check("ppo", untouched)


def test_every_exercise_is_set_in_a_lesson_and_every_lesson_check_exists():
    import json
    import re

    notebooks = sorted((SOLUTIONS.parents[1]).glob("*.ipynb"))
    used = set()
    for path in notebooks:
        for cell in json.loads(path.read_text())["cells"]:
            used |= set(re.findall(r'check\("(\w+)"', "".join(cell["source"])))
    assert used - set(EXERCISES) == set(), "a lesson checks an exercise the checkers do not know"
    assert set(EXERCISES) - used == set(), "an exercise no lesson sets"
