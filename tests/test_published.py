"""The lessons' committed outputs (course_lib.publish): made in full mode from the code cells as they
are now, without errors, small enough to keep, and readable where no kernel runs (GitHub, nbviewer)."""

import base64
import os
import shutil

import nbformat
import pytest
from nbclient import NotebookClient

from course_lib import publish

LESSONS = publish.lessons()


@pytest.mark.parametrize("path", LESSONS, ids=[p.stem for p in LESSONS])
def test_committed_outputs_come_from_a_clean_full_run_of_the_current_cells(path):
    assert publish.problems(path) == []


def fake_png(figure: dict) -> bytes:
    """Stands in for kaleido: the bytes name the figure's first trace type."""
    return f"PNG of a {figure['data'][0]['type']}".encode()


def _decoded(output) -> str:
    return base64.b64decode(output["data"]["image/png"]).decode()


TINY_LESSON = [
    # a plain figure
    "import plotly.graph_objects as go, ipywidgets as w\n"
    "from IPython.display import display, clear_output\n"
    "go.Figure(go.Scatter(x=[1, 2, 3], y=[3, 1, 2], name='line')).show()",
    # an explorer: a slider and an Output that first shows a scatter, then a bar after the slider moved
    "out = w.Output()\n"
    "with out:\n"
    "    display(go.Figure(go.Scatter(x=[1], y=[1])))\n"
    "display(w.VBox([w.HBox([w.IntSlider(3)]), out]))",
    "with out:\n    clear_output(wait=True)\n    display(go.Figure(go.Bar(x=[1, 2], y=[2, 3])))",
    # a live curve drawn the static way, updated after it was shown
    "from course_lib.plots import live_figure\n"
    "live = live_figure(go.Figure(go.Scatter(x=[], y=[])))\n"
    "display(live)\n"
    "with live.batch_update():\n    live.data[0].x, live.data[0].y = [0, 1], [5, 6]\n"
    "live.figure.data[0].type",
    # a progress bar
    "from tqdm.auto import tqdm\nfor _ in tqdm(range(5), desc='steps'):\n    pass",
]


@pytest.fixture(scope="module")
def executed():
    """The tiny lesson above, run by a kernel with its widget state kept, as the publisher runs it."""
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(source) for source in TINY_LESSON]
    with publish.publishing_environment():  # static figures, as for a lesson
        NotebookClient(nb, timeout=120, kernel_name="python3", store_widget_state=True).execute()
    return nb


def test_a_static_page_gets_every_figure_as_an_image_and_each_widget_as_it_ended(executed):
    nb = nbformat.from_dict(executed)
    assert "widgets" in nb.metadata
    publish.make_static(nb, fake_png)
    assert "widgets" not in nb.metadata
    outputs = [o for c in nb.cells for o in c.outputs]
    assert not [o for o in outputs if publish.WIDGET_VIEW in o.get("data", {})]

    plain, explorer, live, progress = nb.cells[0].outputs, nb.cells[1].outputs, nb.cells[3].outputs, nb.cells[4].outputs
    assert _decoded(plain[0]) == "PNG of a scatter" and publish.PLOTLY in plain[0]["data"]  # interactive kept
    # the explorer: a note that it has controls, then what its Output showed last (the bar, not the scatter)
    assert explorer[0]["text"].strip() == publish.CONTROLS_NOTE
    assert [_decoded(o) for o in explorer[1:]] == ["PNG of a bar"]
    assert not nb.cells[2].outputs
    # the live curve: its figure after the update, and no controls note (it has none)
    figure = next(o for o in live if "image/png" in o.get("data", {}))
    assert figure["data"][publish.PLOTLY]["data"][0]["x"] == [0, 1]
    assert not [o for o in live if o.get("text", "").strip() == publish.CONTROLS_NOTE]
    # the progress bar: its last line as text
    assert [o["text"].split("[")[0].strip() for o in progress] == ["steps: 100% 5/5"]


def test_over_the_size_limit_the_largest_figures_keep_only_their_image(executed):
    nb = nbformat.from_dict(executed)
    nb.cells[0].source += "\n# a big figure"
    big = nb.cells[0].outputs[0]["data"][publish.PLOTLY]
    big["data"][0]["x"] = list(range(20_000))
    static = nbformat.from_dict(nb)
    publish.make_static(static, fake_png)  # fits the real limit: nothing dropped
    assert all(publish.PLOTLY in o["data"] for c in static.cells for o in c.outputs if "image/png" in o.get("data", {}))
    size = len(nbformat.writes(static))

    publish.make_static(nb, fake_png, limit=size - 50_000)
    first, *others = [o["data"] for c in nb.cells for o in c.outputs if "image/png" in o.get("data", {})]
    assert publish.PLOTLY not in first, "the largest figure loses its interactive copy first"
    assert all(publish.PLOTLY in data for data in others), "the smaller ones keep theirs: the notebook fits"
    assert len(nbformat.writes(nb)) <= size - 50_000


def _planted(tmp_path, plant) -> list[str]:
    """The problems found in a copy of lesson 03 with one fault planted."""
    nb = nbformat.read(LESSONS[3], as_version=4)
    plant(nb)
    path = tmp_path / LESSONS[3].name
    nbformat.write(nb, path)
    return publish.problems(path)


def _first_code(nb):
    return next(c for c in nb.cells if c.cell_type == "code" and c.outputs)


@pytest.mark.parametrize(
    "plant, says",
    [
        (lambda nb: nb.metadata["course"].pop("published"), "has no published outputs"),
        (lambda nb: nb.metadata["course"]["published"].update(mode="fast"), "not full"),
        (lambda nb: setattr(_first_code(nb), "source", _first_code(nb).source + "\nx = 1"), "code cells changed"),
        (
            lambda nb: _first_code(nb).outputs.append(nbformat.v4.new_output("error", ename="ValueError", evalue="x")),
            "ended in ValueError",
        ),
        (
            lambda nb: _first_code(nb).outputs.append(nbformat.v4.new_output("stream", text="pocket | fast mode\n")),
            "ran in fast mode",
        ),
        (
            lambda nb: _first_code(nb).outputs.append(
                nbformat.v4.new_output("display_data", data={publish.WIDGET_VIEW: {"model_id": "m"}})
            ),
            "keeps a widget",
        ),
        (
            lambda nb: _first_code(nb).outputs.append(
                nbformat.v4.new_output("display_data", data={publish.PLOTLY: {"data": [], "layout": {}}})
            ),
            "without its image",
        ),
        (lambda nb: setattr(_first_code(nb), "execution_count", None), "did not run"),
    ],
    ids=["unpublished", "fast-record", "edited", "error", "fast-print", "widget", "no-image", "not-run"],
)
def test_each_fault_in_committed_outputs_is_named(tmp_path, plant, says):
    assert publish.problems(LESSONS[3]) == []
    found = _planted(tmp_path, plant)
    assert len(found) == 1 and says in found[0], found


def test_moving_the_repository_does_not_call_for_publishing_again():
    nb = nbformat.read(LESSONS[3], as_version=4)
    setup = next(c for c in nb.cells if c.cell_type == "code" and "git" in c.source and "clone" in c.source)
    before = publish.code_hash(nb)
    setup.source = publish.GITHUB_ADDRESS.sub("https://github.com/someone-else/a-fork", setup.source)
    assert publish.code_hash(nb) == before
    setup.source += "\nprint(1)"
    assert publish.code_hash(nb) != before


def test_the_kernel_runs_in_full_mode_with_static_figures_and_the_environment_comes_back(monkeypatch):
    monkeypatch.setenv("COURSE_FAST", "1")
    monkeypatch.setenv("COURSE_FIGURES", "widget")
    with publish.publishing_environment():
        assert "COURSE_FAST" not in os.environ and os.environ["COURSE_FIGURES"] == "static"
    assert os.environ["COURSE_FAST"] == "1" and os.environ["COURSE_FIGURES"] == "widget"


@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian's chromium is missing (.ci/run installs it)")
def test_kaleido_draws_a_png_of_the_size_the_figure_asks_for():
    figure = {"data": [{"type": "bar", "x": [1, 2], "y": [3, 4]}], "layout": {"width": 640, "height": 320}}
    with publish.png_renderer() as render:
        png = render(figure)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert (int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")) == (640, 320)


def test_a_lesson_whose_cell_never_gets_a_reply_runs_again_then_gives_up(monkeypatch, capsys):
    """A lost kernel reply (twice in practice: nbclient waiting, the kernel idle) costs one more run, not an hour."""
    from nbclient.exceptions import CellTimeoutError

    from course_lib import publish as pub

    runs = []

    def flaky(path, render, cell_timeout):
        runs.append(cell_timeout)
        if len(runs) == 1:
            raise CellTimeoutError("Cell execution timed out")
        return {"seconds": 1.0, "bytes": 10}

    monkeypatch.setattr(pub, "publish", flaky)
    assert pub.publish_lesson("notebooks/04_grpo_math.ipynb", render=None) == {"seconds": 1.0, "bytes": 10}
    assert runs == [pub.CELL_TIMEOUT, pub.CELL_TIMEOUT]
    assert "04_grpo_math.ipynb: no reply within 900 s; running it again on a fresh kernel" in capsys.readouterr().out

    def stuck(path, render, cell_timeout):
        raise CellTimeoutError("Cell execution timed out")

    monkeypatch.setattr(pub, "publish", stuck)
    with pytest.raises(CellTimeoutError):
        pub.publish_lesson("notebooks/04_grpo_math.ipynb", render=None)
