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
    class Loop:  # the attributes mechanism_row reads from a GRPOLoop
        def __init__(self):
            import torch

            from course_lib.sampling import Samples

            texts = ["#### 3", "#### 3", "#### 3", "#### 4"]  # group 1 all right; group 2 split
            self.last_batch = (
                Samples(["a", "b"], 2, texts, [0, 0, 1, 1], torch.zeros(4, 1), torch.ones(4, 1), torch.zeros(4, 1)),
                torch.tensor([0.0, 0.0, 0.7, -0.7]),
            )
            self.last_problems = [{"question": "a", "answer": "3"}, {"question": "b", "answer": "3"}]

    row = overlap.mechanism_row(Loop(), 1, seen={"a"})
    assert row["seen_groups"] == row["fresh_groups"] == 1
    assert row["seen_zero_variance"] == 1.0 and row["fresh_zero_variance"] == 0.0
    assert row["seen_abs_advantage"] == 0.0 and row["fresh_abs_advantage"] == pytest.approx(0.7)
    assert row["seen_accuracy"] == 1.0 and row["fresh_accuracy"] == 0.5
    assert row["seen_all_right"] == 1.0 and row["seen_all_wrong"] == 0.0  # the flat group is a solved one
    assert row["fresh_all_right"] == row["fresh_all_wrong"] == 0.0


def _arm(name: str, accuracy: list[float], mechanism: list[dict] | None = None) -> overlap.OverlapArm:
    share = OVERLAPS.get(name.removesuffix(SECOND_SEED))
    return overlap.OverlapArm(name, name, "plan", share, int(name.endswith(SECOND_SEED)), accuracy, accuracy,
                              {"step by step": 0.5, "answer only": 0.5}, mechanism or [], 0)  # fmt: skip


def test_flat_groups_are_counted_with_wilson_intervals_and_split_into_solved_and_stalled():
    from course_lib.evaluation import Estimate, wilson_interval

    # 0 % overlap, two steps: 4 then 6 fresh groups, of which 1 and 3 flat (1 all right + 0, 1 + 2 all wrong)
    steps = [
        {"step": 1, "seen_groups": 0, "fresh_groups": 4, "seen_zero_variance": float("nan"),
         "fresh_zero_variance": 0.25, "seen_all_right": float("nan"), "fresh_all_right": 0.25,
         "seen_all_wrong": float("nan"), "fresh_all_wrong": 0.0},
        {"step": 2, "seen_groups": 0, "fresh_groups": 6, "seen_zero_variance": float("nan"),
         "fresh_zero_variance": 0.5, "seen_all_right": float("nan"), "fresh_all_right": 1 / 6,
         "seen_all_wrong": float("nan"), "fresh_all_wrong": 2 / 6},
    ]  # fmt: skip
    arms = {a: _arm(a, [1.0], steps) for a in OVERLAPS}
    table = overlap.flat_groups_table(arms)
    row = table.loc[(0, "fresh")]
    assert row["groups"] == 10 and (0, "seen") not in table.index  # a part with no group has no row
    assert row["flat (%)"] == str(Estimate(0.4, *wilson_interval(4, 10)))
    assert row["all right (%)"] == str(Estimate(0.2, *wilson_interval(2, 10)))
    assert row["all wrong (%)"] == str(Estimate(0.2, *wilson_interval(2, 10)))


def test_a_gap_within_the_seed_spread_reads_cannot_tell_whatever_its_interval():
    # 100 problems; 0 % overlap is right on 20 problems with one seed and none with the other: 10 points
    # better than 100 % on average (an interval that excludes 0), but its two seeds differ by 20 points
    n = 100
    full = [0.0] * n
    arms = {
        "overlap_0": _arm("overlap_0", [1.0] * 20 + [0.0] * (n - 20)),
        "overlap_0" + SECOND_SEED: _arm("overlap_0" + SECOND_SEED, full),
        "overlap_100": _arm("overlap_100", full),
        "overlap_100" + SECOND_SEED: _arm("overlap_100" + SECOND_SEED, full),
        "overlap_30": _arm("overlap_30", full),
    }
    assert overlap.seed_spread(arms) == pytest.approx(20.0)
    change = overlap.paper_comparison(arms)["0 % minus 100 % overlap"]
    assert change.points == pytest.approx(10.0) and change.verdict == "better"
    verdicts = overlap.paper_verdicts(arms)
    assert verdicts["0 % overlap beats 100 %"].startswith("cannot tell")
    wide = change.read_against(5.0)  # a gap larger than the seeds' spread counts
    assert wide == "better"


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
    assert list(curve.index) == [0, 30, 100] and (curve["seeds"] == 2).all()
    expected = np.mean([np.mean(arms[a].accuracy) for a in ("overlap_0", "overlap_0" + SECOND_SEED)])
    assert curve.loc[0, "after GRPO (%)"] == pytest.approx(100 * expected)  # in % like every column
    assert curve.loc[0, "each seed (%)"] == [round(100 * np.mean(arms[a].accuracy), 1)
                                             for a in ("overlap_0", "overlap_0" + SECOND_SEED)]  # fmt: skip
    mech = overlap.mechanism_table(arms)
    assert mech.loc[0, "seen: groups"] == 0 and mech.loc[100, "fresh: groups"] == 0
    assert 0 <= mech.loc[100, "seen: zero variance (%)"] <= 100
    behaviours = overlap.behaviour_table(arms)
    assert behaviours.loc["Base", "accuracy (%)"] == round(100 * np.mean(arms["base"].accuracy), 1)
    assert set(behaviours.columns) > {"accuracy (%)"}
    assert set(overlap.paper_comparison(arms)) == {
        "0 % minus 100 % overlap",
        "GRPO's gain at 100 % overlap",
        "GRPO's gain at 0 % overlap",
    }
