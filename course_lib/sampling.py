"""Sampling G completions per prompt: our own decoding loop over the model's KV cache.

Everything RL post-training needs from generation comes back in one object: the
texts, the completion token ids, a mask of real (non-padding) tokens, and the
log-probability of every sampled token under the sampling distribution

    log pi(y_t | x, y_<t) = log_softmax(logits_t / T)[y_t]

(temperature ``T`` applied, top-p truncation not: the same convention as TRL's
GRPOTrainer, whose old/ref log-probs are also computed from ``logits / T``).

Rows are group-major: the ``n`` completions of prompt 0 first, then prompt 1, ...
(``prompt_index`` says which prompt each row belongs to), matching TRL's layout.

How the loop works (:func:`decode`), and why it is fast:

1. **Prefill once per prompt**: the P distinct prompts of a batch go through the model once
   (left-padded, positions from the attention mask); their KV cache is then repeated n times,
   one copy per completion, instead of running the same prompt n times.
2. **Decode in large batches**: each step feeds one token per row and reads one (B, V) row of
   logits. Per step, the fixed cost (Python, kernel launches) is shared by all B rows, so
   throughput grows with B until reading the cache dominates. The keys and values go into a
   buffer allocated once per batch (:class:`BufferLayer`, a ``transformers`` cache layer);
   ``DynamicCache`` instead copies the whole cache at every step (``torch.cat``), which at B =
   256 made a pocket-model step 4x slower.
3. **Log-prob at the step**: the sampled token's log-prob is read from that step's logits;
   nothing of size B x T x V is ever kept (for a 150k-token vocabulary that would be tens
   of GB: ``transformers``' ``output_logits=True`` keeps exactly that).
4. **Stop finished rows**: a row is done at its EOS; once a quarter of the rows in the
   batch are done, they are dropped from the batch and from the cache, so the steps that
   remain cost only what the rows still running need.

Sampling is ``transformers``' own: logits / T, then top-p as ``TopPLogitsWarper`` does it,
then one draw from the categorical distribution; ``temperature=0`` is greedy (argmax). Each batch draws from its
own ``torch.Generator`` seeded with ``seed + b``: the same seed and batch size give the same
samples, and the caller's random stream is untouched.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer

from course_lib.decoding import Decoder, supports

COMPACT_WHEN_DONE = 0.25  # drop finished rows once this share of the batch has finished


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

    ``temperature=0`` means greedy decoding. Generation of a row stops at the tokenizer's EOS
    token or after ``max_new_tokens``. Batches hold whole prompts: ``max(1, batch_size // n)``
    prompts with their n completions each. The same ``seed`` and ``batch_size`` give the same
    samples: batch ``b`` is drawn with seed ``seed + b``.
    """
    if n < 1 or batch_size < 1:
        raise ValueError(f"n and batch_size must be >= 1 (got n={n}, batch_size={batch_size})")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    per_batch = max(1, batch_size // n)  # prompts per batch
    starts = range(0, len(prompts), per_batch)
    ids_out, logp_out = [], []
    for b, start in enumerate(tqdm(starts, desc="sampling", disable=not progress)):
        generator = torch.Generator(device=device).manual_seed(seed + b)
        ids, logps = decode(
            model, tokenizer, prompts[start : start + per_batch], n, generator, temperature, top_p, max_new_tokens
        )
        ids_out += ids
        logp_out += logps
    model.train(was_training)
    return _assemble(tokenizer, prompts, n, ids_out, logp_out)


def decode(
    model,
    tokenizer,
    prompts: list[str],
    n: int,
    generator: torch.Generator,
    temperature: float = 1.0,
    top_p: float = 1.0,
    max_new_tokens: int = 200,
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """``n`` completions of each prompt in one batch; per row, the token ids and their log-probs.

    Returns two lists of ``len(prompts) * n`` 1-D tensors (group-major), each row cut after its
    EOS (kept) or at ``max_new_tokens``.
    """
    device = next(model.parameters()).device
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False, padding_side="left")
    input_ids, mask = enc["input_ids"].to(device), enc["attention_mask"].to(device)  # (P, L) each

    # Stage 1: prefill the P prompts once; n completions of each decode from their keys and values
    positions = (mask.cumsum(dim=1) - 1).clamp(min=0)  # (P, L): left padding does not shift positions
    shared = supports(model)  # a Llama-family model: the prompt's cache is shared by its n completions
    capacity = mask.shape[1] + max_new_tokens
    cache = DynamicCache() if shared else Cache(layer_class_to_replicate=lambda: BufferLayer(capacity))
    out = model(
        input_ids=input_ids,
        attention_mask=mask,
        position_ids=positions,
        past_key_values=cache,
        use_cache=True,
        **_last_logit_only(model),
    )
    if shared:
        keys, values = [layer.keys for layer in cache.layers], [layer.values for layer in cache.layers]
        decoder = Decoder(model, keys, values, mask, n, max_new_tokens)
    else:
        decoder = ForwardDecoder(model, cache, mask, n)
    logits = out.logits[:, -1].float().repeat_interleave(n, dim=0)  # (B, V), B = P * n
    next_position = positions[:, -1].repeat_interleave(n) + 1  # (B,)

    rows = torch.arange(len(logits), device=device)  # which output row each batch row is
    done = torch.zeros(len(logits), dtype=torch.bool, device=device)  # (B,) finished rows
    tokens, logps = [], []  # per step: (B_t,) ids and log-probs, with the rows they belong to
    for step in range(max_new_tokens):
        # Stage 2: draw the next token of every row, and read its log-prob from the same logits
        token, token_logp = _draw(logits, temperature, top_p, generator)  # (B,), (B,)
        token = token.masked_fill(done, pad)
        tokens.append((rows, token))
        logps.append(token_logp)
        done = done | (token == eos)
        if done.all() or step == max_new_tokens - 1:
            break
        # Stage 3: drop the finished rows from the batch and from the cache, once enough have finished
        if done.float().mean() >= COMPACT_WHEN_DONE:
            keep = (~done).nonzero().squeeze(1)  # (B',)
            decoder.keep(keep)
            rows, done, token, next_position = rows[keep], done[keep], token[keep], next_position[keep]
        # Stage 4: one step of the model on the new tokens
        logits = decoder.step(token, next_position).float()  # (B, V)
        next_position = next_position + 1
    return _rows(tokens, logps, len(prompts) * n, eos)


class ForwardDecoder:
    """The generic decoding step: the model's own ``forward`` on one token per row, with a
    :class:`BufferLayer` cache in which each completion has its own copy of its prompt's keys and
    values (for models :class:`~course_lib.decoding.Decoder` does not cover). Same interface."""

    def __init__(self, model, cache: Cache, prompt_mask: torch.Tensor, group_size: int):
        self.model, self.cache = model, cache
        cache.batch_repeat_interleave(group_size)
        self.mask = prompt_mask.repeat_interleave(group_size, dim=0)  # (B, L) grows by one column per step

    def keep(self, rows: torch.Tensor) -> None:
        self.cache.batch_select_indices(rows)
        self.mask = self.mask[rows]

    def step(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        self.mask = torch.cat([self.mask, torch.ones_like(self.mask[:, :1])], dim=1)  # (B, L + t + 1)
        out = self.model(
            input_ids=tokens[:, None],
            attention_mask=self.mask,
            position_ids=positions[:, None],
            past_key_values=self.cache,
            use_cache=True,
        )
        return out.logits[:, -1]  # (B, V)


class BufferLayer(DynamicLayer):
    """One layer's keys and values in a buffer of ``capacity`` positions, written in place.

    ``transformers``' ``DynamicLayer`` concatenates every new token onto the cache, copying all of
    it at every step; this layer writes the new positions into the buffer and returns views of
    the filled part, so a step reads the cache once and copies nothing.
    """

    def __init__(self, capacity: int):
        super().__init__()
        self.capacity, self.length = capacity, 0

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        batch, heads, _, dim = key_states.shape
        self.dtype, self.device = key_states.dtype, key_states.device
        self.key_buffer = key_states.new_zeros(batch, heads, self.capacity, dim)  # (B, H, capacity, D)
        self.value_buffer = value_states.new_zeros(batch, heads, self.capacity, value_states.shape[-1])
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        new = key_states.shape[-2]
        if self.length + new > self.capacity:
            raise ValueError(f"BufferLayer holds {self.capacity} positions; {self.length + new} were asked for")
        self.key_buffer[:, :, self.length : self.length + new] = key_states
        self.value_buffer[:, :, self.length : self.length + new] = value_states
        self.length += new
        self._views()
        return self.keys, self.values

    def _views(self) -> None:
        self.keys = self.key_buffer[:, :, : self.length]  # (B, H, length, D), no copy
        self.values = self.value_buffer[:, :, : self.length]

    def get_seq_length(self) -> int:
        return self.length

    def batch_repeat_interleave(self, repeats: int) -> None:
        """Each row ``repeats`` times (one copy of a prompt's cache per completion)."""
        self.key_buffer = self.key_buffer.repeat_interleave(repeats, dim=0)
        self.value_buffer = self.value_buffer.repeat_interleave(repeats, dim=0)
        self._views()

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        """Keep only the rows ``indices`` (the ones still decoding)."""
        self.key_buffer, self.value_buffer = self.key_buffer[indices], self.value_buffer[indices]
        self._views()


def _draw(
    logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """One token per row from (B, V) logits, and its log-prob under log_softmax(logits / T).

    ``temperature=0``: the argmax (its log-prob taken at T = 1). Otherwise logits / T, top-p
    truncation (as ``transformers.TopPLogitsWarper``: the smallest set of most likely tokens whose
    probability reaches ``top_p``), then one draw from ``generator``.
    """
    if temperature == 0:
        token = logits.argmax(dim=-1)  # (B,)
        scaled = logits
    else:
        scaled = logits / temperature  # (B, V)
        truncated = _top_p(scaled, top_p) if top_p < 1.0 else scaled
        token = _categorical(torch.softmax(truncated, dim=-1), generator)  # (B,)
    logp = torch.log_softmax(scaled, dim=-1).gather(1, token[:, None]).squeeze(1)  # (B,)
    return token, logp


def _categorical(probs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One draw per row of (B, V) probabilities, by inverting the cumulative distribution: a
    uniform number per row and a binary search (``torch.multinomial`` draws B x V exponentials
    for the same draw). A token of probability 0 is never drawn."""
    cumulative = probs.cumsum(dim=-1)  # (B, V)
    u = torch.rand(len(probs), 1, generator=generator, device=probs.device) * cumulative[:, -1:]  # (B, 1)
    return torch.searchsorted(cumulative, u, right=True).squeeze(1).clamp(max=probs.shape[-1] - 1)  # (B,)


def _top_p(scaled: torch.Tensor, top_p: float) -> torch.Tensor:
    """Logits outside the nucleus set to -inf (always keeping the most likely token): (B, V) -> (B, V)."""
    sorted_logits, order = torch.sort(scaled, descending=False, dim=-1)
    cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    remove = cumulative <= (1 - top_p)
    remove[:, -1] = False
    return scaled.masked_fill(remove.scatter(1, order, remove), float("-inf"))


def _last_logit_only(model) -> dict:
    """``logits_to_keep=1`` where the model takes it: the prefill then returns (P, 1, V) logits, not (P, L, V)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(base.forward).parameters else {}


def _rows(
    steps: list[tuple[torch.Tensor, torch.Tensor]], logps: list[torch.Tensor], n_rows: int, eos: int
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The decoded steps as one (ids, log-probs) pair per row, each cut after its first EOS."""
    width = len(steps)
    ids = torch.full((n_rows, width), eos, dtype=torch.long)  # (N, T): a row that stopped reads EOS after
    logp = torch.zeros(n_rows, width)
    for t, ((rows, token), token_logp) in enumerate(zip(steps, logps)):
        ids[rows.cpu(), t] = token.cpu()
        logp[rows.cpu(), t] = token_logp.cpu()
    is_eos = ids == eos
    lengths = torch.where(is_eos.any(dim=1), is_eos.int().argmax(dim=1) + 1, torch.full((n_rows,), width))
    return [ids[i, :k] for i, k in enumerate(lengths.tolist())], [logp[i, :k] for i, k in enumerate(lengths.tolist())]


def _assemble(tokenizer, prompts: list[str], n: int, ids: list[torch.Tensor], logps: list[torch.Tensor]) -> Samples:
    """Right-pad the rows into a :class:`Samples`."""
    width = max((r.shape[0] for r in ids), default=0)
    completion_ids = _pad_right(ids, width, tokenizer.pad_token_id).long()
    mask = _pad_right([torch.ones_like(r) for r in ids], width, 0).long()
    logprobs = _pad_right(logps, width, 0.0)
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


def _pad_right(rows: list[torch.Tensor], width: int, value: float) -> torch.Tensor:
    return torch.stack([torch.nn.functional.pad(r, (0, width - r.shape[0]), value=value) for r in rows])
