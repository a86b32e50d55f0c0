"""course_lib.controls and course_lib.shaping: the control runs of lesson 05 and the reward sweep of lesson 09."""

import dataclasses
import math

import pandas as pd
import pytest

from course_lib.config import get_profile
from course_lib.controls import random_reward, temperature_sweep, train_and_evaluate
from course_lib.data import pocket_math, train_problems
from course_lib.evaluation import evaluate_profile
from course_lib.rewards import reward_breakdown
from course_lib.shaping import behaviour_rewards, flip_weight, shaped_reward, sweep
from course_lib.train.grpo import GRPOSettings

TINY = GRPOSettings(steps=2, prompts_per_step=2, group_size=4, max_new_tokens=48, learning_rate=1e-3)


def test_the_random_reward_keeps_every_other_setting_and_pays_no_answer():
    settings = random_reward(TINY, seed=5)
    assert dataclasses.replace(settings, reward=TINY.reward) == TINY
    assert settings.reward.correctness_weight == 0 and settings.reward.random_weight == 1
    assert reward_breakdown("#### 7", "7", settings.reward)["correct"]  # right, and still only a coin
    assert {reward_breakdown(f"#### {i}", "7", settings.reward)["total"] for i in range(50)} == {0.0, 1.0}


def test_temperature_sweep_rows(pocket):
    profile = dataclasses.replace(get_profile("pocket", fast=True), eval_k=2, max_new_tokens=48)
    table = temperature_sweep(*pocket, pocket_math.pocket_test_set(4), profile, temperatures=(1.0, 0.0))
    assert list(table.index) == [1.0, 0.0] and list(table["samples"]) == [2, 1]
    shares = table[[c for c in table.columns if c.startswith("share_")]].sum(axis=1)
    assert shares.round(6).eq(1.0).all() and table["accuracy"].between(0, 1).all()


def test_the_shaped_reward_is_trelis_shape_plus_brevity_and_gating_pays_correct_answers_only():
    ungated, gated = shaped_reward(3.0), shaped_reward(3.0, gated=True)
    wrong_short = "#### 13"
    assert reward_breakdown(wrong_short, "14", ungated, length=4)["total"] == pytest.approx(1.0 + 3.0)  # 2 of 4 format
    assert reward_breakdown(wrong_short, "14", gated, length=4)["total"] == 0.0
    right_long = "Tom has 3+4=<<3+4=7>>7.\nThen 7*2=<<7*2=14>>14.\n#### 14"
    assert reward_breakdown(right_long, "14", ungated, length=60)["total"] == pytest.approx(2.0 + 2.0)  # no brevity


def test_the_flip_weight_balances_the_two_behaviours_expected_rewards():
    table = pd.DataFrame(
        {"share": [0.3, 0.7], "accuracy": [0.9, 0.02], "format": [2.0, 1.0], "brevity": [0.0, 1.0]},
        index=["step_by_step", "answer_only"],
    )
    table["format_correct"], table["brevity_correct"] = table["accuracy"] * table["format"], table["accuracy"] * 1.0
    table.loc["step_by_step", "brevity_correct"] = 0.0
    w = flip_weight(table)
    assert w == pytest.approx(2 * 0.88 + 1.0)
    s, o = table.loc["step_by_step"], table.loc["answer_only"]
    assert 2 * s["accuracy"] + s["format"] + w * s["brevity"] == pytest.approx(
        2 * o["accuracy"] + o["format"] + w * o["brevity"]
    )
    gated = flip_weight(table, gated=True)  # a_s (2 + F_s) = a_o (2 + F_o + w): the short answer is rarely paid
    assert gated == pytest.approx((0.9 * 4.0 - 0.02 * 3.0) / 0.02) and gated > 50 * w
    table.loc["step_by_step", "brevity_correct"] = 0.05  # short right solutions collect more of it than guesses
    assert flip_weight(table, gated=True) == math.inf


def test_behaviour_rewards_measure_what_each_behaviour_is_paid(pocket):
    model, tokenizer = pocket
    profile = dataclasses.replace(get_profile("pocket", fast=True), eval_k=4, max_new_tokens=160)
    result = evaluate_profile(model, tokenizer, pocket_math.pocket_test_set(8), profile, progress=False)
    table = behaviour_rewards(result, tokenizer)
    assert table["share"].sum() == pytest.approx(1.0)
    assert (table["format_correct"] <= table["format"] + 1e-9).all()  # gated pay is never more
    if "answer_only" in table.index:
        assert table.loc["answer_only", "brevity"] == pytest.approx(1.0)  # "#### N" is short
        assert table.loc["answer_only", "format"] == pytest.approx(1.0)  # one marker, a plain number; no reasoning
    if "step_by_step" in table.index:
        assert table.loc["step_by_step", "brevity"] < 0.5


def test_sweep_and_train_and_evaluate_end_to_end(_pocket_loaded):
    import copy

    from course_lib.models import lora_config, with_lora

    model0, tokenizer = _pocket_loaded
    profile = dataclasses.replace(get_profile("pocket", fast=True), n_eval_problems=4, eval_k=2, max_new_tokens=48)
    test = pocket_math.pocket_test_set(4)
    problems = train_problems(profile, 4, seed=1)
    before = evaluate_profile(model0, tokenizer, test, profile, progress=False)

    def load():
        return with_lora(copy.deepcopy(model0), lora_config()), tokenizer

    table, runs = sweep(load, problems, TINY, test, profile, before, weights=(0.0,), gated_weight=2.0, progress=False)
    assert list(table.index) == ["w = 0", "w = 2, gated"] and set(runs) == set(table.index)
    assert list(table["gated"]) == [False, True] and (table["train seconds"] > 0).all()
    run = train_and_evaluate(*load(), problems, TINY, test, profile, progress=False)
    assert len(run.history) == TINY.steps and run.after.per_problem["question"].tolist() == [
        p["question"] for p in test
    ]


def test_only_a_profile_with_a_control_model_gets_the_control_base():
    from course_lib.controls import answer_only_base

    assert answer_only_base(get_profile("gpu", fast=True)) is None
    model, tokenizer = answer_only_base(get_profile("pocket", fast=True))
    assert model.config.hidden_size == 160 and tokenizer.chat_template


def test_the_flip_needs_both_behaviours():
    table = pd.DataFrame({"share": [1.0], "accuracy": [0.9], "format": [2.0], "brevity": [0.0]}, index=["step_by_step"])
    table["format_correct"] = table["brevity_correct"] = 0.0
    with pytest.raises(ValueError, match="no answer_only completions"):
        flip_weight(table)
