"""One decoding step of a Llama-family model, written out, with the prompt's cache shared by its completions.

GRPO and the evaluations sample G completions of the same prompt. Every one of them attends
to the same prompt keys and values; ``transformers`` copies those G times and reads each copy
at every step. This module keeps them once per prompt and attends in two parts:

.. math::  \\operatorname{softmax}\\big([\\,q K_\\text{prompt}^\\top,\\; q K_\\text{own}^\\top\\,] / \\sqrt{d}\\big)
           \\,[V_\\text{prompt};\\, V_\\text{own}]

``K_prompt``, ``V_prompt``: the prompt's, one copy per prompt, which the G queries of its
completions read together (one matrix product per prompt instead of G vector products);
``K_own``, ``V_own``: each completion's own generated tokens. The two score blocks share one
softmax, so the result is exactly attention over the concatenated sequence.

:class:`Decoder` holds that state for one batch and runs :meth:`Decoder.step`: embeddings,
then per layer RMSNorm, q/k/v projections, rotary positions, the two-part attention, the
output projection, the MLP, each with its residual, then the final norm and the LM head. It
calls the model's own modules (so a LoRA adapter on any projection takes part), and is used
for the architectures whose layers have exactly that shape (:data:`ARCHITECTURES`); any other
causal LM is decoded by its own ``forward`` (see :mod:`course_lib.sampling`).
"""

from __future__ import annotations

import torch
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

#: ``config.model_type`` of the models whose decoder layers this step reproduces (Llama's layout;
#: Qwen2 adds biases to q, k, v, which live inside the projections).
ARCHITECTURES = ("llama", "qwen2", "mistral")


def base_model(model):
    """The ``transformers`` model under a PEFT wrapper (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def supports(model) -> bool:
    """Whether :class:`Decoder` can run this model (a Llama-family layout, full attention)."""
    config = base_model(model).config
    sliding = getattr(config, "use_sliding_window", False) or getattr(config, "sliding_window", None) is not None
    return config.model_type in ARCHITECTURES and not (sliding and config.model_type != "llama")


class Decoder:
    """The decoding state of one batch: P prompts, ``group_size`` completions each.

    Args:
        model: a causal LM that :func:`supports` accepts (PEFT-wrapped or not).
        prompt_keys, prompt_values: per layer, (P, H_kv, L, D) from the prefill of the P prompts.
        prompt_mask: (P, L) 1 on real prompt tokens, 0 on left padding.
        group_size: G, completions per prompt; the batch has B = P * G rows at first.
        max_new_tokens: room in each row's own cache.
    """

    def __init__(
        self,
        model,
        prompt_keys: list[torch.Tensor],
        prompt_values: list[torch.Tensor],
        prompt_mask: torch.Tensor,
        group_size: int,
        max_new_tokens: int,
    ):
        base = base_model(model)
        self.core, self.lm_head = base.model, base.get_output_embeddings()
        self.prompt_keys, self.prompt_values = prompt_keys, prompt_values
        self.prompt_pad = prompt_mask == 0  # (P, L) True where the prompt is padding
        self.group_size = group_size
        prompts, kv_heads, _, head_dim = prompt_keys[0].shape
        rows = prompts * group_size
        self.slots = torch.arange(rows, device=prompt_mask.device)  # (B,) each row's place in the P x G grid
        shape = (rows, kv_heads, max_new_tokens, head_dim)
        self.own_keys = [k.new_empty(shape) for k in prompt_keys]  # per layer (B, H_kv, T, D), filled as it goes
        self.own_values = [v.new_empty(shape) for v in prompt_values]
        self.length = 0  # tokens generated so far (the same for every row)

    def keep(self, rows: torch.Tensor) -> None:
        """Keep only the batch rows ``rows`` (the completions still running), and the prompts they need."""
        self.slots = self.slots[rows]
        self.own_keys = [self._rows_of(k, rows) for k in self.own_keys]
        self.own_values = [self._rows_of(v, rows) for v in self.own_values]
        prompts = torch.unique(self.slots // self.group_size)  # prompts with a row left, in order
        if len(prompts) < len(self.prompt_pad):
            new_index = torch.full((len(self.prompt_pad),), -1, dtype=torch.long, device=prompts.device)
            new_index[prompts] = torch.arange(len(prompts), device=prompts.device)
            self.slots = new_index[self.slots // self.group_size] * self.group_size + self.slots % self.group_size
            self.prompt_keys = [k[prompts] for k in self.prompt_keys]
            self.prompt_values = [v[prompts] for v in self.prompt_values]
            self.prompt_pad = self.prompt_pad[prompts]

    def _rows_of(self, buffer: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """A new buffer with the filled part of ``buffer``'s rows ``rows`` (the rest is never read)."""
        kept = buffer.new_empty((len(rows), *buffer.shape[1:]))
        kept[:, :, : self.length] = buffer[rows, :, : self.length]
        return kept

    def step(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Feed one token per row and return the next-token logits.

        Args:
            tokens: (B,) the tokens just sampled.
            positions: (B,) their positions (the prompt's real length plus the tokens before them).
        Returns:
            (B, V) logits.
        """
        hidden = self.core.embed_tokens(tokens[:, None])  # (B, 1, d)
        cos, sin = self.core.rotary_emb(hidden, positions[:, None])  # (B, 1, D) each
        for i, layer in enumerate(self.core.layers):
            hidden = hidden + self._attention(i, layer.self_attn, layer.input_layernorm(hidden), cos, sin)
            hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden))
        self.length += 1
        return self.lm_head(self.core.norm(hidden))[:, -1]  # (B, V)

    def _attention(self, i: int, attn, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """Layer ``i``'s self-attention for one new token per row: (B, 1, d) -> (B, 1, d)."""
        rows, head_dim = x.shape[0], attn.head_dim
        q = attn.q_proj(x).view(rows, 1, -1, head_dim).transpose(1, 2)  # (B, H, 1, D)
        k = attn.k_proj(x).view(rows, 1, -1, head_dim).transpose(1, 2)  # (B, H_kv, 1, D)
        v = attn.v_proj(x).view(rows, 1, -1, head_dim).transpose(1, 2)
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        self.own_keys[i][:, :, self.length] = k[:, :, 0]  # this token joins the row's own cache
        self.own_values[i][:, :, self.length] = v[:, :, 0]
        out = self._two_part_attention(i, q[:, :, 0], attn.scaling)  # (B, H, D)
        return attn.o_proj(out.reshape(rows, 1, -1))

    def _two_part_attention(self, i: int, q: torch.Tensor, scaling: float) -> torch.Tensor:
        """softmax([q K_prompt^T, q K_own^T] * scaling) [V_prompt; V_own] for queries q: (B, H, D) -> (B, H, D)."""
        prompt_k, prompt_v = self.prompt_keys[i], self.prompt_values[i]  # (P, H_kv, L, D)
        own_k = self.own_keys[i][:, :, : self.length + 1]  # (B, H_kv, t, D)
        own_v = self.own_values[i][:, :, : self.length + 1]
        prompts, kv_heads, prompt_len, head_dim = prompt_k.shape
        rows, heads, _ = q.shape
        rep, g = heads // kv_heads, self.group_size  # query heads per key head (GQA), completions per prompt

        # Scores against the prompt: the G queries of each prompt in one product with its keys
        grid = q.new_zeros(prompts * g, heads, head_dim)
        grid[self.slots] = q
        grid = grid.view(prompts, g, kv_heads, rep, head_dim).transpose(1, 2).reshape(prompts, kv_heads, g * rep, -1)
        prompt_scores = grid @ prompt_k.transpose(-1, -2)  # (P, H_kv, G * rep, L)
        prompt_scores = prompt_scores.masked_fill(self.prompt_pad[:, None, None, :], float("-inf"))
        prompt_scores = prompt_scores.view(prompts, kv_heads, g, rep, prompt_len).transpose(1, 2)
        prompt_scores = prompt_scores.reshape(prompts * g, heads, prompt_len)[self.slots]  # (B, H, L)

        # Scores against the row's own tokens, then one softmax over both blocks
        own_scores = (q.view(rows, kv_heads, rep, head_dim) @ own_k.transpose(-1, -2)).view(
            rows, heads, -1
        )  # (B, H, t)
        weights = torch.softmax(torch.cat([prompt_scores, own_scores], dim=-1).float() * scaling, dim=-1).to(q.dtype)
        prompt_w, own_w = weights[..., :prompt_len], weights[..., prompt_len:]  # (B, H, L), (B, H, t)

        # Values: the prompt's through the same grid, the row's own directly
        grid_w = prompt_w.new_zeros(prompts * g, heads, prompt_len)
        grid_w[self.slots] = prompt_w
        grid_w = (
            grid_w.view(prompts, g, kv_heads, rep, prompt_len).transpose(1, 2).reshape(prompts, kv_heads, g * rep, -1)
        )
        from_prompt = (
            (grid_w @ prompt_v).view(prompts, kv_heads, g, rep, head_dim).transpose(1, 2)
        )  # (P, G, H_kv, rep, D)
        from_prompt = from_prompt.reshape(prompts * g, heads, head_dim)[self.slots]  # (B, H, D)
        from_own = (own_w.view(rows, kv_heads, rep, -1) @ own_v).view(rows, heads, head_dim)  # (B, H, D)
        return from_prompt + from_own
