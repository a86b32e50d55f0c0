"""The shipped DeepSpeed configs, launched for real: 2 processes on the CPU over gloo, under torchrun,
accelerate and the deepspeed launcher (and 1 process under plain python), training the pocket model
with the course's TRL recipes for a few steps. DeepSpeed compiles two ops with gcc the first time
(about a minute each) and caches them in TORCH_EXTENSIONS_DIR (~/.cache/torch_extensions)."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from course_lib import configs
from course_lib.train.__main__ import free_port

pytestmark = pytest.mark.distributed

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def launch(launcher: list[str], method: str, out: Path, *extra: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("ACCELERATE_USE_CPU", None)  # it would silently drop DeepSpeed
    command = [*launcher, "course_lib.train", method, "--steps", "3", "--output-dir", str(out), *extra]
    run = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, f"{' '.join(command)} failed:\n{run.stdout[-3000:]}\n{run.stderr[-6000:]}"
    return json.loads((out / "run_summary.json").read_text())


def torchrun(n):
    return [str(BIN / "torchrun"), "--nproc_per_node", str(n), "--master_port", str(free_port()), "-m"]


def accelerate(name, tmp_path):
    return [
        str(BIN / "accelerate"),
        "launch",
        "--config_file",
        str(configs.accelerate_config(name, tmp_path)),
        "--main_process_port",
        str(free_port()),
        "-m",
    ]


def deepspeed(n):
    return [str(BIN / "deepspeed"), "--num_gpus", str(n), "--master_port", str(free_port()), "--module"]


def reload_adapter(out: Path):
    """The saved LoRA adapter on a fresh pocket model; its B matrices (zero at the start) if trained."""
    from peft import PeftModel

    from course_lib.models import load_pocket_model

    base, tokenizer = load_pocket_model()
    model = PeftModel.from_pretrained(base, out / "model")
    ids = tokenizer("What is 2 + 3?", return_tensors="pt")["input_ids"]
    assert torch.isfinite(model(input_ids=ids).logits).all()
    return [p for name, p in model.named_parameters() if "lora_B" in name]


CASES = [  # (id, method, config, launcher, processes, expected base optimizer)
    ("sft-zero2-torchrun", "sft", "zero2", "torchrun", 2, "AdamW"),
    ("sft-zero2_offload-accelerate", "sft", "zero2_offload", "accelerate", 2, "DeepSpeedCPUAdam"),
    ("grpo-zero3-accelerate", "grpo", "zero3", "accelerate", 2, "AdamW"),
    ("grpo-zero2_offload-deepspeed", "grpo", "zero2_offload", "deepspeed", 2, "DeepSpeedCPUAdam"),
    ("orpo-zero3_offload-deepspeed", "orpo", "zero3_offload", "deepspeed", 2, "DeepSpeedCPUAdam"),
    ("sft-zero2-python", "sft", "zero2", "python", 1, "AdamW"),
]


@pytest.mark.parametrize(
    "method,config,launcher,processes,optimizer", [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_a_shipped_config_trains_under_a_launcher(method, config, launcher, processes, optimizer, tmp_path):
    out = tmp_path / "run"
    if launcher == "accelerate":  # the config comes from the accelerate file, not the command line
        summary = launch(accelerate(config, tmp_path), method, out)
    else:
        command = {
            "torchrun": torchrun(processes),
            "deepspeed": deepspeed(processes),
            "python": [sys.executable, "-m"],
        }[launcher]
        summary = launch(command, method, out, "--deepspeed", config)
    assert summary["engine"] == "DeepSpeedEngine" and summary["world_size"] == processes
    assert summary["zero_stage"] == (3 if config.startswith("zero3") else 2)
    assert summary["base_optimizer"] == optimizer
    assert summary["optimizer"] == (
        "DeepSpeedZeroOptimizer_Stage3" if summary["zero_stage"] == 3 else "DeepSpeedZeroOptimizer"
    )
    assert summary["steps"] == 3 and len(summary["losses"]) == 3
    assert all(math.isfinite(loss) for loss in summary["losses"])
    lora_b = reload_adapter(out)
    if method != "grpo":  # GRPO learns nothing from a step whose groups all score alike; SFT/ORPO always do
        assert any(p.abs().sum() > 0 for p in lora_b)
