"""The course's measured settings for each method and profile, built once, here.

One function per method turns a :class:`~course_lib.config.Profile` into that method's
settings and LoRA adapter: :func:`grpo_recipe` (lessons 05-06), :func:`rs_recipe` (lesson 07),
:func:`orpo_recipe` and :func:`dpo_recipe` (lesson 08). Each looks its profile up in a table of measured values
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
from course_lib.train.dpo import DPOSettings
from course_lib.train.expert_iteration import RSSettings
from course_lib.train.grpo import GRPOSettings
from course_lib.train.orpo import ORPOSettings

# The pocket model's GRPO run of lessons 05 and 06. How it was chosen (2 CPU cores, P x G
# completions per step, fresh pocket-math problems with 1-5 steps, per-sample accuracy at
# temperature 1 on the first 100 test problems x 8 samples afterwards; the base scores 30.1 %,
# 32 % of its samples step by step):
#   LoRA q,k,v,o, lr 1e-3, 8x8, 20 steps (55 s of training) ... 90.6 %, 99 % step by step  <- the recipe
#   the same on the base of an earlier corpus without the behaviour mixture (a pretraining run
#   stopped early, every solution step by step: its errors were missing arithmetic) ... no gain:
#   40 steps moved per-sample accuracy by -1.4 points
# The gain is selection: accuracy inside the step-by-step behaviour went from 92 % to 91 %.
GRPO: dict[str, GRPOSettings] = {
    "pocket": GRPOSettings(steps=20, prompts_per_step=8, group_size=8, learning_rate=1e-3, max_new_tokens=160),
    # SmolLM2-135M-Instruct on GSM8K, 2 CPU cores, LoRA: a step of 4 prompts x 4 completions (256 tokens)
    # took 155 s in the laptop showdown with our sampler and 143 s with generate (TRL's trainer, KL
    # term): the forward and backward of 16 sequences through 134.5 M weights, not the sampling, fill
    # the step, so a learner's 15 minutes buy about 6 steps. All 16 in one fp32 pass peaked at 19 GB and
    # the process was killed for memory at step 3 of a 24 GiB machine: 4 completions per forward/backward
    # (peak 7.1 GB). Measured in the laptop showdown (24 questions): 6 steps in 801 s, per-sample accuracy
    # on 64 test problems x 4 moved -1.2 points [-2.7, +0.4] from the base's 2.7 %: nothing measurable.
    "laptop": GRPOSettings(
        steps=6,
        prompts_per_step=4,
        group_size=4,
        learning_rate=1e-4,
        max_new_tokens=256,
        micro_batch_size=4,
        sample_batch_size=64,
    ),
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
# first 100 test problems x 8 samples (the base scores 30.1 %):
#   LoRA q,k,v,o, lr 1e-3, 3 rounds (82 s) ............ 92.8 %  <- the recipe; its own samples went
#                                                        31 -> 83 -> 93 % correct over the rounds
#   the same from the pocket teacher's samples (k = 2, 39 s) ... 93.1 %
# GPU: the setting of Trelis Research's study (8 samples per training question, all ~7.5k GSM8K
# train questions once, one epoch at a constant learning rate, every correct sample kept).
RS: dict[str, RSSettings] = {
    "pocket": RSSettings(rounds=3, questions_per_round=128, k=8, learning_rate=1e-3, batch_size=16, max_per_question=4),
    "laptop": RSSettings(
        rounds=1,
        questions_per_round=64,
        k=4,
        learning_rate=1e-4,
        batch_size=8,
        max_new_tokens=256,
        sample_batch_size=64,
    ),
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

# Lesson 08, ORPO on the pocket model: 256 questions x 8 samples -> 460 pairs (2 per question with
# both kinds of samples), one epoch, batch 16, beta 0.1, LoRA q,k,v,o. Same measurement as above:
#   TRL's NLL over prompt + chosen, lr 1e-4 / 3e-4 / 1e-3 ......... 27.9 % / 20.3 % / 18.1 %  (worse)
#   the NLL over the chosen completion only, lr 3e-4 / 1e-3 ........ 85.1 % <- the recipe / 91.2 %
# The pocket model was never trained on prompts (its pretraining loss skipped them), so the
# prompt's tokens dominate TRL's NLL term and pull the model away from its own answers; the ORPO
# paper writes L_SFT over the response (course_lib.train.orpo.CompletionNLLORPOTrainer).
ORPO: dict[str, ORPOSettings] = {
    "pocket": ORPOSettings(
        questions=256, k=8, pairs_per_question=2, beta=0.1, learning_rate=3e-4, batch_size=16, nll_on_prompt=False
    ),
    "laptop": ORPOSettings(
        questions=64,
        k=4,
        pairs_per_question=1,
        learning_rate=5e-5,
        batch_size=8,
        max_new_tokens=256,
        nll_on_prompt=False,
    ),
    "gpu": ORPOSettings(
        questions=7473,
        k=8,
        pairs_per_question=1,
        learning_rate=5e-5,
        batch_size=16,
        max_new_tokens=512,
        sample_batch_size=256,
        nll_on_prompt=False,  # the paper's L_SFT; not measured on this profile
    ),
}

# Lesson 08, DPO on the same 460 pairs (TRL's DPOTrainer, the reference = the adapter switched off,
# beta 0.1, one epoch, batch 16, LoRA q,k,v,o). Same measurement:
#   lr 1e-4 ... 49.2 %      lr 3e-4 ... 90.9 %  <- the recipe
DPO: dict[str, DPOSettings] = {
    "pocket": DPOSettings(beta=0.1, learning_rate=3e-4, batch_size=16),
    "laptop": DPOSettings(beta=0.1, learning_rate=5e-5, batch_size=8),  # as ORPO's; not measured on this profile
    "gpu": DPOSettings(beta=0.1, learning_rate=5e-5, batch_size=16),  # as ORPO's; not measured on this profile
}

# The adapter of every recipe: Yiqiao Yin's GRPO tutorial's (rank 16, alpha 32, so a scale
# alpha / r = 2, dropout 0.05, on the attention projections q, k, v, o).
LORA: dict[str, dict] = {name: dict(r=16, alpha=32, dropout=0.05) for name in ("pocket", "laptop", "gpu")}


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


def dpo_recipe(profile: Profile, **overrides) -> tuple[DPOSettings, LoraConfig]:
    """The course's DPO settings and adapter for a profile (the pairs come from :func:`orpo_recipe`'s sampling)."""
    return _recipe(DPO, profile, "DPO recipe", overrides), lora_recipe(profile)
