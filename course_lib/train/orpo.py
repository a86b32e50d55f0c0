"""ORPO with TRL's ``ORPOTrainer`` (lesson 08): preference pairs from the same sampled pool as SFT.

Each row is ``{"prompt", "chosen", "rejected"}``: a correct and a wrong completion of the
same question (:func:`course_lib.train.rejection_sampling.preference_pairs`). ORPO needs no
reference model and no SFT stage before it; its loss is in :func:`course_lib.losses.orpo_loss`.
In TRL 1.16 the trainer lives in ``trl.experimental.orpo``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import torch.nn.functional as F

from course_lib.config import Profile
from course_lib.train.trainers import build, epoch_args, require_pairs

with warnings.catch_warnings():  # "trl.experimental is unstable": said once, in lesson 08's prose
    warnings.simplefilter("ignore")
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer


@dataclass(frozen=True)
class ORPOSettings:
    """One ORPO run: pairs from k samples per question, then one epoch of TRL's ORPOTrainer."""

    questions: int = 256  # training questions sampled for pairs
    k: int = 8  # samples per question
    pairs_per_question: int = 2
    beta: float = 0.1  # weight of the odds-ratio term (the paper's lambda)
    learning_rate: float = 1e-4  # constant
    batch_size: int = 16  # pairs per optimizer step
    epochs: int = 1
    max_new_tokens: int = 160
    temperature: float = 1.0
    sample_batch_size: int = 64
    nll_on_prompt: bool = True  # TRL's NLL term covers prompt + chosen; False: the chosen completion only
    seed: int = 0


class CompletionNLLORPOTrainer(ORPOTrainer):
    """TRL's ``ORPOTrainer`` with its NLL term over the chosen *completion* only, as the ORPO paper
    writes L_SFT. TRL, like the authors' code, averages it over the prompt too (trl#1516); on a
    model that was never trained on prompts (the pocket model's loss skipped them) those tokens
    dominate the term. Everything else is TRL's."""

    def concatenated_forward(self, model, batch):
        out = list(super().concatenated_forward(model, batch))
        chosen_logits = out[2]  # (B, T - 1, V): position t predicts token t + 1
        labels = batch["chosen_labels"][:, 1:].to(chosen_logits.device)  # (B, T_c - 1), the prompt is -100
        labels = F.pad(labels, (0, chosen_logits.shape[1] - labels.shape[1]), value=-100)  # (B, T - 1)
        out[4] = F.cross_entropy(chosen_logits.flatten(0, 1), labels.flatten(), ignore_index=-100)
        return tuple(out)


def orpo_config(
    profile: Profile,
    output_dir: str | Path,
    settings: ORPOSettings = ORPOSettings(),
    progress: bool = True,
    **overrides,
) -> ORPOConfig:
    """TRL's ``ORPOConfig``: constant learning rate, and dropout switched off, as ORPOTrainer's default."""
    args = dict(
        **epoch_args(profile, output_dir, settings, progress),
        beta=settings.beta,
        max_length=1024,
        remove_unused_columns=False,
    )
    args.update(overrides)
    return ORPOConfig(**args)


def orpo_trainer(
    profile: Profile,
    model,
    tokenizer,
    pairs: list[dict],
    output_dir: str | Path,
    settings: ORPOSettings = ORPOSettings(),
    lora=None,
    callbacks=(),
    progress: bool = True,
    **overrides,
) -> ORPOTrainer:
    """A ready ``ORPOTrainer`` on ``{"prompt", "chosen", "rejected"}`` rows (:class:`CompletionNLLORPOTrainer`
    when ``settings.nll_on_prompt`` is False)."""
    require_pairs(pairs)
    args = orpo_config(profile, output_dir, settings, progress, **overrides)
    trainer_class = ORPOTrainer if settings.nll_on_prompt else CompletionNLLORPOTrainer
    return build(trainer_class, model, tokenizer, pairs, args, lora, callbacks)
