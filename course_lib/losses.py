"""Log-probabilities of completions under a model: the quantity every loss is built from.

For a prompt x and a completion y = (y_1 .. y_T) the model gives

    log pi(y_t | x, y_<t) = log_softmax(logits_t / T)[y_t]      (T: temperature)

per token, and log pi(y | x) = sum_t log pi(y_t | x, y_<t) per sequence. The GRPO,
SFT and ORPO losses of later lessons are all written in terms of these.
"""

from __future__ import annotations

import torch


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log_softmax(logits)[targets]: (B, T, V) logits and (B, T) ids -> (B, T) log-probs."""
    return torch.log_softmax(logits.float(), dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def completion_logprobs(model, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
                        completion_ids: torch.Tensor, completion_mask: torch.Tensor,
                        temperature: float = 1.0) -> torch.Tensor:
    """Per-token log-probs of the completions, masked.

    Shapes: ``prompt_ids``/``prompt_mask`` (B, P), left-padded; ``completion_ids``/
    ``completion_mask`` (B, T), right-padded. Returns (B, T), zero where the mask is 0.
    Position ids are derived from the attention mask so that left padding does not
    shift the positions (the same positions ``generate`` used).
    """
    input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
    attention_mask = torch.cat([prompt_mask, completion_mask], dim=1)
    position_ids = (attention_mask.cumsum(dim=1) - 1).clamp(min=0)
    logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids).logits
    # The logit at position i predicts token i+1: keep the ones that predict the completion.
    logits = logits[:, prompt_ids.shape[1] - 1:-1] / temperature
    return token_logprobs(logits, completion_ids) * completion_mask


@torch.no_grad()
def sequence_logprob(model, tokenizer, prompts: list[str], completions: list[str]) -> torch.Tensor:
    """log pi(completion | prompt) summed over the completion's tokens: (B,) float32."""
    prompt = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False,
                       padding_side="left")
    completion = tokenizer(completions, return_tensors="pt", padding=True, add_special_tokens=False,
                           padding_side="right")
    device = next(model.parameters()).device
    logps = completion_logprobs(model, prompt["input_ids"].to(device), prompt["attention_mask"].to(device),
                                completion["input_ids"].to(device), completion["attention_mask"].to(device))
    return logps.sum(dim=1).cpu()


def samples_logprobs(model, tokenizer, samples, temperature: float = 1.0) -> torch.Tensor:
    """Per-token log-probs (N, T) of ``samples``' completions under ``model``, with gradients.

    The same numbers as ``samples.logprobs`` when ``model`` is the model that sampled them
    (up to float error), but differentiable: the quantity a policy-gradient loss pushes on.
    """
    prompts = [samples.prompts[i] for i in samples.prompt_index]
    device = next(model.parameters()).device
    enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False,
                    padding_side="left").to(device)
    return completion_logprobs(model, enc["input_ids"], enc["attention_mask"],
                               samples.completion_ids.to(device), samples.completion_mask.to(device),
                               temperature)
