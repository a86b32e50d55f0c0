"""Every lesson runs top to bottom on a fresh kernel, in fast mode, offline; and does what it says."""

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from course_lib.data.gsm8k import default_data_dir
from course_lib.report import RESULTS_DIR_VARIABLE

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("[0-9]*.ipynb"))

# Sections that need real GSM8K, and a line each prints only when it ran. Without the data the
# lesson says "SKIPPED: ..." instead, and the test checks that it says so.
NEEDS_GSM8K = {
    "01_gsm8k_and_the_pocket_model": "The test split has 1319 problems",
    "02_reward_design": "gold answer extracted from",
}


def test_there_are_lessons():
    assert [p.name[:2] for p in NOTEBOOKS][:10] == ["00", "01", "02", "03", "04", "05", "06", "07", "08", "09"]


def _printed(nb) -> str:
    """Everything the executed notebook's code cells wrote to stdout, as one string."""
    return "".join(
        o.get("text", "")
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.get("outputs", [])
        if o.get("output_type") == "stream"
    )


@pytest.mark.notebook
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_in_fast_mode(path, monkeypatch, tmp_path):
    monkeypatch.setenv("COURSE_FAST", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    # A study writes into a fresh folder, so lesson 09 trains its arms instead of loading old ones.
    monkeypatch.setenv(RESULTS_DIR_VARIABLE, str(tmp_path / "results"))
    nb = nbformat.read(path, as_version=4)
    assert "colab.research.google.com" in nb.cells[0].source, "every lesson opens with a Colab badge"
    # The kernel inherits this environment; a cell that raises makes execute() raise with its traceback.
    NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()

    printed = _printed(nb)
    if path.stem in NEEDS_GSM8K:
        if default_data_dir() is None:
            assert "SKIPPED" in printed, "without GSM8K the lesson must say which section it skipped"
        else:
            assert NEEDS_GSM8K[path.stem] in printed, "GSM8K is here, so the lesson's GSM8K section must run"
            assert "SKIPPED" not in printed
    if path.stem.startswith("09"):
        assert "loaded from disk" not in printed, "lesson 09 must train its arms in the test, not reuse old ones"
        assert (tmp_path / "results" / "showdown-fast.json").is_file()
    if path.stem.startswith("10"):
        assert "loaded from" not in printed, "lesson 10 must train its arms in the test, not reuse old ones"
        assert len(list((tmp_path / "results" / "scalpel-pocket-fast").glob("*.json"))) == 8  # 7 arms + the pool
    if path.stem.startswith("13"):
        assert "the same rewards as the live run: True" in printed, "the healthy run must read back from trackio"
        assert "with the guard: stopped. GRPO step" in printed and "micro-batch 8: fits" in printed
    if path.stem.startswith("14"):
        assert not (tmp_path / "results" / "variants-pocket-full").exists()
        assert len(list((tmp_path / "results" / "variants-pocket-fast").glob("*-s*.json"))) >= 4  # trained here
    if path.stem.startswith("11"):
        assert "loaded from" not in printed, "lesson 11 must train its arms in the test, not reuse old ones"
        assert len(list((tmp_path / "results" / "overlap-pocket-fast").glob("*.json"))) == 10  # 9 arms + the pool
