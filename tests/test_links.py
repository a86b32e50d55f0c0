"""One place for the course's address: every lesson's Colab badge and clone line agree with it."""

import json
import shutil
from pathlib import Path

import pytest

from course_lib import links

ROOT = Path(__file__).resolve().parents[1]


def test_every_lesson_agrees_with_the_published_address():
    repo = links.repository()
    assert links.disagreements(repo) == []
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        first = "".join(json.loads(path.read_text())["cells"][0]["source"])
        assert repo.colab_url(path.name) in first, f"{path.name}: its first cell opens with the badge for itself"


def test_one_command_moves_every_badge_and_clone_line(tmp_path):
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    shutil.copytree(ROOT / "notebooks", tmp_path / "notebooks", ignore=shutil.ignore_patterns("solutions"))
    fork = links.Repository("someone/their-fork", "dev")
    changed = links.set_repository(fork, tmp_path)
    lessons = sorted((tmp_path / "notebooks").glob("*.ipynb"))
    assert set(changed) == {"pyproject.toml", *(p.name for p in lessons)}
    assert links.repository(tmp_path / "pyproject.toml") == fork
    assert links.disagreements(fork, tmp_path / "notebooks") == []
    assert links.disagreements(links.repository(), tmp_path / "notebooks") != []  # the old address is gone
    assert all("rl-post-training-course" not in p.read_text() for p in lessons)
    assert links.set_repository(fork, tmp_path) == ["pyproject.toml"]  # a second run changes no lesson
    for path in lessons:  # still notebooks, and only the addresses changed
        old, new = (json.loads((d / path.name).read_text()) for d in (ROOT / "notebooks", tmp_path / "notebooks"))
        assert len(old["cells"]) == len(new["cells"])
        assert [c["cell_type"] for c in old["cells"]] == [c["cell_type"] for c in new["cells"]]


def test_a_malformed_address_is_refused_with_the_expected_form():
    with pytest.raises(ValueError, match="owner/name"):
        links.Repository("https://github.com/someone/fork")
    with pytest.raises(ValueError, match="owner/name"):
        links.main(["--set", "just-a-name"])
