"""Supervised fine-tuning with TRL's ``SFTTrainer`` (lesson 07): one round of rejection-sampling SFT.

The rows are ``{"prompt", "completion"}`` pairs (TRL's prompt-completion format): the
accepted samples of :mod:`course_lib.train.rejection_sampling`. The loss counts the
completion's tokens only (``completion_only_loss``), one epoch at a constant learning rate.
"""

from __future__ import annotations

from pathlib import Path

from trl import SFTConfig, SFTTrainer

from course_lib.config import Profile
from course_lib.train.trainers import EpochSettings, build, epoch_args


def sft_config(
    profile: Profile, output_dir: str | Path, settings: EpochSettings, progress: bool = True, **overrides
) -> SFTConfig:
    """TRL's ``SFTConfig`` for one round of rejection-sampling SFT: ``settings.epochs`` epochs
    (one) at a constant learning rate, loss on the completion tokens only."""
    args = dict(
        **epoch_args(profile, output_dir, settings, progress), completion_only_loss=True, max_length=1024, packing=False
    )
    args.update(overrides)
    return SFTConfig(**args)


def sft_trainer(
    profile: Profile,
    model,
    tokenizer,
    records: list[dict],
    output_dir: str | Path,
    settings: EpochSettings,
    lora=None,
    callbacks=(),
    progress: bool = True,
    **overrides,
) -> SFTTrainer:
    """A ready ``trl.SFTTrainer`` on ``{"prompt", "completion"}`` rows (TRL adds the EOS to each
    completion). ``lora``: a ``LoraConfig`` to wrap the model with (None: train it as it is)."""
    if not records:
        raise ValueError(
            "no SFT rows: the filter kept no sample. Sample more questions or more samples per "
            "question (k), or use a stronger model or teacher"
        )
    args = sft_config(profile, output_dir, settings, progress, **overrides)
    return build(SFTTrainer, model, tokenizer, records, args, lora, callbacks)
