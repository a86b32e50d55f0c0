"""The showdown (lesson 09): the plan's matched budgets, the end-to-end run in fast mode, resuming."""

import dataclasses
import json
import random

import pytest

from course_lib import showdown
from course_lib.__main__ import main
from course_lib.config import get_profile
from course_lib.report import ArmResult, load_report, report_name
from course_lib.rewards import TRELIS_SHAPED_REWARD
from course_lib.showdown import ARMS, plan_for
from course_lib.train import expert_iteration

FAST_METRICS = {"per_sample_accuracy", "pass@4", "maj@4", "consistency@4"}


# --------------------------------------------------------------------------- the plan


def test_pocket_plan_matches_the_generation_budget_of_every_arm():
    plan = plan_for(get_profile("pocket", fast=False))
    assert (plan.questions, plan.k, plan.n_eval) == (128, 8, 500)
    rs, orpo, grpo = plan.rs, plan.orpo, plan.grpo
    budgets = {
        rs.rounds * rs.questions_per_round * rs.k,
        orpo.questions * orpo.k,
        grpo.steps * grpo.prompts_per_step * grpo.group_size,
    }
    assert budgets == {plan.completions_per_arm} == {1024}
    assert rs.rounds == 1 and rs.epochs == 1 and orpo.epochs == 1
    assert grpo.reward == TRELIS_SHAPED_REWARD and grpo.beta > 0 and grpo.epsilon_low == 0.2
    assert rs.max_new_tokens == orpo.max_new_tokens == grpo.max_new_tokens


def test_gpu_plan_mirrors_trelis_and_takes_a_documented_subset():
    profile = get_profile("gpu", fast=False)
    plan = plan_for(profile)
    assert plan.questions == 7472 and plan.k == 8 and plan.n_eval == 1319  # 7,473 down to whole steps of 8
    assert plan.rs.rounds == 1 and plan.rs.max_per_question is None and plan.grpo.reward == TRELIS_SHAPED_REWARD
    subset = plan_for(profile, questions=1000, n_eval=500)
    assert (subset.questions, subset.grpo.steps, subset.n_eval) == (1000, 125, 500)
    with pytest.raises(ValueError, match="at least 8 training questions"):
        plan_for(profile, questions=5)


def test_the_fingerprint_changes_with_any_setting():
    plan = plan_for(get_profile("pocket", fast=True))
    assert plan.fingerprint() == plan_for(get_profile("pocket", fast=True)).fingerprint()
    other = dataclasses.replace(plan, orpo=dataclasses.replace(plan.orpo, beta=0.2))
    assert other.fingerprint() != plan.fingerprint()


def test_report_names_never_let_a_fast_run_overwrite_a_full_one():
    def name(profile, fast):
        return report_name(profile, fast)

    assert name("pocket", False) == "showdown"
    assert len({name("pocket", False), name("pocket", True), name("gpu", False), name("gpu", True)}) == 4


def test_unknown_profile_is_a_clear_error(capsys):
    assert main(["showdown", "--profile", "tpu", "--fast"]) == 2
    assert "Valid profiles" in capsys.readouterr().err


def test_missing_report_says_how_to_make_one(tmp_path):
    with pytest.raises(FileNotFoundError, match="course_lib showdown"):
        load_report(tmp_path / "showdown.json")


# --------------------------------------------------------------------------- end to end, fast mode


@pytest.fixture(scope="module")
def fast_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("showdown")
    assert main(["showdown", "--profile", "pocket", "--fast", "--out", str(out), "--quiet"]) == 0
    return out


def test_the_json_has_every_arm_and_metric(fast_run):
    report = json.loads((fast_run / "showdown-fast.json").read_text())
    assert list(report["arms"]) == list(ARMS) and set(report["changes"]) == set(ARMS[1:])
    n_eval = report["plan"]["n_eval"]
    for record in report["arms"].values():
        assert set(record["metrics"]) == FAST_METRICS == set(record["per_problem"])
        for metric, m in record["metrics"].items():
            assert 0 <= m["ci_low"] <= m["value"] <= m["ci_high"] <= 1
            assert len(record["per_problem"][metric]) == n_eval
            assert m["value"] == pytest.approx(sum(record["per_problem"][metric]) / n_eval)
        assert 0 <= record["facts"]["accuracy"] <= 1 and record["facts"]["n_items"] == 24
        assert set(record["format"]) == {"strict_format", "soft_format", "single_answer", "plain_number"}
    trained = [report["arms"][a]["budget"] for a in ARMS[1:]]
    assert {b["completions_generated"] for b in trained} == {report["plan"]["questions"] * report["plan"]["k"]}
    assert all(b["optimizer_steps"] >= 1 for b in trained)
    assert report["arms"]["grpo"]["history"] and "reward" in report["arms"]["grpo"]["history"][0]
    assert "loss" in report["arms"]["sft_rs"]["history"][0]


def test_changes_are_paired_differences_against_the_base(fast_run):
    report = json.loads((fast_run / "showdown-fast.json").read_text())
    base = report["arms"]["base"]["per_problem"]
    for arm, changes in report["changes"].items():
        for metric, c in changes.items():
            mine = report["arms"][arm]["per_problem"][metric]
            expected = 100 * sum(x - y for x, y in zip(mine, base[metric])) / len(mine)
            assert c["points"] == pytest.approx(expected)
            low, high = _paired_bootstrap(mine, base[metric])  # an independent, brute-force paired bootstrap
            tolerance = 0.5 + 0.2 * (high - low)  # two bootstraps with other random draws
            assert c["ci_low"] == pytest.approx(low, abs=tolerance)
            assert c["ci_high"] == pytest.approx(high, abs=tolerance)


def _paired_bootstrap(after, before, n_boot=5000, seed=123):
    """95 % percentile interval of the mean paired difference, in points: resample *problems*,
    each carrying both arms' values (so an unpaired interval, resampling each arm on its own, differs)."""
    rng = random.Random(seed)
    diffs = [100 * (a - b) for a, b in zip(after, before)]
    means = sorted(sum(rng.choice(diffs) for _ in diffs) / len(diffs) for _ in range(n_boot))
    return means[int(0.025 * n_boot)], means[int(0.975 * n_boot) - 1]


def test_markdown_and_html_reports_show_every_arm(fast_run):
    markdown = (fast_run / "showdown-fast.md").read_text()
    page = (fast_run / "showdown-fast.html").read_text()
    for label in showdown.LABELS.values():
        assert f"| {label} |" in markdown and f"<td>{label}</td>" in page
    assert "paired 95 % interval" in markdown
    assert page.count("Plotly.newPlot") == 4 and "plotly.js" in page.lower()  # script inlined: opens offline


def test_a_rerun_loads_every_finished_arm(fast_run, monkeypatch):
    def refuse(study):
        raise AssertionError("a finished arm was run again")

    monkeypatch.setattr(showdown, "RUNNERS", {arm: refuse for arm in ARMS})
    before = json.loads((fast_run / "showdown-fast.json").read_text())
    again = showdown.run_showdown(
        get_profile("pocket", fast=True),
        plan_for(get_profile("pocket", fast=True)),
        out_dir=fast_run,
        progress=False,
        log=lambda _: None,
    )
    assert again.resumed == list(ARMS)
    assert again.to_json()["arms"] == before["arms"]


def test_an_interrupted_run_redoes_only_the_missing_arm_with_the_same_numbers(fast_run, monkeypatch):
    profile = get_profile("pocket", fast=True)
    plan = plan_for(profile)
    first = json.loads((fast_run / "showdown-fast.json").read_text())
    (fast_run / "arms-pocket-fast" / "orpo.json").unlink()  # as if killed during ORPO

    def refuse(study):
        raise AssertionError("a finished arm was run again")

    def no_sampling(*args, **kwargs):
        raise AssertionError("the shared pool was sampled again instead of read from disk")

    monkeypatch.setattr(showdown, "RUNNERS", {**{arm: refuse for arm in ARMS}, "orpo": showdown.run_orpo})
    monkeypatch.setattr(expert_iteration, "sample_pool", no_sampling)  # where the shared pool is sampled
    again = showdown.run_showdown(profile, plan, out_dir=fast_run, progress=False, log=lambda _: None)
    assert again.resumed == ["base", "sft_rs", "grpo"]
    assert again.to_json()["arms"]["orpo"]["metrics"] == first["arms"]["orpo"]["metrics"]  # same seeds, same numbers
    assert (fast_run / "arms-pocket-fast" / "orpo.json").is_file()


def test_an_arm_saved_under_another_plan_is_not_reused(fast_run):
    profile = get_profile("pocket", fast=True)
    plan = plan_for(profile)
    other = dataclasses.replace(plan, grpo=dataclasses.replace(plan.grpo, learning_rate=1e-5))
    messages = []
    assert showdown.Showdown(profile, plan, fast_run, log=messages.append).load_arm("grpo") is not None
    assert showdown.Showdown(profile, other, fast_run, log=messages.append).load_arm("grpo") is None
    assert "other settings" in messages[-1]


def test_paired_table_counts_the_problems_where_arms_disagree(fast_run):
    from course_lib.analysis import paired_table
    from course_lib.widgets import paired_comparison

    report = load_report(fast_run / "showdown-fast.json")
    table = paired_table(report, "grpo", "base", "maj@4")
    assert table.to_numpy().sum() == report.n_eval
    grpo, base = report.arms["grpo"].per_problem["maj@4"], report.arms["base"].per_problem["maj@4"]
    assert table.iloc[0, 1] == sum(g == 1 and b == 0 for g, b in zip(grpo, base))
    assert "paired 95% interval" in paired_comparison(report).children[1].value


def test_fresh_runs_every_arm_and_samples_the_pool_again(fast_run, monkeypatch):
    profile = get_profile("pocket", fast=True)
    saved = {
        arm: ArmResult.from_json(json.loads((fast_run / "arms-pocket-fast" / f"{arm}.json").read_text()))
        for arm in ARMS
    }
    ran, sampled = [], []
    real_sample_pool = expert_iteration.sample_pool

    def counting_sample_pool(*args, **kwargs):
        sampled.append(1)
        return real_sample_pool(*args, **kwargs)

    def replay(arm):
        return lambda study: ran.append(arm) or saved[arm]

    monkeypatch.setattr(expert_iteration, "sample_pool", counting_sample_pool)
    monkeypatch.setattr(
        showdown,
        "RUNNERS",
        {**{arm: replay(arm) for arm in ARMS}, "orpo": lambda study: ran.append("orpo") or showdown.run_orpo(study)},
    )
    report = showdown.run_showdown(
        profile, plan_for(profile), out_dir=fast_run, fresh=True, progress=False, log=lambda _: None
    )
    assert ran == list(ARMS) and report.resumed == [] and sampled == [1]


def test_the_report_is_typed_and_survives_a_json_round_trip(fast_run):
    from course_lib.evaluation import Estimate, PairedChange
    from course_lib.report import Budget, StudyReport

    raw = json.loads((fast_run / "showdown-fast.json").read_text())
    report = StudyReport.from_json(raw)
    assert report.to_json() == raw  # nothing lost, nothing added
    assert StudyReport.from_json(json.loads(json.dumps(report.to_json()))) == report
    base, grpo = report.arms["base"], report.arms["grpo"]
    assert isinstance(base.metrics["maj@4"], Estimate) and isinstance(grpo.budget, Budget)
    change = report.changes["grpo"]["maj@4"]
    assert isinstance(change, PairedChange)
    assert str(change) == f"{change.points:+.1f} [{change.ci_low:+.1f}, {change.ci_high:+.1f}]"
    assert report.name == "showdown-fast" and report.n_eval == raw["plan"]["n_eval"]


def test_one_formatter_writes_every_paired_change(fast_run):
    from course_lib.report import changes_table, markdown_report

    report = load_report(fast_run / "showdown-fast.json")
    markdown, table = markdown_report(report), changes_table(report)
    for arm, changes in report.changes.items():
        for metric, change in changes.items():
            assert str(change) in markdown
            assert table.loc[report.arms[arm].label, metric] == str(change)


def test_between_arms_gives_every_pair_its_paired_change_and_the_behaviour_shares(fast_run):
    from course_lib.behaviours import BEHAVIOURS
    from course_lib.report import between_arms, markdown_report

    report = load_report(fast_run / "showdown-fast.json")
    table = between_arms(report)
    labels = [r.label for r in report.arms.values()]
    assert list(table.index) == labels and list(table.columns) == labels
    against_base = report.changes["grpo"]["per_sample_accuracy"]
    assert table.loc["GRPO", "Base"] == str(against_base)  # the same paired change as against the base
    grpo, sft = (report.arms[a].per_problem["per_sample_accuracy"] for a in ("grpo", "sft_rs"))
    assert float(table.loc["GRPO", "SFT-RS"].split()[0]) == pytest.approx(
        100 * sum(g - s for g, s in zip(grpo, sft)) / len(grpo), abs=0.05
    )
    assert float(table.loc["GRPO", "SFT-RS"].split()[0]) == pytest.approx(
        -float(table.loc["SFT-RS", "GRPO"].split()[0])
    )
    assert table.loc["GRPO", "GRPO"] == ""
    assert "## Between arms" in markdown_report(report)
    for r in report.arms.values():
        assert set(r.behaviours) == set(BEHAVIOURS) and sum(r.behaviours.values()) == pytest.approx(1.0)


def test_an_arm_whose_filter_keeps_nothing_is_the_base_untrained(fast_run, tmp_path, monkeypatch):
    """A weak model can leave no correct sample in the pool (SmolLM2 on 24 GSM8K questions x 4): SFT-RS
    and ORPO then train nothing, say so (0 rows, 0 steps), and carry the base's measurement."""
    import shutil

    profile = get_profile("pocket", fast=True)
    plan = plan_for(profile)
    shutil.copytree(fast_run / "arms-pocket-fast", tmp_path / "arms-pocket-fast")
    pool_path = tmp_path / "arms-pocket-fast" / "pool.json"
    pool = json.loads(pool_path.read_text())
    pool["correct"] = [[False] * len(c) for c in pool["correct"]]  # nothing right
    pool_path.write_text(json.dumps(pool))
    for arm in ("sft_rs", "orpo"):
        (tmp_path / "arms-pocket-fast" / f"{arm}.json").unlink()

    def refuse(*args, **kwargs):
        raise AssertionError("nothing passed the filter, so nothing may be trained or evaluated again")

    for name in ("sft_trainer", "orpo_trainer", "load_policy", "load_model"):
        monkeypatch.setattr(showdown, name, refuse)
    monkeypatch.setattr(expert_iteration, "load_model", refuse)  # the pool on disk is read, not sampled again
    report = showdown.run_showdown(profile, plan, out_dir=tmp_path, progress=False, log=lambda _: None)
    base = report.to_json()["arms"]["base"]
    for arm in ("sft_rs", "orpo"):
        record = report.to_json()["arms"][arm]
        assert record["metrics"] == base["metrics"] and record["per_problem"] == base["per_problem"]
        assert record["budget"]["sequences_trained_on"] == 0 and record["budget"]["optimizer_steps"] == 0
        assert record["budget"]["completions_generated"] == plan.completions_per_arm
    assert all(c.points == 0 for c in report.changes["sft_rs"].values())


def test_interval_widths_set_the_paired_width_beside_the_width_without_pairing(fast_run):
    from course_lib.report import interval_widths

    report = load_report(fast_run / "showdown-fast.json")
    widths = interval_widths(report)
    base, grpo = report.arms["base"].metrics, report.arms["grpo"].metrics
    for metric, m in grpo.items():
        own, base_own = m.ci_high - m.ci_low, base[metric].ci_high - base[metric].ci_low
        assert widths.loc["GRPO", (metric, "unpaired")] == pytest.approx(100 * (own**2 + base_own**2) ** 0.5, abs=0.06)
        change = report.changes["grpo"][metric]
        assert widths.loc["GRPO", (metric, "paired")] == pytest.approx(change.ci_high - change.ci_low, abs=0.06)
    assert list(widths.index) == [report.arms[a].label for a in report.changes]
