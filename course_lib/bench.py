"""Benchmarks (not tests): ``python -m course_lib.bench grpo``.

``grpo`` trains the same starting model with the same settings twice, once with the
course's from-scratch loop and once with TRL's ``GRPOTrainer``, one after the other in
one process, and prints the completions trained per second of each and their ratio.
Both sample, score and update the same P x G completions per step; the clock covers
the training steps only (model loading and trainer construction are excluded).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch

from course_lib.config import get_profile, setup_torch
from course_lib.data import train_problems
from course_lib.models import load_model
from course_lib.train.grpo import GRPOLoop, GRPOSettings
from course_lib.train.grpo_trl import grpo_trainer


def bench_grpo(
    steps: int = 10,
    prompts_per_step: int = 8,
    group_size: int = 8,
    max_new_tokens: int = 160,
    learning_rate: float = 1e-4,
    profile_name: str = "pocket",
    seed: int = 0,
) -> dict:
    """Completions per second of our loop and of TRL's trainer on the same model and settings."""
    profile = get_profile(profile_name, fast=False)
    setup_torch(profile, seed)
    settings = GRPOSettings(
        steps=steps,
        prompts_per_step=prompts_per_step,
        group_size=group_size,
        max_new_tokens=max_new_tokens,
        learning_rate=learning_rate,
        seed=seed,
    )
    problems = train_problems(profile, steps * prompts_per_step, seed=seed)
    completions = steps * prompts_per_step * group_size

    model, tokenizer = load_model(profile)
    loop = GRPOLoop(model, tokenizer, problems, settings, system_prompt=profile.system_prompt)
    start = time.perf_counter()
    loop.train(progress=False)
    ours_s = time.perf_counter() - start

    model, tokenizer = load_model(profile)
    with tempfile.TemporaryDirectory() as out:
        trainer = grpo_trainer(
            profile, model, tokenizer, problems, out, settings, system_prompt=profile.system_prompt, disable_tqdm=True
        )  # no per-step log lines
        start = time.perf_counter()
        trainer.train()
        trl_s = time.perf_counter() - start

    ours, trl = completions / ours_s, completions / trl_s
    return {
        "steps": steps,
        "completions_per_step": prompts_per_step * group_size,
        "max_new_tokens": max_new_tokens,
        "threads": torch.get_num_threads(),
        "ours_seconds": ours_s,
        "trl_seconds": trl_s,
        "ours_samples_per_s": ours,
        "trl_samples_per_s": trl,
        "ratio_ours_over_trl": ours / trl,
        "ours_mean_length": float(loop.metrics()["completion_length"].mean()),
        "trl_mean_length": _mean_logged(trainer.state.log_history, "completions/mean_length"),
    }


def _mean_logged(log_history: list[dict], key: str) -> float:
    values = [row[key] for row in log_history if key in row]
    return sum(values) / len(values) if values else float("nan")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m course_lib.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("which", choices=["grpo"])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--prompts", type=int, default=8, help="prompts per step (P)")
    parser.add_argument("--group", type=int, default=8, help="completions per prompt (G)")
    parser.add_argument("--max-new-tokens", type=int, default=160)
    parser.add_argument("--profile", default=os.environ.get("COURSE_PROFILE", "pocket"))
    args = parser.parse_args(argv)
    result = bench_grpo(args.steps, args.prompts, args.group, args.max_new_tokens, profile_name=args.profile)
    print(
        f"GRPO, {result['steps']} steps x {result['completions_per_step']} completions "
        f"(max {result['max_new_tokens']} new tokens), {result['threads']} torch threads:"
    )
    print(f"  course_lib loop : {result['ours_samples_per_s']:6.2f} completions/s ({result['ours_seconds']:.1f} s)")
    print(f"  TRL GRPOTrainer : {result['trl_samples_per_s']:6.2f} completions/s ({result['trl_seconds']:.1f} s)")
    print(
        f"  ratio (ours / TRL): {result['ratio_ours_over_trl']:.2f}  (mean completion length "
        f"{result['ours_mean_length']:.0f} vs {result['trl_mean_length']:.0f} tokens)"
    )
    return result


if __name__ == "__main__":
    main()
