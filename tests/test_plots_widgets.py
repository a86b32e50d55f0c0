import math

import pandas as pd
import pytest

from course_lib import plots
from course_lib.widgets import render_samples


def test_render_samples_marks_right_and_wrong():
    html = render_samples({"question": "2 < 3?", "answer": "5"}, ["#### 5", "#### 4 <script>"])
    assert "1 of 2</b> samples are correct" in html
    assert "&lt;script&gt;" in html and "<script>" not in html  # model text is escaped
    assert html.count("&#10004;") == 1 and html.count("&#10008;") == 1


def test_metrics_bar_has_error_bars():
    summary = pd.DataFrame(
        {"value": [0.4, 0.8], "ci_low": [0.3, 0.7], "ci_high": [0.5, 0.9]}, index=["per_sample_accuracy", "pass@8"]
    )
    fig = plots.metrics_bar({"base": summary})
    assert list(fig.data[0].x) == ["per_sample_accuracy", "pass@8"]
    assert list(fig.data[0].error_y.array) == pytest.approx([0.1, 0.1])
    assert list(fig.data[0].error_y.arrayminus) == pytest.approx([0.1, 0.1])


def test_live_curves_append():
    fig = plots.training_curves(("loss", "acc"))
    plots.append_point(fig, {"step": 1, "loss": 2.0})
    plots.append_point(fig, {"step": 2, "loss": 1.5, "acc": 0.3})
    assert fig.data[0].y == (2.0, 1.5) and fig.data[1].x == (2,)


def test_sample_explorer_samples_on_creation_and_on_click(pocket):
    from course_lib.data import pocket_math
    from course_lib.widgets import sample_explorer

    model, tok = pocket
    problems = pocket_math.pocket_test_set(3)
    box = sample_explorer(model, tok, problems, max_new_tokens=40)
    output = box.children[-1]
    assert problems[0]["question"] in output.value and "samples are correct" in output.value
    index_slider, button = box.children[0].children[0], box.children[1].children[-1]
    index_slider.value = 2
    button.click()
    assert problems[2]["question"] in output.value


# ----------------------------------------------------------------- reward and advantage explorers
def test_reward_view_shows_every_term_and_the_gating():
    from course_lib.rewards import TRELIS_SHAPED_REWARD, RewardConfig
    from course_lib.widgets import reward_view

    hack = "work\n#### 13"
    seed = reward_view(hack, "14", TRELIS_SHAPED_REWARD)
    gated = reward_view(hack, "14", RewardConfig(correctness_weight=2.0, format_weight=1.0))
    assert "<td>13</td>" in seed and "+2.000" in seed and "not paid" not in seed
    assert "not paid: wrong answer" in gated and "<b>+0.000</b>" in gated
    assert "&lt;b&gt;" in reward_view("x", "<b>")  # typed text is escaped


def test_reward_explorer_reacts_to_its_controls():
    from course_lib.widgets import reward_explorer

    box = reward_explorer({"hack": ("work\n#### 13", "14"), "good": ("3+4=7\n7*2=14\n#### 14", "14")})
    pick, weights, (needs_correct, dotall), out = (
        box.children[0],
        box.children[3],
        box.children[4].children,
        box.children[5],
    )
    assert "not paid" in out.value  # default: gated
    needs_correct.value = False
    assert "<b>+2.000</b>" in out.value  # Trelis's shape: format paid to a wrong answer
    weights.label = "correctness only"
    assert "<b>+0.000</b>" in out.value
    weights.label = "Trelis-shaped (2 + 4 x 0.5)"
    pick.value = "good"
    assert "<b>+4.000</b>" in out.value
    dotall.value = False  # two lines of work: both layouts fail
    assert "<b>+3.000</b>" in out.value


def test_advantage_view_matches_group_advantages():
    from course_lib.advantages import group_advantages
    from course_lib.widgets import advantage_view

    fig = advantage_view([2.0, 0.0, 1.0, 1.0], scale="group")
    assert list(fig.data[0].y) == [2.0, 0.0, 1.0, 1.0]
    expected = group_advantages([2.0, 0.0, 1.0, 1.0], 4).advantages.tolist()
    assert list(fig.data[1].y) == pytest.approx(expected)
    # another group in the batch changes batch scaling, not group scaling
    alone = advantage_view([1.0, 0.0], scale="batch").data[1].y
    with_rest = advantage_view([1.0, 0.0], scale="batch", rest="an all-right group").data[1].y
    assert alone[0] != pytest.approx(with_rest[0]) and len(with_rest) == 4
    assert advantage_view([1.0, 0.0], rest="an all-right group").data[1].y[:2] == advantage_view([1.0, 0.0]).data[1].y
    assert "zero advantage" in advantage_view([1.0, 1.0, 1.0]).layout.title.text


def test_advantage_explorer_updates_live():
    from course_lib.widgets import advantage_explorer

    box = advantage_explorer()
    (size, _rest), _scale, (unbiased, _eps), grid, figure = (
        box.children[0].children,
        box.children[1],
        box.children[2].children,
        box.children[3],
        box.children[4],
    )
    assert len(figure.data[0].y) == 8
    size.value = 4
    assert len(figure.data[0].y) == 4 and grid.children[5].layout.display == "none"
    before = figure.data[1].y
    unbiased.value = False
    after = figure.data[1].y
    assert after[0] == pytest.approx(before[0] * (4 / 3) ** 0.5, rel=1e-3)
    grid.children[0].value = grid.children[1].value = grid.children[2].value = grid.children[3].value = 2.0
    assert all(a == 0 for a in figure.data[1].y) and "zero advantage" in figure.layout.title.text


def test_difficulty_weights_std_scaling_favours_the_extremes():
    fig = plots.difficulty_weights(8)
    grpo, dr_grpo = fig.data[0].y, fig.data[1].y
    assert grpo[0] == grpo[8] == 0 and dr_grpo[0] == dr_grpo[8] == 0  # all equal: no signal
    assert grpo[4] == dr_grpo[4] == 1.0  # relative to a half-right group
    assert grpo[1] > dr_grpo[1] and grpo[2] > dr_grpo[2]  # std scaling lifts the extremes
    assert grpo[1] == pytest.approx(grpo[7]) and dr_grpo[3] == pytest.approx(dr_grpo[5])


def test_component_shares():
    table = pd.DataFrame({"correct": [True, True, False], "a": [1, 0, 1], "b": [1, 1, 0]})
    fig = plots.component_shares(table, ("a", "b"))
    assert [list(t.y) for t in fig.data] == [[1.0, 0.0], [0.5, 1.0]]


def test_clip_objective_is_flat_exactly_on_the_profitable_side():
    fig = plots.clip_objective(0.2, 0.28)
    for col, trace_offset in ((1, 0), (2, 3)):
        _r, surrogate = fig.data[trace_offset + 1].x, fig.data[trace_offset + 1].y
        flat_r = fig.data[trace_offset + 2].x
        if col == 1:  # A > 0: flat above 1 + eps_high only
            assert min(flat_r) > 1.28 and surrogate[-1] == pytest.approx(1.28)
        else:  # A < 0: flat below 1 - eps_low only; the unclipped side keeps falling
            assert max(flat_r) < 0.8 and surrogate[-1] == pytest.approx(-2.0)


def test_token_weights_by_aggregation():
    fig = plots.token_weights([10, 30], max_completion_length=50)
    grpo, dapo, dr = (list(t.y) for t in fig.data)
    assert grpo == pytest.approx([1 / 20, 1 / 60]) and dapo == pytest.approx([1 / 40, 1 / 40])
    assert dr == pytest.approx([1 / 100, 1 / 100])


def test_live_curves_and_clip_explorer():
    curves = plots.LiveCurves(("reward", "kl", "loss", "entropy"), cols=3)
    curves({"step": 1, "reward": 0.5, "loss": 0.1})
    curves({"step": 2, "reward": 0.7, "kl": 0.01})
    assert curves.values("reward") == [0.5, 0.7] and curves.values("kl") == [0.01]
    assert curves.figure.layout.height > 320  # 4 keys at 3 per row: two rows

    from course_lib.widgets import clip_explorer

    box = clip_explorer()
    (_low, high), figure = box.children[0].children, box.children[1]
    high.value = 0.4
    assert "ε_high = 0.4" in figure.layout.title.text
    assert min(figure.data[2].x) > 1.4


def test_odds_grow_without_bound_while_the_probability_ratio_saturates():
    fig = plots.odds_vs_probability(0.5)
    prob_ratio, odds_ratio, penalty = (list(t.y) for t in fig.data)
    assert max(prob_ratio) == pytest.approx(math.log(0.99 / 0.5))  # at most log(1 / p_l)
    assert max(odds_ratio) == pytest.approx(math.log(99))  # odds(0.99) / odds(0.5)
    assert penalty[0] > math.log(2) > penalty[-1]  # -log sigma(z): log 2 where p_w = p_l


def test_orpo_pair_view_and_its_explorer():
    from course_lib.widgets import odds_explorer, orpo_pair_view

    v = orpo_pair_view(0.75, 0.5, beta=0.2)
    assert v["log_odds_ratio"] == pytest.approx(math.log(3), rel=1e-6)
    assert v["or_loss"] == pytest.approx(math.log1p(1 / 3), rel=1e-6)
    # d(beta L_OR)/d(log p_w) = -beta sigma(-z) / (1 - p_w): the 1 / (1 - p) of the odds
    assert v["grad_logp_chosen"] == pytest.approx(-0.2 * 0.25 / 0.25, rel=1e-5)
    with pytest.raises(ValueError, match="strictly between"):
        orpo_pair_view(1.0, 0.5)
    box = odds_explorer()
    (_p_w, p_l, _beta), readout, figure = box.children[0].children, box.children[1], box.children[2]
    p_l.value = 0.2
    assert max(figure.data[0].y) == pytest.approx(math.log(0.99 / 0.2))
    assert "L_OR" in readout.value


def test_yield_per_round_draws_each_run():
    import pandas as pd

    table = pd.DataFrame({"solved_share": [0.8, 0.9], "correct_share": [0.4, 0.5], "kept": [120, 150]}, index=[1, 2])
    fig = plots.yield_per_round({"self": table, "teacher": table})
    assert len(fig.data) == 6 and list(fig.data[2].y) == [120, 150]


def test_the_kl_explorer_redraws_the_three_estimators_at_the_new_shift():
    from course_lib.analysis import kl_estimator_samples
    from course_lib.widgets import kl_explorer

    box = kl_explorer()
    shift, figure = box.children
    before = list(figure.data[2].y)
    shift.value = 2.0
    expected = kl_estimator_samples(2.0)
    assert f"exact KL {expected['exact']:.3f}" in figure.layout.title.text and "shift 2.00" in figure.layout.title.text
    assert list(figure.data[2].y) != before and min(figure.data[2].y) >= 0  # k3 never negative
    assert min(figure.data[0].y) < 0  # k1 is, on some tokens
    assert abs(float(expected["k3"].mean()) - expected["exact"]) < 0.1 * expected["exact"] + 0.02  # unbiased


def test_the_yield_explorer_counts_what_the_filter_keeps():
    from course_lib.train.rejection_sampling import SampledPool, sft_records
    from course_lib.widgets import yield_explorer

    pool = SampledPool(
        [{"question": "q1"}, {"question": "q2"}],
        ["p1", "p2"],
        [["a", "a", "b", "c"], ["x", "y", "y", "z"]],
        [[True, True, True, False], [False, True, True, True]],
    )
    box = yield_explorer(pool)
    (k, dedup, cap), out = box.children[0].children, box.children[1]

    def kept() -> str:
        return out.value.split("rows kept for SFT</td><td><b>")[1].split("<")[0]

    assert kept() == "4"  # dedup, no cap: a, b, y, z
    cap.value = 1
    assert kept() == "2" == str(len(sft_records(pool, dedup=True, max_per_question=1)))
    cap.value, dedup.value = 0, False
    assert kept() == "6"  # every correct sample
    k.value = 1
    assert "1 of 2" in out.value and kept() == "1"  # with one sample per question only q1 is solved


def test_the_aggregation_explorer_shows_the_length_bias_of_each_loss_type():
    from course_lib.widgets import aggregation_explorer

    box = aggregation_explorer(max_completion_length=100)
    (short, long), figure, out = box.children[0].children, box.children[1], box.children[2]
    short.value, long.value = 10, 40
    grpo, dapo, _dr = (list(t.y) for t in figure.data)
    assert grpo == pytest.approx([1 / 20, 1 / 80]) and dapo == pytest.approx([1 / 50, 1 / 50])
    ratios = [cell.split("</b>")[0] for cell in out.value.split("<b>")[1:]]
    assert ratios == ["1.00", "4.00", "4.00"]  # grpo: the same total push whatever the length; token-level: 4x


@pytest.mark.parametrize("mode", ["widget", "static"])
def test_explorers_and_live_curves_redraw_in_both_figure_modes(mode, monkeypatch):
    """Where a front end cannot show a FigureWidget (Colab, VS Code), figures re-draw into an Output."""
    import plotly.graph_objects as go

    from course_lib.widgets import clip_explorer

    monkeypatch.setenv("COURSE_FIGURES", mode)
    box = clip_explorer()
    (_low, high), figure = box.children[0].children, box.children[1]
    assert isinstance(figure, go.FigureWidget if mode == "widget" else plots.StaticFigure)
    draws = getattr(figure, "draws", 0)
    high.value = 0.4
    assert "ε_high = 0.4" in figure.layout.title.text and min(figure.data[2].x) > 1.4
    if mode == "static":
        assert figure.draws == draws + 1  # drawn again, once, for the one change
    curves = plots.LiveCurves(("reward", "loss"))
    curves({"step": 1, "reward": 0.5, "loss": 0.1})
    curves({"step": 2, "reward": 0.7})
    assert curves.values("reward") == [0.5, 0.7] and curves.values("loss") == [0.1]
    assert isinstance(curves.figure, go.FigureWidget if mode == "widget" else plots.StaticFigure)


def test_the_figure_mode_is_chosen_by_the_front_end_and_can_be_forced(monkeypatch):
    import sys

    monkeypatch.delenv("COURSE_FIGURES", raising=False)
    monkeypatch.delenv("VSCODE_PID", raising=False)
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    assert plots.figure_mode() == "widget"
    monkeypatch.setitem(sys.modules, "google.colab", object())
    assert plots.figure_mode() == "static"  # Colab does not render FigureWidget
    monkeypatch.setenv("COURSE_FIGURES", "widget")
    assert plots.figure_mode() == "widget"
    monkeypatch.setenv("COURSE_FIGURES", "svg")
    with pytest.raises(ValueError, match="COURSE_FIGURES"):
        plots.figure_mode()
