"""The overlap study (lesson 11): question sets, matched stages, the mechanism split, resume, tables."""

import dataclasses

import numpy as np
import pytest

from course_lib import overlap
from course_lib.config import get_profile
from course_lib.evaluation import paired_difference
from course_lib.overlap import OVERLAPS, SECOND_SEED, OverlapStudy, plan_for, run_overlap


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    out = tmp_path_factory.mktemp("overlap")
    messages: list[str] = []
    arms = run_overlap(get_profile("pocket", fast=True), out_dir=out, progress=False, log=messages.append)
    return arms, out, messages


def test_the_sft_sets_share_exactly_the_planned_part_of_grpos_questions():
    profile = get_profile("pocket", fast=False)
    plan = plan_for(profile)
    assert plan.grpo.steps * plan.grpo.prompts_per_step == plan.grpo_questions == 64
    assert plan.sft_questions == 64 and plan.rs.k == plan.grpo.group_size == plan.k
    study = OverlapStudy(profile, plan, progress=False)
    grpo = {p["question"] for p in study.grpo_set}
    assert len(grpo) == 64 and not grpo & {p["question"] for p in study.fresh_set}
    for share, shared in ((0.0, 0), (0.3, 19), (1.0, 64)):
        questions = [p["question"] for p in study.sft_set(share)]
        assert len(questions) == len(set(questions)) == 64  # the same SFT budget at every overlap
        assert len(set(questions) & grpo) == shared
    with pytest.raises(ValueError, match="pocket profile"):
        plan_for(get_profile("gpu", fast=True))


def test_every_arm_runs_and_the_mechanism_splits_groups_by_what_sft_saw(study):
    arms, _, _ = study
    assert list(arms) == list(plan_for(get_profile("pocket", fast=True)).arms())
    assert all(len(r.accuracy) == 8 for r in arms.values())
    assert arms["base"].mechanism == [] and arms["sft_only"].mechanism == [] and arms["grpo_only"].mechanism
    for arm in OVERLAPS:
        for name in (arm, arm + SECOND_SEED):
            rows = arms[name].mechanism
            assert [m["step"] for m in rows] == [1, 2] and len(arms[name].sft_stage_accuracy) == 8
            if OVERLAPS[arm] == 0.0:
                assert all(m["seen_groups"] == 0 for m in rows)  # GRPO's questions were never SFT's
            if OVERLAPS[arm] == 1.0:
                assert all(m["fresh_groups"] == 0 for m in rows)  # ... or all of them were
            for m in rows:
                assert m["seen_groups"] + m["fresh_groups"] == 2  # the fast recipe's 2 prompts per step
    assert arms["grpo_only"].mechanism[0]["seen_groups"] == 0
    rows = {arms[a].sft_rows for a in ("sft_only", "overlap_0")}
    assert len(rows) == 1  # 0 % overlap trains on the same fresh questions as SFT only


def test_zero_variance_groups_are_told_from_the_advantages():
    class Loop:  # the two attributes mechanism_row reads from a GRPOLoop
        def __init__(self):
            import torch

            from course_lib.sampling import Samples

            texts = ["#### 3", "#### 3", "#### 3", "#### 4"]  # group 1 all right; group 2 split
            self.last_batch = (
                Samples(["a", "b"], 2, texts, [0, 0, 1, 1], torch.zeros(4, 1), torch.ones(4, 1), torch.zeros(4, 1)),
                torch.tensor([0.0, 0.0, 0.7, -0.7]),
            )

        def batch_problems(self, step):
            return [{"question": "a", "answer": "3"}, {"question": "b", "answer": "3"}]

    row = overlap.mechanism_row(Loop(), 1, seen={"a"})
    assert row["seen_groups"] == row["fresh_groups"] == 1
    assert row["seen_zero_variance"] == 1.0 and row["fresh_zero_variance"] == 0.0
    assert row["seen_abs_advantage"] == 0.0 and row["fresh_abs_advantage"] == pytest.approx(0.7)
    assert row["seen_accuracy"] == 1.0 and row["fresh_accuracy"] == 0.5


def test_a_restarted_study_loads_its_arms_and_a_changed_plan_runs_them_again(study):
    arms, out, messages = study
    assert all(m.endswith("running") for m in messages)
    profile = get_profile("pocket", fast=True)
    again: list[str] = []
    loaded = run_overlap(profile, out_dir=out, progress=False, log=again.append)
    assert all("loaded from" in m for m in again) and loaded["overlap_30"].accuracy == arms["overlap_30"].accuracy
    plan = plan_for(profile)
    other = dataclasses.replace(plan, second_seed=False, rs=dataclasses.replace(plan.rs, learning_rate=1e-5))
    third: list[str] = []
    run_overlap(profile, other, out_dir=out, progress=False, log=third.append)
    assert sum("other settings" in m for m in third) == len(other.arms()) == 6


def test_tables_give_paired_changes_and_grpos_own_gain(study):
    arms, _, _ = study
    table = overlap.results_table(arms)
    r = arms["overlap_100"]
    assert table.loc[r.label, "GRPO's own gain"] == str(paired_difference(r.accuracy, r.sft_stage_accuracy))
    assert table.loc["Base", "vs base"] == "" and table.loc["SFT only", "vs SFT only"] == ""
    curve = overlap.overlap_curve(arms)
    assert list(curve.index) == [0.0, 0.3, 1.0] and (curve["seeds"] == 2).all()
    expected = np.mean([np.mean(arms[a].accuracy) for a in ("overlap_0", "overlap_0" + SECOND_SEED)])
    assert curve.loc[0.0, "after GRPO"] == pytest.approx(expected)
    mech = overlap.mechanism_table(arms)
    assert mech.loc[0.0, "seen: groups"] == 0 and mech.loc[1.0, "fresh: groups"] == 0
    assert set(overlap.paper_comparison(arms)) == {
        "0 % minus 100 % overlap",
        "GRPO's gain at 100 % overlap",
        "GRPO's gain at 0 % overlap",
    }
