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
4. **Stop finished rows**: a row is done at any of the model's EOS tokens
   (:func:`stop_token_ids`: the tokenizer's and every one in the model's generation config,
   as TRL and ``generate`` stop); once a quarter of the rows in the batch are done, they are
   dropped from the batch and from the cache, so the steps that remain cost only what the rows
   still running need.

The draw follows ``transformers``' warpers in their order: logits / T, then top-k
(``TopKLogitsWarper``), top-p (``TopPLogitsWarper``) and min-p (``MinPLogitsWarper``), then one
draw from the categorical distribution; ``temperature=0`` is greedy (argmax). Each completion
draws from its own random stream (:mod:`course_lib.streams`), keyed by the seed, its prompt's
text and its sample index: completion j of a prompt is the same whatever the batch size, the
other prompts in the call or the order in which rows finish, so evaluating a subset reproduces
the full run's completions (up to float rounding in batched matrix products). The caller's
random stream is untouched. Logits with NaN or +inf raise an error naming the step.

Which decoding step runs (:func:`decoding_path`): the shared-prefix step of
:mod:`course_lib.decoding` for Llama-family models, the model's own ``forward`` for other
architectures, and ``model.generate`` (log-probs then recomputed by one forward pass) for a
model that Unsloth has patched: Unsloth replaces the attention, the decoder layers and the
rotary embedding with its own (its rotary ignores position ids, its forward treats a cache
object as one-token inference), so neither step of ours can run through it. The choice is said
once in the log.
"""

from __future__ import annotations

import inspect
import logging
import math
from dataclasses import dataclass, replace

import torch
from tqdm.auto import tqdm
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer

from course_lib.decoding import Decoder, base_model, supports
from course_lib.losses import completion_logprobs, encode_prompts
from course_lib.streams import row_keys, uniform_table

COMPACT_WHEN_DONE = 0.25  # drop finished rows once this share of the batch has finished
PATHS = ("shared-prefix", "forward", "generate")  # what decoding_path can answer

logger = logging.getLogger(__name__)
_announced: set[str] = set()  # decoding paths already said in the log


@dataclass(frozen=True)
class DrawSettings:
    """How one token is drawn from a row of logits, as ``transformers``' warpers do it.

    ``temperature=0`` is greedy; ``top_k=0``, ``top_p=1`` and ``min_p=0`` switch a filter off.
    """

    temperature: float = 1.0
    top_k: int = 0  # keep the k most likely tokens
    top_p: float = 1.0  # keep the smallest set of most likely tokens whose probability reaches top_p
    min_p: float = 0.0  # keep tokens at least min_p times as likely as the most likely one

    def __post_init__(self):
        if self.temperature < 0 or self.top_k < 0 or not 0 < self.top_p <= 1 or not 0 <= self.min_p < 1:
            raise ValueError(
                f"need temperature >= 0, top_k >= 0, 0 < top_p <= 1 and 0 <= min_p < 1 (got temperature="
                f"{self.temperature}, top_k={self.top_k}, top_p={self.top_p}, min_p={self.min_p})"
            )


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
        return replace(self._prompts(slice(i, i + 1)), prompt_index=[0] * self.n)

    def first(self, p: int) -> Samples:
        """The first ``p`` prompts with their completions, as a ``Samples`` of their own."""
        return self._prompts(slice(0, p))

    @classmethod
    def concat(cls, parts: list[Samples], pad_id: int) -> Samples:
        """Several ``Samples`` of the same ``n`` as one, prompts in order; the completions are
        right-padded with ``pad_id`` to the longest (mask and log-probs 0 there)."""
        if not parts or len({part.n for part in parts}) != 1:
            raise ValueError("concat needs at least one Samples, all with the same number of samples per prompt")
        width = max(part.completion_ids.shape[1] for part in parts)

        def padded(t: torch.Tensor, value) -> torch.Tensor:
            return torch.nn.functional.pad(t, (0, width - t.shape[1]), value=value)

        offsets = [0]
        for part in parts:
            offsets.append(offsets[-1] + len(part.prompts))
        return cls(
            [p for part in parts for p in part.prompts],
            parts[0].n,
            [t for part in parts for t in part.texts],
            [offset + i for part, offset in zip(parts, offsets) for i in part.prompt_index],
            torch.cat([padded(part.completion_ids, pad_id) for part in parts]),
            torch.cat([padded(part.completion_mask, 0) for part in parts]),
            torch.cat([padded(part.logprobs, 0.0) for part in parts]),
        )

    def _prompts(self, prompts: slice) -> Samples:
        """The prompts ``prompts`` (a contiguous slice) with their rows; ``prompt_index`` as it was."""
        rows = slice(prompts.start * self.n, prompts.stop * self.n)
        return Samples(
            self.prompts[prompts],
            self.n,
            self.texts[rows],
            self.prompt_index[rows],
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
    top_k: int = 0,
    min_p: float = 0.0,
    max_new_tokens: int = 200,
    batch_size: int = 64,
    seed: int = 0,
    progress: bool = False,
) -> Samples:
    """Sample ``n`` completions for each prompt.

    ``temperature=0`` means greedy decoding; ``top_k``, ``top_p`` and ``min_p`` filter as in
    ``generate``. A row stops at any of :func:`stop_token_ids` or after ``max_new_tokens``.
    Batches hold whole prompts: ``max(1, batch_size // n)`` prompts with their n completions each.
    Completion j of a prompt depends only on the model, the prompt's text, j and ``seed`` (see
    :mod:`course_lib.streams`), not on ``batch_size`` or the other prompts.
    """
    if n < 1 or batch_size < 1:
        raise ValueError(f"n and batch_size must be >= 1 (got n={n}, batch_size={batch_size})")
    rule = DrawSettings(temperature, top_k, top_p, min_p)
    stops = stop_token_ids(model, tokenizer)
    path = decoding_path(model)
    _announce(path)
    keys = row_keys(seed, prompts, n)  # (N, 2): one random stream per completion
    was_training = model.training
    model.eval()
    per_batch = max(1, batch_size // n)  # prompts per batch
    ids_out, logp_out = [], []
    for start in tqdm(range(0, len(prompts), per_batch), desc="sampling", disable=not progress):
        batch, batch_keys = prompts[start : start + per_batch], keys[start * n : (start + per_batch) * n]
        if path == "generate":
            ids, logps = generate_rows(model, tokenizer, batch, n, batch_keys, rule, max_new_tokens, stops)
        else:
            ids, logps = decode(model, tokenizer, batch, n, batch_keys, rule, max_new_tokens, stops)
        ids_out += ids
        logp_out += logps
    model.train(was_training)
    return _assemble(tokenizer, prompts, n, ids_out, logp_out)


def stop_token_ids(model, tokenizer) -> list[int]:
    """Every token id that ends a completion: the tokenizer's EOS, then each EOS id of the model's
    generation config (Qwen2.5-Instruct lists two, ``<|im_end|>`` and ``<|endoftext|>``), as TRL's
    ``GRPOTrainer`` collects them."""
    config = getattr(base_model(model), "generation_config", None)
    listed = getattr(config, "eos_token_id", None)
    listed = listed if isinstance(listed, (list, tuple)) else [listed]
    stops: list[int] = []
    for token in [tokenizer.eos_token_id, *listed]:
        if token is not None and int(token) not in stops:
            stops.append(int(token))
    if not stops:
        raise ValueError("no EOS token: set tokenizer.eos_token_id (or the model's generation_config.eos_token_id)")
    return stops


def patched_by_unsloth(model) -> bool:
    """Whether Unsloth has replaced this model's forward, its attention or its rotary embedding
    (it patches the ``transformers`` classes when it loads a model)."""
    base = base_model(model)
    core = getattr(base, "model", None)
    layers = getattr(core, "layers", None)
    modules = [base, core, getattr(core, "rotary_emb", None)]
    if layers is not None and len(layers):
        modules += [layers[0], getattr(layers[0], "self_attn", None)]
    return any(_from_unsloth(type(m)) for m in modules if m is not None)


def decoding_path(model) -> str:
    """Which decoding step :func:`sample` runs for ``model`` (one of :data:`PATHS`):
    ``"generate"`` for a model Unsloth has patched, ``"shared-prefix"`` for the architectures
    :func:`course_lib.decoding.supports`, ``"forward"`` (the model's own forward) otherwise."""
    if patched_by_unsloth(model):
        return "generate"
    return "shared-prefix" if supports(model) else "forward"


def decode(
    model,
    tokenizer,
    prompts: list[str],
    n: int,
    keys: torch.Tensor,
    rule: DrawSettings = DrawSettings(),
    max_new_tokens: int = 200,
    stops: list[int] | None = None,
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """``n`` completions of each prompt in one batch; per row, the token ids and their log-probs.

    ``keys``: (P * n, 2), each row's random stream (:func:`course_lib.streams.row_keys`).
    Returns two lists of ``len(prompts) * n`` 1-D tensors (group-major), each row cut after its
    first stop token (kept) or at ``max_new_tokens``.
    """
    device = next(model.parameters()).device
    stops = stop_token_ids(model, tokenizer) if stops is None else stops
    stop_ids, pad = torch.tensor(stops, device=device), tokenizer.pad_token_id
    input_ids, mask = encode_prompts(tokenizer, prompts, device)  # (P, L) each
    keys = keys.to(device)  # (B, 2)

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
        keys_per_layer, values = [layer.keys for layer in cache.layers], [layer.values for layer in cache.layers]
        decoder = Decoder(model, keys_per_layer, values, mask, n, max_new_tokens)
    else:
        decoder = ForwardDecoder(model, cache, mask, n)
    logits = out.logits[:, -1].float().repeat_interleave(n, dim=0)  # (B, V), B = P * n
    next_position = positions[:, -1].repeat_interleave(n) + 1  # (B,)

    table = uniform_table(keys, max_new_tokens)  # (B, T): row r's uniform at step t, whatever the batch
    rows = torch.arange(len(logits), device=device)  # which output row each batch row is
    done = torch.zeros(len(logits), dtype=torch.bool, device=device)  # (B,) finished rows
    tokens, logps = [], []  # per step: (B_t,) ids and log-probs, with the rows they belong to
    for step in range(max_new_tokens):
        # Stage 2: draw the next token of every row from its own stream; its log-prob from the same logits
        u = table[rows, step]  # (B,) each row's own uniform
        token, token_logp = draw(logits, rule, u, step)  # (B,), (B,)
        token = token.masked_fill(done, pad)
        tokens.append((rows, token))
        logps.append(token_logp)
        done = done | torch.isin(token, stop_ids)
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
    return _rows(tokens, logps, len(prompts) * n, stops)


def generate_rows(
    model,
    tokenizer,
    prompts: list[str],
    n: int,
    keys: torch.Tensor,
    rule: DrawSettings = DrawSettings(),
    max_new_tokens: int = 200,
    stops: list[int] | None = None,
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The same rows as :func:`decode`, drawn by ``model.generate`` (the path for a model Unsloth
    has patched), with the log-probs recomputed by one forward pass at the same temperature.

    ``generate`` draws from the global generator: it is seeded from the batch's first key inside
    ``torch.random.fork_rng``, so the same call gives the same rows and the caller's stream is
    untouched, but a row's draws do depend on its batch here.
    """
    device = next(model.parameters()).device
    stops = stop_token_ids(model, tokenizer) if stops is None else stops
    input_ids, mask = encode_prompts(tokenizer, prompts, device)  # (P, L)
    greedy = rule.temperature == 0
    options = dict(  # every one set: generate fills what is left unset from the model's generation config
        do_sample=not greedy,
        temperature=rule.temperature or 1.0,
        top_k=rule.top_k,  # 0: off
        top_p=rule.top_p,
        min_p=rule.min_p,
        repetition_penalty=1.0,
    )
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(int(keys[0, 0]) << 32 | int(keys[0, 1]))
        out = model.generate(
            input_ids=input_ids,
            attention_mask=mask,
            num_return_sequences=n,  # rows come out group-major, as ours
            max_new_tokens=max_new_tokens,
            eos_token_id=stops,
            pad_token_id=tokenizer.pad_token_id,
            **options,
        )
    completion = out[:, input_ids.shape[1] :]  # (P * n, T)
    lengths = completion_lengths(completion, stops)  # (P * n,)
    completion_mask = (torch.arange(completion.shape[1], device=device) < lengths[:, None]).long()  # (P * n, T)
    logps = completion_logprobs(
        model,
        input_ids.repeat_interleave(n, dim=0),
        mask.repeat_interleave(n, dim=0),
        completion,
        completion_mask,
        temperature=rule.temperature or 1.0,  # greedy rows: their log-probs at T = 1, as decode gives them
    )
    return _cut(completion.cpu(), logps.float().cpu(), stops)


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


def draw(logits: torch.Tensor, rule: DrawSettings, u: torch.Tensor, step: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """One token per row from (B, V) logits, and its log-prob under log_softmax(logits / T).

    ``temperature=0``: the argmax (its log-prob taken at T = 1). Otherwise logits / T, then
    top-k, top-p and min-p (as ``transformers``' warpers, in that order), then the token where
    the row's uniform number ``u`` (B,) falls in the cumulative distribution. ``step`` only names
    the decoding step in the error raised for NaN or +inf logits.
    """
    if rule.temperature == 0:
        token = logits.argmax(dim=-1)  # (B,)
        scaled = logits
    else:
        scaled = logits if rule.temperature == 1 else logits / rule.temperature  # (B, V)
        truncated = scaled
        if rule.top_k > 0:
            truncated = _top_k(truncated, rule.top_k)
        if rule.top_p < 1.0:
            truncated = top_p_filter(truncated, rule.top_p)
        if rule.min_p > 0:
            truncated = _min_p(truncated, rule.min_p)
        token = _categorical(torch.softmax(truncated, dim=-1), u)  # (B,)
    logp = torch.log_softmax(scaled, dim=-1).gather(1, token[:, None]).squeeze(1)  # (B,)
    _check_finite(logp, scaled, step)
    return token, logp


def _check_finite(logp: torch.Tensor, logits: torch.Tensor, step: int) -> None:
    """Raise where a row's (B, V) logits, divided by the temperature, hold NaN or +inf, or every
    token is -inf (no token can be drawn).

    Those are the rows whose drawn token's log-prob ``logp`` (B,) is not finite: a NaN or +inf
    logit makes the row's log-softmax NaN, and a row with a finite logit never draws a token of
    probability 0. One sum tells whether any row is broken; only then are the logits looked at."""
    if math.isfinite(float(logp.sum())):
        return
    top = logits.amax(dim=-1)  # (B,) NaN if any NaN, +inf if any +inf, -inf if all are
    broken = ~torch.isfinite(top)
    if broken.any():
        raise FloatingPointError(
            f"decoding step {step}: the logits of {int(broken.sum())} of {len(logits)} rows hold NaN or +inf "
            "(or only -inf). The model's forward produced them: look for weights that diverged (a learning rate "
            "too high, a loss that went NaN) or an fp16 overflow (load in bfloat16 or float32), or a temperature so "
            "small that logits / temperature overflow float32."
        )


def _categorical(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """One draw per row of (B, V) probabilities by inverting the cumulative distribution at the
    row's uniform number ``u`` (B,) (``torch.multinomial`` would draw B x V exponentials from a
    shared generator instead). A token of probability 0 is never drawn."""
    cumulative = probs.cumsum(dim=-1)  # (B, V)
    target = u[:, None].to(cumulative.dtype) * cumulative[:, -1:]  # (B, 1)
    token = torch.searchsorted(cumulative, target, right=True).squeeze(1)  # (B,)
    past_end = token >= probs.shape[-1]  # float rounding put the target at the very top
    if past_end.any():  # then the last token that has any probability
        last = probs.shape[-1] - 1 - (probs > 0).flip(-1).int().argmax(dim=-1)  # (B,)
        token = torch.where(past_end, last, token)
    return token


def _top_k(scaled: torch.Tensor, k: int) -> torch.Tensor:
    """Logits below the k-th largest of their row set to -inf, as ``TopKLogitsWarper``: (B, V) -> (B, V)."""
    kth = torch.topk(scaled, min(k, scaled.shape[-1]), dim=-1).values[:, -1:]  # (B, 1)
    return scaled.masked_fill(scaled < kth, float("-inf"))


def top_p_filter(scaled: torch.Tensor, top_p: float) -> torch.Tensor:
    """Logits outside the nucleus set to -inf (always keeping the most likely token): (B, V) -> (B, V)."""
    sorted_logits, order = torch.sort(scaled, descending=False, dim=-1)
    cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    remove = cumulative <= (1 - top_p)
    remove[:, -1] = False
    return scaled.masked_fill(remove.scatter(1, order, remove), float("-inf"))


def _min_p(scaled: torch.Tensor, min_p: float) -> torch.Tensor:
    """Tokens less than ``min_p`` times as likely as the row's most likely one set to -inf, as
    ``MinPLogitsWarper``: (B, V) -> (B, V)."""
    probs = scaled.softmax(dim=-1)  # (B, V)
    return scaled.masked_fill(probs < min_p * probs.max(dim=-1, keepdim=True).values, float("-inf"))


def _last_logit_only(model) -> dict:
    """``logits_to_keep=1`` where the model takes it: the prefill then returns (P, 1, V) logits, not (P, L, V)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(base.forward).parameters else {}


def _rows(
    steps: list[tuple[torch.Tensor, torch.Tensor]], logps: list[torch.Tensor], n_rows: int, stops: list[int]
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The decoded steps as one (ids, log-probs) pair per row, each cut after its first stop token."""
    width = len(steps)
    ids = torch.full((n_rows, width), stops[0], dtype=torch.long)  # (N, T): a row that stopped reads EOS after
    logp = torch.zeros(n_rows, width)
    for t, ((rows, token), token_logp) in enumerate(zip(steps, logps)):
        ids[rows.cpu(), t] = token.cpu()
        logp[rows.cpu(), t] = token_logp.cpu()
    return _cut(ids, logp, stops)


def completion_lengths(ids: torch.Tensor, stops: list[int]) -> torch.Tensor:
    """(N,) tokens up to and including each row's first stop token (the full width where it has none)."""
    is_stop = torch.isin(ids, torch.tensor(stops, device=ids.device))  # (N, T)
    width = torch.full_like(ids[:, 0], ids.shape[1])  # (N,)
    return torch.where(is_stop.any(dim=1), is_stop.long().argmax(dim=1) + 1, width)


def _cut(ids: torch.Tensor, logp: torch.Tensor, stops: list[int]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """(N, T) ids and log-probs as one pair of 1-D tensors per row, each cut after its first stop token."""
    lengths = completion_lengths(ids, stops).tolist()
    return [ids[i, :k] for i, k in enumerate(lengths)], [logp[i, :k] for i, k in enumerate(lengths)]


def _from_unsloth(cls: type) -> bool:
    """Whether a class, or its ``forward``, comes from Unsloth's packages."""
    modules = (cls.__module__, getattr(getattr(cls, "forward", None), "__module__", None) or "")
    return any(m.split(".")[0] in ("unsloth", "unsloth_zoo") for m in modules)


def _announce(path: str) -> None:
    """Say once per process in the log when sampling cannot use our own decoding step."""
    if path == "generate" and path not in _announced:
        _announced.add(path)
        logger.warning(
            "sampling: the model is patched by Unsloth, whose attention and rotary embedding our decoding step "
            "cannot run through; completions come from model.generate, their log-probs from one forward pass"
        )


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
