"""Shared fixtures: the shared GSM8K copy (skip where absent) and the pocket model."""

import os
from pathlib import Path

import pytest
import torch
from hypothesis import settings

# Property tests are reproducible by default (same inputs on every run, as CI needs);
# HYPOTHESIS_PROFILE=explore draws fresh random inputs to hunt for new failures.
settings.register_profile("course", derandomize=True, database=None, deadline=None)
settings.register_profile("explore", deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "course"))

REPO = Path(__file__).resolve().parents[1]
SHARED_GSM8K = Path(os.environ.get("GSM8K_DIR", REPO.parent / "shared" / "gsm8k"))

# Two cores: keep torch to them, and never let a test reach the hub.
torch.set_num_threads(2)
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def gsm8k_dir() -> Path:
    if not (SHARED_GSM8K / "train.jsonl").is_file():
        pytest.skip(f"real GSM8K not found at {SHARED_GSM8K}: set GSM8K_DIR to a folder with "
                    "train.jsonl and test.jsonl to run this test")
    return SHARED_GSM8K


@pytest.fixture(scope="session")
def pocket():
    from course_lib.models import load_pocket_model

    return load_pocket_model()
