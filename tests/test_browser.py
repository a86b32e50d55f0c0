"""A real browser: JupyterLab started here, headless Chromium (Debian's package) driven by Playwright.

Where ``tests/test_notebooks.py`` shows that every lesson runs, these show that what a learner sees in
the browser works: the widgets render, moving a slider redraws the plot it drives, and live curves
grow while training runs, with both ways of drawing a live figure (``COURSE_FIGURES``: ``widget``, a
plotly ``FigureWidget``; ``static``, a plain figure re-drawn in an ``ipywidgets.Output``).

Every wait waits on the thing it checks (a kernel idle, a cell's execution count, a plot's data),
never on a fixed sleep. Screenshots go to ``$COURSE_ARTIFACTS`` (default ``build/browser/``).
Setup where the browser is missing: ``apt-get install chromium`` (``.ci/run`` does it) and the pinned
``playwright`` from requirements.txt; Playwright's own browser download is not used.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import nbformat
import pytest

from course_lib.advantages import group_advantages

REPO = Path(__file__).resolve().parents[1]
LESSONS = REPO / "notebooks"
ARTIFACTS = Path(os.environ.get("COURSE_ARTIFACTS", REPO / "build" / "browser"))
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# As root in a container Chromium needs --no-sandbox; the rest keep it off this machine's closed network.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# JupyterLab user settings for the test: every cell in the page (no windowed rendering, so a cell's
# output can be found by its position), and no news or update pop-ups over the notebook.
LAB_SETTINGS = {
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {
        "fetchNews": "false",
        "checkForUpdates": False,
    },
}
STARTUP_S = 120  # JupyterLab's server answering, the page loaded, a kernel idle
LESSON_S = 900  # a whole lesson in fast mode (the same limit as tests/test_notebooks.py)
REDRAW_S = 60  # a slider moved -> the plot redrawn

pytestmark = pytest.mark.browser


def _require_browser() -> None:
    """Skip where the browser is not installed, except in CI, where a missing browser is a failure."""
    missing = []
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing.append("the playwright package (pip install -r requirements.txt)")
    if not Path(CHROMIUM).is_file():
        missing.append("Debian's chromium (apt-get install chromium)")
    if missing:
        reason = "the browser tests need " + " and ".join(missing)
        if os.environ.get("CI"):
            pytest.fail(reason + "; .ci/run installs both, so CI must not get here")
        pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Lab:
    """A running JupyterLab: its address, token and the folder it serves (copies of the lessons)."""

    url: str
    token: str
    root: Path
    log: Path
    figures: str  # what its kernels draw live figures with: COURSE_FIGURES

    def open_url(self, name: str) -> str:
        """The notebook in a workspace of its own, reset: JupyterLab restores no tab of an earlier page."""
        workspace = Path(name).stem.replace("_", "-")
        return f"{self.url}/lab/workspaces/{workspace}/tree/{name}?reset&token={self.token}"


def _start_lab(tmp: Path, figures: str) -> Iterator[Lab]:
    """JupyterLab on 127.0.0.1 with a token, its kernels in fast mode with ``COURSE_FIGURES=figures``."""
    root, settings, home = tmp / "root", tmp / "settings", tmp / "jupyter"
    root.mkdir()
    for name, values in LAB_SETTINGS.items():
        path = settings / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))
    port, token, log = _free_port(), "course-browser-test", tmp / "jupyterlab.log"
    env = dict(
        os.environ,
        COURSE_FAST="1",
        COURSE_FIGURES=figures,
        HF_HUB_OFFLINE="1",
        OMP_NUM_THREADS="2",
        JUPYTERLAB_SETTINGS_DIR=str(settings),
        JUPYTER_CONFIG_DIR=str(home / "config"),
        JUPYTER_RUNTIME_DIR=str(home / "runtime"),
        JUPYTER_DATA_DIR=str(home / "data"),
    )
    command = [
        str(Path(sys.executable).with_name("jupyter")),
        "lab",
        "--no-browser",
        "--allow-root",
        "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.port={port}",
        "--ServerApp.port_retries=0",
        f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={root}",
        "--LabApp.expose_app_in_browser=True",  # window.jupyterapp: run cells and read their state
    ]
    with open(log, "w") as out:
        server = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_S
        while True:
            if server.poll() is not None:
                pytest.fail(f"JupyterLab exited with code {server.returncode}:\n{log.read_text()[-3000:]}")
            try:
                urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2)
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"JupyterLab did not answer within {STARTUP_S} s:\n{log.read_text()[-3000:]}")
                time.sleep(0.2)  # poll interval of the wait on the server's answer
        yield Lab(url, token, root, log, figures)
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()


@pytest.fixture(scope="module")
def chromium():
    _require_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def labs(tmp_path_factory, chromium) -> Iterator[Callable[[str], Lab]]:
    """``labs(figures)``: a JupyterLab whose kernels draw live figures that way, started on first use
    and shared by the module's tests; all stopped at the end."""
    with contextlib.ExitStack() as stack:
        started: dict[str, Lab] = {}

        def get(figures: str) -> Lab:
            if figures not in started:
                folder = tmp_path_factory.mktemp(f"lab-{figures}")
                started[figures] = stack.enter_context(contextlib.contextmanager(_start_lab)(folder, figures))
            return started[figures]

        yield get


# --- the notebook, read through JupyterLab's own objects (window.jupyterapp) -----------------------

NOTEBOOK_READY = """(name) => {
  const app = window.jupyterapp, panel = app && app.shell.currentWidget;
  const kernel = panel && panel.context && panel.context.isReady && panel.context.path === name && panel.sessionContext
    && panel.sessionContext.session && panel.sessionContext.session.kernel;
  return !!(kernel && kernel.status === 'idle' && panel.content.widgets.length);
}"""

# Done when every code cell up to `last` has run and the kernel is idle, or as soon as one has failed.
CELLS_DONE = """(last) => {
  const panel = window.jupyterapp.shell.currentWidget, cells = panel.content.widgets.slice(0, last + 1);
  for (const [i, cell] of cells.entries()) {
    if (cell.model.type !== 'code') continue;
    const error = cell.model.outputs.toJSON().find(o => o.output_type === 'error');
    if (error) return {failed: i, error: error.ename + ': ' + error.evalue};
  }
  const ran = cells.every(c => c.model.type !== 'code' || c.model.executionCount !== null);
  return ran && panel.sessionContext.session.kernel.status === 'idle' ? {failed: null} : null;
}"""

FIND_CELL = """(needle) => {
  const cells = window.jupyterapp.shell.currentWidget.content.widgets;
  const i = cells.findIndex(c => c.model.type === 'code' && c.model.sharedModel.getSource().includes(needle));
  if (i >= 0) cells[i].node.setAttribute('data-course-test', needle);
  return i;
}"""


def open_lesson(page, lab: Lab, lesson: str) -> None:
    """Copy a lesson into the served folder (so the run never writes into the repository), without
    its published outputs (a cell that shows saved outputs would look as if it had run), and open it."""
    nb = nbformat.read(LESSONS / lesson, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    nbformat.write(nb, lab.root / lesson)
    page.goto(lab.open_url(lesson))
    page.wait_for_function(NOTEBOOK_READY, arg=lesson, timeout=STARTUP_S * 1000)


def find_cell(page, needle: str):
    """The code cell whose source contains ``needle``: (its index, a locator for its node)."""
    index = page.evaluate(FIND_CELL, needle)
    assert index >= 0, f"no code cell contains {needle!r}: did the lesson change?"
    return index, page.locator(f'[data-course-test="{needle}"]')


def run_cells(page, last: int | None = None) -> None:
    """Run every cell (or those up to index ``last``) as a learner's "Run All" does; fail on an error."""
    if last is None:
        page.evaluate("window.jupyterapp.commands.execute('notebook:run-all-cells')")
        last = page.evaluate("window.jupyterapp.shell.currentWidget.content.widgets.length - 1")
    else:
        page.evaluate(
            """(last) => { window.jupyterapp.shell.currentWidget.content.activeCellIndex = last;
                           return window.jupyterapp.commands.execute('notebook:run-all-above'); }""",
            last,
        )
        start_cell(page, last)
    wait_for_cells(page, last)


def start_cell(page, index: int) -> None:
    """Queue the cell at ``index`` for the kernel, without waiting for it."""
    page.evaluate(
        """(i) => { window.jupyterapp.shell.currentWidget.content.activeCellIndex = i;
                    window.jupyterapp.commands.execute('notebook:run-cell'); }""",
        index,
    )


def wait_for_cells(page, last: int) -> None:
    """Wait until the cells up to index ``last`` have run and the kernel is idle; fail on an error."""
    result = page.wait_for_function(CELLS_DONE, arg=last, timeout=LESSON_S * 1000, polling=500).json_value()
    assert result["failed"] is None, f"cell {result['failed']} failed in the browser: {result['error']}"


def plot_data(cell) -> list[dict]:
    """The traces the browser's plotly.js draws in a cell's first plot (its x and y)."""
    return cell.locator(".js-plotly-plot").first.evaluate(
        "el => el.data.map(t => ({name: t.name, x: Array.from(t.x || []), y: Array.from(t.y || [])}))"
    )


def screenshot(element, name: str) -> Path:
    """A PNG of ``element`` (scrolled into view: JupyterLab scrolls inside its own panel, so a
    full-page screenshot would show only what is in the window) under ``ARTIFACTS``."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    element.scroll_into_view_if_needed()
    element.screenshot(path=path)
    return path


def assert_drawn_by(cell, figures: str) -> None:
    """A static figure sits inside an ``ipywidgets.Output``; a ``FigureWidget`` is a widget of its own."""
    in_output = cell.locator(".widget-output .js-plotly-plot").count()
    if figures == "static":
        assert in_output == 1, "COURSE_FIGURES=static: the plot must be drawn inside an ipywidgets.Output"
    else:
        assert in_output == 0, "COURSE_FIGURES=widget: the plot must be a FigureWidget, not an Output"


# --- the tests ------------------------------------------------------------------------------------


@pytest.mark.parametrize("figures", ["widget", "static"])
def test_advantage_explorer_slider_redraws_the_plot(chromium, labs, figures):
    """Lesson 03 run top to bottom in the browser; moving r2 moves its bar and every advantage, with
    either way of drawing the explorer's figure."""
    lab = labs(figures)
    page = chromium.new_page(viewport={"width": 1400, "height": 1000})
    try:
        open_lesson(page, lab, "03_advantages.ipynb")
        run_cells(page)
        _, cell = find_cell(page, "advantage_explorer()")
        cell.locator(".js-plotly-plot").first.wait_for(timeout=REDRAW_S * 1000)
        assert_drawn_by(cell, figures)
        before = plot_data(cell)
        rewards = [float(r) for r in before[0]["y"]]
        assert rewards == [1, 0, 0, 1, 0, 0, 0, 0], f"the explorer should start at two right of 8, got {rewards}"

        slider = cell.locator(".widget-slider").filter(has=page.locator(".widget-label", has_text=re.compile(r"^r2$")))
        slider.locator(".noUi-handle").focus()
        for _ in range(4):  # four steps of 0.5, as a learner moves it with the arrow keys
            page.keyboard.press("ArrowRight")
        assert slider.locator(".widget-readout").inner_text().strip() == "2.00"

        # Wait on the plot itself: the browser's copy of r2's bar reaches the slider's value.
        page.wait_for_function(
            """() => { const el = document.querySelector('[data-course-test="advantage_explorer()"] .js-plotly-plot');
                       return !!(el && el.data && el.data[0].y[1] === 2); }""",
            timeout=REDRAW_S * 1000,
        )
        after = plot_data(cell)
        expected = group_advantages([1.0, 2.0, 0, 1, 0, 0, 0, 0], 8).advantages.tolist()
        assert after[1]["y"] == pytest.approx(expected, abs=1e-5), "the advantage bars must be the new group's"
        assert after[1]["y"] != pytest.approx(before[1]["y"], abs=1e-3), "every advantage moves with one reward"
        assert_drawn_by(cell, figures)
        screenshot(cell.locator(".jp-Cell-outputArea").first, f"advantage-explorer-{figures}")
    finally:
        page.close()


# Points drawn per trace by the browser in the live-curve cell's plot (an empty list before it exists).
LIVE_POINTS = """() => {
  const el = document.querySelector('[data-course-test="LiveCurves("] .js-plotly-plot');
  return el && el.data ? el.data.map(t => (t.x || []).length) : [];
}"""


def test_live_curves_grow_while_grpo_trains(chromium, labs):
    """Lesson 05 up to its training cell: the curves gain points while the cell runs, one per step
    (JupyterLab's default FigureWidget; the static redraw is the explorer's test above)."""
    lab = labs("widget")
    page = chromium.new_page(viewport={"width": 1400, "height": 1000})
    try:
        open_lesson(page, lab, "05_grpo_from_scratch.ipynb")
        index, cell = find_cell(page, "LiveCurves(")
        run_cells(page, last=index - 1)  # everything the training cell needs
        start_cell(page, index)
        seen = []  # the reward curve's length each time it changed, while the cell was still running
        deadline = time.monotonic() + LESSON_S
        while page.evaluate(CELLS_DONE, index) is None:
            points = page.evaluate(LIVE_POINTS)
            if points and (not seen or points[0] != seen[-1]):
                seen.append(points[0])
            assert time.monotonic() < deadline, f"the training cell did not finish within {LESSON_S} s"
            page.wait_for_timeout(100)  # poll interval of the wait on the cell
        wait_for_cells(page, index)  # done: this fails on an error in the training cell
        assert_drawn_by(cell, lab.figures)
        final = plot_data(cell)
        steps = int(re.search(r"(\d+) steps in", cell.locator(".jp-Cell-outputArea").first.inner_text()).group(1))
        reward = next(t for t in final if t["name"] == "reward")
        assert len(reward["x"]) == steps, f"one reward point per step: {steps} steps, {len(reward['x'])} points"
        assert len([n for n in seen if 0 < n < steps]) >= 1, (
            f"the curve must grow while training runs, not only at the end (lengths seen while running: {seen})"
        )
        screenshot(cell.locator(".js-plotly-plot").first, f"live-curves-{lab.figures}")
    finally:
        page.close()
