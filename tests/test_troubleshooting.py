"""Failures reproduced and fixed (lesson 13): the broken runs, the NaN and its guard, out of memory, and
what the dashboard's bands say about them."""

import dataclasses

import pytest
import torch

from course_lib.config import get_profile
from course_lib.data import train_problems
from course_lib.models import load_policy, lora_config
from course_lib.monitoring import diagnose, healthy_bands
from course_lib.rewards import RewardConfig
from course_lib.train.grpo import GRPOLoop, GRPOSettings
from course_lib.train.recipes import grpo_recipe
from course_lib.troubleshooting import (
    NoEpsilonLoop,
    UnguardedLoop,
    failure_runs,
    memory_probe,
    non_finite_weights,
    planned_step_mb,
)

TINY = GRPOSettings(steps=2, prompts_per_step=2, group_size=4, max_new_tokens=48, learning_rate=1e-3)


def test_each_failure_run_differs_from_the_recipe_in_what_it_says():
    profile = get_profile("pocket", fast=False)
    recipe, runs = grpo_recipe(profile)[0], failure_runs(profile)

    def changed(name):
        s = runs[name].settings
        return {f.name for f in dataclasses.fields(s) if getattr(s, f.name) != getattr(recipe, f.name)}

    assert changed("format_bug") == changed("format_fixed") == {"reward"}
    assert not runs["format_bug"].settings.reward.dotall and runs["format_fixed"].settings.reward.dotall
    assert changed("hacking") == changed("hacking_fixed") == {"reward"}
    assert not runs["hacking"].settings.reward.format_needs_correct
    assert runs["hacking_fixed"].settings.reward.format_needs_correct
    assert changed("stalled_dynamic") == {"dynamic_sampling"} and changed("stalled_hot") == {"temperature"}
    assert changed("collapsing_kl") == {"learning_rate", "beta"}
    assert changed("collapsing_clipped") == {"learning_rate", "max_grad_norm"}
    assert runs["collapsing_clipped"].settings.max_grad_norm < recipe.max_grad_norm
    g16 = runs["stalled_g16"].settings
    assert changed("stalled_g16") == {"group_size", "prompts_per_step"} and g16.group_size == 16
    assert g16.group_size * g16.prompts_per_step == recipe.group_size * recipe.prompts_per_step
    assert min(p["n_steps"] for p in runs["stalled_g16"].problems) >= 6


def _loop(cls, reward: RewardConfig, min_steps: int = 1, **changes):
    profile = get_profile("pocket")
    model, tokenizer = load_policy(profile, lora=lora_config())
    problems = train_problems(profile, 8, min_steps=min_steps, max_steps=max(2, min_steps + 1))
    return cls(model, tokenizer, problems, dataclasses.replace(TINY, reward=reward, **changes))


FLAT = RewardConfig(correctness_weight=0.0)  # every completion earns 0: every group is flat


def test_advantages_without_epsilon_make_a_nan_that_the_guard_stops_before_the_weights():
    loop = _loop(NoEpsilonLoop, FLAT)
    before = [p.detach().clone() for p in loop.policy.parameters()]
    with pytest.raises(FloatingPointError, match="GRPO step 1: the loss is nan"):
        loop.train_step()
    assert non_finite_weights(loop.policy) == 0
    assert all(torch.equal(a, b) for a, b in zip(loop.policy.parameters(), before))
    # the library's advantages on the same flat groups: exact zeros, a finite step
    fine = _loop(GRPOLoop, FLAT)
    assert fine.train_step()["advantage_std"] == 0.0 and non_finite_weights(fine.policy) == 0


def test_without_the_guard_one_step_poisons_the_weights_and_the_next_sampling_fails():
    loop = _loop(UnguardedLoop, FLAT)
    loop.train_step()  # no guard: the NaN loss goes through backward and AdamW
    assert non_finite_weights(loop.policy) > 0
    with pytest.raises(FloatingPointError, match="decoding step"):
        loop.train_step()


def test_a_format_reward_without_dotall_never_pays_its_layout_and_the_bands_say_so():
    # problems of 2-3 steps: a worked solution has two lines of working or more before its answer line
    loop = _loop(GRPOLoop, RewardConfig(format_weight=1.0, dotall=False), min_steps=2, max_new_tokens=160)
    loop.train(progress=False)
    history = loop.metrics()
    assert (history["format/strict_format"] == 0).all() and (history["format/soft_format"] == 0).all()
    assert history["format/single_answer"].max() > 0  # the patterns without a newline still match
    verdict = diagnose(history, healthy_bands(loop.settings))
    assert not verdict.loc["format/strict_format", "healthy"]
    assert "re.DOTALL" in verdict.loc["format/strict_format", "means"]
    fixed = _loop(GRPOLoop, RewardConfig(format_weight=1.0), min_steps=2, max_new_tokens=160)
    fixed.train(progress=False)
    assert fixed.metrics()["format/strict_format"].max() > 0  # the same samples' layouts now pay


def test_reward_hacking_is_named_when_accuracy_falls_while_the_reward_does_not():
    rows = [{"step": s, "reward": 3.0 + 0.1 * s, "accuracy": 0.4 - 0.05 * s} for s in range(1, 8)]
    verdict = diagnose(rows)
    assert verdict.loc["reward_change", "healthy"] and not verdict.loc["accuracy_change", "healthy"]
    assert "reward hacking" in verdict.loc["accuracy_change", "means"]
    assert "format_needs_correct" in verdict.loc["accuracy_change", "try"]


def test_one_pass_over_every_completion_runs_out_of_memory_and_micro_batches_fit():
    seq_len = grpo_recipe(get_profile("pocket", fast=False))[0].max_new_tokens + 60
    planned = {m: planned_step_mb(m, 64, seq_len) for m in (64, 8)}
    assert planned[64] > 3 * planned[8]  # activations and logits grow with the micro-batch
    limit = (planned[64] * planned[8]) ** 0.5
    whole, split = memory_probe(64, limit), memory_probe(8, limit)
    assert not whole.ok and "allocate" in whole.error
    assert split.ok and split.error == "" and 0 < split.grew_mb < limit
