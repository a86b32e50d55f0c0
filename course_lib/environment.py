"""Lesson 00's environment check: what is installed, what is missing, what to do."""

from __future__ import annotations

import importlib.metadata as md
import os
import platform
import re
from pathlib import Path

import pandas as pd
import torch

from course_lib.data.gsm8k import default_data_dir
from course_lib.models import PACKAGED_MODELS, REPO_ROOT, packaged_model_file, pocket_model_dir

_REQUIREMENTS_FILE = REPO_ROOT / "requirements.txt"
_GPU_ONLY = ("unsloth", "vllm", "bitsandbytes", "xformers")


def pinned_requirements(path: Path = _REQUIREMENTS_FILE) -> dict[str, str]:
    """``{name: version}`` for every ``name==version`` line of a requirements file."""
    if not path.is_file():
        return {}
    pins = {}
    for line in path.read_text().splitlines():
        match = re.match(r"^\s*([A-Za-z0-9_.\-]+)==([^\s;#]+)", line)
        if match:
            pins[match.group(1).lower()] = match.group(2)
    return pins


def _installed(name: str) -> str | None:
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return None


MIN_PYTHON = (3, 11)  # numpy 2.4, pandas 3.1, trl 1.16 and ipykernel 7.4 need it


def python_supported(version: tuple[int, int]) -> bool:
    """Whether a ``(major, minor)`` Python runs the pinned set: compared as numbers (as strings, "3.9" > "3.10")."""
    return tuple(version) >= MIN_PYTHON


def _row(component: str, ok: bool | None, detail: str) -> dict:
    status = {True: "ok", False: "MISSING", None: "optional"}[ok]
    return {"component": component, "status": status, "detail": detail}


def check_environment(requirements: Path = _REQUIREMENTS_FILE):
    """One row per thing the course needs, with status ``ok``, ``MISSING`` or ``optional``.

    Checks the Python version, every pinned package (a different installed version
    is reported, not failed: the GPU track pins a different trl), torch's threads
    and accelerator, the pocket checkpoint, and where GSM8K will come from.
    """
    python_ok = python_supported(tuple(int(part) for part in platform.python_version_tuple()[:2]))
    rows = [
        _row("python", python_ok, platform.python_version() + ("" if python_ok else "; the pins need 3.11 or newer"))
    ]
    for name, wanted in pinned_requirements(requirements).items():
        have = _installed(name)
        if have is None:
            rows.append(
                _row(name, False, f"not installed; `pip install {name}=={wanted}` (or `make install` for everything)")
            )
        else:
            note = "" if have.split("+")[0] == wanted else f" (course pins {wanted})"
            rows.append(_row(name, True, have + note))
    cuda = torch.cuda.is_available()
    rows.append(_row("torch threads", True, f"{torch.get_num_threads()} of {os.cpu_count()} cores"))
    rows.append(
        _row(
            "GPU",
            None if not cuda else True,
            torch.cuda.get_device_name(0) if cuda else "none: the pocket track runs on the CPU",
        )
    )
    for name in _GPU_ONLY:
        have = _installed(name)
        rows.append(
            _row(name, None if have is None else True, have or "GPU track only: pip install -r requirements-gpu.txt")
        )
    model_dir = pocket_model_dir()
    rows.append(_row("pocket model", (model_dir / "model.safetensors").is_file(), str(model_dir)))
    rows.append(_laptop_model_row())
    rows.append(_row("GSM8K", None, _gsm8k_source()))
    return pd.DataFrame(rows)


def _laptop_model_row() -> dict:
    """The laptop profile's packaged model: optional (only that profile needs it)."""
    spec = PACKAGED_MODELS["SmolLM2-135M-Instruct"]
    try:
        return _row("laptop model", True, str(packaged_model_file(spec)))
    except (FileNotFoundError, RuntimeError) as e:
        return _row("laptop model", None, f"laptop profile only: {e}")


def _gsm8k_source() -> str:
    folder = default_data_dir()
    if folder is not None and (folder / "test.jsonl").is_file():
        return f"local copy at {folder}"
    return (
        "no local copy: set GSM8K_DIR to a folder with train.jsonl/test.jsonl, "
        "or it is downloaded from the Hugging Face hub when online"
    )


def missing(table) -> list[str]:
    """Names of the components whose status is MISSING."""
    return list(table.loc[table["status"] == "MISSING", "component"])
