"""The course's measured settings for each method and profile, built once, here.

One function per method turns a :class:`~course_lib.config.Profile` into that method's
settings and LoRA adapter: :func:`grpo_recipe` (lessons 05-06), :func:`rs_recipe` (lesson 07)
and :func:`orpo_recipe` (lesson 08). Each looks its profile up in a table of measured values
(``GRPO``, ``RS``, ``ORPO`` below, with the runs that chose them), applies fast mode through
:func:`course_lib.config.for_mode` (the one place it is defined) and then the caller's
``overrides``: a study that changes a setting (lesson 09's showdown, the launch entry point)
says so in the call, and nobody patches the settings afterwards.
"""

from __future__ import annotations

import dataclasses

from peft import LoraConfig

from course_lib.config import Profile, by_profile, for_mode
from course_lib.models import lora_config
from course_lib.train.expert_iteration import RSSettings
from course_lib.train.grpo import GRPOSettings
from course_lib.train.orpo import ORPOSettings

# The pocket model's GRPO run of lessons 05 and 06. How it was chosen (2 CPU cores, P x G
# completions per step, fresh pocket-math problems with 1-5 steps, per-sample accuracy at
# temperature 1 on the first 100 test problems x 8 samples afterwards; the base model scores
# about 40 %):
#   full fine-tuning, lr 1e-4, 8x8, 40 steps ......... 35.9 %   (16x8, 25 steps: 40.6 %)
#   full fine-tuning, lr 2e-4, 4x16, 40 steps ........ 24.4 %
#   full fine-tuning, lr 3e-4 / 1e-3, 8x8, 40 steps ..  2.9 % / 0.0 % (rambles to max_new_tokens)
#   LoRA q,k,v,o, lr 1e-3, 8x8, 40 steps ............. 41.6 %   <- stable: the recipe
#   LoRA q,k,v,o, lr 1e-3, mu = 4 .................... 29.9 %
#   LoRA q,k,v,o, lr 2e-3, 50 steps .................. 29.0 %   (entropy doubled: drifting)
#   LoRA on all linear layers, lr 4e-3 ...............  0.1 %
# On a fixed pool of 16 problems the same loop lifts the training reward from 0.39 to about
# 0.75 in 20 steps at lr 1e-4: it learns what it trains on; what generalises to new problems
# in five minutes is small.
GRPO: dict[str, GRPOSettings] = {
    "pocket": GRPOSettings(steps=40, prompts_per_step=8, group_size=8, learning_rate=1e-3, max_new_tokens=160),
    "gpu": GRPOSettings(
        steps=250,
        prompts_per_step=8,
        group_size=8,
        learning_rate=2e-5,
        max_new_tokens=512,
        micro_batch_size=16,
        sample_batch_size=256,
    ),
}

# Lesson 07, rejection sampling / expert iteration on the pocket model. Each round: 128 fresh
# training questions x 8 samples at temperature 1, correct ones deduplicated and capped at 4 per
# question (about 130 rows), one epoch of SFT, batch 16. Per-sample accuracy afterwards on the
# first 100 test problems x 8 samples (the base scores about 40 %):
#   full fine-tuning, lr 1e-4, 2 rounds ............. 40.6 %
#   full fine-tuning, lr 3e-4 / 1e-3, 2 rounds ....... 22.1 % / 5.5 %  (AdamW noise, as in lesson 05)
#   LoRA q,k,v,o, lr 1e-3, 3 rounds .................. 42.0 %  <- the recipe; its own samples went
#                                                        40.7 -> 44.6 -> 45.9 % correct over the rounds
#   the same from the pocket teacher's samples, 1 round  41.9 %  (full fine-tuning, lr 1e-4: 40.5 %)
# GPU: the setting of Trelis Research's study (8 samples per training question, all ~7.5k GSM8K
# train questions once, one epoch at a constant learning rate, every correct sample kept).
RS: dict[str, RSSettings] = {
    "pocket": RSSettings(rounds=3, questions_per_round=128, k=8, learning_rate=1e-3, batch_size=16, max_per_question=4),
    "gpu": RSSettings(
        rounds=1,
        questions_per_round=7473,
        k=8,
        learning_rate=1e-4,
        batch_size=16,
        max_new_tokens=512,
        sample_batch_size=256,
        max_per_question=None,
    ),
}

# Lesson 08, ORPO on the pocket model: 256 questions x 8 samples -> 294 pairs (2 per question with
# both kinds of samples), one epoch, batch 16, beta 0.1. Same measurement as above:
#   LoRA q,k,v,o, lr 1e-3 ........................... 5.6 %  (collapse)
#   full fine-tuning, lr 1e-4 ........................ 19.6 %
#   LoRA q,k,v,o, lr 3e-4 ............................ 38.0 %
#   LoRA q,k,v,o, lr 1e-4 ............................ 40.1 %  <- the recipe: stable, no gain
# Why ORPO is this fragile here: the pocket model's completions have a mean per-token probability
# near 0.97, and d(log odds)/d(mean log p) = 1 / (1 - p) is then about 30, so the odds-ratio
# term pushes 30x harder than its beta suggests, on a rejected answer that shares most tokens
# with the chosen one. TRL's NLL term also covers the prompt (see losses.orpo_loss).
ORPO: dict[str, ORPOSettings] = {
    "pocket": ORPOSettings(questions=256, k=8, pairs_per_question=2, beta=0.1, learning_rate=1e-4, batch_size=16),
    "gpu": ORPOSettings(
        questions=7473,
        k=8,
        pairs_per_question=1,
        learning_rate=5e-5,
        batch_size=16,
        max_new_tokens=512,
        sample_batch_size=256,
    ),
}

# The adapter of every recipe: Yiqiao Yin's GRPO tutorial's (rank 16, alpha 32, so a scale
# alpha / r = 2, dropout 0.05, on the attention projections q, k, v, o).
LORA: dict[str, dict] = {"pocket": dict(r=16, alpha=32, dropout=0.05), "gpu": dict(r=16, alpha=32, dropout=0.05)}


def _recipe(table: dict, profile: Profile, what: str, overrides: dict):
    """The profile's row of ``table``, in the profile's mode, with the caller's ``overrides``."""
    settings = for_mode(by_profile(table, profile, what), profile.fast)
    return dataclasses.replace(settings, **overrides)


def lora_recipe(profile: Profile) -> LoraConfig:
    """The profile's LoRA adapter, as a PEFT ``LoraConfig``."""
    return lora_config(**by_profile(LORA, profile, "LoRA adapter"))


def grpo_recipe(profile: Profile, **overrides) -> tuple[GRPOSettings, LoraConfig]:
    """The course's GRPO settings and LoRA adapter for a profile: ``(GRPOSettings, LoraConfig)``.

    Lessons 05 and 06 both start from these, so the from-scratch loop and TRL's trainer run
    the same algorithm with the same numbers. ``overrides``: settings a study changes.
    """
    return _recipe(GRPO, profile, "GRPO recipe", overrides), lora_recipe(profile)


def rs_recipe(profile: Profile, **overrides) -> tuple[RSSettings, LoraConfig]:
    """The course's rejection-sampling settings and adapter for a profile: ``(RSSettings, LoraConfig)``."""
    return _recipe(RS, profile, "rejection-sampling recipe", overrides), lora_recipe(profile)


def orpo_recipe(profile: Profile, **overrides) -> tuple[ORPOSettings, LoraConfig]:
    """The course's ORPO settings and adapter for a profile: ``(ORPOSettings, LoraConfig)``."""
    return _recipe(ORPO, profile, "ORPO recipe", overrides), lora_recipe(profile)
