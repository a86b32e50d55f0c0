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

import numpy as np
import torch

from course_lib.advantages import group_advantages, rloo_advantages
from course_lib.evaluation import majority_answer, paired_difference, pass_at_k, wilson_interval
from course_lib.losses import aggregate, clipped_surrogate, dpo_loss, kl_k3, log_odds, token_entropy, token_logprobs
from course_lib.memory import MODELS, TrainingSetup, lora_params, optimizer_bytes
from course_lib.models import count_parameters
from course_lib.overlap import sft_question_set, split_groups
from course_lib.rewards import answer_matches, normalize_number, overlong_penalty
from course_lib.sampling import completion_lengths, top_p_filter
from course_lib.train.grpo import refill
from course_lib.train.rejection_sampling import SampledPool, sft_records
from course_lib.variants import learning_area


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


# --- lesson 00: a model's size and the nucleus ---------------------------------------------------


class TinyTiedLM(torch.nn.Module):
    """A two-layer language model whose output layer reuses the embedding matrix (as SmolLM2 and
    Qwen2.5-0.5B do), with a buffer beside its weights (as a rotary embedding's ``inv_freq``)."""

    def __init__(self, vocab: int = 50, hidden: int = 8, tied: bool = True):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, hidden)
        self.mlp = torch.nn.Linear(hidden, hidden)
        self.head = torch.nn.Linear(hidden, vocab, bias=False)
        if tied:
            self.head.weight = self.embed.weight  # one matrix, two uses
        self.register_buffer("inv_freq", torch.ones(hidden // 2))  # state, not a weight


def _count_cases() -> list[Case]:
    frozen = TinyTiedLM()
    frozen.embed.requires_grad_(False)  # a frozen weight is still a weight of the model
    return [
        Case("embeddings tied to the output layer (one matrix, counted once)", (TinyTiedLM(),)),
        Case("untied embeddings (two matrices)", (TinyTiedLM(tied=False),)),
        Case("a frozen embedding (frozen weights count too)", (frozen,)),
    ]


def _top_p_cases() -> list[Case]:
    g = torch.Generator().manual_seed(4)
    logits = torch.randn(4, 12, generator=g) * 2
    return [
        Case("random logits (B=4, V=12), top_p = 0.7", (logits, 0.7)),
        Case("top_p = 1.0 (everything stays)", (logits, 1.0)),
        Case("top_p = 0.01 (the most likely token always stays)", (logits, 0.01)),
        Case(
            "probabilities 0.5, 0.3, 0.2 and top_p = 0.8 (the nucleus is the first two: 0.8 is reached)",
            (torch.tensor([[0.5, 0.3, 0.2]]).log(), 0.8),
        ),
    ]


# --- lesson 05: the two pieces the loop is built on ------------------------------------------------


def _logprob_cases() -> list[Case]:
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(2, 3, 7, generator=g)
    targets = torch.randint(0, 7, (2, 3), generator=g)
    return [
        Case("random logits (B=2, T=3, V=7)", (logits, targets)),
        Case("large logits (softmax underflows to 0 before the log)", (logits * 200, targets)),
        Case("bfloat16 logits (compute in float32)", (logits.bfloat16(), targets)),
    ]


def _length_cases() -> list[Case]:
    ids = torch.tensor([[5, 6, 2, 7, 2], [5, 2, 9, 9, 9], [5, 6, 7, 8, 9], [2, 6, 7, 8, 9]])
    two_eos = torch.tensor([[5, 6, 1, 7, 2], [5, 2, 9, 1, 9]])
    return [
        Case("one stop id (2): the stop token counts, the tokens after it do not", (ids, [2])),
        Case("a row with no stop token (it ran to the budget: the full width)", (ids[2:3], [2])),
        Case("a stop token first (length 1)", (ids[3:], [2])),
        Case("two stop ids (1 and 2, as Qwen2.5's two EOS): whichever comes first", (two_eos, [1, 2])),
    ]


# --- lesson 09: votes and paired intervals ---------------------------------------------------------


def _majority_cases() -> list[Case]:
    return [
        Case("a clear majority", (["12", "7", "12", "12"],)),
        Case("unreadable answers (None) are not votes", ([None, None, "5", None],)),
        Case("a tie goes to the tied answer that appears first", (["3", "4", "3", "4"],)),
        Case("no readable answer at all (None)", ([None, None],)),
    ]


def _paired_interval_reference(after, before) -> tuple[float, float, float]:
    change = paired_difference(after, before)
    return (change.points, change.ci_low, change.ci_high)


def _paired_cases() -> list[Case]:
    rng = np.random.default_rng(6)
    before = rng.choice([0.0, 0.25, 0.5, 0.75, 1.0], size=400, p=[0.3, 0.1, 0.1, 0.1, 0.4])  # hard and easy problems
    after = np.clip(before + rng.choice([0.0, 0.25], size=400, p=[0.8, 0.2]), 0, 1)  # most problems unchanged
    return [
        Case("400 problems, the same difficulty before and after (pairing removes it)", (after, before)),
        Case("no change at all (the interval is exactly [0, 0])", (before, before.copy())),
        Case("a change that hurts (after below before)", (before, after)),
    ]


# --- lesson 12: memory, counted by hand ------------------------------------------------------------


def _lora_cases() -> list[Case]:
    qwen = MODELS["Qwen2.5-1.5B"]
    return [
        Case("Qwen2.5-1.5B, r = 16, attention (q, k, v, o)", (qwen, 16, ("q_proj", "k_proj", "v_proj", "o_proj"))),
        Case("k_proj alone (grouped-query attention: out = kv_dim, not hidden)", (qwen, 8, ("k_proj",))),
        Case("the MLP (down_proj's in is the intermediate size)", (qwen, 4, ("gate_proj", "up_proj", "down_proj"))),
        Case("the pocket model, r = 16, attention", (MODELS["pocket"], 16, ("q_proj", "k_proj", "v_proj", "o_proj"))),
    ]


def _reference_optimizer(trained: int, precision: str, zero_stage: int, n_gpus: int, offload: bool) -> float:
    setup = TrainingSetup(precision=precision, zero_stage=zero_stage, n_gpus=n_gpus, offload_optimizer=offload)
    return optimizer_bytes(trained, setup)


def _optimizer_cases() -> list[Case]:
    n = 1_543_714_304  # Qwen2.5-1.5B, full fine-tuning
    return [
        Case("bf16 mixed precision, one GPU (m, v and the fp32 master copy)", (n, "bf16", 0, 1, False)),
        Case("fp32, one GPU (no master copy)", (n, "fp32", 0, 1, False)),
        Case("bf16, ZeRO-1 on 4 GPUs (stage 1 splits the optimizer state)", (n, "bf16", 1, 4, False)),
        Case("bf16, no ZeRO on 4 GPUs (plain data parallel: every GPU holds it all)", (n, "bf16", 0, 4, False)),
        Case("bf16, ZeRO-2 with the optimizer offloaded (nothing on the GPU)", (n, "bf16", 2, 4, True)),
    ]


# --- second exercises of lessons 01-08 -------------------------------------------------------------


def _wilson_cases() -> list[Case]:
    return [
        Case("30 right of 100", (30, 100)),
        Case("0 right of 20 (the interval is not [0, 0]: zero successes in 20 do not prove p = 0)", (0, 20)),
        Case("20 right of 20", (20, 20)),
        Case("1 right of 3 (a small n)", (1, 3)),
    ]


def _reference_same_number(predicted: str | None, gold: str) -> bool:
    return answer_matches(normalize_number(predicted) if isinstance(predicted, str) else None, gold)


def _same_number_cases() -> list[Case]:
    return [
        Case("'18.00' and '18' (the same number, different strings)", ("18.00", "18")),
        Case("'1,000' and '1000' (a thousands separator)", ("1,000", "1000")),
        Case("'$5' and '5' (a currency sign)", ("$5", "5")),
        Case("'3/4' and '0.75' (a fraction)", ("3/4", "0.75")),
        Case("'0.1' and '0.10000001' (close is not equal)", ("0.1", "0.10000001")),
        Case(
            "'10000000000000001' and '10000000000000000' (equal as floats, not as numbers: exact arithmetic)",
            ("10000000000000001", "10000000000000000"),
        ),
        Case("no answer (None) is never right", (None, "5")),
        Case("text that is not a number ('five'): False, never an error", ("five", "5")),
    ]


def _rloo_cases() -> list[Case]:
    g = torch.Generator().manual_seed(7)
    return [
        Case("random rewards, 3 groups of 4", (torch.randn(12, generator=g), 4)),
        Case(
            "0/1 rewards, groups of 2 (the other completion is the whole baseline)", (torch.tensor([1.0, 0, 0, 0]), 2)
        ),
        Case("a group whose rewards are all equal (0 everywhere)", (torch.full((6,), 0.5), 3)),
    ]


def _zero_std_share_reference(rewards: torch.Tensor, group_size: int) -> float:
    return float(group_advantages(rewards, group_size).zero_variance.float().mean())


def _zero_std_cases() -> list[Case]:
    return [
        Case(
            "groups of 4: one all wrong, one all right, one mixed",
            (torch.tensor([0.0] * 4 + [1.0] * 4 + [1, 0, 0, 0]), 4),
        ),
        Case("shaped rewards, equal only in one group of 3", (torch.tensor([0.5, 0.5, 0.5, 0.2, 0.7, 0.7]), 3)),
        Case("every group mixed (0)", (torch.tensor([1.0, 0, 0, 1]), 2)),
    ]


def _reference_dpo_pairs(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta) -> torch.Tensor:
    ones = torch.ones_like(policy_chosen).unsqueeze(1)  # (B, 1): one "token" holding each summed log-prob
    pc, pr, rc, rr = (x.unsqueeze(1) for x in (policy_chosen, policy_rejected, ref_chosen, ref_rejected))
    return dpo_loss(pc, ones, pr, ones, rc, rr, beta=beta).per_pair_loss


def _dpo_cases() -> list[Case]:
    g = torch.Generator().manual_seed(8)
    sums = [-20 * torch.rand(5, generator=g) - 5 for _ in range(4)]  # (B,) summed log-probs
    same = -10 * torch.rand(3, generator=g)
    return [
        Case("random summed log-probs (B=5), beta = 0.1", (*sums, 0.1)),
        Case("the policy equal to its reference (log 2 for every pair)", (same, same - 1, same.clone(), same - 1, 0.1)),
        Case("beta = 0.5, policy far from the reference", (sums[0] + 30, sums[1], sums[2], sums[3], 0.5)),
    ]


def _relative_change_reference(after: torch.Tensor, before: torch.Tensor) -> float:
    return float((after - before).norm() / before.norm())


def _relative_change_cases() -> list[Case]:
    g = torch.Generator().manual_seed(0)
    w = torch.randn(40, 24, generator=g) * 0.05
    return [
        Case("a random 40 x 24 matrix and a small random update", (w + 0.01 * torch.randn(40, 24, generator=g), w)),
        Case("the matrix scaled by 1.5 (the change is half the base's norm: 0.5)", (1.5 * w, w)),
        Case("a norm's gain vector, ones moved by +-0.02", (torch.ones(16) + 0.02 * torch.randn(16, generator=g),
                                                            torch.ones(16))),
        Case("a matrix with zero entries that moved (a ratio per entry would divide by 0)",
             (torch.tensor([[0.1, 0.0], [0.0, -0.1]]), torch.tensor([[0.1, 0.0], [0.2, -0.1]]))),
    ]  # fmt: skip


def _group_change_reference(afters: list[torch.Tensor], befores: list[torch.Tensor]) -> float:
    delta = sum(float((a - b).pow(2).sum()) for a, b in zip(afters, befores))
    return (delta / sum(float(b.pow(2).sum()) for b in befores)) ** 0.5


def _group_change_cases() -> list[Case]:
    g = torch.Generator().manual_seed(1)
    big, small = torch.randn(64, 64, generator=g), torch.randn(4, generator=g)
    layers = [torch.randn(8, 8, generator=g) for _ in range(3)]
    moved = [x + 0.1 * torch.randn(8, 8, generator=g) for x in layers]
    return [
        Case("three equal-size layers, each moved a little", (moved, layers)),
        Case("a big matrix unchanged and a 4-entry vector doubled (the group barely moved)", ([big, 2 * small],
                                                                                              [big, small])),
        Case("one matrix alone (the group's change is its own)", ([1.2 * big], [big])),
    ]  # fmt: skip


def _sft_set_reference(grpo_set: list[str], fresh_set: list[str], share: float, size: int) -> list[str]:
    return sft_question_set(grpo_set, fresh_set, share, size)


def _sft_set_cases() -> list[Case]:
    grpo, fresh = [f"g{i}" for i in range(10)], [f"f{i}" for i in range(12)]
    return [
        Case("10 GRPO questions, 30 % overlap, an SFT stage of 10", (grpo, fresh, 0.3, 10)),
        Case("0 % overlap (only fresh questions)", (grpo, fresh, 0.0, 10)),
        Case("100 % overlap (exactly GRPO's questions)", (grpo, fresh, 1.0, 10)),
        Case("an SFT stage of 7 at 50 % (round(3.5) = 4 of GRPO's, 3 fresh)", (grpo, fresh, 0.5, 7)),
    ]


def _refill_cases() -> list[Case]:
    return [
        Case("5 groups drawn, 3 with a signal, P = 3", ([True, False, True, False, False], 3)),
        Case("more groups with a signal than P: the first ones drawn", ([False, False, False, False], 2)),
        Case("the draws ran out: top up with the first flat groups, after the ones with a signal",
             ([True, True, False, True], 3)),
        Case("nothing but flat groups", ([True, True, True], 2)),
    ]  # fmt: skip


def _learning_area_cases() -> list[Case]:
    g = np.random.default_rng(4)
    curves = g.uniform(0, 1, size=(5, 3))  # 5 checkpoints, 3 problems
    return [
        Case("checkpoints every 256 completions up to the budget 1024, 3 problems", ([0, 256, 512, 768, 1024],
                                                                                      curves, 1024)),
        Case("uneven checkpoints (after steps 2, 4, 8 of 64 completions)", ([0, 128, 256, 512, 1024], curves, 1024)),
        Case("a run that overshoots the budget (dynamic sampling): cut the curve at the budget, where it is "
             "drawn straight between its neighbours", ([0, 300, 700, 1000, 1100], curves, 1024)),
        Case("one problem, a curve 0 -> 1 at half the budget", ([0, 50, 100], np.array([[0.0], [1.0], [1.0]]), 100)),
    ]  # fmt: skip


def _zero_variance_by_part_reference(advantages: torch.Tensor, group_size: int, seen: list[bool]):
    row = split_groups(advantages, group_size, seen)
    return (row["seen_zero_variance"], row["fresh_zero_variance"])


def _zero_variance_by_part_cases() -> list[Case]:
    g = torch.Generator().manual_seed(2)
    mixed = torch.randn(8, generator=g)
    return [
        Case("4 groups of 2, the first and third flat", (torch.tensor([0.0, 0, 0.7, -0.7, 0, 0, 0.5, -0.5]), 2,
                                                         [True, True, False, False])),
        Case("2 groups of 4, both with a signal", (mixed, 4, [True, False])),
        Case("3 groups of 2: every seen group flat, the fresh one not", (torch.tensor([0.0, 0, 0, 0, 1, -1]), 2,
                                                                        [True, True, False])),
    ]  # fmt: skip


def _entropy_cases() -> list[Case]:
    g = torch.Generator().manual_seed(3)
    return [
        Case("random logits (2, 3, 7)", (torch.randn(2, 3, 7, generator=g),)),
        Case("large logits (softmax().log() overflows to -inf x 0 = NaN)", (100 * torch.randn(1, 4, 9, generator=g),)),
        Case("a uniform distribution over 8 tokens (entropy log 8)", (torch.zeros(1, 1, 8),)),
    ]


def _reference_grad_norm(grads: list[torch.Tensor]) -> float:
    params = [torch.nn.Parameter(torch.zeros_like(gr)) for gr in grads]
    for p, gr in zip(params, grads):
        p.grad = gr.clone()
    return float(torch.nn.utils.clip_grad_norm_(params, max_norm=float("inf")))


def _grad_norm_cases() -> list[Case]:
    g = torch.Generator().manual_seed(4)
    return [
        Case("three gradients of different shapes", ([torch.randn(4, 3, generator=g), torch.randn(5, generator=g),
                                                       torch.randn(2, 2, 2, generator=g)],)),
        Case("one gradient alone", ([torch.tensor([3.0, 4.0])],)),
        Case("two gradients of norm 3 and 4 (together 5, not 7)", ([torch.tensor([3.0]), torch.tensor([0.0, 4.0])],)),
    ]  # fmt: skip


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
    "wilson_interval": Exercise(
        "wilson_interval(successes: int, n: int) -> (low, high)", wilson_interval, _wilson_cases
    ),
    "same_number": Exercise(
        "same_number(predicted: str | None, gold: str) -> bool", _reference_same_number, _same_number_cases
    ),
    "rloo_advantages": Exercise(
        "rloo_advantages(rewards: (N,) tensor, group_size: int) -> (N,) tensor", rloo_advantages, _rloo_cases
    ),
    "zero_std_share": Exercise(
        "zero_std_share(rewards: (N,) tensor, group_size: int) -> float", _zero_std_share_reference, _zero_std_cases
    ),
    "dpo_pair_losses": Exercise(
        "dpo_pair_losses(policy_chosen, policy_rejected, ref_chosen, ref_rejected: (B,) sums, beta) -> (B,)",
        _reference_dpo_pairs,
        _dpo_cases,
    ),
    "count_parameters": Exercise("count_parameters(model: nn.Module) -> int", count_parameters, _count_cases),
    "top_p_filter": Exercise(
        "top_p_filter(logits: (B, V), top_p: float) -> (B, V), -inf outside the nucleus", top_p_filter, _top_p_cases
    ),
    "token_logprobs": Exercise(
        "token_logprobs(logits: (B, T, V), targets: (B, T) ids) -> (B, T) float32", token_logprobs, _logprob_cases
    ),
    "completion_lengths": Exercise(
        "completion_lengths(ids: (N, T), stop_ids: list[int]) -> (N,) lengths", completion_lengths, _length_cases
    ),
    "majority_answer": Exercise(
        "majority_answer(answers: list[str | None]) -> str | None", majority_answer, _majority_cases
    ),
    "paired_interval": Exercise(
        "paired_interval(after: (n,) array, before: (n,) array) -> (points, low, high)",
        _paired_interval_reference,
        _paired_cases,
        atol=0.6,  # points: another bootstrap's draws moved the ends by at most 0.07 (200 seeds)
    ),
    "lora_params": Exercise(
        "lora_params(shape: ModelShape, rank: int, targets: tuple) -> int", lora_params, _lora_cases
    ),
    "optimizer_bytes": Exercise(
        "optimizer_bytes(trained: int, precision: str, zero_stage: int, n_gpus: int, offload: bool) -> bytes",
        _reference_optimizer,
        _optimizer_cases,
        atol=0.5,
    ),
    "relative_change": Exercise(
        "relative_change(after: Tensor, before: Tensor) -> float", _relative_change_reference, _relative_change_cases
    ),
    "sft_question_set": Exercise(
        "sft_question_set(grpo_set: list, fresh_set: list, share: float, size: int) -> list",
        _sft_set_reference,
        _sft_set_cases,
    ),
    "zero_variance_by_part": Exercise(
        "zero_variance_by_part(advantages: (P*G,), group_size: int, seen: list[bool]) -> (seen share, fresh share)",
        _zero_variance_by_part_reference,
        _zero_variance_by_part_cases,
    ),
    "token_entropy": Exercise("token_entropy(logits: (B, T, V)) -> (B, T)", token_entropy, _entropy_cases, atol=1e-4),
    "total_grad_norm": Exercise(
        "total_grad_norm(grads: list[Tensor]) -> float", _reference_grad_norm, _grad_norm_cases, atol=1e-5
    ),
    "refill": Exercise("refill(zero_variance: list[bool], prompts: int) -> list[int]", refill, _refill_cases),
    "learning_area": Exercise(
        "learning_area(completions: (C,), accuracy_curves: (C, n), budget: float) -> (n,)",
        learning_area,
        _learning_area_cases,
        atol=1e-9,
    ),
    "group_relative_change": Exercise(
        "group_relative_change(afters: list[Tensor], befores: list[Tensor]) -> float",
        _group_change_reference,
        _group_change_cases,
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
    return tuple(_copy(a) for a in args)


def _copy(a):
    if isinstance(a, torch.Tensor):
        return a.clone()
    return a.copy() if isinstance(a, np.ndarray | list) else a


def _difference(got, expected, atol: float) -> str | None:
    """None when ``got`` matches ``expected``; else what differs, in words."""
    if isinstance(expected, bool):
        same = isinstance(got, bool | np.bool_) and bool(got) == expected
        return None if same else f"expected {expected}, got {got!r}"
    if isinstance(expected, list) or expected is None or isinstance(expected, str):
        return None if got == expected else f"expected {expected!r}, got {got!r}"
    if isinstance(expected, tuple):
        if not isinstance(got, (tuple, list)) or len(got) != len(expected):
            return f"expected a tuple of {len(expected)} numbers, got {got!r}"
        for i, (g, e) in enumerate(zip(got, expected)):
            problem = _difference(g, e, atol)
            if problem:
                return f"element {i} of the tuple: {problem}"
        return None
    if isinstance(expected, np.ndarray):  # an array: compared as a tensor of the same shape
        if not isinstance(got, np.ndarray | torch.Tensor | list):
            return f"expected an array of shape {expected.shape}, got {type(got).__name__}"
        return _difference(torch.as_tensor(np.asarray(got, dtype=float)), torch.as_tensor(expected), atol)
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
