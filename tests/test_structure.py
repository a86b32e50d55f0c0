"""The shape of course_lib: no import loops, course_lib imported at module top, fast mode in one table."""

import ast
import dataclasses
from pathlib import Path

import pytest

from course_lib.config import FAST_MODE, PROFILES, Profile, for_mode, get_profile

PACKAGE = Path(__file__).resolve().parents[1] / "course_lib"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[tuple[str, bool]]:
    """``(imported course_lib module, inside a function?)`` for every import in the file."""
    tree = ast.parse(path.read_text())
    inside = {
        id(n) for f in ast.walk(tree) if isinstance(f, ast.FunctionDef | ast.AsyncFunctionDef) for n in ast.walk(f)
    }
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("course_lib"):
            for alias in node.names:  # "from course_lib import plots" imports the module course_lib.plots
                candidate = f"{node.module}.{alias.name}"
                target = (
                    candidate
                    if (PACKAGE.parent / candidate.replace(".", "/")).exists()
                    or (PACKAGE.parent / (candidate.replace(".", "/") + ".py")).exists()
                    else node.module
                )
                found.append((target, id(node) in inside))
        elif isinstance(node, ast.Import):
            found += [(a.name, id(node) in inside) for a in node.names if a.name.startswith("course_lib")]
    return found


GRAPH = {_module_name(p): _imports(p) for p in PACKAGE.rglob("*.py")}


def test_no_module_imports_course_lib_inside_a_function():
    lazy = {module: [target for target, inside in imports if inside] for module, imports in GRAPH.items()}
    assert {m: t for m, t in lazy.items() if t} == {}


def test_there_is_no_import_loop():
    edges = {
        m: {t for t, _ in imports if t in GRAPH and t != m and not m.startswith(t + ".")}
        for m, imports in GRAPH.items()
    }

    def visit(node, path):
        if node in path:
            raise AssertionError("import loop: " + " -> ".join([*path[path.index(node) :], node]))
        for nxt in edges[node]:
            visit(nxt, [*path, node])

    for module in edges:
        visit(module, [])
    assert edges["course_lib.train.expert_iteration"] >= {"course_lib.train.sft", "course_lib.train.rejection_sampling"}
    assert "course_lib.train.recipes" not in edges["course_lib.train.rejection_sampling"]


def test_fast_mode_is_one_table_and_only_shrinks():
    for name, profile in PROFILES.items():
        fast = get_profile(name, fast=True)
        assert fast.fast and not profile.fast
        for field, cap in FAST_MODE["Profile"].items():
            assert getattr(fast, field) == min(getattr(profile, field), cap)
        changed = {f.name for f in dataclasses.fields(Profile) if getattr(fast, f.name) != getattr(profile, f.name)}
        assert changed <= set(FAST_MODE["Profile"]) | {"fast"}
    assert for_mode(PROFILES["pocket"], fast=False) is PROFILES["pocket"]
    with pytest.raises(ValueError, match="FAST_MODE"):
        for_mode(dataclasses.make_dataclass("Unknown", [("steps", int)])(3), fast=True)


def test_recipes_read_the_profile_not_a_fast_flag():
    from course_lib.train.recipes import grpo_recipe, orpo_recipe, rs_recipe

    for recipe, caps in (
        (grpo_recipe, FAST_MODE["GRPOSettings"]),
        (rs_recipe, FAST_MODE["RSSettings"]),
        (orpo_recipe, FAST_MODE["ORPOSettings"]),
    ):
        full, _ = recipe(get_profile("pocket", fast=False))
        fast, _ = recipe(get_profile("pocket", fast=True))
        assert {k: getattr(fast, k) for k in caps} == {k: min(getattr(full, k), v) for k, v in caps.items()}
        assert recipe(get_profile("pocket", fast=True), seed=7)[0].seed == 7  # a study's override
    with pytest.raises(ValueError, match="known: gpu, laptop, pocket"):
        grpo_recipe(dataclasses.replace(get_profile("pocket"), name="tpu"))


def test_settings_are_frozen():
    from course_lib.train.expert_iteration import RSSettings
    from course_lib.train.grpo import GRPOSettings
    from course_lib.train.orpo import ORPOSettings

    for settings in (GRPOSettings(), RSSettings(), ORPOSettings(), get_profile()):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(settings, dataclasses.fields(settings)[0].name, None)


def test_sources_are_named_not_labelled():
    """Learner-facing text names a source by title and author (../shared/sources.md), never as "seed 000"."""
    import re

    root = PACKAGE.parent
    label = re.compile(r"seed[ _-]?00[0-3]", re.IGNORECASE)
    files = [root / "README.md", root / "data" / "README.md", *root.glob("notebooks/**/*.ipynb")]
    files += [p for p in PACKAGE.rglob("*") if p.suffix in (".py", ".md", ".yaml", ".json")]
    found = [f"{p.relative_to(root)}: {m.group(0)!r}" for p in files for m in label.finditer(p.read_text())]
    assert not found, "name the source instead: " + "; ".join(found)
    assert label.search("as Seed 002 quotes") and not label.search("seed=1_000_003")  # the pattern itself
