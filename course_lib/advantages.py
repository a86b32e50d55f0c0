"""Group-relative advantages: the "GR" in GRPO.

GRPO samples a group of G completions for each prompt and judges every completion
against its own group instead of against a learned value function. With rewards
``r_1 … r_G`` of one group:

.. math::  A_i = \\frac{r_i - \\operatorname{mean}(r_{1..G})}{\\operatorname{std}(r_{1..G}) + \\varepsilon}

Layout: rewards for a batch of P prompts come as one flat vector of length ``P * G``,
each prompt's G completions consecutive (``[p0 g0, p0 g1, …, p1 g0, …]``), as TRL's
``GRPOTrainer`` lays them out. The advantages come back in the same order.

Choices (TRL's ``GRPOConfig.scale_rewards`` names them the same way):

* ``scale="group"``: divide by the group's std (the GRPO paper, TRL's default);
* ``scale="batch"``: subtract the group mean but divide by the std of the whole batch
  (more robust when a group's std is tiny, as recommended by "Tricks or Traps", 2025);
* ``scale="none"``: no division at all (Dr. GRPO, 2025), which removes the
  difficulty bias: dividing by a group's std up-weights groups that are almost all
  right or almost all wrong.
* ``unbiased=True`` uses Bessel's correction, ``sqrt(sum (r - mean)^2 / (G - 1))``, as
  ``torch.std`` and TRL do; ``False`` gives the population formula ``/ G`` that many
  tutorials write (next to code that calls ``torch.std``, so their maths and code differ).

A group whose rewards are all equal has zero variance: every ``r_i - mean`` is zero, so
its advantages are exactly zero and it contributes no gradient. Such groups are flagged
so a trainer can count them (TRL logs the share as ``frac_reward_zero_std``) or skip them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, NamedTuple

import torch

Scale = Literal["group", "batch", "none"]
SCALES: tuple[str, ...] = ("group", "batch", "none")


class GroupAdvantages(NamedTuple):
    """``advantages``: (P*G,) in the order of the rewards; ``zero_variance``: (P,) bool per group."""

    advantages: torch.Tensor
    zero_variance: torch.Tensor


def _std(x: torch.Tensor, dim: int | None, unbiased: bool) -> torch.Tensor:
    """Standard deviation, defined as 0 where a single value makes the unbiased std undefined."""
    n = x.numel() if dim is None else x.shape[dim]
    if n < 2:
        return torch.zeros(()) if dim is None else torch.zeros(x.shape[0], dtype=x.dtype)
    return x.std(dim=dim, correction=1 if unbiased else 0)


def group_advantages(
    rewards: Sequence[float] | torch.Tensor,
    group_size: int,
    scale: Scale = "group",
    eps: float = 1e-4,
    unbiased: bool = True,
) -> GroupAdvantages:
    """Advantages of a flat batch of rewards, normalised within groups of ``group_size``.

    Args:
        rewards: (P*G,) rewards, each prompt's G completions consecutive.
        group_size: G, completions per prompt.
        scale: ``"group"``, ``"batch"`` or ``"none"`` (see the module docstring).
        eps: added to the std before dividing (TRL uses 1e-4).
        unbiased: Bessel-corrected std (``torch.std``, TRL) or the population std.

    Returns:
        ``GroupAdvantages(advantages (P*G,), zero_variance (P,))``; advantages of a
        zero-variance group are exactly 0.
    """
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
    r = torch.as_tensor(rewards)
    r = r.float() if not r.is_floating_point() else r
    if group_size < 1 or r.ndim != 1 or r.numel() % group_size:
        raise ValueError(
            f"need a flat vector of rewards whose length is a multiple of group_size="
            f"{group_size}; got shape {tuple(r.shape)}"
        )
    if not torch.isfinite(r).all():
        raise ValueError("rewards must be finite; a reward function returned NaN or inf")
    groups = r.view(-1, group_size)  # (P, G)
    centred = groups - groups.mean(dim=1, keepdim=True)  # r_i - mean(group)
    zero_variance = groups.amax(dim=1) == groups.amin(dim=1)  # (P,)
    if scale == "group":
        centred = centred / (_std(groups, 1, unbiased).unsqueeze(1) + eps)
    elif scale == "batch":
        centred = centred / (_std(r, None, unbiased) + eps)
    advantages = centred.masked_fill(zero_variance.unsqueeze(1), 0.0)  # exact zeros, never NaN
    return GroupAdvantages(advantages.reshape(-1), zero_variance)


def rloo_advantages(rewards: Sequence[float] | torch.Tensor, group_size: int) -> torch.Tensor:
    """RLOO's leave-one-out baseline (Ahmadian et al. 2024, "Back to Basics", arXiv:2402.14740):
    each completion is judged against the mean of the *other* G - 1 in its group,

    .. math::  A_i = r_i - \\frac{1}{G-1}\\sum_{j \\ne i} r_j = \\frac{G}{G-1}\\,(r_i - \\bar r),

    so it is GRPO's centring without the std division, scaled by G / (G - 1). The baseline of
    completion i does not depend on r_i, which makes the policy-gradient estimate unbiased.

    Args:
        rewards: (P*G,) each prompt's G completions consecutive.
        group_size: G >= 2 (one completion has no others to compare with).
    Returns:
        (P*G,) advantages in the order of the rewards.
    """
    r = torch.as_tensor(rewards).float()
    if group_size < 2 or r.ndim != 1 or r.numel() % group_size:
        raise ValueError(f"need a flat vector whose length is a multiple of group_size >= 2; got {tuple(r.shape)}")
    groups = r.view(-1, group_size)  # (P, G)
    others = (groups.sum(dim=1, keepdim=True) - groups) / (group_size - 1)  # (P, G) mean of the other G - 1
    return (groups - others).reshape(-1)


def kl_in_reward(
    rewards: Sequence[float] | torch.Tensor,
    sequence_kl: Sequence[float] | torch.Tensor,
    group_size: int,
    beta: float,
    scale: Scale = "group",
) -> torch.Tensor:
    """Advantages when the KL to the reference is charged in the *reward*, as PPO-style RLHF does
    (InstructGPT: r_i - beta * KL_i, KL_i summed over the completion's tokens), instead of being
    added to the *loss* per token, as GRPO does (``losses.kl_penalty``).

    In the reward, the KL goes through the group's centring: a KL that is the same for every
    completion of a group cancels, and only a completion that drifted further than its siblings
    is penalised (and, with std scaling, by an amount relative to the group's spread).

    Args:
        rewards, sequence_kl: (P*G,) per completion, each prompt's G consecutive.
    Returns:
        (P*G,) :func:`group_advantages` of ``rewards - beta * sequence_kl``.
    """
    penalised = torch.as_tensor(rewards).float() - beta * torch.as_tensor(sequence_kl).float()
    return group_advantages(penalised, group_size, scale=scale).advantages
