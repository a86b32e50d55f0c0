"""The GRPO variants lab (lesson 14): arms, matched budgets, resume, and the readings of the results."""

import dataclasses

import numpy as np
import pytest

from course_lib import variants
from course_lib.config import get_profile
from course_lib.evaluation import paired_difference
from course_lib.train.recipes import grpo_recipe
from course_lib.variants import BASELINE, VARIANTS, Checkpoint, VariantRun, plan_for, run_variants


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    out = tmp_path_factory.mktemp("variants")
    messages: list[str] = []
    runs = run_variants(get_profile("pocket", fast=True), out_dir=out, progress=False, log=messages.append)
    return runs, out, messages


def test_every_variant_changes_one_thing_from_the_arm_it_is_compared_to():
    base = grpo_recipe(get_profile("pocket", fast=False))[0]
    for name, variant in VARIANTS.items():
        mine, theirs = variant.settings(base, 0), VARIANTS[variant.compare_to].settings(base, 0)
        changed = {f.name for f in dataclasses.fields(mine) if getattr(mine, f.name) != getattr(theirs, f.name)}
        if name == BASELINE:
            assert not changed
        elif variant.family == "group size":  # G and P move together: the completions per step stay
            assert changed == {"group_size", "prompts_per_step"}
            assert mine.group_size * mine.prompts_per_step == base.group_size * base.prompts_per_step
        else:
            assert changed and changed <= set(variant.changes), name
    assert VARIANTS["clip_higher"].settings(base, 0).num_iterations == 2  # at mu = 1 no clip can act
    assert VARIANTS["scale_none"].settings(base, 3).seed == 3


def test_the_full_plan_matches_every_arm_to_the_baseline_budget():
    plan = plan_for(get_profile("pocket", fast=False))
    assert plan.arms == tuple(VARIANTS) and plan.budget == 20 * 8 * 8 and plan.seeds == (0, 1, 2)
    runs = plan.runs()
    central = [a for a in plan.arms if VARIANTS[a].central]
    assert len(runs) == len(plan.arms) + 2 * len(central) and len(set(runs)) == len(runs)
    assert {"baseline", "scale_none", "loss_dr_grpo", "dynamic"} <= set(central)  # the central comparisons
    assert plan.train_questions >= 4 * plan.base.steps * plan.base.prompts_per_step  # room to refill
    with pytest.raises(ValueError, match="pocket profile"):
        plan_for(get_profile("gpu", fast=True))
    with pytest.raises(ValueError, match="unknown arm"):
        plan_for(get_profile("pocket", fast=True), arms=("nope",))
    # a subset: every arm named gets every seed, and the baseline and its partner come along
    subset = plan_for(get_profile("pocket", fast=False), arms=("clip_higher",), seeds=3)
    assert subset.arms == (BASELINE, "mu2", "clip_higher") == subset.repeated
    assert len(subset.runs()) == 9


def test_every_run_samples_the_budget_and_is_measured_at_its_checkpoints(study):
    runs, _, _ = study
    plan = plan_for(get_profile("pocket", fast=True))
    assert set(runs) == set(plan.runs())
    for (arm, _), run in runs.items():
        drawn = sum(row["completions_sampled"] for row in run.history)
        assert run.final.completions == drawn >= plan.budget
        if arm != "dynamic":
            assert drawn == plan.budget  # every step samples P x G, so the budget is met exactly
        assert [c.step for c in run.checkpoints][0] == 0 and run.final.step == len(run.history)
        assert all(len(c.n_correct) == plan.n_eval and c.k == plan.eval_k for c in run.checkpoints)
        assert run.seconds == pytest.approx(sum(row["seconds"] for row in run.history))
    # every run starts from the same base, measured once with the same sampling seed
    starts = {tuple(r.checkpoints[0].n_correct) for r in runs.values()}
    assert len(starts) == 1


def test_a_restarted_study_loads_its_runs_and_a_changed_plan_runs_them_again(study):
    runs, out, messages = study
    assert sum(m.endswith("running") for m in messages) == len(runs)
    profile = get_profile("pocket", fast=True)
    again: list[str] = []
    loaded = run_variants(profile, out_dir=out, progress=False, log=again.append)
    assert not again and loaded[(BASELINE, 0)].to_json() == runs[(BASELINE, 0)].to_json()
    plan = plan_for(profile, arms=(BASELINE,), seeds=1)
    other = dataclasses.replace(plan, base=dataclasses.replace(plan.base, learning_rate=1e-4))
    third: list[str] = []
    run_variants(profile, other, out_dir=out, progress=False, log=third.append)
    assert any("other settings" in m for m in third)


def test_saved_studies_round_trip_and_refuse_another_plan(study, tmp_path):
    runs, _, _ = study
    plan = plan_for(get_profile("pocket", fast=True))
    path = variants.save_runs(runs, plan, tmp_path / "v.json.gz")
    back = variants.load_runs(path, plan)
    assert {k: r.to_json() for k, r in back.items()} == {k: r.to_json() for k, r in runs.items()}
    with pytest.raises(ValueError, match="another plan"):
        variants.load_runs(path, dataclasses.replace(plan, n_eval=9))
    with pytest.raises(FileNotFoundError, match="python -m course_lib.variants"):
        variants.load_runs(tmp_path / "missing.json.gz")


def _run(arm: str, seed: int, points: list[tuple[int, float, list[int]]], seconds: float) -> VariantRun:
    """A run whose checkpoints are (completions, seconds, n_correct of 2 samples per problem)."""
    checkpoints = [Checkpoint(i, c, s, 2, n, {"step_by_step": 0.5}) for i, (c, s, n) in enumerate(points)]
    history = [{"step": 1.0, "completions_sampled": float(points[-1][0]), "seconds": seconds,
                "completion_length": 50.0, "entropy": 0.1, "frac_zero_std": 0.25}]  # fmt: skip
    return VariantRun(arm, seed, "plan", checkpoints, history, seconds)


def test_readings_at_matched_completions_over_the_run_and_at_matched_time():
    start = [0, 0, 0, 0]
    runs = {
        # the baseline learns in 100 completions and 10 s
        (BASELINE, 0): _run(BASELINE, 0, [(0, 0, start), (50, 5, [1, 1, 0, 0]), (100, 10, [2, 2, 2, 0])], 10),
        # the slow arm ends where the baseline ends, but takes 40 s and learns later
        ("mu4", 0): _run("mu4", 0, [(0, 0, start), (50, 20, [0, 0, 0, 0]), (100, 40, [2, 2, 2, 0])], 40),
    }
    assert variants.budget_of(runs) == 100
    np.testing.assert_allclose(variants.per_problem(runs, "mu4"), [1, 1, 1, 0])  # the end: the same
    end = variants.change(runs, "mu4")
    assert end.points == 0.0
    # over the run: the baseline's curve is 0 -> 0.5 -> 1 on problem 0, the slow arm's 0 -> 0 -> 1
    over = variants.mean_over_run(runs[("mu4", 0)], 100)
    assert over[0] == pytest.approx(0.25, abs=0.01) and over[3] == 0
    assert variants.mean_over_run(runs[(BASELINE, 0)], 100)[0] == pytest.approx(0.5, abs=0.01)
    # at the baseline's time (10 s), the slow arm had only its start
    at = variants.matched_time(runs)
    assert at == 10 and variants.within(runs[("mu4", 0)], at).step == 0
    timed = variants.change(runs, "mu4", BASELINE, at=at)
    assert timed == paired_difference([0, 0, 0, 0], [1, 1, 1, 0])
    table = variants.summary_table(runs)
    assert table.loc["mu4", "steps by then"] == 0 and table.loc["mu4", "accuracy (%)"] == 75.0
    assert table.loc["mu4", "change"] == str(end) and table.loc["mu4", "compared to"] == BASELINE
    assert table.loc[BASELINE, "change"] == "" and table.loc["mu4", "spread"] == 0.0  # one seed each
    assert set(variants.SUMMARY_COLUMNS) <= set(table.columns)
    assert (
        variants.clear_differences(table)[-1] == "0 of 1 arms differ from their partner at the end by more than noise"
    )


def test_the_seed_spread_is_measured_the_way_the_change_is():
    start = [0, 0]
    runs = {
        (BASELINE, 0): _run(BASELINE, 0, [(0, 0, start), (50, 5, [2, 2]), (100, 10, [2, 2])], 10),  # fast, then 100 %
        (BASELINE, 1): _run(BASELINE, 1, [(0, 0, start), (50, 5, [0, 0]), (100, 10, [2, 2])], 10),  # slow, then 100 %
    }
    assert variants.seed_spread(runs, BASELINE) == 0.0  # both end at 100 %
    assert variants.seed_spread(runs, BASELINE, at="run") == pytest.approx(50.0)  # 75 % vs 25 % over the run


def test_adam_cancels_a_constant_factor_and_sgd_does_not():
    moved = variants.adam_rescaling()
    constant, per_group = moved.iloc[0], moved.iloc[2]
    assert constant["AdamW"] < 1e-5 and constant["SGD"] == pytest.approx(1.3, rel=1e-4)  # x 2.3: 130 % further
    assert 0.01 < per_group["AdamW"] < 0.5 < per_group["SGD"]  # per-group factors change the direction


@pytest.mark.parametrize("mode", ["widget", "static"])
def test_the_variants_explorer_draws_a_family_beside_its_reference(study, mode, monkeypatch):
    from course_lib.widgets import variants_explorer

    monkeypatch.setenv("COURSE_FIGURES", mode)
    runs, _, _ = study
    box = variants_explorer(runs)
    (family, view), figure = box.children[0].children, box.children[1]
    assert family.value == "reward scaling"  # the first family after the baseline
    names = [t.name for t in figure.data if t.showlegend is not False]
    assert names == [VARIANTS[BASELINE].label, VARIANTS["scale_none"].label]
    curves = variants.curve_frame(runs)
    base = curves[curves["arm"] == BASELINE].groupby("step")["accuracy (%)"].mean()
    assert list(figure.data[0].y) == pytest.approx(list(base))  # the mean over seeds, step by step
    family.value, view.value = "sampling", "completion length vs step"
    assert [t.name for t in figure.data if t.showlegend is not False] == [VARIANTS[BASELINE].label,
                                                                           VARIANTS["dynamic"].label]  # fmt: skip
    assert "completion length" in figure.layout.title.text


def test_the_shipped_study_is_todays_full_plan_and_reads_like_the_lesson_says():
    plan = plan_for(get_profile("pocket", fast=False))
    runs = variants.load_runs(variants.SHIPPED, plan)  # refuses a file made under another plan
    assert set(runs) == set(plan.runs()) and len(runs) == 35
    assert variants.budget_of(runs) == plan.budget
    table = variants.summary_table(runs)
    assert table.loc["mu4", "train s"] > 2 * table.loc[BASELINE, "train s"]  # mu = 4 costs time
    assert table.loc["dynamic", "completions"] >= plan.budget > 0 and table.loc["dynamic", "steps"] < 20
