"""Where the course is published, in one place: every Colab badge and clone line comes from it.

The address is ``[tool.course]`` in ``pyproject.toml`` (``repository = "owner/name"``, ``branch``).
Each lesson opens with a Colab badge for its own file and a setup cell that clones the course;
both are written from that setting, and a test checks that every lesson agrees with it. To
publish under another address, one command rewrites the setting, the badges and the clone lines:

    python -m course_lib.links --set your-name/your-fork            # main branch
    python -m course_lib.links --set your-name/your-fork --branch dev
    python -m course_lib.links --check                              # exit 1 if a lesson disagrees
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO_ROOT / "notebooks"
_BADGE = re.compile(r"https://colab\.research\.google\.com/github/[\w.-]+/[\w.-]+/blob/[\w./-]+?/notebooks/")
_CLONE = re.compile(r"https://github\.com/[\w.-]+/[\w.-]+?(?:\.git)?(?=[\"' ])")  # on a line that runs git clone
_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class Repository:
    """The published address: ``owner/name`` on GitHub and the branch the badges open."""

    slug: str
    branch: str = "main"

    def __post_init__(self):
        if not _NAME.match(self.slug):
            raise ValueError(f"the repository must read owner/name (got {self.slug!r})")

    @property
    def clone_url(self) -> str:
        return f"https://github.com/{self.slug}"

    def colab_url(self, notebook: str) -> str:
        """The Colab address that opens ``notebook`` (a file name in ``notebooks/``)."""
        return f"https://colab.research.google.com/github/{self.slug}/blob/{self.branch}/notebooks/{notebook}"


def repository(pyproject: Path = REPO_ROOT / "pyproject.toml") -> Repository:
    """The address ``pyproject.toml`` names under ``[tool.course]``."""
    if not pyproject.exists():
        raise FileNotFoundError(f"{pyproject} not found: links are read from the course's pyproject.toml")
    settings = tomllib.loads(pyproject.read_text()).get("tool", {}).get("course", {})
    if "repository" not in settings:
        raise ValueError(f'{pyproject} has no [tool.course] repository = "owner/name"')
    return Repository(settings["repository"], settings.get("branch", "main"))


def rewrite_notebook(path: Path, repo: Repository) -> bool:
    """Point ``path``'s Colab badge and clone line at ``repo``; whether the file changed."""
    notebook = json.loads(path.read_text())
    changed = False
    for cell in notebook["cells"]:
        lines = cell["source"] if isinstance(cell["source"], list) else cell["source"].splitlines(keepends=True)
        new = [_rewrite_line(line, repo) for line in lines]
        if new != lines:
            cell["source"], changed = new, True
    if changed:
        path.write_text(json.dumps(notebook, indent=1, ensure_ascii=False) + "\n")
    return changed


def _rewrite_line(line: str, repo: Repository) -> str:
    line = _BADGE.sub(repo.colab_url(""), line)
    return _CLONE.sub(repo.clone_url, line) if "clone" in line else line


def _clone_urls(path: Path) -> set[str]:
    """The repositories the notebook's setup cell clones."""
    sources = ("".join(c["source"]) for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code")
    return {url for text in sources for line in text.splitlines() if "clone" in line for url in _CLONE.findall(line)}


def disagreements(repo: Repository, notebooks: Path = NOTEBOOKS) -> list[str]:
    """Every lesson whose badge or clone line does not point at ``repo``, with what it says instead."""
    found = []
    for path in sorted(notebooks.glob("*.ipynb")):
        text = path.read_text()
        if repo.colab_url(path.name) not in text:
            found.append(f"{path.name}: its badge does not open {repo.colab_url(path.name)}")
        clones = _clone_urls(path)
        if clones != {repo.clone_url}:
            found.append(f"{path.name}: clones {', '.join(sorted(clones))}, not {repo.clone_url}")
    return found


def set_repository(repo: Repository, root: Path = REPO_ROOT) -> list[str]:
    """Write ``repo`` into ``pyproject.toml`` and every lesson; the names of the files changed."""
    pyproject = root / "pyproject.toml"
    text = pyproject.read_text()
    text = re.sub(r'(?m)^repository = ".*"$', f'repository = "{repo.slug}"', text, count=1)
    text = re.sub(r'(?m)^branch = ".*"$', f'branch = "{repo.branch}"', text, count=1)
    pyproject.write_text(text)
    changed = [p.name for p in sorted((root / "notebooks").glob("*.ipynb")) if rewrite_notebook(p, repo)]
    return ["pyproject.toml", *changed]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m course_lib.links", description=__doc__.split("\n\n")[0])
    parser.add_argument("--set", metavar="OWNER/NAME", help="publish under this GitHub repository")
    parser.add_argument("--branch", default=None, help="the branch the badges open (default: keep the current one)")
    parser.add_argument("--check", action="store_true", help="exit 1 if a lesson disagrees with pyproject.toml")
    args = parser.parse_args(argv)
    current = repository()
    if args.set:
        repo = Repository(args.set, args.branch or current.branch)
        print("rewrote: " + ", ".join(set_repository(repo)))
        current = repo
    problems = disagreements(current)
    for problem in problems:
        print(problem, file=sys.stderr)
    print(f"{current.slug} ({current.branch}): " + ("every lesson agrees" if not problems else "lessons disagree"))
    return 1 if problems and args.check else 0


if __name__ == "__main__":
    sys.exit(main())
