"""The scalpel-vs-hammer study (lesson 10): plan, full fine-tuning with frozen modules, probes, resume, claims."""

import dataclasses

import numpy as np
import pandas as pd
import pytest

from course_lib import scalpel
from course_lib.config import get_profile
from course_lib.evaluation import paired_difference
from course_lib.report import Budget
from course_lib.scalpel import ARMS, TRAINS, ScalpelArm, claims, plan_for, results_table, run_scalpel, set_trainable
from course_lib.weight_changes import MLP_TYPES, by_module


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """The whole study in fast mode, once for the module: (arms, out_dir, messages)."""
    out = tmp_path_factory.mktemp("scalpel")
    messages: list[str] = []
    arms = run_scalpel(get_profile("pocket", fast=True), out_dir=out, progress=False, log=messages.append)
    return arms, out, messages


def test_full_plan_matches_the_sample_budget_and_trains_both_methods_alike():
    plan = plan_for(get_profile("pocket", fast=False))
    g, rs = plan.grpo, plan.rs
    assert plan.questions == 160 and g.steps * g.prompts_per_step == plan.questions  # each question once
    assert g.group_size == rs.k == plan.k and rs.rounds == 1 and rs.questions_per_round == plan.questions
    assert g.learning_rate == rs.learning_rate == scalpel.FULL_FT_LR and g.beta > 0
    assert plan.pass_k_samples == 64 and g.max_new_tokens == rs.max_new_tokens
    note = plan.budget_note()  # lesson 10's prose names these settings without numbers: the note prints them
    assert f"KL beta {g.beta:g}" in note and f"at most {rs.max_per_question} per question" in note
    assert plan_for(get_profile("pocket", fast=True)).fingerprint() != plan.fingerprint()
    with pytest.raises(ValueError, match="pocket profile"):
        plan_for(get_profile("gpu", fast=True))


def test_set_trainable_leaves_exactly_the_named_module_types_trainable(pocket):
    model, _ = pocket
    assert set_trainable(model, ("q", "k")) == 6 * 2 * 160 * 160
    assert set_trainable(model, TRAINS["sft_frozen_mlp"]) == sum(p.numel() for p in model.parameters()) - 6 * 3 * (
        432 * 160
    )
    assert not any(p.requires_grad for n, p in model.named_parameters() if ".mlp." in n)
    with pytest.raises(ValueError, match="no parameter"):
        set_trainable(model, ("lm_head_only",))


def test_every_arm_runs_and_frozen_weights_really_stay_where_they_were(study):
    arms, _, _ = study
    assert list(arms) == list(ARMS)
    n = {len(r.accuracy) for r in arms.values()} | {len(r.sorting_correct) for r in arms.values()}
    assert n == {8, 16}  # fast mode: 8 test problems, 16 sorting lists, for every arm
    assert arms["base"].changes == [] and arms["base"].trainable_parameters == 0
    for arm in ARMS[1:]:
        moved = by_module(arms[arm].final_changes())["rel_change"]
        trained = set(TRAINS[arm])
        assert (moved[moved.index.isin(trained)] > 0).all(), arm  # every trained module moved ...
        assert (moved[~moved.index.isin(trained)] == 0).all(), arm  # ... and no frozen one did
    assert set(TRAINS["sft_qk_only"]) == {"q", "k"} and not set(MLP_TYPES) & set(TRAINS["sft_frozen_mlp"])
    sft_rows = {arms[a].budget.sequences_trained_on for a in ("sft_rs", "sft_frozen_mlp", "sft_qk_only", "sft_rs_hot")}
    assert len(sft_rows) == 1  # the SFT arms learn from the same pool's rows
    for cool, hot in (("sft_rs", "sft_rs_hot"), ("grpo", "grpo_hot")):  # the same steps, a 3x larger learning rate
        assert arms[hot].budget.optimizer_steps == arms[cool].budget.optimizer_steps
        moved = [by_module(arms[a].final_changes()).loc["o", "rms_change"] for a in (cool, hot)]
        assert moved[1] > 1.5 * moved[0], (cool, moved)
    g = plan_for(get_profile("pocket", fast=True)).grpo
    assert arms["grpo"].budget.completions_generated == g.steps * g.prompts_per_step * g.group_size
    assert sorted(arms["grpo"].change_table()["step"].unique()) == [1, 2]  # snapshots along the way


def test_a_restarted_study_loads_its_arms_and_a_changed_plan_runs_them_again(study):
    arms, out, messages = study
    assert all(m.endswith("running") for m in messages)
    again: list[str] = []
    profile = get_profile("pocket", fast=True)
    loaded = run_scalpel(profile, out_dir=out, progress=False, log=again.append, arms=("base", "grpo"))
    assert all("loaded from" in m for m in again) and loaded["grpo"].accuracy == arms["grpo"].accuracy
    other = plan_for(profile)
    other = dataclasses.replace(other, grpo=dataclasses.replace(other.grpo, learning_rate=3e-5))
    third: list[str] = []
    run_scalpel(profile, other, out_dir=out, progress=False, log=third.append, arms=("base", "grpo"))
    assert sum("other settings" in m for m in third) == 2
    with pytest.raises(ValueError, match="must include 'base'"):
        run_scalpel(profile, out_dir=out, arms=("grpo",))


def test_the_results_table_gives_paired_changes_against_the_base(study):
    arms, _, _ = study
    table = results_table(arms)
    assert list(table.index) == [scalpel.LABELS[a] for a in ARMS]
    expected = paired_difference(arms["grpo"].sorting_correct, arms["base"].sorting_correct)
    assert table.loc["GRPO", "sorting change"] == str(expected)
    assert table.loc["SFT-RS, q and k only", "trains"] == "q, k"
    assert table.loc["Base", "maths change"] == ""
    curves = scalpel.pass_k_curves(arms)
    assert list(curves["GRPO"].index) == [1, 2, 4, 8]
    assert list(scalpel.pass_k_changes(arms).columns) == ["pass@1", "pass@8"]
    assert (curves["Base"]["pass@k"].diff().dropna() >= 0).all()  # pass@k never falls with k


def _arm(arm: str, accuracy, sorting, gold, q: float, mlp: float) -> ScalpelArm:
    """A synthetic arm whose weights moved by ``q`` on q and k, ``mlp`` on the MLPs, 0.01 elsewhere."""
    changes = []
    for layer in range(6):
        for module in ("q", "k", "v", "o", "gate", "up", "down"):
            rel = q if module in ("q", "k") else mlp if module in MLP_TYPES else 0.01
            changes.append(
                dict(name=f"{module}{layer}", module=module, layer=layer, rel_change=rel, rms_change=rel,
                     delta_sq=rel**2, weight_sq=1.0, numel=1, step=10)
            )  # fmt: skip
    return ScalpelArm(
        arm, scalpel.LABELS[arm], "plan", list(TRAINS[arm]), 1, list(accuracy), [1], 1, list(gold), [True] * 40,
        list(sorting), {}, changes, Budget(0, 0, 10, 0.0, 0.0),
    )  # fmt: skip


def test_claims_follow_the_measured_direction():
    rng = np.random.default_rng(0)
    base_acc = rng.uniform(0, 0.4, 200)
    gold = -rng.uniform(0, 0.1, 40)
    arms = {
        "base": _arm("base", base_acc, [True] * 150 + [False] * 50, gold, 0, 0),
        # the paper's picture: SFT gains more, forgets more, moves q/k most and hits the MLPs
        "sft_rs": _arm("sft_rs", base_acc + 0.4, [True] * 90 + [False] * 110, gold - 0.5, 0.2, 0.15),
        "grpo": _arm("grpo", base_acc + 0.2, [True] * 148 + [False] * 52, gold - 0.01, 0.05, 0.01),
    }
    table = claims(arms)
    assert (table["reproduces"] == "yes").all(), table
    # the opposite picture: every claim fails
    arms["sft_rs"], arms["grpo"] = (
        _arm("sft_rs", base_acc + 0.1, [True] * 150 + [False] * 50, gold, 0.01, 0.01),
        _arm("grpo", base_acc + 0.3, [True] * 100 + [False] * 100, gold - 0.5, 0.05, 0.2),
    )
    table = claims(arms)
    assert (table["reproduces"] == "no").all(), table
    assert isinstance(table, pd.DataFrame) and "pocket model" in table.columns


def test_the_study_runs_from_the_command_line(study, capsys, monkeypatch):
    _, out, _ = study
    assert scalpel.main(["--fast", "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "SFT-RS, MLPs frozen" in printed and "reproduces" in printed


@pytest.mark.parametrize("mode", ["widget", "static"])
def test_the_weight_change_explorer_redraws_for_a_module_layer_and_checkpoint(study, mode, monkeypatch):
    from course_lib.weight_changes import group_change
    from course_lib.widgets import weight_change_explorer

    monkeypatch.setenv("COURSE_FIGURES", mode)
    arms, _, _ = study
    box = weight_change_explorer(list(arms.values()))  # the base has no changes: left out
    (module, layer, share), heatmaps, lines = box.children[0].children, box.children[1], box.children[2]
    assert len(heatmaps.data) == len(arms) - 1 and [t.name for t in lines.data] == [r.label for r in arms.values()][1:]
    module.value, layer.value = "down", 1
    grpo = arms["grpo"].final_changes()
    assert lines.data[1].y[-1] == pytest.approx(group_change(grpo, ["down"], [1]))  # GRPO's line, its last snapshot
    assert "down, layer 1" in lines.layout.title.text
    assert all(
        a.text.endswith(")") and "(step 2 of 2)" in a.text for a in heatmaps.layout.annotations if "GRPO" in a.text
    )
    share.value = 0.5  # GRPO (2 steps) at step 1; SFT (1 step) at its only record
    titles = [a.text for a in heatmaps.layout.annotations]
    assert "GRPO (step 1 of 2)" in titles and "SFT-RS (step 1 of 1)" in titles
    module.value = "embed"
    assert layer.disabled and "embed, all layers" in lines.layout.title.text
