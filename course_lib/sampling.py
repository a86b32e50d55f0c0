"""Sampling G completions per prompt, batched, with the model's KV cache.

Everything RL post-training needs from generation comes back in one object: the
texts, the completion token ids, a mask of real (non-padding) tokens, and the
log-probability of every sampled token under the sampling distribution

    log pi(y_t | x, y_<t) = log_softmax(logits_t / T)[y_t]

(temperature ``T`` applied, top-p truncation not: the same convention as TRL's
GRPOTrainer, whose old/ref log-probs are also computed from ``logits / T``).

Rows are group-major: the ``n`` completions of prompt 0 first, then prompt 1, ...
(``prompt_index`` says which prompt each row belongs to), matching TRL's layout.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm.auto import tqdm


@dataclass
class Samples:
    """Completions for ``P`` prompts x ``n`` samples each (``N = P * n`` rows)."""

    prompts: list[str]  # P prompt texts
    n: int  # samples per prompt (G in GRPO)
    texts: list[str]  # N decoded completions (special tokens removed)
    prompt_index: list[int]  # N: which prompt each row came from
    completion_ids: torch.Tensor  # (N, T) int64, right-padded with pad_token_id
    completion_mask: torch.Tensor  # (N, T) 1 for generated tokens up to and incl. EOS
    logprobs: torch.Tensor  # (N, T) float32, 0 where the mask is 0

    def grouped_texts(self) -> list[list[str]]:
        """The texts as a P x n list of lists."""
        return [self.texts[i * self.n : (i + 1) * self.n] for i in range(len(self.prompts))]

    def group(self, i: int) -> Samples:
        """The ``n`` completions of prompt ``i`` alone, as a one-prompt ``Samples``."""
        rows = slice(i * self.n, (i + 1) * self.n)
        return Samples(
            [self.prompts[i]],
            self.n,
            self.texts[rows],
            [0] * self.n,
            self.completion_ids[rows],
            self.completion_mask[rows],
            self.logprobs[rows],
        )

    @property
    def lengths(self) -> torch.Tensor:
        """(N,) number of generated tokens per completion, EOS included."""
        return self.completion_mask.sum(dim=1)


def _pad_right(rows: list[torch.Tensor], width: int, value: float) -> torch.Tensor:
    return torch.stack([torch.nn.functional.pad(r, (0, width - r.shape[0]), value=value) for r in rows])


@torch.no_grad()
def sample(
    model,
    tokenizer,
    prompts: list[str],
    n: int = 1,
    *,
    temperature: float = 1.0,
    top_p: float = 1.0,
    max_new_tokens: int = 200,
    batch_size: int = 64,
    seed: int = 0,
    progress: bool = False,
) -> Samples:
    """Sample ``n`` completions for each prompt.

    ``temperature=0`` means greedy decoding. Generation of a row stops at the
    tokenizer's EOS token or after ``max_new_tokens``. The same ``seed`` and
    ``batch_size`` give the same samples: batch ``b`` is drawn with seed ``seed + b``.
    """
    if n < 1 or batch_size < 1:
        raise ValueError(f"n and batch_size must be >= 1 (got n={n}, batch_size={batch_size})")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    rows = [p for p in prompts for _ in range(n)]
    ids_out, logp_out = [], []
    starts = range(0, len(rows), batch_size)
    # fork_rng: seeding here must not disturb the caller's random stream (e.g. a training loop).
    with torch.random.fork_rng(devices=[]):
        for b, start in enumerate(tqdm(starts, desc="sampling", disable=not progress)):
            torch.manual_seed(seed + b)
            ids, logp = _sample_batch(
                model, tokenizer, rows[start : start + batch_size], device, temperature, top_p, max_new_tokens
            )
            ids_out += ids
            logp_out += logp
    model.train(was_training)
    width = max((r.shape[0] for r in ids_out), default=0)
    completion_ids = _pad_right(ids_out, width, tokenizer.pad_token_id).long()
    mask = _pad_right([torch.ones_like(r) for r in ids_out], width, 0).long()
    logprobs = _pad_right(logp_out, width, 0.0)
    texts = tokenizer.batch_decode(completion_ids, skip_special_tokens=True)
    return Samples(
        prompts=list(prompts),
        n=n,
        texts=texts,
        prompt_index=[i for i in range(len(prompts)) for _ in range(n)],
        completion_ids=completion_ids,
        completion_mask=mask,
        logprobs=logprobs,
    )


def _sample_batch(
    model, tokenizer, rows: list[str], device, temperature: float, top_p: float, max_new_tokens: int
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """One generate() call: per row, the completion ids and their log-probs, unpadded."""
    enc = tokenizer(rows, return_tensors="pt", padding=True, add_special_tokens=False, padding_side="left").to(device)
    greedy = temperature == 0
    out = model.generate(
        **enc,
        max_new_tokens=max_new_tokens,
        do_sample=not greedy,
        temperature=None if greedy else temperature,
        top_p=None if greedy else top_p,
        top_k=0,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        return_dict_in_generate=True,
        output_logits=True,
        # A static KV cache is preallocated once; the default dynamic one concatenates at
        # every step, which costs a third of the sampling time on a CPU. Same samples. (On a
        # GPU transformers would also torch.compile the forward for a static cache: left as is.)
        cache_implementation="static" if device.type == "cpu" else None,
    )
    gen = out.sequences[:, enc["input_ids"].shape[1] :]  # (B, T_b)
    logits = torch.stack(out.logits, dim=1).float()  # (B, T_b, V)
    logp = torch.log_softmax(logits / (temperature or 1.0), dim=-1)
    token_logp = logp.gather(-1, gen.unsqueeze(-1)).squeeze(-1)  # (B, T_b)
    ids, logps = [], []
    for row_ids, row_logp in zip(gen, token_logp):
        length = _completion_length(row_ids, tokenizer.eos_token_id)
        ids.append(row_ids[:length].cpu())
        logps.append(row_logp[:length].cpu())
    return ids, logps


def _completion_length(ids: torch.Tensor, eos_id: int) -> int:
    """Tokens up to and including the first EOS (all of them if there is none)."""
    hits = (ids == eos_id).nonzero()
    return int(hits[0, 0]) + 1 if len(hits) else int(ids.shape[0])
