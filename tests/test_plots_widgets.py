import pandas as pd
import pytest

from course_lib import plots
from course_lib.widgets import render_samples


def test_render_samples_marks_right_and_wrong():
    html = render_samples({"question": "2 < 3?", "answer": "5"}, ["#### 5", "#### 4 <script>"])
    assert "1 of 2</b> samples are correct" in html
    assert "&lt;script&gt;" in html and "<script>" not in html   # model text is escaped
    assert html.count("&#10004;") == 1 and html.count("&#10008;") == 1


def test_metrics_bar_has_error_bars():
    summary = pd.DataFrame({"value": [0.4, 0.8], "ci_low": [0.3, 0.7], "ci_high": [0.5, 0.9]},
                           index=["per_sample_accuracy", "pass@8"])
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
