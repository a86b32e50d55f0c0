"""Solutions to the lessons' "implement it yourself" exercises (checked by ``course_lib.exercises``).

Try each exercise in its lesson first; the checker there says what differs. These are written
from the formulas, without calling the library, so they can be read next to the lesson.
"""

import math

import torch


def group_advantages(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """Lesson 03: A_i = (r_i - mean(group)) / (std(group) + 1e-4), std unbiased; flat groups exactly 0."""
    groups = rewards.float().view(-1, group_size)  # (P, G)
    centred = groups - groups.mean(dim=1, keepdim=True)
    scaled = centred / (groups.std(dim=1, keepdim=True) + 1e-4)  # torch.std is Bessel-corrected, as TRL
    flat = groups.max(dim=1, keepdim=True).values == groups.min(dim=1, keepdim=True).values
    return torch.where(flat, torch.zeros_like(scaled), scaled).reshape(-1)


def clipped_surrogate(ratio, advantages, eps_low: float = 0.2, eps_high: float = 0.2) -> torch.Tensor:
    """Lesson 04: -min(r A, clip(r, 1 - eps_low, 1 + eps_high) A), per token."""
    clipped = ratio.clamp(1 - eps_low, 1 + eps_high)
    return -torch.minimum(ratio * advantages, clipped * advantages)


def k3(logps: torch.Tensor, ref_logps: torch.Tensor) -> torch.Tensor:
    """Lesson 04: k3 = exp(ref - logp) - (ref - logp) - 1, non-negative, 0 where the two agree."""
    d = ref_logps - logps
    return d.exp() - d - 1


def pass_at_k(n: int, c: int, k: int) -> float:
    """Lesson 01: the unbiased 1 - C(n - c, k) / C(n, k), as a product of k factors."""
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1 - k / i for i in range(n - c + 1, n + 1))


def log_odds(mean_logp: torch.Tensor) -> torch.Tensor:
    """Lesson 08: log p - log(1 - p) from log p, with log(1 - p) computed stably (log1mexp)."""
    near_one = mean_logp > -math.log(2)
    log_1m_p = torch.where(near_one, torch.log(-torch.expm1(mean_logp)), torch.log1p(-torch.exp(mean_logp)))
    return mean_logp - log_1m_p


def overlong_penalty(length: int, max_length: int, buffer: int) -> float:
    """Lesson 02: DAPO's soft overlong penalty: 0 up to max - buffer, then linear down to -1 at max, -1 beyond."""
    free = max_length - buffer
    if length <= free:
        return 0.0
    return max(-1.0, (free - length) / buffer)


def keep(texts: list[str], correct: list[bool], dedup: bool, cap: int | None) -> list[str]:
    """Lesson 07: the correct completions of one question, first copies only if dedup, at most cap, in order."""
    kept = [t for t, ok in zip(texts, correct) if ok]
    if dedup:
        kept = list(dict.fromkeys(kept))  # keeps the first of each, in sampling order
    return kept if cap is None else kept[:cap]


def aggregate(per_token_loss, mask, loss_type: str, max_completion_length: int) -> torch.Tensor:
    """Lesson 06: the four ways TRL reduces per-token losses (B, T) to one number."""
    masked = per_token_loss * mask  # padding contributes nothing, whatever it holds
    if loss_type == "grpo":
        return (masked.sum(dim=1) / mask.sum(dim=1)).mean()  # each completion weighs the same
    if loss_type == "dr_grpo":
        return masked.sum() / (per_token_loss.shape[0] * max_completion_length)
    return masked.sum() / mask.sum()  # bnpo, dapo: every real token weighs the same
