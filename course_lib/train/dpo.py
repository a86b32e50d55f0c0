"""DPO with TRL's ``DPOTrainer`` (lesson 08): the same preference pairs as ORPO, against a reference.

DPO (Rafailov et al. 2023, arXiv:2305.18290) trains on ``{"prompt", "chosen", "rejected"}`` rows
with the loss of :func:`course_lib.losses.dpo_loss`,

    -log sigmoid(beta * [(log pi(y_w) - log pi_ref(y_w)) - (log pi(y_l) - log pi_ref(y_l))]),

log-probabilities summed over each completion's tokens. Unlike ORPO it needs a frozen reference
pi_ref: with LoRA that is the same model with its adapters switched off (TRL does this itself when
``peft_config`` is given), so it costs no memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from trl import DPOConfig, DPOTrainer

from course_lib.config import Profile
from course_lib.train.trainers import build, epoch_args, require_pairs


@dataclass(frozen=True)
class DPOSettings:
    """One DPO run: one epoch of TRL's DPOTrainer over the pairs (built as for ORPO)."""

    beta: float = 0.1  # the strength of the pull away from pi_ref (TRL's default)
    learning_rate: float = 1e-4  # constant
    batch_size: int = 16  # pairs per optimizer step
    epochs: int = 1
    seed: int = 0


def dpo_config(
    profile: Profile, output_dir: str | Path, settings: DPOSettings = DPOSettings(), progress: bool = True, **overrides
) -> DPOConfig:
    """TRL's ``DPOConfig``: the sigmoid loss, constant learning rate, the profile's devices."""
    args = dict(**epoch_args(profile, output_dir, settings, progress), beta=settings.beta, max_length=1024)
    args.update(overrides)
    return DPOConfig(**args)


def dpo_trainer(
    profile: Profile,
    model,
    tokenizer,
    pairs: list[dict],
    output_dir: str | Path,
    settings: DPOSettings = DPOSettings(),
    lora=None,
    callbacks=(),
    progress: bool = True,
    **overrides,
) -> DPOTrainer:
    """A ready ``DPOTrainer`` on ``{"prompt", "chosen", "rejected"}`` rows; with ``lora`` the reference
    is the model with its adapters off."""
    require_pairs(pairs)
    args = dpo_config(profile, output_dir, settings, progress, **overrides)
    return build(DPOTrainer, model, tokenizer, pairs, args, lora, callbacks)
