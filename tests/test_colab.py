"""The lessons' setup cell: the profile it chooses, what it installs in Colab, when it asks for a restart."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from course_lib import colab
from course_lib.config import PROFILES
from course_lib.links import repository

REPO = Path(__file__).resolve().parents[1]


def test_the_setup_cell_knows_every_profile():
    assert set(colab.PROFILE_NAMES) == set(PROFILES)


@pytest.mark.parametrize(
    "requested, in_colab, gpu, env, expected",
    [
        ("auto", True, True, None, "gpu"),  # Colab with a GPU attached
        ("auto", True, False, None, "pocket"),  # a CPU-only Colab runtime: not the GPU extras
        ("auto", False, True, None, "pocket"),  # a local GPU machine runs what $COURSE_PROFILE says
        ("auto", False, True, "gpu", "gpu"),
        ("auto", True, True, "laptop", "laptop"),  # the environment wins over the GPU
        ("Laptop", True, True, "pocket", "laptop"),  # the form field wins over everything
    ],
)
def test_choose_profile(requested, in_colab, gpu, env, expected):
    assert colab.choose_profile(requested, in_colab, gpu, env) == expected


def test_choose_profile_refuses_what_cannot_run():
    with pytest.raises(ValueError, match="auto, pocket, laptop, gpu"):
        colab.choose_profile("tpu", True, True)
    with pytest.raises(ValueError, match="Change runtime type"):
        colab.choose_profile("gpu", True, False)


def test_each_profile_installs_its_own_pinned_set():
    for name in colab.PROFILE_NAMES:
        commands = colab.install_commands(name, REPO)
        files = [Path(c[c.index("-r") + 1]) for c in commands if "-r" in c]
        assert all(f.is_file() for f in files), files
        assert commands[-1][-3:] == ["--no-deps", "-e", str(REPO)]
    gpu_files = {Path(c[c.index("-r") + 1]).name for c in colab.install_commands("gpu", REPO) if "-r" in c}
    assert gpu_files == {"requirements-gpu.txt"}  # never the CPU pins, whose trl Unsloth refuses
    laptop = colab.install_commands("laptop", REPO)
    assert ["--no-deps", "-r", str(REPO / "requirements-laptop.txt")] == laptop[1][-3:]


def test_a_restart_is_asked_for_only_where_a_loaded_package_changed():
    before = {"torch": "2.9.0", "trl": None, "plotly": "6.0.0"}
    after = {"torch": "2.13.0", "trl": "1.16.0", "plotly": "6.0.0"}
    assert colab.stale_imports(before, after, loaded={"torch", "plotly"}) == ["torch"]
    assert colab.stale_imports(before, after, loaded={"plotly"}) == []  # trl is new: nothing old is loaded


def test_prepare_outside_colab_installs_nothing_and_sets_the_profile(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("COURSE_PROFILE", "laptop")
    monkeypatch.setattr(colab.subprocess, "run", lambda *a, **k: pytest.fail("nothing is installed outside Colab"))
    assert colab.prepare("auto", course_dir=tmp_path, in_colab=False) == "laptop"
    assert "profile: laptop" in capsys.readouterr().out


def test_prepare_in_colab_installs_once_and_stops_for_a_restart(monkeypatch, tmp_path):
    monkeypatch.delenv("COURSE_PROFILE", raising=False)
    ran = []
    monkeypatch.setattr(colab, "has_gpu", lambda: False)
    monkeypatch.setattr(colab.subprocess, "run", lambda command, check: ran.append(command))
    versions = iter([{"torch": "2.9.0"}, {"torch": "2.13.0"}])
    monkeypatch.setattr(colab, "installed_versions", lambda: next(versions))
    with pytest.raises(colab.RestartNeeded, match="torch changed.*Restart the session"):
        colab.prepare("auto", course_dir=tmp_path, in_colab=True)
    assert ran == colab.install_commands("pocket", tmp_path)
    assert colab.prepare("auto", course_dir=tmp_path, in_colab=True) == "pocket"  # after the restart
    assert len(ran) == len(colab.install_commands("pocket", tmp_path))  # not installed twice


def test_prepare_imports_neither_transformers_nor_trl_nor_peft():
    """Unsloth must be imported before them, so the setup cell (up to its Unsloth line) must not import them."""
    code = (
        "import sys; from course_lib.colab import prepare; prepare('pocket', in_colab=False); "
        "from course_lib.config import get_profile, import_unsloth_first; import_unsloth_first(get_profile()); "
        "print(sorted(m for m in ('transformers', 'trl', 'peft') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_every_lesson_opens_with_the_same_setup_cell():
    cells = {}
    for path in sorted((REPO / "notebooks").glob("*.ipynb")):
        first_code = next(c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code")
        cells[path.name] = "".join(first_code["source"])
    assert len(set(cells.values())) == 1, "the lessons' setup cells differ"
    cell = next(iter(cells.values()))
    assert f'PROFILE = "auto"  # @param {json.dumps(["auto", *colab.PROFILE_NAMES])}' in cell
    assert "prepare(PROFILE)" in cell and repository().clone_url in cell
    assert cell.rstrip().splitlines()[-1].startswith("import_unsloth_first(get_profile())")
