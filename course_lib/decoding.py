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
output projection, the MLP, each with its residual, then the final norm and the LM head. On the
CPU, where a step of a small model is made of many small products, each layer's q, k and v run
as one product and gate and up as another (:func:`fused_layer`), from the weights the layers
apply at that moment (a LoRA adapter's delta merged in, or left out while adapters are switched
off); otherwise, and for layers that are not plain linear maps, it calls the model's own modules.
It is used for the architectures whose layers have exactly that shape (:data:`ARCHITECTURES`);
any other causal LM is decoded by its own ``forward`` (see :mod:`course_lib.sampling`).
"""

from __future__ import annotations

from dataclasses import dataclass

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


@dataclass(frozen=True)
class FusedLayer:
    """One decoder layer's weights as the fused step uses them: (weight, bias) pairs."""

    qkv: tuple  # q, k and v stacked: (H * D + 2 * H_kv * D, d)
    qkv_sizes: tuple[int, int, int]  # where to split the product
    o: tuple
    gate_up: tuple  # gate and up stacked: (2 * I, d)
    down: tuple


def effective_linear(module) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """The (weight, bias) a linear layer applies now: a plain ``nn.Linear``'s own, a PEFT LoRA
    layer's with the active adapters' deltas added (its base weight alone while adapters are
    switched off), or None for anything else (quantised weights, DoRA, custom layers)."""
    if type(module) is torch.nn.Linear:
        return module.weight, module.bias
    base = getattr(module, "base_layer", None)
    if type(base) is not torch.nn.Linear or not hasattr(module, "get_delta_weight"):
        return None
    if module.disable_adapters or module.merged:
        return base.weight, base.bias
    adapters = [a for a in module.active_adapters if a in module.lora_A]
    if any(module.use_dora.get(a, False) for a in adapters):
        return None
    weight = base.weight
    for adapter in adapters:
        # (out, in): B A * scaling, in the base weight's dtype (PEFT keeps adapters in float32 on a bf16 model)
        weight = weight + module.get_delta_weight(adapter).to(weight.dtype)
    return weight, base.bias


def fused_layer(layer) -> FusedLayer | None:
    """A decoder layer's q/k/v and gate/up stacked into one weight each (with o and down), or None
    where a projection is not a plain linear map."""
    attn, mlp = layer.self_attn, layer.mlp
    parts = [effective_linear(m) for m in (attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj)]
    parts += [effective_linear(getattr(mlp, name, None)) for name in ("gate_proj", "up_proj", "down_proj")]
    if any(p is None for p in parts) or not hasattr(mlp, "act_fn"):
        return None
    (q, qb), (k, kb), (v, vb), o, (gate, gb), (up, ub), down = parts
    qkv_bias = None if qb is None else torch.cat([qb, kb, vb])
    gate_up_bias = None if gb is None else torch.cat([gb, ub])
    return FusedLayer(
        qkv=(torch.cat([q, k, v]), qkv_bias),
        qkv_sizes=(q.shape[0], k.shape[0], v.shape[0]),
        o=o,
        gate_up=(torch.cat([gate, up]), gate_up_bias),
        down=down,
    )


class Decoder:
    """The decoding state of one batch: P prompts, ``group_size`` completions each.

    Args:
        model: a causal LM that :func:`supports` accepts (PEFT-wrapped or not).
        prompt_keys, prompt_values: per layer, (P, H_kv, L, D) from the prefill of the P prompts.
        prompt_mask: (P, L) 1 on real prompt tokens, 0 on left padding.
        group_size: G, completions per prompt; the batch has B = P * G rows at first.
        max_new_tokens: room in each row's own cache.
        fuse: run each layer's q/k/v as one matrix product and gate/up as another, from the
            weights the layers apply now (LoRA deltas merged in: :func:`fused_layer`). Default:
            on the CPU, where the per-operation cost of small products dominates; a layer that is
            not plain linear maps (quantised, DoRA) runs through its modules.
    """

    def __init__(
        self,
        model,
        prompt_keys: list[torch.Tensor],
        prompt_values: list[torch.Tensor],
        prompt_mask: torch.Tensor,
        group_size: int,
        max_new_tokens: int,
        fuse: bool | None = None,
    ):
        base = base_model(model)
        self.core, self.lm_head = base.model, base.get_output_embeddings()
        self.prompt_keys_t = [k.transpose(-1, -2).contiguous() for k in prompt_keys]  # (P, H_kv, D, L), once
        self.prompt_values = prompt_values
        self.prompt_pad = prompt_mask == 0  # (P, L) True where the prompt is padding
        self.group_size = group_size
        prompts, kv_heads, _, head_dim = prompt_keys[0].shape
        rows = prompts * group_size
        self.slots = torch.arange(rows, device=prompt_mask.device)  # (B,) each row's place in the P x G grid
        shape = (rows, kv_heads, max_new_tokens, head_dim)
        self.own_keys = [k.new_empty(shape) for k in prompt_keys]  # per layer (B, H_kv, T, D), filled as it goes
        self.own_values = [v.new_empty(shape) for v in prompt_values]
        self.length = 0  # tokens generated so far (the same for every row)
        fuse = prompt_mask.device.type == "cpu" if fuse is None else fuse
        self.fused = [fused_layer(layer) for layer in self.core.layers] if fuse else [None] * len(self.core.layers)

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
            self.prompt_keys_t = [k[prompts] for k in self.prompt_keys_t]
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
            hidden = hidden + self._mlp(i, layer.mlp, layer.post_attention_layernorm(hidden))
        self.length += 1
        return self.lm_head(self.core.norm(hidden))[:, -1]  # (B, V)

    def _attention(self, i: int, attn, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """Layer ``i``'s self-attention for one new token per row: (B, 1, d) -> (B, 1, d)."""
        rows, head_dim, fused = x.shape[0], attn.head_dim, self.fused[i]
        if fused is not None:  # one product for q, k and v
            q, k, v = torch.nn.functional.linear(x, *fused.qkv).split(fused.qkv_sizes, dim=-1)
        else:
            q, k, v = attn.q_proj(x), attn.k_proj(x), attn.v_proj(x)
        q = q.view(rows, 1, -1, head_dim).transpose(1, 2)  # (B, H, 1, D)
        k = k.view(rows, 1, -1, head_dim).transpose(1, 2)  # (B, H_kv, 1, D)
        v = v.view(rows, 1, -1, head_dim).transpose(1, 2)
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        self.own_keys[i][:, :, self.length] = k[:, :, 0]  # this token joins the row's own cache
        self.own_values[i][:, :, self.length] = v[:, :, 0]
        out = self._two_part_attention(i, q[:, :, 0], attn.scaling).reshape(rows, 1, -1)  # (B, 1, H * D)
        return attn.o_proj(out) if fused is None else torch.nn.functional.linear(out, *fused.o)

    def _mlp(self, i: int, mlp, x: torch.Tensor) -> torch.Tensor:
        """Layer ``i``'s gated MLP, down(act(gate(x)) * up(x)): (B, 1, d) -> (B, 1, d)."""
        fused = self.fused[i]
        if fused is None:
            return mlp(x)
        gate, up = torch.nn.functional.linear(x, *fused.gate_up).chunk(2, dim=-1)  # (B, 1, I) each, one product
        return torch.nn.functional.linear(mlp.act_fn(gate) * up, *fused.down)

    def _to_grid(self, x: torch.Tensor) -> torch.Tensor:
        """(B, ...) rows in their places of the P x G grid, zeros where a row has finished: (P * G, ...)."""
        if self._full():
            return x  # no row has left: the batch is the grid
        grid = x.new_zeros(len(self.prompt_pad) * self.group_size, *x.shape[1:])
        grid[self.slots] = x
        return grid

    def _from_grid(self, grid: torch.Tensor) -> torch.Tensor:
        """The rows still running, out of the grid: (P * G, ...) -> (B, ...)."""
        return grid if self._full() else grid[self.slots]

    def _full(self) -> bool:
        """Whether every slot of the P x G grid still has its row (the slots are then 0 .. P*G - 1)."""
        return len(self.slots) == len(self.prompt_pad) * self.group_size

    def _two_part_attention(self, i: int, q: torch.Tensor, scaling: float) -> torch.Tensor:
        """softmax([q K_prompt^T, q K_own^T] * scaling) [V_prompt; V_own] for queries q: (B, H, D) -> (B, H, D)."""
        prompt_kt, prompt_v = self.prompt_keys_t[i], self.prompt_values[i]  # (P, H_kv, D, L), (P, H_kv, L, D)
        own_k = self.own_keys[i][:, :, : self.length + 1]  # (B, H_kv, t, D)
        own_v = self.own_values[i][:, :, : self.length + 1]
        prompts, kv_heads, head_dim, prompt_len = prompt_kt.shape
        rows, heads, _ = q.shape
        rep, g = heads // kv_heads, self.group_size  # query heads per key head (GQA), completions per prompt

        # Scores against the prompt: the G queries of each prompt in one product with its keys
        grid = self._to_grid(q)  # (P * G, H, D)
        grid = grid.view(prompts, g, kv_heads, rep, head_dim).transpose(1, 2).reshape(prompts, kv_heads, g * rep, -1)
        prompt_scores = grid @ prompt_kt  # (P, H_kv, G * rep, L)
        prompt_scores = prompt_scores.masked_fill_(self.prompt_pad[:, None, None, :], float("-inf"))
        prompt_scores = prompt_scores.view(prompts, kv_heads, g, rep, prompt_len).transpose(1, 2)
        prompt_scores = self._from_grid(prompt_scores.reshape(prompts * g, heads, prompt_len))  # (B, H, L)

        # Scores against the row's own tokens, then one softmax over both blocks
        own_scores = (q.view(rows, kv_heads, rep, head_dim) @ own_k.transpose(-1, -2)).view(
            rows, heads, -1
        )  # (B, H, t)
        weights = torch.softmax(torch.cat([prompt_scores, own_scores], dim=-1).float() * scaling, dim=-1).to(q.dtype)
        prompt_w, own_w = weights[..., :prompt_len], weights[..., prompt_len:]  # (B, H, L), (B, H, t)

        # Values: the prompt's through the same grid, the row's own directly
        grid_w = self._to_grid(prompt_w)  # (P * G, H, L)
        grid_w = (
            grid_w.view(prompts, g, kv_heads, rep, prompt_len).transpose(1, 2).reshape(prompts, kv_heads, g * rep, -1)
        )
        from_prompt = (
            (grid_w @ prompt_v).view(prompts, kv_heads, g, rep, head_dim).transpose(1, 2)
        )  # (P, G, H_kv, rep, D)
        from_prompt = self._from_grid(from_prompt.reshape(prompts * g, heads, head_dim))  # (B, H, D)
        from_own = (own_w.view(rows, kv_heads, rep, -1) @ own_v).view(rows, heads, head_dim)  # (B, H, D)
        return from_prompt + from_own
