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
A step is a few dozen operations, each paid for in dispatch, so the small ones are folded
together where the arithmetic allows: RMSNorm as one fused call (:func:`rms_norm`); rotary
positions as one complex product for q and k of every head, their dimensions kept in pair order
(:func:`pair_order`, :func:`rotation_table`), with q's 1/sqrt(D) in the same factor; each residual
added inside the product before it (``addmm``). Where the compiled kernels run, the whole step
is one call into C (:class:`course_lib.decoding_kernels.Step`): the same operations in the same
order, without the Python between them; this module's Python stays the readable reference and
the path everywhere else.
It is used for the architectures whose layers have exactly that shape (:data:`ARCHITECTURES`);
any other causal LM is decoded by its own ``forward`` (see :mod:`course_lib.sampling`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from course_lib import decoding_kernels

logger = logging.getLogger(__name__)

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

    qkv: tuple  # q, k and v stacked, q's and k's head dimensions in pair order: (H * D + 2 * H_kv * D, d)
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


def _pair_rows(out_features: int, head_dim: int) -> torch.Tensor:
    """The rows of a q or k projection (heads x D outputs) with each head's dimensions in pair order."""
    heads = torch.arange(out_features // head_dim)[:, None] * head_dim  # (heads, 1)
    return (heads + pair_order(head_dim)[None, :]).flatten()  # (heads * D,)


def fused_layer(layer) -> FusedLayer | None:
    """A decoder layer's q/k/v and gate/up stacked into one weight each (with o and down), q's and
    k's rows put in pair order (:func:`pair_order`), or None where a projection is not a plain linear map."""
    attn, mlp = layer.self_attn, layer.mlp
    parts = [effective_linear(m) for m in (attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj)]
    parts += [effective_linear(getattr(mlp, name, None)) for name in ("gate_proj", "up_proj", "down_proj")]
    if any(p is None for p in parts) or not hasattr(mlp, "act_fn"):
        return None
    (q, qb), (k, kb), (v, vb), o, (gate, gb), (up, ub), down = parts
    q_rows, k_rows = _pair_rows(q.shape[0], attn.head_dim), _pair_rows(k.shape[0], attn.head_dim)
    q, k = q[q_rows], k[k_rows]  # each head's dimensions in pair order (:func:`pair_order`)
    qb, kb = (qb, kb) if qb is None else (qb[q_rows], kb[k_rows])
    qkv_bias = None if qb is None else torch.cat([qb, kb, vb])
    gate_up_bias = None if gb is None else torch.cat([gb, ub])
    return FusedLayer(
        qkv=(torch.cat([q, k, v]), qkv_bias),
        qkv_sizes=(q.shape[0], k.shape[0], v.shape[0]),
        o=o,
        gate_up=(torch.cat([gate, up]), gate_up_bias),
        down=down,
    )


def _blocks(keys_t: torch.Tensor) -> torch.Tensor:
    """(..., D, L) keys as the kernel reads them: (..., L / 16, D, 16), 16 positions per contiguous block."""
    *lead, head_dim, length = keys_t.shape
    blocks = keys_t.reshape(*lead, head_dim, length // decoding_kernels.VECTOR, decoding_kernels.VECTOR)
    return blocks.transpose(-3, -2).contiguous()


class Decoder:
    """The decoding state of one batch: P prompts, ``group_size`` completions each.

    Within the step each row's q and k keep their head dimensions in pair order (:func:`pair_order`),
    so the rotary embedding is one complex product for q and k of every head at once, with q's
    1/sqrt(D) folded into the same factor; the prompt's keys are put in that order once, here. A
    dot product q . k does not change when both reorder their dimensions the same way.

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
        kernel: attend through :mod:`course_lib.decoding_kernels` (one compiled call per layer).
            Default: where it is usable (float32 on the CPU, a head dimension it supports, a C
            compiler); otherwise, or with False, through PyTorch operations (:meth:`_attention`).
        whole_step: run the whole step as one compiled call (:class:`course_lib.decoding_kernels.Step`:
            the same operations, the products through the BLAS PyTorch calls, no Python between
            them). Default: where the kernels run, every layer is fused, the norms are RMSNorms, the
            activation SiLU, the embedding a plain table, and PyTorch's BLAS is reachable.
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
        kernel: bool | None = None,
        whole_step: bool | None = None,
    ):
        base = base_model(model)
        self.core, self.lm_head = base.model, base.get_output_embeddings()
        prompts, self.kv_heads, prompt_len, self.head_dim = prompt_keys[0].shape
        self.heads = base.config.num_attention_heads
        device = prompt_mask.device
        self.order = pair_order(self.head_dim).to(device)  # (D,)
        usable = decoding_kernels.usable(prompt_keys[0].dtype, device, self.head_dim)
        if kernel and not usable:
            raise ValueError(
                "kernel=True needs float32 on the CPU, a head dimension that is a multiple of "
                f"{decoding_kernels.VECTOR} and a C compiler (got {prompt_keys[0].dtype} on {device.type}, "
                f"head dimension {self.head_dim}): leave kernel at None to use it only where it can run"
            )
        self.kernel = usable if kernel is None else kernel
        self.capacity = max_new_tokens
        self.group_size = group_size
        rows = prompts * group_size
        self.slots = torch.arange(rows, device=device)  # (B,) each row's place in the P x G grid
        self.slot_prompt, self.slot_copy = self.slots // group_size, self.slots % group_size
        keys_t = [k[..., self.order].transpose(-1, -2) for k in prompt_keys]  # (P, H_kv, D, L)
        pad = prompt_mask == 0  # (P, L) True where the prompt is padding
        if self.kernel:  # the kernel's layouts: L and T padded to whole vectors, keys in blocks (decoding_kernels.c)
            extra, own_len = decoding_kernels.padded(prompt_len) - prompt_len, decoding_kernels.padded(max_new_tokens)
            # per layer (P, H_kv, L' / 16, D, 16)
            self.prompt_keys_t = [_blocks(torch.nn.functional.pad(k, (0, extra))) for k in keys_t]
            self.prompt_values = [torch.nn.functional.pad(v, (0, 0, 0, extra)).contiguous() for v in prompt_values]
            self.prompt_pad = torch.nn.functional.pad(pad, (0, extra), value=True).to(torch.uint8)  # (P, L')
            blocks = (rows, self.kv_heads, own_len // decoding_kernels.VECTOR, self.head_dim, decoding_kernels.VECTOR)
            self.own_keys = [k.new_zeros(blocks) for k in prompt_keys]  # per layer (B, H_kv, T' / 16, D, 16)
            self.own_values = [v.new_zeros(rows, self.kv_heads, own_len, self.head_dim) for v in prompt_values]
            self.prompt_rows = self._prompt_rows()
        else:
            self.prompt_keys_t = [k.contiguous() for k in keys_t]  # per layer (P, H_kv, D, L)
            self.prompt_values = prompt_values  # per layer (P, H_kv, L, D)
            self.prompt_pad = pad[:, None, None, :]  # (P, 1, 1, L)
            shape = (rows, self.kv_heads, max_new_tokens, self.head_dim)
            self.own_keys = [k.new_empty(shape) for k in prompt_keys]  # per layer (B, H_kv, T, D), filled as it goes
            self.own_values = [v.new_empty(shape) for v in prompt_values]
        self.padded = bool(pad.any())
        self.checked = False  # whether decoding_kernels.attend has checked this batch's buffers
        self.length = 0  # tokens generated so far (the same for every row)
        self.rotation = rotation_table(self.core.rotary_emb, prompt_len + max_new_tokens, self.head_dim, device)
        scalings = {layer.self_attn.scaling for layer in self.core.layers}
        if len(scalings) != 1:
            raise ValueError(
                f"layers scale attention differently ({sorted(scalings)}): decode with the model's forward"
            )
        self.q_scale = scalings.pop()
        heads = [self.q_scale] * self.heads + [1.0] * self.kv_heads  # q scaled by 1/sqrt(D), k as it is
        self.head_scale = torch.tensor(heads, device=device)[None, :, None]  # (1, H + H_kv, 1)
        fuse = device.type == "cpu" if fuse is None else fuse
        self.fused = [fused_layer(layer) for layer in self.core.layers] if fuse else [None] * len(self.core.layers)
        self.whole = self._whole_step(rows) if self.kernel and whole_step is not False else None
        if whole_step and self.whole is None:
            raise ValueError(
                "whole_step=True needs the kernels, fused plain linear layers, RMSNorms, SiLU, a plain embedding and "
                "PyTorch's BLAS (sgemm_): leave whole_step at None to use it only where it can run"
            )
        if self.whole is not None:
            self.whole.set_caches(*self._caches())

    def keep(self, rows: torch.Tensor) -> None:
        """Keep only the batch rows ``rows`` (the completions still running, in increasing order: each
        prompt's rows stay side by side), and the prompts they need."""
        if len(rows) > 1 and not bool((rows[1:] > rows[:-1]).all()):
            raise ValueError("keep: give the rows to keep in increasing order (e.g. done.logical_not().nonzero())")
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
        self.slot_prompt, self.slot_copy = self.slots // self.group_size, self.slots % self.group_size
        if self.kernel:
            self.prompt_rows = self._prompt_rows()
        if self.whole is not None:
            self.whole.set_caches(*self._caches())
        self.checked = False

    def _rows_of(self, buffer: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """A new buffer with the filled part of ``buffer``'s rows ``rows`` (the rest is never read):
        the first ``length`` positions, or for the kernel's key blocks the blocks that hold them."""
        filled = self.length
        if self.kernel and buffer.dim() == 5:  # (B, H_kv, blocks, D, 16)
            filled = decoding_kernels.padded(self.length) // decoding_kernels.VECTOR
        kept = (buffer.new_zeros if self.kernel else buffer.new_empty)((len(rows), *buffer.shape[1:]))
        kept[:, :, :filled] = buffer[rows, :, :filled]
        return kept

    def _prompt_rows(self) -> torch.Tensor:
        """(P + 1,) where each prompt's rows start in the batch, and where the last ends (rows stay
        in grid order, so each prompt's rows are side by side)."""
        counts = torch.bincount(self.slot_prompt, minlength=self.prompt_keys_t[0].shape[0])  # (P,)
        return torch.cat([counts.new_zeros(1), counts.cumsum(0)]).cpu()

    def step(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Feed one token per row and return the next-token logits.

        Args:
            tokens: (B,) the tokens just sampled.
            positions: (B,) their positions (the prompt's real length plus the tokens before them).
        Returns:
            (B, V) logits.
        """
        if self.length >= self.capacity:
            raise ValueError(
                f"the decoder holds {self.capacity} new tokens per row; make it with a larger max_new_tokens"
            )
        if not len(tokens) == len(positions) == len(self.slots):
            raise ValueError(
                f"step: one token and one position for each of the {len(self.slots)} rows still running "
                f"(got {len(tokens)} and {len(positions)}); after keep(rows), pass tokens[rows] and positions[rows]"
            )
        if self.whole is not None:  # the same operations as below, in one compiled call
            logits = self.whole(tokens, positions, self.length + 1)  # (B, V)
            self.length += 1
            return logits
        hidden = self.core.embed_tokens(tokens)  # (B, d)
        turn = self.rotation[positions][:, None, :] * self.head_scale  # (B, H + H_kv, D/2): every layer's rotation
        for i, layer in enumerate(self.core.layers):
            qk, v = self._qkv(i, layer.self_attn, self._norm(layer.input_layernorm, hidden), turn)
            out = self._kernel_attention(i, qk, v) if self.kernel else self._attention(i, qk, v)  # (B, H * D)
            hidden = self._project(out, layer.self_attn.o_proj, self.fused[i] and self.fused[i].o, hidden)
            hidden = self._mlp(i, layer.mlp, self._norm(layer.post_attention_layernorm, hidden), hidden)
        self.length += 1
        self.checked = True  # the kernel has seen every layer's buffers: the layouts stay until keep()
        return self.lm_head(self._norm(self.core.norm, hidden))  # (B, V)

    def _whole_step(self, rows: int) -> decoding_kernels.Step | None:
        """The step as one compiled call, where each of its pieces is one the C code does as :meth:`step`
        does (fused plain linear layers, RMSNorms with one epsilon, SiLU, a plain embedding) and
        :class:`~course_lib.decoding_kernels.Step` accepts the weights (it needs PyTorch's BLAS), else None."""
        layers, core = self.core.layers, self.core
        norms = [core.norm] + [
            norm for layer in layers for norm in (layer.input_layernorm, layer.post_attention_layernorm)
        ]
        epsilons = {getattr(norm, "variance_epsilon", None) for norm in norms}
        lm_head = effective_linear(self.lm_head)
        if (
            any(fused is None for fused in self.fused) or lm_head is None or len(epsilons) != 1
            or any(type(norm).__name__ not in RMS_NORMS for norm in norms)
            or any(type(layer.mlp.act_fn).__name__ not in SILUS for layer in layers)
            or type(core.embed_tokens) is not torch.nn.Embedding or core.embed_tokens.max_norm is not None
        ):  # fmt: skip
            return None
        weights = decoding_kernels.StepWeights(
            embed=core.embed_tokens.weight.detach(),
            rotation=torch.view_as_real(self.rotation).contiguous(),  # (N, D/2, 2) cos, sin
            final_norm=core.norm.weight.detach(),
            lm_head=_plain(lm_head),
            layers=[
                (
                    layer.input_layernorm.weight.detach(),
                    layer.post_attention_layernorm.weight.detach(),
                    *map(_plain, (fused.qkv, fused.o, fused.gate_up, fused.down)),
                )
                for layer, fused in zip(layers, self.fused)
            ],  # fmt: skip
            heads=self.heads,
            kv_heads=self.kv_heads,
            head_dim=self.head_dim,
            eps=epsilons.pop(),
            q_scale=self.q_scale,
        )
        try:
            return decoding_kernels.Step(weights, rows)
        except ValueError as refusal:
            logger.info("the decoding step stays in Python: %s", refusal)
            return None

    def _caches(self) -> tuple:
        """The caches as :meth:`course_lib.decoding_kernels.Step.set_caches` takes them."""
        return self.prompt_keys_t, self.prompt_values, self.own_keys, self.own_values, self.prompt_pad, self.prompt_rows

    def _norm(self, norm, x: torch.Tensor) -> torch.Tensor:
        """``norm(x)``: a Llama-style RMSNorm through the compiled kernel where the decoder uses the
        kernels, else :func:`rms_norm`."""
        if self.kernel and type(norm).__name__ in RMS_NORMS and x.is_contiguous():
            return decoding_kernels.rms_norm(x, norm.weight, norm.variance_epsilon)  # (B, d), one pass
        return rms_norm(norm, x)

    def _qkv(self, i: int, attn, x: torch.Tensor, turn: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer ``i``'s q and k, rotated to their positions (q also scaled), in pair order, and v:
        (B, d) -> (B, H + H_kv, D), (B, H_kv, D)."""
        rows, head_dim, fused = x.shape[0], self.head_dim, self.fused[i]
        if fused is not None:  # one product for q, k and v; q's and k's rows are already in pair order
            qkv = torch.nn.functional.linear(x, *fused.qkv)  # (B, (H + 2 H_kv) * D)
            qk, v = qkv[:, : (self.heads + self.kv_heads) * head_dim], qkv[:, (self.heads + self.kv_heads) * head_dim :]
        else:
            q, k, v = attn.q_proj(x), attn.k_proj(x), attn.v_proj(x)
            qk = torch.cat([q, k], dim=-1).view(rows, -1, head_dim)[..., self.order]  # (B, H + H_kv, D) pair order
        pairs = torch.view_as_complex(qk.float().reshape(rows, -1, head_dim // 2, 2))  # (B, H + H_kv, D/2)
        qk = torch.view_as_real(pairs * turn).view(rows, -1, head_dim).to(x.dtype)  # each pair turned, q scaled
        return qk, v.view(rows, -1, head_dim)

    def _kernel_attention(self, i: int, qk: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """:meth:`_attention` as one compiled call (:func:`course_lib.decoding_kernels.attend`): (B, H + H_kv, D),
        (B, H_kv, D) -> (B, H * D)."""
        return decoding_kernels.attend(
            qk.contiguous(), v.flatten(1), self.heads, self.prompt_keys_t[i], self.prompt_values[i],
            self.prompt_pad, self.own_keys[i], self.own_values[i], self.prompt_rows, self.length + 1,
            check=not self.checked,
        )  # fmt: skip

    def _project(self, x: torch.Tensor, module, weights: tuple | None, residual: torch.Tensor) -> torch.Tensor:
        """residual + a layer's output projection of ``x`` (the residual added inside the product where it
        can: in place without autograd, ``residual`` being the step's own hidden state)."""
        if weights is None:
            return residual + module(x)
        weight, bias = weights
        if bias is None and not torch.is_grad_enabled():
            return residual.addmm_(x, weight.t())  # (B, d), no copy of the residual
        if bias is None:
            return torch.addmm(residual, x, weight.t())  # (B, d)
        return residual + torch.nn.functional.linear(x, weight, bias)

    def _mlp(self, i: int, mlp, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """residual + layer ``i``'s gated MLP, down(act(gate(x)) * up(x)): (B, d) -> (B, d)."""
        fused = self.fused[i]
        if fused is None:
            return residual + mlp(x)
        gate_up = torch.nn.functional.linear(x, *fused.gate_up)  # (B, 2 I): gate and up in one product
        if self.kernel and type(mlp.act_fn).__name__ in SILUS:
            inner = decoding_kernels.silu_mul(gate_up)  # (B, I) in one pass
        else:
            gate, up = gate_up.chunk(2, dim=-1)  # (B, I) each
            inner = mlp.act_fn(gate) * up
        return self._project(inner, None, fused.down, residual)

    def _full(self) -> bool:
        """Whether every slot of the P x G grid still has its row (the slots are then 0 .. P*G - 1)."""
        return len(self.slots) == self.prompt_keys_t[0].shape[0] * self.group_size

    def _to_grid(self, x: torch.Tensor) -> torch.Tensor:
        """(B, ...) rows in their places of the P x G grid, zeros where a row has finished: (P, G, ...)."""
        prompts = self.prompt_keys_t[0].shape[0]
        if self._full():
            return x.view(prompts, self.group_size, *x.shape[1:])  # no row has left: the batch is the grid
        grid = x.new_zeros(prompts, self.group_size, *x.shape[1:])
        grid[self.slot_prompt, self.slot_copy] = x
        return grid

    def _from_grid(self, grid: torch.Tensor) -> torch.Tensor:
        """The rows still running, out of the grid: (P, G, ...) -> the grid itself while it is full, else (B, ...)."""
        return grid if self._full() else grid[self.slot_prompt, self.slot_copy]

    def _as_rows(self, x: torch.Tensor) -> torch.Tensor:
        """(B, ...) shaped as :meth:`_from_grid` returns its rows, so the two can be added or joined."""
        return x.view(-1, self.group_size, *x.shape[1:]) if self._full() else x

    def _attention(self, i: int, qk: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """softmax([q K_prompt^T, q K_own^T]) [V_prompt; V_own], q already scaled, after writing this
        token's k and v into the row's own cache: (B, H + H_kv, D), (B, H_kv, D) -> (B, H * D)."""
        rows, kv_heads, head_dim, g = qk.shape[0], self.kv_heads, self.head_dim, self.group_size
        rep = self.heads // kv_heads  # query heads per key head (grouped-query attention)
        q = qk[:, : self.heads].reshape(rows, kv_heads, rep, head_dim)  # (B, H_kv, rep, D)
        self.own_keys[i][:, :, self.length] = qk[:, self.heads :]  # this token joins the row's own cache
        self.own_values[i][:, :, self.length] = v
        own_k = self.own_keys[i][:, :, : self.length + 1]  # (B, H_kv, t, D)
        own_v = self.own_values[i][:, :, : self.length + 1]
        prompt_kt, prompt_v = self.prompt_keys_t[i], self.prompt_values[i]  # (P, H_kv, D, L), (P, H_kv, L, D)
        prompts, prompt_len = prompt_kt.shape[0], prompt_kt.shape[-1]

        # Scores against the prompt: the G queries of each prompt in one product with its keys
        grid_q = self._to_grid(q).transpose(1, 2).reshape(prompts, kv_heads, g * rep, head_dim)  # (P, H_kv, G rep, D)
        prompt_scores = grid_q @ prompt_kt  # (P, H_kv, G * rep, L)
        if self.padded:
            prompt_scores.masked_fill_(self.prompt_pad, float("-inf"))  # left padding takes no weight
        # (P, G, H_kv, rep, L): each row's scores in its place of the grid
        prompt_scores = prompt_scores.view(prompts, kv_heads, g, rep, prompt_len).transpose(1, 2)

        # Scores against the row's own tokens, then one softmax over both blocks
        own_scores = q @ own_k.transpose(-1, -2)  # (B, H_kv, rep, t)
        scores = torch.cat([self._from_grid(prompt_scores), self._as_rows(own_scores)], dim=-1)
        weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype).view(rows, kv_heads, rep, -1)

        # Values: the prompt's through the same grid, the row's own directly
        grid_w = self._to_grid(weights[..., :prompt_len]).transpose(1, 2).reshape(prompts, kv_heads, g * rep, -1)
        # (P, G, H_kv, rep, D): what each row reads from its prompt
        from_prompt = (grid_w @ prompt_v).view(prompts, kv_heads, g, rep, head_dim).transpose(1, 2)
        from_own = weights[..., prompt_len:] @ own_v  # (B, H_kv, rep, D)
        return (self._as_rows(from_own) + self._from_grid(from_prompt)).reshape(rows, -1)  # (B, H * D)


#: RMSNorm classes computed as x / sqrt(mean(x^2) + eps) in float32, then times the weight in the input's dtype.
RMS_NORMS = ("LlamaRMSNorm", "Qwen2RMSNorm", "MistralRMSNorm")
#: activation modules that compute x * sigmoid(x) (``transformers``' and PyTorch's).
SILUS = ("SiLUActivation", "SiLU")


def _plain(weights: tuple) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A (weight, bias) pair as plain contiguous tensors (no autograd), for the compiled step."""
    weight, bias = weights
    return weight.detach().contiguous(), None if bias is None else bias.detach().contiguous()


def rms_norm(norm, x: torch.Tensor) -> torch.Tensor:
    """``norm(x)`` for a Llama-style RMSNorm as one fused call (``torch.nn.functional.rms_norm``)
    instead of the module's six operations; any other norm through its module."""
    eps = getattr(norm, "variance_epsilon", None)
    if type(norm).__name__ not in RMS_NORMS or eps is None:
        return norm(x)
    if x.dtype == torch.float32:
        return torch.nn.functional.rms_norm(x, (x.shape[-1],), norm.weight, eps)
    return norm.weight * torch.nn.functional.rms_norm(x.float(), (x.shape[-1],), None, eps).to(x.dtype)


def pair_order(head_dim: int) -> torch.Tensor:
    """The order of a head's dimensions that puts each rotary pair side by side: (D,) indices
    [0, D/2, 1, D/2 + 1, ...]. Llama's rotary embedding turns dimension j together with j + D/2
    (``rotate_half``); in this order the pairs are (re, im) of D/2 complex numbers."""
    half = torch.arange(head_dim // 2)
    return torch.stack([half, half + head_dim // 2], dim=1).flatten()


def rotation_table(rotary_emb, positions: int, head_dim: int, device) -> torch.Tensor:
    """cos + i sin of every position the batch can reach, from the model's own rotary embedding:
    (positions, D/2) complex64. Turning pair j of a query or key at position p is then a product
    with entry (p, j)."""
    probe = torch.zeros(1, 1, head_dim, device=device)  # float32: the table is computed and kept in full precision
    cos, sin = rotary_emb(probe, torch.arange(positions, device=device)[None])  # (1, N, D) each
    half = head_dim // 2
    if not (torch.equal(cos[..., :half], cos[..., half:]) and torch.equal(sin[..., :half], sin[..., half:])):
        raise ValueError("the rotary embedding does not turn dimension j with j + D/2: decode with the model's forward")
    return torch.complex(cos[0, :, :half], sin[0, :, :half])  # (N, D/2)
