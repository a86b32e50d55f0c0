"""TRL recipes: the library trainers configured from a profile (lessons 06 onwards).

The from-scratch loop (:mod:`course_lib.train.grpo`) and TRL's ``GRPOTrainer`` read the
same :class:`~course_lib.train.grpo.GRPOSettings`, so the two runs of lessons 05 and 06
differ only in who wrote the loop. Facts that matter on the CPU track (TRL 1.16):

* ``use_cpu=True``, ``bf16=False`` and ``gradient_checkpointing=False``: TRL turns the
  last two on by default, and neither works or helps on a CPU.
* TRL's default learning rate (1e-6) is far too small and its ``max_completion_length``
  (512) far too long for the pocket model; the settings carry the course's values.
* ``per_device_train_batch_size`` counts completions, not prompts, and must be a multiple
  of ``num_generations``: P prompts x G completions is ``P * G``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from course_lib.prompts import format_prompt
from course_lib.rewards import trl_reward_funcs
from course_lib.train.grpo import GRPOSettings

# Seed 002's adapter: rank 16, alpha 32 (scale alpha/r = 2), the attention projections.
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")

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
POCKET_GRPO = dict(steps=40, prompts_per_step=8, group_size=8, learning_rate=1e-3, max_new_tokens=160)
POCKET_LORA = dict(r=16, alpha=32, dropout=0.05)


def lora_config(r: int = 16, alpha: int = 32, dropout: float = 0.05,
                target_modules: tuple[str, ...] = LORA_TARGETS):
    """A PEFT ``LoraConfig`` for a causal LM: W + (alpha / r) B A on each target module."""
    from peft import LoraConfig

    return LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(target_modules),
                      bias="none", task_type="CAUSAL_LM")


def grpo_config(profile, output_dir: str | Path, settings: GRPOSettings = GRPOSettings(), **overrides):
    """TRL's ``GRPOConfig`` with the same algorithm as ``settings`` (and a constant learning
    rate, as in our loop). ``overrides`` are passed to ``GRPOConfig`` last."""
    from trl import GRPOConfig

    on_gpu = profile.device == "cuda" and torch.cuda.is_available()
    args = dict(
        output_dir=str(output_dir), max_steps=settings.steps, seed=settings.seed,
        per_device_train_batch_size=settings.prompts_per_step * settings.group_size,  # completions
        num_generations=settings.group_size, num_iterations=settings.num_iterations,
        learning_rate=settings.learning_rate, lr_scheduler_type="constant", warmup_steps=0,
        weight_decay=settings.weight_decay, max_grad_norm=settings.max_grad_norm,
        beta=settings.beta, epsilon=settings.epsilon_low, epsilon_high=settings.epsilon_high,
        loss_type=settings.loss_type, scale_rewards=settings.scale_rewards,
        temperature=settings.temperature, max_completion_length=settings.max_new_tokens,
        use_cpu=not on_gpu, bf16=on_gpu and profile.dtype == "bfloat16",
        gradient_checkpointing=on_gpu, logging_steps=1, save_strategy="no", report_to=[],
        disable_tqdm=False,
    )
    args.update(overrides)
    return GRPOConfig(**args)


def problems_dataset(problems: list[dict], tokenizer, system_prompt: str | None = None):
    """A ``datasets.Dataset`` with ``prompt`` (the formatted prompt text, exactly what our
    loop samples from) and ``answer`` (passed by TRL to the reward functions)."""
    from datasets import Dataset

    return Dataset.from_list([{"prompt": format_prompt(tokenizer, p["question"], system_prompt),
                               "answer": p["answer"]} for p in problems])


def grpo_trainer(profile, model, tokenizer, problems: list[dict], output_dir: str | Path,
                 settings: GRPOSettings = GRPOSettings(), lora=None, callbacks=(),
                 system_prompt: str | None = None, **overrides):
    """A ready ``trl.GRPOTrainer``: our rewards (one function per term, weighted as in
    ``settings.reward``), our prompts, the profile's devices. ``lora``: a ``LoraConfig`` for
    TRL to wrap the model with (leave None if the model already carries adapters)."""
    from trl import GRPOTrainer

    funcs, weights = trl_reward_funcs(settings.reward)
    args = grpo_config(profile, output_dir, settings, reward_weights=weights, **overrides)
    return GRPOTrainer(model=model, reward_funcs=funcs, args=args, processing_class=tokenizer,
                       train_dataset=problems_dataset(problems, tokenizer, system_prompt),
                       peft_config=lora, callbacks=list(callbacks))


# TRL's logged names -> the names our loop uses, so that one figure shows either run.
TRL_METRIC_NAMES = {
    "reward": "reward", "reward_std": "reward_std", "rewards/correctness_reward/mean": "accuracy",
    "kl": "kl", "entropy": "entropy", "completions/mean_length": "completion_length",
    "frac_reward_zero_std": "frac_zero_std", "clip_ratio/region_mean": "clip_ratio/region",
    "loss": "loss", "grad_norm": "grad_norm",
}


def live_curves_callback(on_row):
    """A transformers ``TrainerCallback`` that renames each of TRL's logged rows to our
    names (``TRL_METRIC_NAMES``) and hands it, with ``step``, to ``on_row`` (for example a
    :class:`course_lib.plots.LiveCurves`). Its ``history`` keeps every row."""
    from transformers import TrainerCallback

    class LiveCurvesCallback(TrainerCallback):
        def __init__(self):
            self.history: list[dict] = []

        def on_log(self, args, state, control, logs=None, **kwargs):
            row = {ours: float(logs[theirs]) for theirs, ours in TRL_METRIC_NAMES.items()
                   if logs and theirs in logs}
            if "reward" not in row:      # the final summary row of train() carries no metrics
                return
            row["step"] = state.global_step
            self.history.append(row)
            on_row(row)

    return LiveCurvesCallback()


def grpo_recipe(profile, fast: bool = False) -> tuple[GRPOSettings, object]:
    """The course's GRPO settings and LoRA adapter for a profile: ``(GRPOSettings, LoraConfig)``.

    Lessons 05 and 06 both start from these, so the from-scratch loop and TRL's trainer run
    the same algorithm with the same numbers. ``fast`` shrinks the run for the test suite.
    """
    import dataclasses

    if profile.dataset == "pocket_math":
        settings = GRPOSettings(**POCKET_GRPO)
        lora = lora_config(**POCKET_LORA)
    else:
        settings = GRPOSettings(steps=250, prompts_per_step=8, group_size=8, learning_rate=2e-5,
                                max_new_tokens=profile.max_new_tokens, micro_batch_size=16,
                                sample_batch_size=profile.sample_batch_size)
        lora = lora_config()
    if fast:
        settings = dataclasses.replace(settings, steps=2, prompts_per_step=2, group_size=4, max_new_tokens=48)
    return settings, lora
