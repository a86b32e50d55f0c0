import subprocess
import sys

import pytest

from course_lib.models import POCKET_MODEL_DIR, count_parameters, load_pocket_model


def test_pocket_model_is_a_small_llama(pocket):
    model, _ = pocket
    assert model.config.model_type == "llama"
    assert 1_000_000 <= count_parameters(model) <= 10_000_000
    assert (POCKET_MODEL_DIR / "model.safetensors").stat().st_size < 25 * 2**20


def test_loads_offline_in_a_fresh_process():
    code = (
        "from course_lib.models import load_pocket_model; m, t = load_pocket_model(); "
        "print(type(m).__name__, t.eos_token)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"},
    )
    assert out.stdout.split() == ["LlamaForCausalLM", "<|end|>"]


def test_missing_checkpoint_explains(tmp_path):
    with pytest.raises(FileNotFoundError, match="course_lib.pocket.pretrain"):
        load_pocket_model(tmp_path)
