"""How much GPU memory does a training run need? A planner for lesson 12.

Memory on one GPU during training is the sum of five parts (bytes; N weights, T of them
trained, w bytes per weight: 2 in bf16, 4 in fp32):

* **weights**: ``N * w``. ZeRO-3 splits them over the G GPUs (``/ G``); offloading them moves
  them to the CPU.
* **gradients**: ``T * w`` (one per trained weight). ZeRO-2 and 3 split them (``/ G``);
  with the optimizer offloaded they stream to the CPU as they are made.
* **optimizer**: Adam keeps two fp32 moments per trained weight (``8 T``), plus an fp32
  master copy of the weights in mixed precision (``+ 4 T``): 12 bytes per weight, six
  times the bf16 weight itself. ZeRO-1/2/3 split them (``/ G``); offloading moves them and
  the update to the CPU (DeepSpeed's CPU Adam).
* **activations**: what the forward pass keeps for the backward pass, per token and layer
  (:func:`activation_elements_per_token`), times micro-batch x sequence length. Gradient
  checkpointing keeps only each layer's input and recomputes the rest, one layer at a time.
  The logits (``batch * seq * vocab`` in fp32, plus their log-softmax) come on top and
  are large for 150k-token vocabularies.
* **generation** (GRPO): the KV cache of the P x G completions sampled each step, and a
  reference model when the KL term needs one and LoRA cannot provide it (full fine-tuning).

Not modelled: the CUDA context and the caching allocator's slack (typically 0.5-1 GB, and
fragmentation); ``overhead_gb`` adds a fixed amount for them. The static parts are exact
(a test checks them against the tensors of a real optimizer step); the activation estimate
is checked against the tensors autograd saves for the pocket model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import pandas as pd
import torch
from peft import get_peft_model

from course_lib.models import lora_config

GB = 1024**3


@dataclass(frozen=True)
class ModelShape:
    """What the planner needs to know about a decoder-only transformer."""

    name: str
    hidden_size: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    intermediate_size: int
    vocab_size: int
    tied_embeddings: bool = True

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.n_heads

    @property
    def kv_dim(self) -> int:
        return self.n_kv_heads * self.head_dim

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """(in, out) of each linear layer in one block (Llama / Qwen2 names)."""
        h, kv, i = self.hidden_size, self.kv_dim, self.intermediate_size
        return {
            "q_proj": (h, h),
            "k_proj": (h, kv),
            "v_proj": (h, kv),
            "o_proj": (h, h),
            "gate_proj": (h, i),
            "up_proj": (h, i),
            "down_proj": (i, h),
        }

    @property
    def n_params(self) -> int:
        """Weights, counting tied input/output embeddings once (biases of Qwen's q/k/v ignored)."""
        per_layer = sum(a * b for a, b in self.linear_shapes().values()) + 2 * self.hidden_size  # + 2 RMSNorms
        embeddings = self.vocab_size * self.hidden_size * (1 if self.tied_embeddings else 2)
        return self.n_layers * per_layer + embeddings + self.hidden_size

    @classmethod
    def from_config(cls, config, name: str | None = None) -> ModelShape:
        """From a transformers ``PretrainedConfig`` (e.g. ``model.config``)."""
        return cls(
            name or getattr(config, "name_or_path", "model") or "model",
            config.hidden_size,
            config.num_hidden_layers,
            config.num_attention_heads,
            getattr(config, "num_key_value_heads", None) or config.num_attention_heads,
            config.intermediate_size,
            config.vocab_size,
            bool(getattr(config, "tie_word_embeddings", False)),
        )


# The shapes of the models the course uses (from their config.json files).
MODELS: dict[str, ModelShape] = {
    "pocket": ModelShape("pocket", 160, 6, 5, 5, 432, 512),
    "SmolLM2-135M": ModelShape("SmolLM2-135M", 576, 30, 9, 3, 1536, 49152),
    "Qwen2.5-0.5B": ModelShape("Qwen2.5-0.5B", 896, 24, 14, 2, 4864, 151936),
    "Llama-3.2-1B": ModelShape("Llama-3.2-1B", 2048, 16, 32, 8, 8192, 128256),
    "Qwen2.5-1.5B": ModelShape("Qwen2.5-1.5B", 1536, 28, 12, 2, 8960, 151936),
    "Qwen2.5-7B": ModelShape("Qwen2.5-7B", 3584, 28, 28, 4, 18944, 152064, tied_embeddings=False),
}


@dataclass(frozen=True)
class TrainingSetup:
    """One way of training: precision, adapter, ZeRO, batch and sequence sizes."""

    precision: str = "bf16"  # "bf16" (mixed precision, fp32 master weights) or "fp32"
    lora_rank: int | None = 16  # None: full fine-tuning
    lora_targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    zero_stage: int = 0  # 0 (plain data parallel), 1, 2 or 3
    offload_optimizer: bool = False  # ZeRO-Offload: optimizer states and update on the CPU
    offload_params: bool = False  # ZeRO-3 only: weights on the CPU too
    n_gpus: int = 1
    micro_batch: int = 1  # sequences per forward/backward on one GPU
    seq_len: int = 512  # prompt + completion tokens
    gradient_checkpointing: bool = False
    grpo_completions: int = 0  # P x G sequences sampled per step (0: no generation, e.g. SFT)
    reference_model: bool = False  # a separate frozen copy for the KL term (full fine-tuning, beta > 0)
    overhead_gb: float = 0.0  # CUDA context and allocator slack, if you want them counted

    def __post_init__(self):
        if self.precision not in ("bf16", "fp32"):
            raise ValueError(f"precision must be 'bf16' or 'fp32', got {self.precision!r}")
        if self.zero_stage not in (0, 1, 2, 3):
            raise ValueError(f"zero_stage must be 0, 1, 2 or 3, got {self.zero_stage}")
        if self.offload_params and self.zero_stage != 3:
            raise ValueError("offloading the weights needs ZeRO-3 (offload_param is a stage-3 option)")
        if self.offload_optimizer and self.zero_stage == 0:
            raise ValueError("offloading the optimizer needs ZeRO (stage 1, 2 or 3)")

    @property
    def bytes_per_weight(self) -> int:
        return 2 if self.precision == "bf16" else 4


def lora_params(shape: ModelShape, rank: int, targets: tuple[str, ...]) -> int:
    """Trainable weights of a LoRA adapter: r * (in + out) per targeted linear layer."""
    shapes = shape.linear_shapes()
    unknown = set(targets) - set(shapes)
    if unknown:
        raise ValueError(f"unknown LoRA targets {sorted(unknown)}; choose from {', '.join(shapes)}")
    return shape.n_layers * sum(rank * (shapes[t][0] + shapes[t][1]) for t in targets)


def optimizer_bytes(trained: int, setup: TrainingSetup) -> float:
    """Adam's state on one GPU for ``trained`` weights: two fp32 moments (8 bytes a weight), plus
    the fp32 master copy in mixed precision (12 in all); ZeRO stage >= 1 splits it over the GPUs,
    offloading moves it to the CPU (0 on the GPU)."""
    if setup.offload_optimizer:
        return 0
    states = trained * (12 if setup.precision == "bf16" else 8)  # m, v (+ master weights)
    return states / (setup.n_gpus if setup.zero_stage >= 1 else 1)


def activation_elements_per_token(shape: ModelShape, setup: TrainingSetup) -> float:
    """Values autograd keeps per token in one block, without checkpointing.

    Counted for a Llama block with SDPA attention (no s x s score matrix is kept): 8h for the
    hidden-size tensors (the two RMSNorms' inputs and outputs, q before and after the rotation,
    the attention output that o_proj reads), 2 kv for k and v, and 4i for the SwiGLU MLP (gate,
    up, silu(gate) and their product). LoRA adds, per targeted layer, 2r (A's output and the
    scaled product) and h / 4 (the dropout mask, one byte per value). A test measures the
    per-layer term on the pocket model (the difference between 2 and 4 layers, what autograd
    saves): within 10 %.
    """
    h, kv, i = shape.hidden_size, shape.kv_dim, shape.intermediate_size
    lora = 0 if not setup.lora_rank else len(setup.lora_targets) * (2 * setup.lora_rank + h / 4)
    return 8 * h + 2 * kv + 4 * i + lora


def estimate(shape: ModelShape, setup: TrainingSetup) -> pd.DataFrame:
    """GPU memory per part, in GB, on one GPU; the last row is the total. See the module docstring."""
    n, w, g = shape.n_params, setup.bytes_per_weight, setup.n_gpus
    full = setup.lora_rank is None
    trained = n if full else lora_params(shape, setup.lora_rank, setup.lora_targets)
    adapter = 0 if full else trained * w  # LoRA's own weights, beside the frozen ones
    weights = 0 if setup.offload_params else (n * w + adapter) / (g if setup.zero_stage == 3 else 1)
    grads = trained * w / (g if setup.zero_stage >= 2 else 1)
    if setup.offload_optimizer:
        grads = 0  # streamed to the CPU bucket by bucket
    optimizer = optimizer_bytes(trained, setup)
    tokens = setup.micro_batch * setup.seq_len
    per_layer = activation_elements_per_token(shape, setup) * w
    if setup.gradient_checkpointing:  # only each layer's input is kept; one layer is recomputed at a time
        activations, recomputed = tokens * shape.n_layers * shape.hidden_size * w, tokens * per_layer
    else:
        activations, recomputed = tokens * shape.n_layers * per_layer, 0
    logits = tokens * shape.vocab_size * 4 * 2  # fp32 logits and their log-softmax
    kv_cache = setup.grpo_completions * setup.seq_len * shape.n_layers * 2 * shape.kv_dim * w
    reference = n * w if setup.reference_model else 0
    parts = {
        "weights": weights,
        "gradients": grads,
        "optimizer": optimizer,
        "activations": activations,
        "recomputed layer (backward)": recomputed,
        "logits": logits,
        "KV cache (generation)": kv_cache,
        "reference model": reference,
        "overhead": setup.overhead_gb * GB,
    }
    table = pd.DataFrame({"GB": {k: v / GB for k, v in parts.items()}})
    table.loc["total"] = table["GB"].sum()
    return table


def total_gb(shape: ModelShape, setup: TrainingSetup) -> float:
    return float(estimate(shape, setup).loc["total", "GB"])


def tutorial_ladder(shape: ModelShape = MODELS["Qwen2.5-1.5B"], **common) -> pd.DataFrame:
    """The memory steps of Yiqiao Yin's "GRPO Training" tutorial (DeepSpeed Course,
    https://github.com/yiqiao-yin/deepspeed-course) for a 1.5B model on one GPU (full, LoRA, + ZeRO-2,
    + CPU offload), our estimate of each next to the figures it quotes (24, 16, 12 and 8 GB)."""
    base = TrainingSetup(lora_rank=None, micro_batch=1, gradient_checkpointing=True, **common)
    steps = {
        "full fine-tuning": (base, 24),
        "LoRA r=16": (replace(base, lora_rank=16), 16),
        "LoRA + ZeRO-2": (replace(base, lora_rank=16, zero_stage=2), 12),
        "LoRA + ZeRO-2 + CPU offload": (replace(base, lora_rank=16, zero_stage=2, offload_optimizer=True), 8),
    }
    rows = {
        name: {"quoted (GB)": quoted, **estimate(shape, setup)["GB"].round(3).to_dict()}
        for name, (setup, quoted) in steps.items()
    }
    return pd.DataFrame(rows).T


def measure(model, input_ids, gradient_checkpointing: bool = False) -> dict[str, int]:
    """Bytes of each part in one real training step of ``model`` on ``input_ids`` (B, T), on any
    device, to check :func:`estimate` against: weights, gradients and AdamW's state summed tensor
    by tensor, and the activations as the distinct storages autograd saves during the forward
    pass and the loss (weights it saves are not counted twice; with checkpointing, the layer recomputed
    during the backward pass is not among them). Leaves the model's weights changed.
    """
    params = list({id(p): p for p in model.parameters()}.values())
    param_storages = {p.untyped_storage().data_ptr() for p in params}
    saved: dict[int, int] = {}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in param_storages:
            saved[ptr] = t.untyped_storage().nbytes()
        return t

    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    trained = [p for p in params if p.requires_grad]
    optimizer = torch.optim.AdamW(trained, lr=1e-6)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model(input_ids=input_ids, labels=input_ids).loss
    activations = sum(saved.values())
    loss.backward()
    optimizer.step()
    state = sum(
        t.numel() * t.element_size()
        for s in optimizer.state.values()
        for t in s.values()
        if torch.is_tensor(t) and t.dim() > 0
    )  # not the scalar step counters
    if gradient_checkpointing:
        model.gradient_checkpointing_disable()
    return {
        "weights": sum(p.numel() * p.element_size() for p in params),
        "gradients": sum(p.grad.numel() * p.grad.element_size() for p in trained),
        "optimizer": state,
        "activations_and_logits": activations,
        "trained_params": sum(p.numel() for p in trained),
    }


def planner_vs_step(
    load: Callable[[], torch.nn.Module],
    shape: ModelShape,
    micro_batch: int = 4,
    seq_len: int = 128,
    lora_rank: int = 16,
    seed: int = 0,
) -> pd.DataFrame:
    """The planner's fp32 numbers beside a real training step (:func:`measure`) of a fresh model from
    ``load()``, for full fine-tuning and LoRA, each with and without gradient checkpointing: one row
    per setup, columns ``(part, "measured")`` and ``(part, "planned")`` in MB."""
    rows = {}
    for rank in (None, lora_rank):
        for checkpointing in (False, True):
            torch.manual_seed(seed)
            model = load()
            if rank:
                model = get_peft_model(model, lora_config(r=rank))
            tokens = torch.randint(3, min(shape.vocab_size, 500), (micro_batch, seq_len))
            measured = measure(model, tokens, gradient_checkpointing=checkpointing)
            setup = TrainingSetup(
                precision="fp32",
                lora_rank=rank,
                micro_batch=micro_batch,
                seq_len=seq_len,
                gradient_checkpointing=checkpointing,
            )
            planned = estimate(shape, setup)["GB"] * GB
            planned["activations_and_logits"] = planned["activations"] + planned["logits"]
            name = f"{f'LoRA r={rank}' if rank else 'full'}{', checkpointing' if checkpointing else ''}"
            for part in ("weights", "gradients", "optimizer", "activations_and_logits"):
                rows.setdefault(name, {})[(part, "measured")] = measured[part] / 1e6
                rows[name][(part, "planned")] = planned[part] / 1e6
    table = pd.DataFrame(rows).T
    table.columns = pd.MultiIndex.from_tuples(table.columns, names=["MB", ""])
    return table
