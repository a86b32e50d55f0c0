"""The GRPO dashboard: healthy bands, diagnosis, the figure (saved and live), run logs on disk."""

import json

import pytest

from course_lib.monitoring import (
    DASHBOARD_KEYS,
    LiveDashboard,
    dashboard,
    diagnose,
    healthy_bands,
    load_history,
    save_history,
)
from course_lib.train.grpo import GRPOSettings


def _run(steps: int = 6, **changes) -> list[dict]:
    """A synthetic healthy log, with ``changes`` (metric -> value) from step 4 on."""
    rows = []
    for step in range(1, steps + 1):
        row = dict(step=step, reward=0.3 + 0.1 * step, reward_std=0.4, accuracy=0.3 + 0.1 * step, frac_zero_std=0.2,
                   advantage_mean=0.0, advantage_std=0.9, entropy=0.8, kl=0.01, grad_norm=2.0, loss=0.0,
                   completion_length=60.0, **{"clip_ratio/region": 0.0})  # fmt: skip
        rows.append({**row, **(changes if step >= 4 else {})})
    return rows


def test_a_healthy_log_is_healthy_and_each_failure_is_named_with_what_to_try():
    bands = healthy_bands(GRPOSettings(beta=0.04, max_new_tokens=160))
    assert diagnose(_run(), bands)["healthy"].all()
    stalled = diagnose(_run(frac_zero_std=0.9, reward_std=0.01), bands)
    assert not stalled.loc["frac_zero_std", "healthy"] and "dynamic sampling" in stalled.loc["frac_zero_std", "try"]
    assert not stalled.loc["reward_std", "healthy"] and stalled.loc["entropy", "healthy"]
    exploding = diagnose(_run(entropy=5.0, grad_norm=500.0), bands)  # entropy 6x its start
    assert set(exploding.index[~exploding["healthy"]]) == {"entropy", "grad_norm"}
    sharper = diagnose(_run(entropy=0.01), bands)  # far below its start, while accuracy climbs: fine
    assert sharper.loc["entropy", "healthy"] and sharper.loc["entropy", "high"] == pytest.approx(3 * 0.8)
    truncated = diagnose(_run(completion_length=159.0), bands)
    assert "budget of 160" in truncated.loc["completion_length", "means"]
    assert "kl" in bands and "kl" not in healthy_bands(GRPOSettings(beta=0.0))  # no reference, no KL to watch
    assert diagnose(_run(kl=float("nan")), bands).loc["kl", "healthy"]  # not logged: nothing to judge
    with pytest.raises(ValueError, match="no logged steps"):
        diagnose([], bands)


def test_flat_groups_are_read_by_accuracy_solved_stalled_or_collapsed():
    solved = diagnose(_run(frac_zero_std=0.9, accuracy=0.97))
    assert solved.loc["frac_zero_std", "healthy"] and "solved" in solved.loc["frac_zero_std", "means"]
    collapsed = diagnose(_run(frac_zero_std=1.0, reward_std=0.0, accuracy=0.0, reward=0.0))
    assert not collapsed.loc["frac_zero_std", "healthy"] and "collapsed" in collapsed.loc["frac_zero_std", "means"]
    assert not collapsed.loc["reward_change", "healthy"]  # the reward fell from its start: getting worse
    assert diagnose(_run()).loc["reward_change", "value"] > 0


def test_only_the_last_steps_are_judged():
    early_trouble = [{**r, "frac_zero_std": 0.9} for r in _run(steps=8)[:4]] + _run(steps=8)[4:]
    assert diagnose(early_trouble, last=3)["healthy"].all()
    assert not diagnose(early_trouble, last=8).loc["frac_zero_std", "healthy"]


def test_the_dashboard_draws_every_run_in_every_panel_with_the_bands_shaded():
    fig = dashboard({"healthy": _run(), "stalled": _run(frac_zero_std=0.9)})
    titles = [a.text for a in fig.layout.annotations]
    assert titles == list(DASHBOARD_KEYS)
    assert len(fig.data) == 2 * len(DASHBOARD_KEYS)
    assert {t.name for t in fig.data} == {"healthy", "stalled"}
    banded = [k for k in DASHBOARD_KEYS if k in healthy_bands()]
    assert len(fig.layout.shapes) == len(banded)
    only = dashboard(_run(), keys=("reward", "entropy", "not_logged"))
    assert [a.text for a in only.layout.annotations] == ["reward", "entropy"]
    with pytest.raises(ValueError, match="none of the dashboard"):
        dashboard([{"step": 1, "other": 0.0}])


@pytest.mark.parametrize("mode", ["widget", "static"])
def test_the_live_dashboard_grows_with_each_step(mode, monkeypatch):
    monkeypatch.setenv("COURSE_FIGURES", mode)
    live = LiveDashboard(GRPOSettings(), keys=("reward", "frac_zero_std"))
    for row in _run(steps=3):
        live(row)
    assert [list(t.y) for t in live.figure.data] == [[r["reward"] for r in _run(3)], [0.2, 0.2, 0.2]]
    assert live.diagnose()["healthy"].all()
    everything = LiveDashboard(GRPOSettings(beta=0.0))  # every panel but the KL, which beta = 0 never logs
    assert "kl" not in everything.keys and len(everything.figure.data) == len(DASHBOARD_KEYS) - 1
    everything({"step": 1, "reward": 0.5})  # a row without most of the panels' metrics
    assert [t.y for t in everything.figure.data if t.name == "reward"] == [(0.5,)]


def test_a_saved_log_reads_back_and_a_broken_line_is_named(tmp_path):
    path = save_history(_run(), tmp_path / "run.jsonl")
    back = load_history(path)
    assert back.to_dict("records") == _run()
    path.write_text(path.read_text() + "{not json\n")
    with pytest.raises(ValueError, match="line 7"):
        load_history(path)
    with pytest.raises(FileNotFoundError, match="save_history"):
        load_history(tmp_path / "missing.jsonl")
    assert json.loads(save_history([{"step": 1, "text": "x", "reward": 1.0}], tmp_path / "r.jsonl").read_text()) == {
        "step": 1,
        "reward": 1.0,
    }  # numbers only


def test_a_real_grpo_log_has_every_dashboard_metric(pocket):
    from course_lib.data import pocket_math
    from course_lib.train.grpo import GRPOLoop

    model, tok = pocket
    settings = GRPOSettings(steps=1, prompts_per_step=2, group_size=2, max_new_tokens=24, beta=0.04)
    loop = GRPOLoop(model, tok, pocket_math.pocket_test_set(2), settings)
    loop.train(progress=False)
    assert set(DASHBOARD_KEYS) <= set(loop.history[0])
    assert 0 < loop.history[0]["entropy"] < 6.3  # the whole distribution's entropy: at most log(512)


def test_the_example_runs_differ_from_the_recipe_in_one_thing_each():
    from course_lib.config import get_profile
    from course_lib.monitoring import COLLAPSE_LR_FACTOR, example_runs

    runs = example_runs(get_profile("pocket", fast=False))
    healthy, collapsing, stalled = runs["healthy"], runs["collapsing"], runs["stalled"]
    assert collapsing.settings.learning_rate == COLLAPSE_LR_FACTOR * healthy.settings.learning_rate
    assert collapsing.problems == healthy.problems and stalled.settings == healthy.settings
    assert min(p["n_steps"] for p in stalled.problems) >= 6 > max(p["n_steps"] for p in healthy.problems)


def test_our_loop_logs_to_trackio_and_the_dashboard_reads_it_back(pocket):
    from course_lib.data import pocket_math
    from course_lib.monitoring import TrackioLog, load_trackio
    from course_lib.train.grpo import GRPOLoop

    model, tok = pocket
    settings = GRPOSettings(steps=2, prompts_per_step=2, group_size=2, max_new_tokens=24)
    loop = GRPOLoop(model, tok, pocket_math.pocket_test_set(4), settings)
    with TrackioLog("course-tests", "our-loop", settings) as log:
        loop.train(callbacks=[log], progress=False)
    back = load_trackio("course-tests", "our-loop")
    assert list(back["step"]) == [1, 2]
    for key in ("reward", "accuracy", "entropy", "frac_zero_std", "grad_norm"):
        assert back[key].tolist() == pytest.approx([row[key] for row in loop.history]), key
    assert len(dashboard({"our loop": back}).data) > 0
    with pytest.raises(ValueError, match="its runs: our-loop"):
        load_trackio("course-tests", "no-such-run")
    with TrackioLog("course-tests", "our-loop") as again:  # a second run of that name gets a name of its own
        again({"step": 1, "reward": 7.0})
    assert again.name == "our-loop-2" and load_trackio("course-tests", "our-loop-2")["reward"].tolist() == [7.0]
    assert load_trackio("course-tests", "our-loop")["reward"].tolist() == back["reward"].tolist()
    with pytest.raises(FileNotFoundError, match="log a run first"):
        load_trackio("no-such-project", "x")


def test_a_trl_run_logs_to_trackio_with_trls_report_to_and_reads_back_in_our_names(tmp_path):
    from course_lib.config import get_profile
    from course_lib.data import train_problems
    from course_lib.models import load_policy, lora_config
    from course_lib.monitoring import load_trackio, trackio_arguments
    from course_lib.rewards import RewardConfig
    from course_lib.train.grpo_trl import grpo_trainer

    profile = get_profile("pocket")
    model, tokenizer = load_policy(profile, lora=lora_config())
    spread = RewardConfig(length_weight=1.0, max_length=32, length_buffer=30)  # rewards that differ in a group
    settings = GRPOSettings(steps=2, prompts_per_step=2, group_size=4, max_new_tokens=32, learning_rate=1e-3,
                            temperature=2.0, reward=spread)  # fmt: skip
    trainer = grpo_trainer(profile, model, tokenizer, train_problems(profile, 4, max_steps=2), tmp_path, settings,
                           disable_tqdm=True, logging_steps=1, **trackio_arguments("course-tests", "trl"))  # fmt: skip
    trainer.train()
    back = load_trackio("course-tests", "trl")
    assert list(back["step"]) == [1, 2]  # the trainer's global steps
    logged = [row for row in trainer.state.log_history if "reward" in row]
    assert back["reward"].tolist() == pytest.approx([row["reward"] for row in logged])
    assert {"accuracy", "frac_zero_std", "completion_length", "entropy"} <= set(back)  # TRL's names, mapped
    assert len(dashboard({"TRL": back}).data) > 0


def test_before_and_after_a_fix_reads_the_last_steps_of_both_runs():
    from course_lib.monitoring import compare_runs

    histories = {"broken": _run(accuracy=0.1), "fixed": _run()}
    table = compare_runs(histories, [("a case", "broken", "fixed")], keys=("accuracy", "frac_zero_std"))
    assert table.loc["a case", "accuracy before"] == pytest.approx(0.1)
    assert table.loc["a case", "accuracy after"] == pytest.approx(sum(0.3 + 0.1 * s for s in (4, 5, 6)) / 3)
    assert table.loc["a case", "before"] == "broken" and table.loc["a case", "after"] == "fixed"


def test_accuracy_falling_with_the_reward_is_a_collapse_not_a_hack():
    collapse = [{"step": s, "reward": 0.4 - 0.05 * s, "accuracy": 0.4 - 0.05 * s, "frac_zero_std": 0.3 + 0.1 * s}
                for s in range(1, 8)]  # fmt: skip
    verdict = diagnose(collapse)
    assert (
        not verdict.loc["accuracy_change", "healthy"]
        and "reward hacking" not in verdict.loc["accuracy_change", "means"]
    )
    assert "reward fell with it" in verdict.loc["accuracy_change", "means"]
    hack = [{**row, "reward": 3.0 + 0.1 * row["step"]} for row in collapse]
    verdict = diagnose(hack)
    assert "reward hacking" in verdict.loc["accuracy_change", "means"]
    assert "settled on what the reward pays for" in verdict.loc["frac_zero_std", "means"]
    assert verdict.loc["accuracy_change", "start"] == pytest.approx(0.0)  # a change is read against its own first steps
