"""What every TRL trainer of the course shares (lessons 06-09): devices, epochs, quiet tables, live curves.

Facts that matter on the CPU track (TRL 1.16):

* ``use_cpu=True``, ``bf16=False`` and ``gradient_checkpointing=False``: TRL turns the
  last two on by default, and neither works or helps on a CPU (:func:`device_args`).
* transformers' ``PrinterCallback`` prints a dict per logged step in a notebook; the live
  curves and the returned history carry the same numbers, so every builder drops it.
* ``datasets.map`` draws five progress bars per trainer while it tokenizes a few hundred rows
  in milliseconds: the builders silence them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import datasets
import torch
from transformers import TrainerCallback
from transformers.trainer_callback import PrinterCallback

from course_lib.config import Profile


class EpochSettings(Protocol):
    """The settings an epoch-based trainer (SFT, ORPO) reads: ``RSSettings`` and ``ORPOSettings`` both have them."""

    epochs: int
    batch_size: int
    learning_rate: float
    seed: int


def device_args(profile: Profile) -> dict:
    """The device arguments every TRL config of the course shares (see the module docstring)."""
    on_gpu = profile.device == "cuda" and torch.cuda.is_available()
    return dict(use_cpu=not on_gpu, bf16=on_gpu and profile.dtype == "bfloat16", gradient_checkpointing=on_gpu)


def epoch_args(profile: Profile, output_dir: str | Path, settings: EpochSettings, progress: bool) -> dict:
    """The training arguments SFT and ORPO share: ``settings.epochs`` epochs over the rows at a
    constant learning rate, a log row per step, no checkpoints, the profile's devices."""
    return dict(
        output_dir=str(output_dir),
        num_train_epochs=settings.epochs,
        seed=settings.seed,
        per_device_train_batch_size=settings.batch_size,
        learning_rate=settings.learning_rate,
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        max_grad_norm=1.0,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        disable_tqdm=not progress,
        **device_args(profile),
    )


def require_pairs(pairs: list[dict]) -> None:
    """The error ORPO and DPO give when they have no ``{"prompt", "chosen", "rejected"}`` row to learn from."""
    if not pairs:
        raise ValueError(
            "no preference pairs: no question had both a correct and a wrong sample. "
            "Sample more questions or more samples per question (k)"
        )


def build(trainer_class, model, tokenizer, rows: list[dict], args, lora, callbacks):
    """``trainer_class`` on ``rows`` (a list of dicts made into a ``datasets.Dataset``), tokenized
    without progress bars and without the per-step printer."""
    with quiet_datasets():
        trainer = trainer_class(
            model=model,
            args=args,
            train_dataset=datasets.Dataset.from_list(rows),
            processing_class=tokenizer,
            peft_config=lora,
            callbacks=list(callbacks),
        )
    drop_printer(trainer)
    return trainer


@contextlib.contextmanager
def quiet_datasets():
    """No progress bars from ``datasets.map`` inside the block."""
    was_enabled = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if was_enabled:
            datasets.enable_progress_bars()


def drop_printer(trainer) -> None:
    """Drop transformers' PrinterCallback, which prints a dict per logged step in notebooks."""
    trainer.remove_callback(PrinterCallback)


class LiveCurvesCallback(TrainerCallback):
    """Renames each row a trainer logs to the course's names and hands it, with ``step``, to ``on_row``.

    Rows without ``needs`` (after renaming; the summary row at the end of ``train()``) are
    skipped. ``history`` keeps every row handed on.
    """

    def __init__(self, on_row: Callable[[dict], None], names: dict[str, str], needs: str = "loss"):
        self.on_row, self.names, self.needs = on_row, names, needs
        self.history: list[dict] = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        row = {ours: float(logs[theirs]) for theirs, ours in self.names.items() if logs and theirs in logs}
        if self.needs not in row:
            return
        row["step"] = state.global_step
        self.history.append(row)
        self.on_row(row)


# What TRL's trainers log -> the names our loop uses, so that one figure shows either run.
TRL_METRIC_NAMES = {
    "reward": "reward",
    "reward_std": "reward_std",
    "rewards/correctness_reward/mean": "accuracy",
    "kl": "kl",
    "entropy": "entropy",
    "completions/mean_length": "completion_length",
    "frac_reward_zero_std": "frac_zero_std",
    "clip_ratio/region_mean": "clip_ratio/region",
    "loss": "loss",
    "grad_norm": "grad_norm",
    "rewards/format_reward/mean": "format_reward",
    "rewards/step_by_step/mean": "share_step_by_step",
}
# TRL's ORPOTrainer logs -> short names for lesson 08's curves.
ORPO_METRIC_NAMES = {
    "loss": "loss",
    "nll_loss": "nll_loss",
    "log_odds_chosen": "log_odds_ratio",
    "rewards/accuracies": "pair_accuracy",
    "logps/chosen": "logp_chosen",
    "logps/rejected": "logp_rejected",
}
# TRL's DPOTrainer logs -> short names for lesson 08's curves (a margin is beta times the log-ratio gap).
DPO_METRIC_NAMES = {
    "loss": "loss",
    "rewards/accuracies": "pair_accuracy",
    "rewards/margins": "margin",
    "logps/chosen": "logp_chosen",
    "logps/rejected": "logp_rejected",
}


def live_curves_callback(
    on_row: Callable[[dict], None], names: dict[str, str] | None = None, needs: str = "loss"
) -> LiveCurvesCallback:
    """A :class:`LiveCurvesCallback` for a trainer (``names`` default: GRPO's, ``TRL_METRIC_NAMES``);
    ``on_row`` is e.g. a :class:`course_lib.plots.LiveCurves`."""
    return LiveCurvesCallback(on_row, TRL_METRIC_NAMES if names is None else names, needs)
