"""Every lesson runs top to bottom on a fresh kernel, in fast mode, offline."""

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("[0-9]*.ipynb"))


def test_there_are_lessons():
    assert [p.name[:2] for p in NOTEBOOKS][:10] == ["00", "01", "02", "03", "04", "05", "06", "07", "08", "09"]


@pytest.mark.notebook
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_in_fast_mode(path, monkeypatch):
    monkeypatch.setenv("COURSE_FAST", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    nb = nbformat.read(path, as_version=4)
    # The kernel inherits this environment; a cell that raises fails the test with its traceback.
    NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    errors = [
        o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.get("output_type") == "error"
    ]
    assert not errors
    first = nb.cells[0].source
    assert "colab.research.google.com" in first, "every lesson opens with a Colab badge"
