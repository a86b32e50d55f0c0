"""TRL's ``GRPOTrainer`` configured like the course's own loop (lesson 06).

The from-scratch loop (:mod:`course_lib.train.grpo`) and TRL's trainer read the same
:class:`~course_lib.train.grpo.GRPOSettings`, so lessons 05 and 06 differ only in who wrote
the loop. Facts that matter (TRL 1.16):

* TRL's default learning rate (1e-6) is far too small and its ``max_completion_length``
  (512) far too long for the pocket model; the settings carry the course's values.
* ``per_device_train_batch_size`` counts completions, not prompts: P prompts x G completions
  is ``P * G`` per step, split into micro-batches of ``micro_batch_size`` by gradient
  accumulation (:func:`trl_micro_batches`).
* Our learning rate is constant (``lr_scheduler_type="constant"``, no warm-up), as in our loop.
* TRL 1.16 lets a ``rollout_func`` replace its generation step (experimental in TRL): with
  ``course_sampler=True`` the trainer's rollouts come from :func:`course_lib.sampling.sample`,
  the same decoding loop our own GRPO loop uses (:func:`course_rollouts`).
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Callable
from pathlib import Path

from datasets import Dataset
from trl import GRPOConfig, GRPOTrainer

from course_lib.behaviours import behaviour_reward
from course_lib.config import Profile
from course_lib.models import policy_backend, vllm_available
from course_lib.prompts import format_prompt
from course_lib.rewards import trl_reward_funcs
from course_lib.sampling import sample
from course_lib.train.grpo import GRPOSettings
from course_lib.train.trainers import device_args, drop_printer


def grpo_config(profile: Profile, output_dir: str | Path, settings: GRPOSettings = GRPOSettings(), **overrides):
    """TRL's ``GRPOConfig`` with the same algorithm as ``settings`` (and a constant learning
    rate, as in our loop). ``overrides`` are passed to ``GRPOConfig`` last."""
    micro, accumulate = trl_micro_batches(settings)
    args = dict(
        output_dir=str(output_dir),
        max_steps=settings.steps,
        seed=settings.seed,
        per_device_train_batch_size=micro,  # completions per forward/backward
        gradient_accumulation_steps=accumulate,  # one optimizer step per P x G completions, as our loop
        num_generations=settings.group_size,
        num_iterations=settings.num_iterations,
        learning_rate=settings.learning_rate,
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=settings.weight_decay,
        max_grad_norm=settings.max_grad_norm,
        beta=settings.beta,
        epsilon=settings.epsilon_low,
        epsilon_high=settings.epsilon_high,
        loss_type=settings.loss_type,
        scale_rewards=settings.scale_rewards,
        temperature=settings.temperature,
        max_completion_length=settings.max_new_tokens,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        disable_tqdm=False,
        **device_args(profile),
    )
    args.update(overrides)
    return GRPOConfig(**args)


def trl_micro_batches(settings: GRPOSettings) -> tuple[int, int]:
    """(completions per forward/backward, accumulation steps) for TRL: the largest number of
    completions up to ``micro_batch_size`` that divides the step's P x G.

    TRL samples the whole generation batch (``per_device_train_batch_size`` x
    ``gradient_accumulation_steps`` = P x G) at once and splits it for the backward passes, so
    an optimizer step still sees all P x G completions; only the peak memory shrinks (16 SmolLM2
    completions of 256 tokens in one fp32 pass need about 19 GB, 4 at a time about a quarter).
    The loss is the same as in one pass for ``dapo``, ``grpo`` and ``dr_grpo``; TRL 1.16's ``bnpo``
    normalises per micro-batch, so it then differs from the whole batch's ``bnpo`` (our loop's
    ``bnpo`` does the same, micro-batch by micro-batch)."""
    completions = settings.prompts_per_step * settings.group_size
    micro = max(d for d in range(1, min(settings.micro_batch_size, completions) + 1) if completions % d == 0)
    return micro, completions // micro


def problems_dataset(problems: list[dict], tokenizer, system_prompt: str | None = None) -> Dataset:
    """A ``datasets.Dataset`` with ``prompt`` (the formatted prompt text, exactly what our
    loop samples from) and ``answer`` (passed by TRL to the reward functions)."""
    return Dataset.from_list(
        [{"prompt": format_prompt(tokenizer, p["question"], system_prompt), "answer": p["answer"]} for p in problems]
    )


#: GRPOConfig's sampling arguments that :func:`course_rollouts` passes to :func:`~course_lib.sampling.sample`.
ROLLOUT_SAMPLING_ARGS = ("temperature", "top_p", "top_k", "min_p")


def rollout_sampling(args) -> dict:
    """The sampling arguments of a ``GRPOConfig`` as :func:`~course_lib.sampling.sample` takes them;
    a ``ValueError`` for those our sampler cannot honour (a repetition penalty, extra
    ``generation_kwargs``), instead of quietly sampling from another distribution than asked."""
    refused = []
    if getattr(args, "repetition_penalty", 1.0) not in (None, 1.0):
        refused.append(f"repetition_penalty={args.repetition_penalty}")
    if getattr(args, "generation_kwargs", None):
        refused.append(f"generation_kwargs={args.generation_kwargs}")
    if refused:
        raise ValueError(
            f"course_sampler=True cannot honour {', '.join(refused)}: leave them at their defaults, "
            "or use course_sampler=False (TRL's own generation applies them)"
        )
    return dict(
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k or 0,  # TRL: 0 or None switch it off
        min_p=args.min_p or 0.0,
        max_new_tokens=args.max_completion_length,
    )


def course_rollouts(tokenizer, settings: GRPOSettings) -> Callable[[list[str], GRPOTrainer], dict]:
    """A ``rollout_func`` for TRL's ``GRPOTrainer`` that samples with :func:`course_lib.sampling.sample`.

    TRL passes the batch's prompts, each repeated G times in a row (its ``RepeatSampler``), and
    expects per row the prompt's token ids, the completion's ids and their log-probs. The
    trainer's own sampling arguments (temperature, top-p, top-k, min-p, completion length) are
    read from ``trainer.args`` at every call (:func:`rollout_sampling`). Each call draws with its
    own seed (``settings.seed`` and a call counter), as our loop does per step.
    """
    calls = itertools.count()

    def rollout(prompts: list[str], trainer: GRPOTrainer) -> dict:
        group = trainer.args.num_generations
        unique = prompts[::group]
        if [p for p in unique for _ in range(group)] != list(prompts):
            raise ValueError(f"expected each prompt {group} times in a row (num_generations), as TRL's sampler gives")
        model = trainer.accelerator.unwrap_model(trainer.model)
        out = sample(
            model,
            tokenizer,
            unique,
            n=group,
            batch_size=settings.sample_batch_size,
            seed=settings.seed * 1_000_003 + next(calls),
            **rollout_sampling(trainer.args),
        )
        lengths = out.lengths.tolist()
        return {
            "prompt_ids": [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts],
            "completion_ids": [row[:k].tolist() for row, k in zip(out.completion_ids, lengths)],
            "logprobs": [row[:k].tolist() for row, k in zip(out.logprobs, lengths)],
        }

    return rollout


def grpo_trainer(
    profile: Profile,
    model,
    tokenizer,
    problems: list[dict],
    output_dir: str | Path,
    settings: GRPOSettings = GRPOSettings(),
    lora=None,
    callbacks=(),
    system_prompt: str | None = None,
    course_sampler: bool = False,
    **overrides,
) -> GRPOTrainer:
    """A ready ``trl.GRPOTrainer``: our rewards (one function per term, weighted as in
    ``settings.reward``), our prompts, the profile's devices; plus the step-by-step share of the
    completions as a reward of weight 0, which TRL logs and nothing trains on. ``lora``: a ``LoraConfig`` for
    TRL to wrap the model with (leave None if the model already carries adapters).
    ``course_sampler``: rollouts by :func:`course_rollouts` instead of ``model.generate`` (not
    with vLLM). No dict per step is printed (:func:`~course_lib.train.trainers.drop_printer`)."""
    funcs, weights = trl_reward_funcs(settings.reward)
    funcs, weights = funcs + [behaviour_reward("step_by_step")], weights + [0.0]  # logged, weight 0: no effect
    args = grpo_config(profile, output_dir, settings, reward_weights=weights, **overrides)
    if course_sampler:
        rollout_sampling(args)  # refuse what our sampler cannot honour now, not at the first step
    with warnings.catch_warnings():  # "rollout_func is experimental": said once, in lesson 06's prose
        warnings.filterwarnings("ignore", message="You are using 'rollout_func'")
        trainer = GRPOTrainer(
            model=model,
            reward_funcs=funcs,
            args=args,
            processing_class=tokenizer,
            train_dataset=problems_dataset(problems, tokenizer, system_prompt),
            peft_config=lora,
            callbacks=list(callbacks),
            rollout_func=course_rollouts(tokenizer, settings) if course_sampler else None,
        )
    drop_printer(trainer)
    return trainer


def vllm_generation(profile: Profile) -> dict:
    """``GRPOConfig`` arguments that move GRPO's rollouts to vLLM where it can run (CUDA and the
    GPU extras), else ``{}`` (generation by ``model.generate``, as on the CPU track).

    With Unsloth, its own vLLM engine (``load_policy(..., fast_inference=True)``) serves the
    rollouts and TRL needs only ``use_vllm``; without it, TRL starts vLLM in the training process
    ("colocate") and leaves it a share of GPU memory.
    """
    if profile.device != "cuda" or not vllm_available():
        return {}
    if policy_backend(profile) == "unsloth":
        return {"use_vllm": True}
    return {"use_vllm": True, "vllm_mode": "colocate", "vllm_gpu_memory_utilization": 0.3}
