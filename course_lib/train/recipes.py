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

import contextlib
import dataclasses
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

# Lesson 07, rejection sampling / expert iteration on the pocket model. Each round: 128 fresh
# training questions x 8 samples at temperature 1, correct ones deduplicated and capped at 4 per
# question (about 130 rows), one epoch of SFT, batch 16. Per-sample accuracy afterwards on the
# first 100 test problems x 8 samples (the base scores about 40 %):
#   full fine-tuning, lr 1e-4, 2 rounds ............. 40.6 %
#   full fine-tuning, lr 3e-4 / 1e-3, 2 rounds ....... 22.1 % / 5.5 %  (AdamW noise, as in lesson 05)
#   LoRA q,k,v,o, lr 1e-3, 3 rounds .................. 42.0 %  <- the recipe; its own samples went
#                                                        40.7 -> 44.6 -> 45.9 % correct over the rounds
#   the same from the pocket teacher's samples, 1 round  41.9 %  (full fine-tuning, lr 1e-4: 40.5 %)
POCKET_RS = dict(rounds=3, questions_per_round=128, k=8, learning_rate=1e-3, batch_size=16, max_per_question=4)
POCKET_RS_LORA = True
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
POCKET_ORPO = dict(questions=256, k=8, pairs_per_question=2, beta=0.1, learning_rate=1e-4, batch_size=16)
POCKET_ORPO_LORA = True


def lora_config(r: int = 16, alpha: int = 32, dropout: float = 0.05,
                target_modules: tuple[str, ...] = LORA_TARGETS):
    """A PEFT ``LoraConfig`` for a causal LM: W + (alpha / r) B A on each target module."""
    from peft import LoraConfig

    return LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(target_modules),
                      bias="none", task_type="CAUSAL_LM")


def _cpu_or_gpu(profile) -> dict:
    """The device arguments every TRL config of the course shares (see the module docstring)."""
    on_gpu = profile.device == "cuda" and torch.cuda.is_available()
    return dict(use_cpu=not on_gpu, bf16=on_gpu and profile.dtype == "bfloat16", gradient_checkpointing=on_gpu)


def grpo_config(profile, output_dir: str | Path, settings: GRPOSettings = GRPOSettings(), **overrides):
    """TRL's ``GRPOConfig`` with the same algorithm as ``settings`` (and a constant learning
    rate, as in our loop). ``overrides`` are passed to ``GRPOConfig`` last."""
    from trl import GRPOConfig

    args = dict(
        output_dir=str(output_dir), max_steps=settings.steps, seed=settings.seed,
        per_device_train_batch_size=settings.prompts_per_step * settings.group_size,  # completions
        num_generations=settings.group_size, num_iterations=settings.num_iterations,
        learning_rate=settings.learning_rate, lr_scheduler_type="constant", warmup_steps=0,
        weight_decay=settings.weight_decay, max_grad_norm=settings.max_grad_norm,
        beta=settings.beta, epsilon=settings.epsilon_low, epsilon_high=settings.epsilon_high,
        loss_type=settings.loss_type, scale_rewards=settings.scale_rewards,
        temperature=settings.temperature, max_completion_length=settings.max_new_tokens,
        logging_steps=1, save_strategy="no", report_to=[], disable_tqdm=False, **_cpu_or_gpu(profile),
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
    TRL to wrap the model with (leave None if the model already carries adapters). Without
    progress bars (``disable_tqdm=True``) no dict per step is printed either (:func:`drop_printer`)."""
    from trl import GRPOTrainer

    funcs, weights = trl_reward_funcs(settings.reward)
    args = grpo_config(profile, output_dir, settings, reward_weights=weights, **overrides)
    trainer = GRPOTrainer(model=model, reward_funcs=funcs, args=args, processing_class=tokenizer,
                          train_dataset=problems_dataset(problems, tokenizer, system_prompt),
                          peft_config=lora, callbacks=list(callbacks))
    drop_printer(trainer)
    return trainer


def vllm_generation(profile) -> dict:
    """``GRPOConfig`` arguments that move GRPO's rollouts to vLLM where it can run (CUDA and the
    GPU extras), else ``{}`` (generation by ``model.generate``, as on the CPU track).

    With Unsloth, its own vLLM engine (``load_policy(..., fast_inference=True)``) serves the
    rollouts and TRL needs only ``use_vllm``; without it, TRL starts vLLM in the training process
    ("colocate") and leaves it a share of GPU memory.
    """
    from course_lib.models import policy_backend, vllm_available

    if profile.device != "cuda" or not vllm_available():
        return {}
    if policy_backend(profile) == "unsloth":
        return {"use_vllm": True}
    return {"use_vllm": True, "vllm_mode": "colocate", "vllm_gpu_memory_utilization": 0.3}


# TRL's logged names -> the names our loop uses, so that one figure shows either run.
TRL_METRIC_NAMES = {
    "reward": "reward", "reward_std": "reward_std", "rewards/correctness_reward/mean": "accuracy",
    "kl": "kl", "entropy": "entropy", "completions/mean_length": "completion_length",
    "frac_reward_zero_std": "frac_zero_std", "clip_ratio/region_mean": "clip_ratio/region",
    "loss": "loss", "grad_norm": "grad_norm", "rewards/format_reward/mean": "format_reward",
}


# TRL's ORPOTrainer logs -> short names for lesson 08's curves.
ORPO_METRIC_NAMES = {
    "loss": "loss", "nll_loss": "nll_loss", "log_odds_chosen": "log_odds_ratio",
    "rewards/accuracies": "pair_accuracy", "logps/chosen": "logp_chosen", "logps/rejected": "logp_rejected",
}


def live_curves_callback(on_row, names: dict[str, str] | None = None, needs: str = "loss"):
    """A transformers ``TrainerCallback`` that renames each of a TRL trainer's logged rows to our
    names (``names``, default ``TRL_METRIC_NAMES``) and hands it, with ``step``, to ``on_row`` (for
    example a :class:`course_lib.plots.LiveCurves`). Rows without ``needs`` (after renaming; the
    summary row at the end of ``train()``) are skipped. Its ``history`` keeps every row."""
    from transformers import TrainerCallback

    names = TRL_METRIC_NAMES if names is None else names

    class LiveCurvesCallback(TrainerCallback):
        def __init__(self):
            self.history: list[dict] = []

        def on_log(self, args, state, control, logs=None, **kwargs):
            row = {ours: float(logs[theirs]) for theirs, ours in names.items() if logs and theirs in logs}
            if needs not in row:
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


# --------------------------------------------------------------------------- SFT (lesson 07)

def _epoch_args(profile, output_dir: str | Path, settings, progress: bool) -> dict:
    """The training arguments SFT and ORPO share: ``settings.epochs`` epochs over the rows at a
    constant learning rate, a log row per step, no checkpoints, the profile's devices."""
    return dict(
        output_dir=str(output_dir), num_train_epochs=settings.epochs, seed=settings.seed,
        per_device_train_batch_size=settings.batch_size, learning_rate=settings.learning_rate,
        lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0,
        logging_steps=1, save_strategy="no", report_to=[], disable_tqdm=not progress,
        **_cpu_or_gpu(profile),
    )


def sft_config(profile, output_dir: str | Path, settings, progress: bool = True, **overrides):
    """TRL's ``SFTConfig`` for one round of rejection-sampling SFT: ``settings.epochs`` epochs
    (one) at a constant learning rate, loss on the completion tokens only."""
    from trl import SFTConfig

    args = dict(**_epoch_args(profile, output_dir, settings, progress),
                completion_only_loss=True, max_length=1024, packing=False)
    args.update(overrides)
    return SFTConfig(**args)


def sft_trainer(profile, model, tokenizer, records: list[dict], output_dir: str | Path, settings,
                lora=None, callbacks=(), progress: bool = True, **overrides):
    """A ready ``trl.SFTTrainer`` on ``{"prompt", "completion"}`` rows (TRL adds the EOS to each
    completion). ``lora``: a ``LoraConfig`` to wrap the model with (None: train it as it is)."""
    from trl import SFTTrainer

    if not records:
        raise ValueError("no SFT rows: the filter kept no sample. Sample more questions or more samples per "
                         "question (k), or use a stronger model or teacher")
    return _build(SFTTrainer, model, tokenizer, records, sft_config(profile, output_dir, settings, progress,
                                                                    **overrides), lora, callbacks)


def _build(trainer_class, model, tokenizer, rows: list[dict], args, lora, callbacks):
    """``trainer_class`` on ``rows`` (a list of dicts made into a ``datasets.Dataset``), tokenized
    without progress bars and without the per-step printer."""
    from datasets import Dataset

    with _quiet_datasets():
        trainer = trainer_class(model=model, args=args, train_dataset=Dataset.from_list(rows),
                                processing_class=tokenizer, peft_config=lora, callbacks=list(callbacks))
    drop_printer(trainer)
    return trainer


@contextlib.contextmanager
def _quiet_datasets():
    """No progress bars from ``datasets.map`` while a trainer tokenizes its rows (five bars per
    SFT round otherwise, for a few hundred rows that take milliseconds)."""
    import datasets

    was_enabled = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if was_enabled:
            datasets.enable_progress_bars()


def drop_printer(trainer) -> None:
    """Drop transformers' PrinterCallback, which prints a dict per logged step in notebooks
    (the live curves and the returned history carry the same numbers)."""
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)


# --------------------------------------------------------------------------- ORPO (lesson 08)

@dataclasses.dataclass
class ORPOSettings:
    """One ORPO run: pairs from k samples per question, then one epoch of TRL's ORPOTrainer."""

    questions: int = 256                  # training questions sampled for pairs
    k: int = 8                            # samples per question
    pairs_per_question: int = 2
    beta: float = 0.1                     # weight of the odds-ratio term (the paper's lambda)
    learning_rate: float = 1e-4           # constant
    batch_size: int = 16                  # pairs per optimizer step
    epochs: int = 1
    max_new_tokens: int = 160
    temperature: float = 1.0
    sample_batch_size: int = 64
    seed: int = 0


def orpo_config(profile, output_dir: str | Path, settings: ORPOSettings = ORPOSettings(), progress: bool = True,
                **overrides):
    """TRL's ``ORPOConfig`` (``trl.experimental.orpo`` in TRL 1.16): constant learning rate,
    and dropout switched off, as ORPOTrainer's default."""
    from trl.experimental.orpo import ORPOConfig

    args = dict(**_epoch_args(profile, output_dir, settings, progress),
                beta=settings.beta, max_length=1024, remove_unused_columns=False)
    args.update(overrides)
    return ORPOConfig(**args)


def orpo_trainer(profile, model, tokenizer, pairs: list[dict], output_dir: str | Path,
                 settings: ORPOSettings = ORPOSettings(), lora=None, callbacks=(), progress: bool = True,
                 **overrides):
    """A ready ``ORPOTrainer`` on ``{"prompt", "chosen", "rejected"}`` rows (from
    :func:`course_lib.train.rejection_sampling.preference_pairs`)."""
    import warnings

    if not pairs:
        raise ValueError("no preference pairs: no question had both a correct and a wrong sample. "
                         "Sample more questions or more samples per question (k)")
    with warnings.catch_warnings():      # "trl.experimental is unstable": said once, in lesson 08's prose
        warnings.simplefilter("ignore")
        from trl.experimental.orpo import ORPOTrainer
    return _build(ORPOTrainer, model, tokenizer, pairs, orpo_config(profile, output_dir, settings, progress,
                                                                     **overrides), lora, callbacks)


# --------------------------------------------------------------------------- lesson 07 / 08 recipes

def rs_recipe(profile, fast: bool = False):
    """The course's rejection-sampling settings and adapter for a profile: ``(RSSettings, LoraConfig | None)``.

    GPU: seed 000's study (8 samples per training question, all ~7.5k GSM8K train questions
    once, one epoch at a constant learning rate) with a LoRA adapter. ``fast`` shrinks the run
    for the test suite.
    """
    from course_lib.train.rejection_sampling import RSSettings

    if profile.dataset == "pocket_math":
        settings, lora = RSSettings(**POCKET_RS), (lora_config(**POCKET_LORA) if POCKET_RS_LORA else None)
    else:
        settings = RSSettings(rounds=1, questions_per_round=7473, k=8, learning_rate=1e-4, batch_size=16,
                              max_new_tokens=profile.max_new_tokens, sample_batch_size=profile.sample_batch_size,
                              max_per_question=None)
        lora = lora_config()
    if fast:
        settings = dataclasses.replace(settings, rounds=2, questions_per_round=6, k=4, max_new_tokens=64,
                                       batch_size=4)
    return settings, lora


def orpo_recipe(profile, fast: bool = False):
    """The course's ORPO settings and adapter for a profile: ``(ORPOSettings, LoraConfig | None)``."""
    if profile.dataset == "pocket_math":
        settings, lora = ORPOSettings(**POCKET_ORPO), (lora_config(**POCKET_LORA) if POCKET_ORPO_LORA else None)
    else:
        settings = ORPOSettings(questions=7473, k=8, pairs_per_question=1, learning_rate=5e-5, batch_size=16,
                                max_new_tokens=profile.max_new_tokens, sample_batch_size=profile.sample_batch_size)
        lora = lora_config()
    if fast:
        settings = dataclasses.replace(settings, questions=8, k=4, max_new_tokens=64, batch_size=4)
    return settings, lora
