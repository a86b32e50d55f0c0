"""Where did fine-tuning change the weights? Relative change per module type and per layer (lesson 10).

For each weight matrix W of the base and the same matrix W' after training, the **relative
change** is

    r(W) = ||W' - W||_F / ||W||_F

(the Frobenius norm: every entry counts). Rajani et al.'s "Scalpel vs. Hammer" compares SFT and
GRPO this way, per module type (query, key, value, output, the MLP's gate, up and down
projections, norms, embeddings) and per layer. Several matrices together (a module type over
all layers) get the relative change of their concatenation: sqrt(sum ||dW||^2) / sqrt(sum ||W||^2),
so a large matrix counts for its size and a small one cannot dominate by its ratio alone.

One confound to keep in mind when reading the numbers: Adam moves every trainable coordinate by
about the learning rate per step whatever its gradient's scale (its update is m / sqrt(v)), so
a module whose weights are small (a norm's gain is ~1, a projection's entries are ~0.05) shows
a large *relative* change from the same number of steps. The table therefore also gives the
root-mean-square change per entry, ``rms_change``, which Adam's step size bounds directly.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import pandas as pd
import torch
from transformers import TrainerCallback

#: Module types in the order a transformer block runs them, then the ones outside the blocks.
MODULE_TYPES = ("q", "k", "v", "o", "gate", "up", "down", "attn_norm", "mlp_norm", "embed", "final_norm")
LAYER_TYPES = MODULE_TYPES[:9]  # the ones every layer has (the heatmap's rows)
ATTENTION_TYPES = ("q", "k", "v", "o")
MLP_TYPES = ("gate", "up", "down")

_PATTERNS = {  # a parameter's name (Llama / Qwen2 naming in transformers) -> its module type
    "q": r"\.q_proj\.",
    "k": r"\.k_proj\.",
    "v": r"\.v_proj\.",
    "o": r"\.o_proj\.",
    "gate": r"\.gate_proj\.",
    "up": r"\.up_proj\.",
    "down": r"\.down_proj\.",
    "attn_norm": r"\.input_layernorm\.",
    "mlp_norm": r"\.post_attention_layernorm\.",
    "embed": r"embed_tokens\.",
    "final_norm": r"model\.norm\.",
}
_LAYER = re.compile(r"\.layers\.(\d+)\.")


def module_type(name: str) -> str | None:
    """The module type of a parameter name (``"q"``, ``"down"``, ``"embed"``, ...), None for others
    (e.g. an untied LM head or a LoRA adapter's own matrices)."""
    if "lora_" in name:
        return None
    for kind, pattern in _PATTERNS.items():
        if re.search(pattern, "." + name):
            return kind
    return None


def layer_of(name: str) -> int | None:
    """The transformer layer a parameter belongs to (0-based), None outside the layers."""
    found = _LAYER.search("." + name)
    return int(found.group(1)) if found else None


def base_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A detached copy of every named weight: the reference the changes are measured from."""
    return {name: p.detach().clone() for name, p in model.named_parameters() if module_type(name) is not None}


def relative_changes(model: torch.nn.Module, base: dict[str, torch.Tensor]) -> pd.DataFrame:
    """One row per weight matrix of ``base``: ``name, module, layer, rel_change, rms_change,
    delta_sq, weight_sq, numel`` (the squared norms let tables aggregate exactly)."""
    params = dict(model.named_parameters())
    rows = []
    for name, before in base.items():
        if name not in params:
            raise KeyError(
                f"{name} is in the base weights but not in the model: measure the model the base was copied "
                "from (for a PEFT model, merge its adapters first: model.merge_and_unload())"
            )
        after = params[name].detach().to(before.dtype)
        delta_sq = float((after - before).pow(2).sum())  # ||dW||_F^2
        weight_sq = float(before.pow(2).sum())  # ||W||_F^2
        rows.append(
            {
                "name": name,
                "module": module_type(name),
                "layer": layer_of(name),
                "rel_change": (delta_sq / weight_sq) ** 0.5,
                "rms_change": (delta_sq / before.numel()) ** 0.5,
                "delta_sq": delta_sq,
                "weight_sq": weight_sq,
                "numel": before.numel(),
            }
        )
    return pd.DataFrame(rows)


def by_module(table: pd.DataFrame) -> pd.DataFrame:
    """Relative and RMS change per module type over all layers (the concatenated matrices), in
    :data:`MODULE_TYPES` order."""
    sums = table.groupby("module")[["delta_sq", "weight_sq", "numel"]].sum()
    out = pd.DataFrame(
        {
            "rel_change": (sums["delta_sq"] / sums["weight_sq"]) ** 0.5,
            "rms_change": (sums["delta_sq"] / sums["numel"]) ** 0.5,
        }
    )
    return out.reindex([m for m in MODULE_TYPES if m in out.index])


def layer_grid(table: pd.DataFrame, value: str = "rel_change") -> pd.DataFrame:
    """A (module type x layer) grid of one column of :func:`relative_changes`, for a heatmap."""
    layered = table[table["layer"].notna()]
    grid = layered.pivot_table(index="module", columns="layer", values=value, aggfunc="mean")
    grid.columns = [int(c) for c in grid.columns]
    return grid.reindex([m for m in LAYER_TYPES if m in grid.index])


def group_change(table: pd.DataFrame, modules: Iterable[str], layers: Iterable[int] | None = None) -> float:
    """The relative change of a group of matrices taken together (e.g. the MLPs of layers 2-3)."""
    rows = table[table["module"].isin(list(modules))]
    if layers is not None:
        rows = rows[rows["layer"].isin(list(layers))]
    if rows.empty:
        raise ValueError("no weight matrix matches those modules and layers")
    return float((rows["delta_sq"].sum() / rows["weight_sq"].sum()) ** 0.5)


def trajectory(table: pd.DataFrame, module: str, layer: int | None = None) -> pd.DataFrame:
    """The relative change of one module type (of one layer; ``layer=None``: all its layers
    together) at every snapshot of a long table with a ``step`` column (:meth:`ChangeTracker.table`),
    with ``progress``: the share of the run's training done at that snapshot."""
    rows = [
        {"step": int(step), "rel_change": group_change(snap, [module], None if layer is None else [layer])}
        for step, snap in table.groupby("step")
    ]
    out = pd.DataFrame(rows)
    return out.assign(progress=out["step"] / out["step"].max())


class ChangeTracker:
    """Records :func:`relative_changes` of ``model`` every ``every`` optimizer steps.

    Use it as a callback of :class:`course_lib.train.grpo.GRPOLoop` (it is called with each
    step's metrics row) or, through :meth:`trainer_callback`, of a transformers ``Trainer``.
    ``snapshots`` maps the step to its table; :meth:`record` adds one by hand (e.g. the end).
    """

    def __init__(self, model: torch.nn.Module, every: int, base: dict[str, torch.Tensor] | None = None):
        if every < 1:
            raise ValueError(f"every must be >= 1 optimizer step (got {every})")
        self.model, self.every = model, every
        self.base = base_weights(model) if base is None else base
        self.snapshots: dict[int, pd.DataFrame] = {}

    def record(self, step: int) -> pd.DataFrame:
        self.snapshots[step] = relative_changes(self.model, self.base)
        return self.snapshots[step]

    def __call__(self, row: dict) -> None:
        if row["step"] % self.every == 0:
            self.record(int(row["step"]))

    def trainer_callback(self) -> TrainerCallback:
        tracker = self

        class _Every(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                tracker({"step": state.global_step})

        return _Every()

    def table(self) -> pd.DataFrame:
        """Every snapshot in one long table with a ``step`` column."""
        return pd.concat([t.assign(step=s) for s, t in sorted(self.snapshots.items())], ignore_index=True)
