"""Solutions to the lessons' "implement it yourself" exercises (checked by ``course_lib.exercises``).

Try each exercise in its lesson first; the checker there says what differs. These are written
from the formulas, without calling the library, so they can be read next to the lesson.
"""

import math
from fractions import Fraction

import numpy as np
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


def count_parameters(model: torch.nn.Module) -> int:
    """Lesson 00: every distinct weight once: a matrix shared by two layers (tied embeddings) is one,
    frozen weights count, buffers (state that is not trained, e.g. rotary frequencies) do not."""
    distinct = {id(p): p for _, p in model.named_parameters(remove_duplicate=False)}  # by identity, not name
    return sum(p.numel() for p in distinct.values())


def top_p_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Lesson 00: nucleus sampling's filter: keep the most likely tokens until their probability
    reaches top_p (the token that crosses it included, the most likely one always), -inf elsewhere."""
    probs, order = logits.softmax(dim=-1).sort(dim=-1, descending=True)  # (B, V), most likely first
    before = probs.cumsum(dim=-1) - probs  # (B, V): the mass of the tokens ranked above each one
    drop_sorted = before >= top_p  # the nucleus already holds top_p without this token
    drop_sorted[:, 0] = False
    drop = torch.zeros_like(drop_sorted).scatter(1, order, drop_sorted)  # back to vocabulary order
    return logits.masked_fill(drop, float("-inf"))


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Lesson 05: log pi(token) for each position: log-softmax over the vocabulary (in float32, never
    log of softmax), then pick each target's entry."""
    logp = torch.log_softmax(logits.float(), dim=-1)  # (B, T, V)
    return logp.gather(dim=-1, index=targets.unsqueeze(-1)).squeeze(-1)  # (B, T)


def completion_lengths(ids: torch.Tensor, stop_ids: list[int]) -> torch.Tensor:
    """Lesson 05: tokens up to and including each row's first stop token; the full width without one."""
    is_stop = torch.isin(ids, torch.tensor(stop_ids))  # (N, T): any of the stop ids
    first = is_stop.int().argmax(dim=1)  # (N,): index of the first True (0 when there is none)
    return torch.where(is_stop.any(dim=1), first + 1, torch.full_like(first, ids.shape[1]))


def majority_answer(answers: list[str | None]) -> str | None:
    """Lesson 09: the most common readable answer; a tie goes to the tied answer seen first."""
    counts: dict[str, int] = {}
    for answer in answers:
        if answer is not None:
            counts[answer] = counts.get(answer, 0) + 1  # dicts keep first-seen order
    if not counts:
        return None
    return max(counts, key=counts.get)  # max returns the first of equal maxima


def paired_interval(after, before, n_boot: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """Lesson 09: mean of after - before in points, with a 95 % percentile bootstrap interval that
    resamples problems, the same problems for both models."""
    diff = 100 * (np.asarray(after, dtype=float) - np.asarray(before, dtype=float))  # (n,) per problem
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, len(diff), size=(n_boot, len(diff)))].mean(axis=1)  # (n_boot,)
    return float(diff.mean()), float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


def lora_params(shape, rank: int, targets: tuple[str, ...]) -> int:
    """Lesson 10: LoRA adds A (r x in) and B (out x r) to each targeted linear layer of every block."""
    shapes = shape.linear_shapes()  # name -> (in, out)
    return shape.n_layers * sum(rank * (shapes[t][0] + shapes[t][1]) for t in targets)


def optimizer_bytes(trained: int, precision: str, zero_stage: int, n_gpus: int, offload: bool) -> float:
    """Lesson 10: Adam's m and v in fp32 (8 bytes a weight), plus the fp32 master weights in mixed
    precision (12 in all); ZeRO-1 and up split them over the GPUs; offloaded, none stay on the GPU."""
    if offload:
        return 0
    per_weight = 12 if precision == "bf16" else 8
    return trained * per_weight / (n_gpus if zero_stage >= 1 else 1)


def wilson_interval(successes: int, n: int) -> tuple[float, float]:
    """Lesson 01: the Wilson score interval at 95 %: centre and half-width of the proportion's
    interval with z = 1.96 folded in, so it stays inside [0, 1] and is not [0, 0] at 0 successes."""
    z = 1.959963984540054  # the normal's 97.5 % quantile
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def same_number(predicted: str | None, gold: str) -> bool:
    """Lesson 02: whether two answer strings are the same number, exactly (fractions, not floats);
    never raises: anything that is not a number is simply not equal."""

    def value(text):
        if not isinstance(text, str):
            return None
        cleaned = text.strip().replace(",", "").replace("$", "")
        try:
            return Fraction(cleaned)  # "18.00", "3/4", "-2.5" parse exactly
        except (ValueError, ZeroDivisionError):
            return None

    a, b = value(predicted), value(gold)
    return a is not None and b is not None and a == b


def rloo_advantages(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """Lesson 03: each reward minus the mean of the *other* G - 1 rewards of its group."""
    groups = rewards.float().view(-1, group_size)  # (P, G)
    others = (groups.sum(dim=1, keepdim=True) - groups) / (group_size - 1)  # (P, G)
    return (groups - others).reshape(-1)


def zero_std_share(rewards: torch.Tensor, group_size: int) -> float:
    """Lesson 06: TRL's frac_reward_zero_std: the share of groups whose rewards are all equal
    (all right, all wrong, or any other tie), which teach nothing."""
    groups = rewards.float().view(-1, group_size)  # (P, G)
    flat = groups.max(dim=1).values == groups.min(dim=1).values  # (P,)
    return flat.float().mean().item()


def dpo_pair_losses(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta: float) -> torch.Tensor:
    """Lesson 08: -log sigmoid(beta * [(log pi(y_w) - log ref(y_w)) - (log pi(y_l) - log ref(y_l))]) per pair."""
    margin = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)  # (B,)
    return -torch.nn.functional.logsigmoid(beta * margin)


def relative_change(after: torch.Tensor, before: torch.Tensor) -> float:
    """Lesson 10: ||W' - W||_F / ||W||_F, every entry counted, divided by the base's norm."""
    return float(torch.sqrt(((after - before) ** 2).sum()) / torch.sqrt((before**2).sum()))


def group_relative_change(afters: list[torch.Tensor], befores: list[torch.Tensor]) -> float:
    """Lesson 10: the relative change of the matrices concatenated: sqrt(sum ||dW||^2 / sum ||W||^2)."""
    delta = sum(((a - b) ** 2).sum() for a, b in zip(afters, befores))
    return float(torch.sqrt(delta / sum((b**2).sum() for b in befores)))


def sft_question_set(grpo_set: list, fresh_set: list, share: float, size: int) -> list:
    """Lesson 11: round(share x size) of GRPO's questions first, then fresh ones up to the stage's size."""
    shared = round(share * min(size, len(grpo_set)))
    return list(grpo_set[:shared]) + list(fresh_set[: size - shared])


def zero_variance_by_part(advantages: torch.Tensor, group_size: int, seen: list[bool]) -> tuple[float, float]:
    """Lesson 11: the share of groups whose advantages are all 0, among seen and among fresh questions."""
    flat = [bool((advantages[i * group_size : (i + 1) * group_size] == 0).all()) for i in range(len(seen))]
    seen_flat = [f for f, s in zip(flat, seen) if s]
    fresh_flat = [f for f, s in zip(flat, seen) if not s]
    return (sum(seen_flat) / len(seen_flat), sum(fresh_flat) / len(fresh_flat))


def token_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Lesson 13: H = -sum_v p_v log p_v per position, from log_softmax (stable for large logits)."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(dim=-1)


def total_grad_norm(grads: list[torch.Tensor]) -> float:
    """Lesson 13: the norm of all gradients as one vector: sqrt of the sum of their squared norms."""
    return math.sqrt(sum(float((g.double() ** 2).sum()) for g in grads))


def refill(zero_variance: list[bool], prompts: int) -> list[int]:
    """Lesson 14: the first `prompts` groups with a signal, in drawn order, then flat ones if too few."""
    signal = [i for i, flat in enumerate(zero_variance) if not flat]
    flat = [i for i, is_flat in enumerate(zero_variance) if is_flat]
    return (signal + flat)[:prompts]


def learning_area(completions, accuracy_curves, budget: float) -> np.ndarray:
    """Lesson 14: the trapezoid area under each problem's curve from 0 to the budget, divided by it."""
    x = np.asarray(completions, dtype=float)
    y = np.asarray(accuracy_curves, dtype=float).reshape(len(x), -1)
    inside = x < budget
    at_budget = np.array([np.interp(budget, x, y[:, i]) for i in range(y.shape[1])])  # the curve cut at B
    xs = np.append(x[inside], budget)
    ys = np.vstack([y[inside], at_budget])
    widths = np.diff(xs)[:, None]  # (segments, 1)
    return (widths * (ys[1:] + ys[:-1]) / 2).sum(axis=0) / budget
