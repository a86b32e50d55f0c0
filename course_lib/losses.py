"""Log-probabilities of completions, KL estimators, and the GRPO loss, line by line.

For a prompt x and a completion y = (y_1 .. y_T) the model gives

    log pi(y_t | x, y_<t) = log_softmax(logits_t / T)[y_t]      (T: temperature)

per token, and log pi(y | x) = sum_t log pi(y_t | x, y_<t) per sequence. Every loss of
the course is written in terms of these per-token log-probs.

The GRPO loss (lesson 04) for completion i, token t, with advantage A_i:

    r_it = exp(logp_it - old_it)                                   ratio to pi_old (the sampler)
    l_it = -min(r_it A_i, clip(r_it, 1 - eps_low, 1 + eps_high) A_i)   :func:`clipped_surrogate`
           + beta * r_it * k3(pi || pi_ref)_it                      :func:`kl_penalty` (pi_ref: frozen, not pi_old)
    loss = sum_{i,t} m_it l_it / normaliser                         :func:`aggregate` (``LOSS_TYPES``)

:func:`grpo_loss` composes these pieces and :func:`loss_metrics`. The same formulas as TRL's
``GRPOTrainer._compute_loss``; ``tests/test_losses.py`` checks that they agree to 1e-6.

Two names not to mix up: :func:`log_likelihood` gives log pi(y | x) summed over a completion's
tokens, one number per sequence (B,); :func:`per_token_logprobs` gives every token's log-prob
of whole sequences (B, L-1), what the preference losses take.

The preference losses of lesson 08 work on pairs (chosen y_w, rejected y_l) of one prompt:
ORPO (SFT on y_w plus -log sigmoid of the log-odds ratio, no reference model) and DPO
(-log sigmoid(beta * the log-ratio margin against pi_ref)). ``tests/test_preference_losses.py``
checks them against TRL's ``ORPOTrainer`` and ``DPOTrainer``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from transformers.cache_utils import DynamicCache

LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo")


# --------------------------------------------------------------------------- log-probs


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log_softmax(logits)[targets]: (B, T, V) logits and (B, T) ids -> (B, T) log-probs."""
    return torch.log_softmax(logits.float(), dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def token_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of the next-token distribution, H_t = -sum_v p_v log p_v: (B, T, V) -> (B, T)."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(dim=-1)


def completion_logits(
    model,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    completion_ids: torch.Tensor,
    completion_mask: torch.Tensor,
    temperature: float = 1.0,
) -> torch.Tensor:
    """The logits (divided by ``temperature``) that predict each completion token: (B, T, V).

    Shapes: ``prompt_ids``/``prompt_mask`` (B, P), left-padded; ``completion_ids``/
    ``completion_mask`` (B, T), right-padded. Position ids are derived from the attention
    mask so that left padding does not shift the positions (the same positions
    ``generate`` used).
    """
    input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
    attention_mask = torch.cat([prompt_mask, completion_mask], dim=1)
    position_ids = (attention_mask.cumsum(dim=1) - 1).clamp(min=0)
    logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids).logits
    # The logit at position i predicts token i+1: keep the ones that predict the completion.
    return logits[:, prompt_ids.shape[1] - 1 : -1] / temperature


@dataclass
class SharedPrompts:
    """The distinct prompts of a batch, run once: what every completion of a prompt reads from it.

    A GRPO batch holds G completions of every prompt; row by row the model would run each prompt
    G times. :func:`run_prompts` runs the U distinct prompts once and keeps, per layer, their keys
    and values, and the logit of their last position (it predicts each completion's first token).
    :func:`completion_logits_after` then runs only the completions, each reading its prompt's
    cache through an index. Attention over a cached prefix is the same sum as over the joined
    sequence, so the logits agree with :func:`completion_logits` to float rounding.

    With gradients, the kept tensors are leaves: the micro-batches' backward passes stop there and
    add up their gradients, and :meth:`backward` carries the total through the prompts' forward
    once, so every weight gets the gradient the row-by-row forward would give it.
    """

    index: torch.Tensor  # (N,) the row's prompt among the U distinct ones
    keys: list[torch.Tensor]  # per layer (U, H_kv, P, D)
    values: list[torch.Tensor]
    first: torch.Tensor  # (U, 1, V) the logit at each prompt's last position
    prompt_mask: torch.Tensor  # (N, P) the rows' prompt masks (the width the cache was built with)
    outputs: tuple = ()  # the tensors the leaves were detached from (with gradients only)

    def backward(self) -> None:
        """Carry the gradients the completions left on the prompts' cache through the prompts' forward."""
        leaves = [*self.keys, *self.values, self.first]
        pairs = [(out, leaf.grad) for out, leaf in zip(self.outputs, leaves) if leaf.grad is not None]
        if pairs:
            torch.autograd.backward([out for out, _ in pairs], [grad for _, grad in pairs])


def shares_prompts(model, prompt_ids: torch.Tensor) -> bool:
    """Whether running each distinct prompt once pays and works: rows repeat a prompt, and the model
    keeps a cache while training (gradient checkpointing drops it)."""
    repeated = len(torch.unique(prompt_ids, dim=0)) < len(prompt_ids)
    return repeated and not getattr(model, "is_gradient_checkpointing", False)


def distinct_prompts(
    prompt_ids: torch.Tensor, prompt_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The U distinct prompts among (N, P) left-padded rows, a prompt being its ids and its padding:
    their ids and mask (U, P) each, and each row's prompt among them (N,)."""
    rows = torch.cat([prompt_ids, prompt_mask], dim=1)  # (N, 2P)
    unique, index = torch.unique(rows, dim=0, return_inverse=True)  # (U, 2P), (N,)
    unique_ids, unique_mask = unique.split(prompt_ids.shape[1], dim=1)  # (U, P) each
    return unique_ids, unique_mask, index


def run_prompts(model, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor) -> SharedPrompts:
    """Run the distinct prompts of (N, P) left-padded rows once (with gradients where enabled)."""
    unique_ids, unique_mask, index = distinct_prompts(prompt_ids, prompt_mask)  # (U, P), (U, P), (N,)
    positions = (unique_mask.cumsum(dim=1) - 1).clamp(min=0)  # (U, P): left padding does not shift positions
    out = model(
        input_ids=unique_ids, attention_mask=unique_mask, position_ids=positions, use_cache=True, logits_to_keep=1
    )
    layers = out.past_key_values.layers
    keys, values, first = [layer.keys for layer in layers], [layer.values for layer in layers], out.logits
    if not torch.is_grad_enabled():
        return SharedPrompts(index, keys, values, first, prompt_mask)
    outputs = (*keys, *values, first)
    leaves = [t.detach().requires_grad_() for t in outputs]  # where the completions' backward passes stop
    n = len(keys)
    return SharedPrompts(index, leaves[:n], leaves[n : 2 * n], leaves[-1], prompt_mask, outputs)


def completion_logits_after(
    model,
    prompts: SharedPrompts,
    rows: torch.Tensor | slice,
    completion_ids: torch.Tensor,
    completion_mask: torch.Tensor,
    temperature: float = 1.0,
) -> torch.Tensor:
    """The logits that predict each completion token of the batch rows ``rows``, their prompts read
    from ``prompts``: (m, T) completions -> (m, T, V), as :func:`completion_logits` gives.

        logits of row i = [last prompt logit of prompt(i)] ++ model(completion_i[:-1] | cache of prompt(i))
    """
    select = torch.nn.functional.one_hot(prompts.index[rows], len(prompts.first)).to(prompts.first.dtype)  # (m, U)
    first = _pick(select, prompts.first)  # (m, 1, V)
    if completion_ids.shape[1] == 1:
        return first / temperature
    cache = DynamicCache()
    for layer, (k, v) in enumerate(zip(prompts.keys, prompts.values)):
        cache.update(_pick(select, k), _pick(select, v), layer)  # (m, H_kv, P, D): each row its prompt's
    attention_mask = torch.cat([prompts.prompt_mask[rows], completion_mask[:, :-1]], dim=1)  # (m, P + T - 1)
    position_ids = (attention_mask.cumsum(dim=1) - 1).clamp(min=0)[:, prompts.prompt_mask.shape[1] :]  # (m, T - 1)
    rest = model(
        input_ids=completion_ids[:, :-1],
        attention_mask=attention_mask,
        position_ids=position_ids,
        past_key_values=cache,
        use_cache=True,
    ).logits  # (m, T - 1, V): completion token t predicts token t + 1
    return torch.cat([first, rest], dim=1) / temperature  # (m, T, V)


def _pick(select: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Row i of the result is x[j] where select[i, j] = 1: (m, U) one-hot, (U, ...) -> (m, ...). A
    product with a one-hot matrix rather than an index, because its backward sums each prompt's
    gradients in a fixed order (an index's backward adds them up in whatever order the CPU
    threads finish, so two runs would differ in the last bits)."""
    return (select @ x.flatten(1)).view(len(select), *x.shape[1:])


def completion_logprobs(
    model,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    completion_ids: torch.Tensor,
    completion_mask: torch.Tensor,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Per-token log-probs of the completions, masked: (B, T), zero where the mask is 0."""
    logits = completion_logits(model, prompt_ids, prompt_mask, completion_ids, completion_mask, temperature)
    return token_logprobs(logits, completion_ids) * completion_mask


def encode_prompts(tokenizer, prompts: list[str], device) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded prompt ids and attention mask, (B, P) each, on ``device``."""
    enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False, padding_side="left")
    return enc["input_ids"].to(device), enc["attention_mask"].to(device)


def samples_inputs(tokenizer, samples, device="cpu") -> dict[str, torch.Tensor]:
    """The four tensors a loss needs for ``samples`` (one row per completion), on ``device``:
    ``prompt_ids``/``prompt_mask`` (N, P) and ``completion_ids``/``completion_mask`` (N, T)."""
    prompt_ids, prompt_mask = encode_prompts(tokenizer, [samples.prompts[i] for i in samples.prompt_index], device)
    return {
        "prompt_ids": prompt_ids,
        "prompt_mask": prompt_mask,
        "completion_ids": samples.completion_ids.to(device),
        "completion_mask": samples.completion_mask.to(device),
    }


@torch.no_grad()
def log_likelihood(model, tokenizer, prompts: list[str], completions: list[str]) -> torch.Tensor:
    """log pi(completion | prompt) summed over the completion's tokens: (B,) float32."""
    device = next(model.parameters()).device
    prompt_ids, prompt_mask = encode_prompts(tokenizer, prompts, device)
    completion = tokenizer(
        completions, return_tensors="pt", padding=True, add_special_tokens=False, padding_side="right"
    ).to(device)
    logps = completion_logprobs(model, prompt_ids, prompt_mask, completion["input_ids"], completion["attention_mask"])
    return logps.sum(dim=1).cpu()


def samples_logprobs(model, tokenizer, samples, temperature: float = 1.0) -> torch.Tensor:
    """Per-token log-probs (N, T) of ``samples``' completions under ``model``, with gradients.

    The same numbers as ``samples.logprobs`` when ``model`` is the model that sampled them
    (up to float error), but differentiable: the quantity a policy-gradient loss pushes on.
    """
    return completion_logprobs(
        model, **samples_inputs(tokenizer, samples, next(model.parameters()).device), temperature=temperature
    )


# --------------------------------------------------------------------------- KL estimators
# Schulman's estimators of KL(pi || pi_ref) from tokens sampled from pi. With
# d = logp_ref - logp (the log-ratio ref/pi at the sampled token):
#   k1 = -d                 unbiased, high variance, negative on some tokens
#   k2 = d^2 / 2            biased, low variance, always >= 0
#   k3 = exp(d) - d - 1     unbiased, low variance, always >= 0   (GRPO, TRL)


def kl_k1(logps: torch.Tensor, ref_logps: torch.Tensor) -> torch.Tensor:
    """k1 = log pi - log pi_ref, per token (any shape)."""
    return logps - ref_logps


def kl_k2(logps: torch.Tensor, ref_logps: torch.Tensor) -> torch.Tensor:
    """k2 = (log pi - log pi_ref)^2 / 2, per token."""
    return 0.5 * (logps - ref_logps) ** 2


def kl_k3(logps: torch.Tensor, ref_logps: torch.Tensor) -> torch.Tensor:
    """k3 = exp(ref - logp) - (ref - logp) - 1, per token: the estimator GRPO and TRL use."""
    d = ref_logps - logps
    return torch.exp(d) - d - 1


KL_ESTIMATORS = {"k1": kl_k1, "k2": kl_k2, "k3": kl_k3}


def old_minus_new_gradient(model, tokenizer, prompt: str) -> dict[str, float]:
    """The gradient of the tutorial's "KL" term ``mean(old - new)`` at the next token after ``prompt``,
    per sampled token and in expectation over the model's own distribution.

    For one sampled token y the term is log pi_old(y) - log pi(y), whose gradient at pi = pi_old is
    -grad log pi(y): an SFT step on that token. Averaged over tokens drawn from the policy itself,

    .. math:: \\mathbb{E}_{y\\sim\\pi}[-\\nabla \\log\\pi(y)] = -\\sum_y \\pi(y)\\,\\frac{\\nabla\\pi(y)}{\\pi(y)}
              = -\\nabla \\sum_y \\pi(y) = 0,

    so on-policy the term pulls nowhere on average: it adds noise, not an SFT or entropy effect.
    Returns the gradient's norm for the most likely token alone (``per_token``) and for the
    expectation computed exactly over the whole vocabulary (``expected``).
    """
    device = next(model.parameters()).device
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"].to(device)  # (1, L)
    params = [p for p in model.parameters() if p.requires_grad]
    logp = torch.log_softmax(model(input_ids=ids).logits[0, -1].float(), dim=-1)  # (V,) next-token log-probs
    probs = logp.exp().detach()  # (V,) pi_old = pi at this point, held fixed
    per_token = torch.autograd.grad(-logp.max(), params, retain_graph=True)  # one sampled token: its SFT step
    expected = torch.autograd.grad(-(probs * logp).sum(), params)  # sum_y pi(y) * (-grad log pi(y))
    return {"per_token": _norm(per_token), "expected": _norm(expected)}


def _norm(grads) -> float:
    return float(torch.sqrt(sum((g.float() ** 2).sum() for g in grads)))


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` over the positions where ``mask`` is 1 (0 when the mask is empty)."""
    return (x * mask).sum() / mask.sum().clamp(min=1)


# --------------------------------------------------------------------------- the GRPO loss
# Four short pieces, composed by grpo_loss: the clipped surrogate (policy term), the KL term,
# the aggregation over tokens and completions (one normaliser), and the metrics.


@dataclass
class GRPOLoss:
    loss: torch.Tensor  # scalar, differentiable: call .backward() on it
    per_token_loss: torch.Tensor  # (B, T) l_it before aggregation (not masked)
    metrics: dict[str, float]  # clip fractions, kl, entropy, ratio, policy loss


def clipped_surrogate(
    ratio: torch.Tensor, advantages: torch.Tensor, epsilon_low: float = 0.2, epsilon_high: float = 0.2
) -> torch.Tensor:
    """The policy term of l_it: -min(r_it A_i, clip(r_it, 1 - eps_low, 1 + eps_high) A_i).

    Args:
        ratio: (B, T) r_it = pi(y_it) / pi_old(y_it).
        advantages: (B, 1) or (B, T), one A_i per completion broadcast over its tokens.
    Returns:
        (B, T) per-token policy loss. Where the clip binds on the profitable side (A > 0 and
        r > 1 + eps_high, or A < 0 and r < 1 - eps_low) the clipped term is the minimum, a
        constant in r: no gradient flows there.
    """
    clipped = torch.clamp(ratio, 1 - epsilon_low, 1 + epsilon_high)
    return -torch.min(ratio * advantages, clipped * advantages)


def sequence_ratio(logps: torch.Tensor, old_logps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """GSPO's importance ratio, one per completion (Zheng et al. 2025, "Group Sequence Policy
    Optimization", arXiv:2507.18071): the geometric mean of its token ratios,

    .. math::  s_i = \\Big(\\frac{\\pi_\\theta(y_i\\mid x)}{\\pi_\\text{old}(y_i\\mid x)}\\Big)^{1/|y_i|}
               = \\exp\\Big(\\frac{1}{|y_i|}\\sum_t \\log\\frac{\\pi_\\theta(y_{i,t})}{\\pi_\\text{old}(y_{i,t})}\\Big).

    GSPO clips s_i, so a completion is kept or clipped as a whole, where GRPO clips each token's
    own ratio (one outlying token is clipped alone). Shapes: (B, T) each -> (B,).
    """
    log_ratio = (logps - old_logps) * mask  # (B, T), 0 on padding
    return torch.exp(log_ratio.sum(dim=1) / mask.sum(dim=1).clamp(min=1))  # (B,)


def kl_penalty(logps: torch.Tensor, ref_logps: torch.Tensor, ratio: torch.Tensor | None = None) -> torch.Tensor:
    """The KL term of l_it: k3(pi || pi_ref) per token, times r_it when ``ratio`` is given.

    Args:
        logps, ref_logps: (B, T) log-probs of the sampled tokens under pi and the frozen pi_ref.
        ratio: (B, T) r_it, or None. r_it is 1 in value on-policy but not in gradient: with it,
            E_pi[grad (r k3)] is the gradient of the reverse KL(pi || pi_ref); without it, the
            gradient of the forward KL(pi_ref || pi) (``analysis.kl_gradient_table`` shows both).
    Returns:
        (B, T) per-token KL estimates.
    """
    per_token_kl = kl_k3(logps, ref_logps)
    return per_token_kl if ratio is None else per_token_kl * ratio


def aggregate(
    per_token_loss: torch.Tensor,
    mask: torch.Tensor,
    loss_type: str,
    max_completion_length: int | None = None,
    num_sequences: int | None = None,
    num_tokens: float | None = None,
) -> torch.Tensor:
    """Reduce l_it (B, T) to a scalar. With |o_i| the length of completion i, m the mask:

    * ``grpo``:    (1/B) sum_i (1/|o_i|) sum_t l_it    each completion weighs the same, so a
      token of a long completion weighs less: the length bias of the original GRPO.
    * ``bnpo``:    sum_{i,t} m l_it / N_tokens        token mean over the batch.
    * ``dr_grpo``: sum_{i,t} m l_it / (B * L_max)     a constant normaliser (Dr. GRPO).
    * ``dapo``:    sum_{i,t} m l_it / N_tokens        token mean over the whole generation batch.

    The normaliser is the one count below the fraction bar: B (``num_sequences``), N_tokens
    (``num_tokens``) or B * L_max. Both default to this tensor's; a loop that splits a batch
    into micro-batches passes the whole batch's counts, so that the micro-batches' losses
    (and gradients) add up to the batch's. ``bnpo`` and ``dapo`` then give the same number: in
    TRL they differ only across processes and gradient-accumulation steps (bnpo divides by
    each micro-batch's own tokens, dapo by the whole generation batch's), and
    :class:`course_lib.train.grpo.GRPOLoop` does bnpo the same way (each micro-batch's token count,
    times the number of micro-batches).
    """
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"unknown loss_type {loss_type!r}; choose one of {', '.join(LOSS_TYPES)}")
    if loss_type == "dr_grpo" and max_completion_length is None:
        raise ValueError("loss_type='dr_grpo' needs max_completion_length (its constant normaliser)")
    mask = mask.to(per_token_loss.dtype)
    num_sequences = per_token_loss.shape[0] if num_sequences is None else num_sequences
    num_tokens = mask.sum() if num_tokens is None else torch.as_tensor(num_tokens, dtype=mask.dtype)
    masked = per_token_loss * mask  # (B, T), 0 on padding
    if loss_type == "grpo":
        per_sequence = masked.sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)  # (B,) mean over each o_i
        return per_sequence.sum() / num_sequences
    if loss_type == "dr_grpo":
        return masked.sum() / (num_sequences * max_completion_length)
    return masked.sum() / num_tokens.clamp(min=1.0)  # bnpo, dapo


def loss_metrics(
    ratio: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    loss: torch.Tensor,
    epsilon_low: float,
    epsilon_high: float,
    per_token_kl: torch.Tensor | None = None,
    entropy: torch.Tensor | None = None,
) -> dict[str, float]:
    """What a GRPO step logs, as token means over the mask (TRL's names).

    ``clip_ratio/low``: r < 1 - eps_low where A < 0; ``clip_ratio/high``: r > 1 + eps_high
    where A > 0; ``clip_ratio/region``: either (the tokens whose gradient the clip stopped);
    ``ratio``, ``kl`` (when ``per_token_kl`` is given), ``entropy`` (when given) and
    ``policy_loss`` (the aggregated loss). Shapes: ``ratio``, ``mask``, ``per_token_kl``,
    ``entropy`` (B, T); ``advantages`` (B, 1) or (B, T).
    """
    with torch.no_grad():
        mask_f = mask.float()
        low = ((ratio < 1 - epsilon_low) & (advantages < 0)).float()
        high = ((ratio > 1 + epsilon_high) & (advantages > 0)).float()
        metrics = {
            "policy_loss": float(loss),
            "ratio": float(masked_mean(ratio, mask_f)),
            "clip_ratio/low": float(masked_mean(low, mask_f)),
            "clip_ratio/high": float(masked_mean(high, mask_f)),
            "clip_ratio/region": float(masked_mean(torch.maximum(low, high), mask_f)),
        }
        if per_token_kl is not None:
            metrics["kl"] = float(masked_mean(per_token_kl, mask_f))
        if entropy is not None:
            metrics["entropy"] = float(masked_mean(entropy, mask_f))
    return metrics


def grpo_loss(
    logps: torch.Tensor,
    old_logps: torch.Tensor | None,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    ref_logps: torch.Tensor | None = None,
    beta: float = 0.0,
    epsilon_low: float = 0.2,
    epsilon_high: float | None = None,
    loss_type: str = "dapo",
    max_completion_length: int | None = None,
    num_sequences: int | None = None,
    num_tokens: float | None = None,
    entropy: torch.Tensor | None = None,
    kl_ratio_correction: bool = True,
) -> GRPOLoss:
    """The clipped GRPO objective, negated (a loss to minimise):

        r_it = exp(logp_it - old_it)
        l_it = clipped_surrogate(r_it, A_i) + beta * r_it * k3_it           (kl_penalty)
        loss = aggregate(l_it)                                               (one normaliser)

    Args:
        logps: (B, T) log-probs of the sampled tokens under the policy being trained (with gradients).
        old_logps: (B, T) under pi_old, the policy that sampled the batch; None means mu = 1:
            pi_old is the current policy, so ``logps.detach()`` is used and r = 1 in value.
        advantages: (B,) one per completion, or (B, T).
        mask: (B, T) 1 on completion tokens (EOS included), 0 on padding.
        ref_logps: (B, T) under the frozen reference pi_ref (needed when ``beta > 0``; when
            given with ``beta = 0`` the KL is still measured, not trained on).
        epsilon_high: defaults to ``epsilon_low`` (DAPO's "clip-higher" sets it larger, e.g. 0.28).
        max_completion_length, num_sequences, num_tokens: the normaliser (:func:`aggregate`).
        entropy: (B, T), only reported.
        kl_ratio_correction: the factor r_it on the KL term (on by default as in TRL 1.16, from
            DeepSeek-V3.2): see :func:`kl_penalty`.
    Returns:
        :class:`GRPOLoss` (the scalar loss, l_it, and :func:`loss_metrics`).
    """
    epsilon_high = epsilon_low if epsilon_high is None else epsilon_high
    if beta != 0.0 and ref_logps is None:
        raise ValueError("beta > 0 needs ref_logps: log-probs of the same tokens under the frozen reference")
    if old_logps is None:
        old_logps = logps.detach()  # mu = 1: pi_old is pi
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(1)  # (B, 1): one A per completion

    ratio = torch.exp(logps - old_logps)  # (B, T) r_it, 1 at the first inner step
    per_token_loss = clipped_surrogate(ratio, advantages, epsilon_low, epsilon_high)  # (B, T)
    per_token_kl = None
    if ref_logps is not None:
        per_token_kl = kl_penalty(logps, ref_logps, ratio if kl_ratio_correction else None)  # (B, T)
    if beta != 0.0:
        per_token_loss = per_token_loss + beta * per_token_kl
    loss = aggregate(per_token_loss, mask, loss_type, max_completion_length, num_sequences, num_tokens)
    metrics = loss_metrics(ratio, advantages, mask, loss, epsilon_low, epsilon_high, per_token_kl, entropy)
    return GRPOLoss(loss, per_token_loss, metrics)


# --------------------------------------------------------------------------- preference losses
# Lesson 08. A preference pair is one prompt x with a chosen completion y_w (here: a correct
# sample) and a rejected one y_l (a wrong sample of the same prompt). Both losses below take
# per-token log-probs of whole sequences, (B, L-1) from :func:`per_token_logprobs`, and masks
# of the same shape that pick the completion's tokens, so the caller decides what counts.


def encode_sequences(tokenizer, prompts: list[str], completions: list[str], device="cpu") -> dict[str, torch.Tensor]:
    """prompt + completion + EOS as one right-padded row each: ``input_ids``, ``attention_mask``
    and ``completion_mask`` (1 on the completion's tokens and its EOS), all (B, L).

    The prompt and the completion are tokenized separately and concatenated, so the
    completion starts exactly where the prompt ends (the same ids TRL's trainers build for
    prompts that end on a token boundary, as the course's chat template does).
    """
    rows, marks = [], []
    for prompt, completion in zip(prompts, completions, strict=True):
        p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        c = tokenizer(completion, add_special_tokens=False)["input_ids"]
        if not c or c[-1] != tokenizer.eos_token_id:
            c = c + [tokenizer.eos_token_id]
        rows.append(p + c)
        marks.append([0] * len(p) + [1] * len(c))
    width = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id
    input_ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows])
    attention_mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    completion_mask = torch.tensor([m + [0] * (width - len(m)) for m in marks])
    return {
        "input_ids": input_ids.to(device),
        "attention_mask": attention_mask.to(device),
        "completion_mask": completion_mask.to(device),
    }


def per_token_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """log pi(x_t | x_<t) for every token after the first: (B, L) ids -> (B, L-1) log-probs.

    Column j is the log-prob of token j+1, so a (B, L) token mask ``m`` lines up as ``m[:, 1:]``.
    Rows must be right-padded (positions 0, 1, 2, ... are then the true positions).
    """
    logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
    return token_logprobs(logits[:, :-1], input_ids[:, 1:])


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x < 0, without cancellation: log1p(-e^x) far from 0, log(-expm1(x)) near it."""
    return torch.where(x < -0.6931471805599453, torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x)))


def log_odds(mean_logp: torch.Tensor) -> torch.Tensor:
    """log odds(y | x) = log p - log(1 - p) with log p the *mean* per-token log-prob: (B,) -> (B,)."""
    return mean_logp - log1mexp(mean_logp)


@dataclass
class PreferenceLoss:
    loss: torch.Tensor  # scalar, differentiable
    per_pair_loss: torch.Tensor  # (B,) the preference term of each pair
    metrics: dict[str, float]


def zero_variance_filter_scale(model, tokenizer, samples, advantages: torch.Tensor, zero: torch.Tensor) -> dict:
    """What dropping the zero-variance groups does to GRPO's gradient (loss_type ``dapo``: the
    token mean over the batch). Their advantages are 0, so they add nothing to the loss's sum,
    but their tokens count in its normaliser: without them the same sum is divided by fewer
    tokens, and the gradient grows by (all tokens) / (tokens of the kept groups).

    Args:
        samples: a ``sampling.Samples`` of P groups of ``samples.n``.
        advantages: (P * n,) group-relative advantages; zero: (P,) True for the flat groups.
    Returns:
        ``gradient_ratio`` (norm with the filter / without) and ``token_ratio`` (all / kept tokens).
    """
    mask = samples.completion_mask.float()  # (N, T)
    keep = ~zero.repeat_interleave(samples.n)  # (N,) rows of the groups with a signal
    if not keep.any():
        raise ValueError("every group has zero variance: the filter would leave nothing to train on")
    logps = samples_logprobs(model, tokenizer, samples)  # (N, T), with gradients
    params = [p for p in model.parameters() if p.requires_grad]
    surrogate = -advantages[:, None] * logps * mask  # (N, T) the policy-gradient term at ratio 1
    kept_grad = torch.autograd.grad(surrogate[keep].sum() / mask[keep].sum(), params, retain_graph=True)
    all_grad = torch.autograd.grad(surrogate.sum() / mask.sum(), params)
    return {
        "gradient_ratio": _norm(kept_grad) / _norm(all_grad),
        "token_ratio": float(mask.sum() / mask[keep].sum()),
        "groups_dropped": int(zero.sum()),
        "groups": len(zero),
    }


def rejected_push(p_chosen: float, p_rejected: float) -> dict[str, float]:
    """How hard each pairwise term pushes the rejected answer down: the loss and its gradient with
    respect to the rejected answer's mean log-probability, for ORPO's odds-ratio term
    ``-log sigmoid(log odds(y_w) - log odds(y_l))`` and for the same term with probabilities,
    ``-log sigmoid(log p_w - log p_l)`` (``p``: the per-token mean probability, as ORPO reads it).

    As the SFT term makes the chosen answer near certain, its odds grow without bound and the
    odds-ratio term is satisfied without touching the rejected answer; the probability ratio can
    then only grow by pushing the rejected answer further down.
    """
    chosen = torch.tensor(math.log(p_chosen), dtype=torch.float64)
    out = {}
    for name, score in (("odds ratio", log_odds), ("probability ratio", lambda ell: ell)):
        rejected = torch.tensor(math.log(p_rejected), dtype=torch.float64, requires_grad=True)
        loss = -torch.nn.functional.logsigmoid(score(chosen) - score(rejected))
        (grad,) = torch.autograd.grad(loss, rejected)  # > 0: lowering the rejected log-prob lowers the loss
        out[f"{name}: loss"], out[f"{name}: push on the rejected"] = float(loss.detach()), float(grad)
    return out


def _per_sequence(logps: torch.Tensor, mask: torch.Tensor, mean: bool) -> torch.Tensor:
    """Sum (or mean) of per-token log-probs over the mask: (B, T) -> (B,)."""
    total = (logps * mask).sum(dim=1)
    return total / mask.sum(dim=1).clamp(min=1) if mean else total


def orpo_loss(
    chosen_logps: torch.Tensor,
    chosen_mask: torch.Tensor,
    rejected_logps: torch.Tensor,
    rejected_mask: torch.Tensor,
    beta: float = 0.1,
    nll_mask: torch.Tensor | None = None,
) -> PreferenceLoss:
    """ORPO (Hong et al. 2024): supervised fine-tuning plus an odds-ratio penalty, no reference model.

    Shapes: ``chosen_logps``/``rejected_logps`` (B, T) per-token log-probs (e.g. from
    :func:`per_token_logprobs`); the masks (B, T) pick the completion's tokens. With
    l_w, l_l the *mean* per-token log-probs of the chosen and rejected completions:

        log odds(y)  = l - log(1 - exp(l))                           (odds = p / (1 - p), p = e^l)
        L_OR         = -log sigmoid(log odds(y_w) - log odds(y_l))   per pair
        L_SFT        = -sum_t m_t log pi(y_w,t) / sum_t m_t          token mean over the batch
        L            = L_SFT + beta * mean_pairs(L_OR)

    ``nll_mask`` (B, T) says which chosen tokens L_SFT covers; by default the completion's
    (the paper's definition). TRL's ORPOTrainer, like the ORPO authors' code, also counts the
    prompt's tokens (trl#1516, kept in trl#2527): pass the shifted attention mask for that.
    TRL's ``beta`` is this ``beta`` (the paper's lambda). Metrics follow TRL's names.
    """
    nll_mask = chosen_mask if nll_mask is None else nll_mask
    mean_chosen = _per_sequence(chosen_logps.float(), chosen_mask, mean=True)  # l_w (B,)
    mean_rejected = _per_sequence(rejected_logps.float(), rejected_mask, mean=True)  # l_l (B,)
    log_odds_ratio = log_odds(mean_chosen) - log_odds(mean_rejected)  # (B,)
    per_pair = -torch.nn.functional.logsigmoid(log_odds_ratio)  # L_OR (B,)
    nll = -masked_mean(chosen_logps.float(), nll_mask.float())  # L_SFT
    loss = nll + beta * per_pair.mean()
    with torch.no_grad():
        metrics = {
            "loss": float(loss),
            "nll_loss": float(nll),
            "or_loss": float(per_pair.mean()),
            "log_odds_ratio": float(-per_pair.mean()),
            "log_odds_chosen": float(log_odds_ratio.mean()),
            "logps/chosen": float(mean_chosen.mean()),
            "logps/rejected": float(mean_rejected.mean()),
            "rewards/accuracies": float((mean_chosen > mean_rejected).float().mean()),
        }
    return PreferenceLoss(loss, per_pair, metrics)


def dpo_loss(
    chosen_logps: torch.Tensor,
    chosen_mask: torch.Tensor,
    rejected_logps: torch.Tensor,
    rejected_mask: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float = 0.1,
) -> PreferenceLoss:
    """DPO (Rafailov et al. 2023), the sigmoid loss, for comparison with ORPO.

    Shapes as :func:`orpo_loss`; ``ref_*`` (B, T) are the same tokens' log-probs under the
    frozen reference model. With s = sum_t m_t log pi(y_t) summed over the completion:

        h    = (s_w - s_w_ref) - (s_l - s_l_ref)       how much more pi prefers y_w than pi_ref does
        L    = mean_pairs(-log sigmoid(beta * h))

    The implicit rewards ``beta (s - s_ref)`` are the metrics ``rewards/chosen`` and
    ``rewards/rejected``. DPO needs pi_ref and sums (not averages) log-probs; ORPO needs
    neither a reference nor an SFT stage before it.
    """
    chosen = _per_sequence(chosen_logps.float(), chosen_mask, mean=False)
    rejected = _per_sequence(rejected_logps.float(), rejected_mask, mean=False)
    ref_chosen = _per_sequence(ref_chosen_logps.float(), chosen_mask, mean=False)
    ref_rejected = _per_sequence(ref_rejected_logps.float(), rejected_mask, mean=False)
    margin = (chosen - ref_chosen) - (rejected - ref_rejected)  # h (B,)
    per_pair = -torch.nn.functional.logsigmoid(beta * margin)
    loss = per_pair.mean()
    with torch.no_grad():
        reward_chosen, reward_rejected = beta * (chosen - ref_chosen), beta * (rejected - ref_rejected)
        metrics = {
            "loss": float(loss),
            "rewards/chosen": float(reward_chosen.mean()),
            "rewards/rejected": float(reward_rejected.mean()),
            "rewards/margins": float((reward_chosen - reward_rejected).mean()),
            "rewards/accuracies": float((reward_chosen > reward_rejected).float().mean()),
        }
    return PreferenceLoss(loss, per_pair, metrics)
