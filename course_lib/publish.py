"""Lessons with their outputs: what a reader sees on GitHub or nbviewer without running anything.

``python -m course_lib.publish`` runs every lesson top to bottom in **full mode** on a fresh
kernel (``COURSE_FAST`` unset, figures drawn the static way) and writes it back with its outputs,
made readable where no kernel runs:

- a plotly figure keeps its interactive form (JupyterLab draws it) and gains a PNG beside it in the
  same output (GitHub and nbviewer, which cannot run plotly.js, show the PNG);
- a widget (an explorer, a live curve, a progress bar) cannot be drawn without a kernel, so its
  output is replaced by what it showed at the end of the run: the figures and text of its
  ``ipywidgets.Output`` parts, a progress bar's last line, and a note where it had controls;
- the notebook records how it was made (``metadata["course"]["published"]``: full mode, the
  commit, the seconds it took, a hash of its code cells), which ``tests/test_published.py`` checks
  against the cells as they are now, with no error output and under :data:`SIZE_LIMIT` bytes.

Images need kaleido and a Chrome or Chromium (Debian's ``chromium`` is found on its own; else set
``BROWSER_PATH``). One lesson: ``python -m course_lib.publish notebooks/03_advantages.ipynb``.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import copy
import hashlib
import html
import json
import os
import re
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import kaleido
import nbformat
import plotly.io as pio
from nbclient import NotebookClient
from nbclient.exceptions import CellTimeoutError, DeadKernelError

from course_lib.config import fast_mode

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
RAW = ROOT / "build" / "publish"  # each lesson as executed, widgets and all (to redo the static step)
SIZE_LIMIT = 2_000_000  # bytes a published lesson may take in the repository
PLOTLY = "application/vnd.plotly.v1+json"
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
CONTROL_MODELS = ("Slider", "Dropdown", "Button", "Checkbox", "Toggle", "Text", "RadioButtons", "Select", "Play")
CONTROLS_NOTE = "[an explorer: its controls appear when the notebook runs in Jupyter; below, what it first showed]"
# The environment a lesson is published under: full mode, figures that live in ipywidgets.Output
# (their last state is saved with the notebook, a FigureWidget's is not), two threads, offline.
PUBLISH_ENVIRONMENT = {"COURSE_FIGURES": "static", "OMP_NUM_THREADS": "2", "HF_HUB_OFFLINE": "1"}

GITHUB_ADDRESS = re.compile(r"https://github\.com/[\w.-]+/[\w.-]+")
FAST_MARKS = ("| fast mode", "(COURSE_FAST): True")  # what the lessons' setup cells print in fast mode
Renderer = Callable[[dict], bytes]


def lessons() -> list[Path]:
    """Every lesson notebook, in order."""
    return sorted(NOTEBOOKS.glob("[0-9]*.ipynb"))


def code_hash(nb) -> str:
    """A hash of the notebook's code cells: outputs made from other code than this do not match.

    The repository's address is left out (``python -m course_lib.links --set`` rewrites the clone
    line, which only Colab runs), so moving the course does not call for publishing it again."""
    sources = "\0".join(c.source for c in nb.cells if c.cell_type == "code")
    sources = GITHUB_ADDRESS.sub("<repository>", sources)
    return hashlib.sha256(sources.encode()).hexdigest()[:16]


# --- turning outputs into what a static page can show ---------------------------------------------


@contextlib.contextmanager
def png_renderer(width: int = 900, height: int = 450) -> Iterator[Renderer]:
    """A function from a plotly figure (its JSON dict) to PNG bytes, with one browser kept open.

    Uses the figure's own width and height where its layout sets them."""
    kaleido.start_sync_server(silence_warnings=True)
    try:

        def render(figure: dict) -> bytes:
            layout = figure.get("layout", {})
            fig = pio.from_json(json.dumps(figure), skip_invalid=True)
            with warnings.catch_warnings():  # plotly warns that kaleido's browser options go unused by a server
                warnings.filterwarnings("ignore", message="The kopts argument is ignored")
                return fig.to_image(format="png", width=layout.get("width", width), height=layout.get("height", height))

        yield render
    finally:
        kaleido.stop_sync_server(silence_warnings=True)


def with_image(output: dict, render: Renderer) -> dict:
    """A plotly output with a PNG of the figure beside its interactive form (and no HTML copy)."""
    out = copy.deepcopy(output)
    figure = out["data"][PLOTLY]
    title = figure.get("layout", {}).get("title", {})
    title = title.get("text", "") if isinstance(title, dict) else str(title)
    out["data"] = {
        PLOTLY: figure,
        "image/png": base64.b64encode(render(figure)).decode(),
        "text/plain": f"<plotly figure{': ' + title if title else ''}>",
    }
    return out


def _models(nb) -> dict:
    return nb.metadata.get("widgets", {}).get(WIDGET_STATE, {}).get("state", {})


def _children(model: dict) -> list[str]:
    return [c.removeprefix("IPY_MODEL_") for c in model["state"].get("children", [])]


def _progress_line(model_id: str, models: dict) -> str | None:
    """The last line of a tqdm bar (an HBox of HTML, progress, HTML), or None for another box."""
    parts = [models[c] for c in _children(models[model_id]) if c in models]
    if not any(p["model_name"] in ("FloatProgressModel", "IntProgressModel") for p in parts):
        return None
    text = " ".join(html.unescape(p["state"].get("value", "")) for p in parts if p["model_name"] == "HTMLModel")
    return " ".join(text.replace("\u2007", " ").split())


def widget_outputs(model_id: str, models: dict, render: Renderer) -> list[dict]:
    """What a widget showed at the end of the run, as plain outputs a static page can draw."""
    model = models.get(model_id)
    if model is None:
        return []
    name, state = model["model_name"], model["state"]
    if name == "OutputModel":
        return static_outputs(state.get("outputs", []), models, render)
    if "children" in state:  # a box: a progress bar's last line, else what its children showed
        line = _progress_line(model_id, models)
        if line is not None:
            return [nbformat.v4.new_output("stream", name="stdout", text=line + "\n")]
        return [o for child in _children(model) for o in widget_outputs(child, models, render)]
    if name == "HTMLModel" and state.get("value"):
        return [nbformat.v4.new_output("display_data", data={"text/html": state["value"], "text/plain": ""})]
    if "_data" in state and "_layout" in state:  # a plotly FigureWidget: draw its last figure
        figure = {"data": state["_data"], "layout": state["_layout"]}
        return [with_image(nbformat.v4.new_output("display_data", data={PLOTLY: figure}), render)]
    return []


def _has_controls(model_id: str, models: dict) -> bool:
    model = models.get(model_id)
    if model is None:
        return False
    if any(kind in model["model_name"] for kind in CONTROL_MODELS):
        return True
    return any(_has_controls(child, models) for child in _children(model))


def static_outputs(outputs: list[dict], models: dict, render: Renderer) -> list[dict]:
    """A cell's outputs with every figure given an image and every widget replaced by what it showed."""
    result = []
    for output in outputs:
        data = output.get("data", {})
        if WIDGET_VIEW in data:
            model_id = data[WIDGET_VIEW]["model_id"]
            if _has_controls(model_id, models):
                result.append(nbformat.v4.new_output("stream", name="stdout", text=CONTROLS_NOTE + "\n"))
            result += widget_outputs(model_id, models, render)
        elif PLOTLY in data:
            result.append(with_image(output, render))
        else:
            result.append(output)
    return [nbformat.from_dict(o) for o in result]


def make_static(nb, render: Renderer, limit: int = SIZE_LIMIT) -> None:
    """Rewrite an executed notebook's outputs in place for a page that runs no code (see the module).

    Where the notebook would still take more than ``limit`` bytes, the largest figures keep only
    their image (their interactive copy is dropped, largest first) until it fits."""
    models = _models(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = static_outputs(cell.outputs, models, render)
    nb.metadata.pop("widgets", None)
    figures = [o["data"] for c in nb.cells if c.cell_type == "code" for o in c.outputs if PLOTLY in o.get("data", {})]
    figures.sort(key=lambda data: len(json.dumps(data[PLOTLY])), reverse=True)
    for data in figures:
        if len(nbformat.writes(nb)) <= limit:
            break
        del data[PLOTLY]


# --- running a lesson and checking what was committed ---------------------------------------------


@contextlib.contextmanager
def publishing_environment() -> Iterator[None]:
    """Full mode and static figures for the kernel (it inherits this process's environment)."""
    saved = dict(os.environ)
    os.environ.pop("COURSE_FAST", None)
    os.environ.update(PUBLISH_ENVIRONMENT)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _commit() -> str:
    run = subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"], capture_output=True, text=True)
    return run.stdout.strip() or "unknown"


#: Seconds a cell may run before the lesson starts again from the top (the longest lesson takes about six
#: minutes in full mode on 2 cores). Twice a kernel's reply to a cell never reached nbclient, which then
#: waited with the kernel idle; a second run of the same lesson went through.
CELL_TIMEOUT = 900
TRIES = 2


def publish_lesson(path: str | Path, render: Renderer, cell_timeout: int = CELL_TIMEOUT, tries: int = TRIES) -> dict:
    """:func:`publish`, run again from the top (a fresh kernel) when a cell gets no reply within
    ``cell_timeout`` seconds or the kernel dies, up to ``tries`` runs in all."""
    for _ in range(tries - 1):
        try:
            return publish(path, render, cell_timeout)
        except (CellTimeoutError, DeadKernelError) as error:
            reason = f"no reply within {cell_timeout} s" if isinstance(error, CellTimeoutError) else "the kernel died"
            print(f"{Path(path).name}: {reason}; running it again on a fresh kernel", flush=True)
    return publish(path, render, cell_timeout)  # the last try: its error propagates


def publish(path: str | Path, render: Renderer, cell_timeout: int = 3600) -> dict:
    """Run one lesson in full mode, make its outputs static and write it back; returns its record.

    The executed notebook is also kept as it came from the kernel under :data:`RAW`, for
    :func:`restatic`."""
    path = Path(path)
    nb = nbformat.read(path, as_version=4)
    start = time.time()
    with publishing_environment():
        if fast_mode():
            raise RuntimeError("COURSE_FAST is still set for the kernel: publishing must run in full mode")
        client = NotebookClient(
            nb,
            timeout=cell_timeout,
            kernel_name="python3",
            store_widget_state=True,
            resources={"metadata": {"path": str(path.parent)}},
        )
        client.execute()
    record = {"mode": "full", "commit": _commit(), "seconds": round(time.time() - start, 1), "code": code_hash(nb)}
    nb.metadata.setdefault("course", {})["published"] = record
    RAW.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, RAW / path.name)
    make_static(nb, render)
    nbformat.write(nb, path)
    return {**record, "bytes": path.stat().st_size}


def restatic(path: str | Path, render: Renderer) -> dict:
    """Redo only the static step of a lesson from its executed copy under :data:`RAW` (no kernel)."""
    path = Path(path)
    raw = RAW / path.name
    if not raw.is_file():
        raise FileNotFoundError(f"{raw} is missing: publish the lesson first (python -m course_lib.publish {path})")
    nb = nbformat.read(raw, as_version=4)
    if nb.metadata["course"]["published"]["code"] != code_hash(nbformat.read(path, as_version=4)):
        raise ValueError(f"{path.name}'s code cells changed since {raw} was executed: publish it again")
    make_static(nb, render)
    nbformat.write(nb, path)
    return {**nb.metadata["course"]["published"], "bytes": path.stat().st_size}


def problems(path: str | Path) -> list[str]:
    """What is wrong with a lesson's committed outputs (empty when a reader can trust them)."""
    path = Path(path)
    nb = nbformat.read(path, as_version=4)
    record = nb.metadata.get("course", {}).get("published")
    redo = f"run `python -m course_lib.publish {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}`"
    if record is None:
        return [f"{path.name} has no published outputs: {redo}"]
    found = []
    if record.get("mode") != "full":
        found.append(f"{path.name} was published in {record.get('mode')!r} mode, not full: {redo}")
    if record.get("code") != code_hash(nb):
        found.append(f"{path.name}: its code cells changed since its outputs were made: {redo}")
    if path.stat().st_size > SIZE_LIMIT:
        found.append(f"{path.name} takes {path.stat().st_size:,} bytes, over {SIZE_LIMIT:,}: shrink its figures")
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        if cell.source.strip() and cell.execution_count is None:
            found.append(f"{path.name} cell {i} did not run: {redo}")
        for output in cell.outputs:
            data = output.get("data", {})
            if output.output_type == "error":
                found.append(f"{path.name} cell {i} ended in {output.ename}: {output.evalue}")
            if output.output_type == "stream" and "Traceback (most recent call last)" in output.text:
                found.append(f"{path.name} cell {i} printed a traceback")
            if WIDGET_VIEW in data:
                found.append(f"{path.name} cell {i} keeps a widget a static page cannot draw: {redo}")
            if PLOTLY in data and "image/png" not in data:
                found.append(f"{path.name} cell {i} has a figure without its image: {redo}")
            if output.output_type == "stream" and any(mark in output.text for mark in FAST_MARKS):
                found.append(f"{path.name} cell {i} says it ran in fast mode: {redo}")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m course_lib.publish", description=__doc__.split("\n\n")[0])
    parser.add_argument("lessons", nargs="*", help="notebooks to publish (default: every lesson)")
    parser.add_argument("--check", action="store_true", help="only check the committed outputs, run nothing")
    parser.add_argument("--restatic", action="store_true", help="redo only the static step from build/publish/")
    args = parser.parse_args(argv)
    paths = [Path(p).resolve() for p in args.lessons] or lessons()
    if args.check:
        found = [p for path in paths for p in problems(path)]
        print("\n".join(found) or f"{len(paths)} lessons: published outputs in order")
        return 1 if found else 0
    with png_renderer() as render:
        for path in paths:
            print(f"{path.name}: {'static step' if args.restatic else 'running in full mode'} ...", flush=True)
            record = restatic(path, render) if args.restatic else publish_lesson(path, render)
            print(f"{path.name}: {record['seconds']:.0f} s, {record['bytes']:,} bytes", flush=True)
    found = [p for path in paths for p in problems(path)]
    print("\n".join(found) or "every lesson published")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
