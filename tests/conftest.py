"""Shared fixtures: the shared GSM8K copy (skip where absent) and the pocket model."""

import copy
import os
import tempfile
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
# trackio reads its folder once, when imported: the tests' runs go to a fresh one, never the user's.
os.environ.setdefault("TRACKIO_DIR", tempfile.mkdtemp(prefix="course-trackio-"))


@pytest.fixture(scope="session")
def gsm8k_dir() -> Path:
    if not (SHARED_GSM8K / "train.jsonl").is_file():
        pytest.skip(
            f"real GSM8K not found at {SHARED_GSM8K}: set GSM8K_DIR to a folder with "
            "train.jsonl and test.jsonl to run this test"
        )
    return SHARED_GSM8K


@pytest.fixture(scope="session")
def _pocket_loaded():
    """The shipped pocket model, read from disk once per session. Tests get copies (``pocket``)."""
    from course_lib.models import load_pocket_model

    return load_pocket_model()


@pytest.fixture
def pocket(_pocket_loaded):
    """A fresh copy of the pocket model (eval mode, cache on) and its tokenizer, for one test: what a
    test does to it (train it, switch it to train mode, let TRL turn the cache off) stays there."""
    model, tokenizer = _pocket_loaded
    return copy.deepcopy(model), tokenizer


@pytest.fixture(scope="module")
def grpo_trainer(_pocket_loaded, tmp_path_factory):
    """A factory for TRL GRPOTrainers on copies of the pocket model (CPU settings), to compare against TRL."""
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    loaded, tokenizer = _pocket_loaded

    def make(
        rows: list[dict], reward_funcs, group_size: int, reward_weights=None, max_completion_length: int = 2, **config
    ):
        args = GRPOConfig(
            output_dir=str(tmp_path_factory.mktemp("grpo")),
            use_cpu=True,
            bf16=False,
            gradient_checkpointing=False,
            per_device_train_batch_size=len(rows) * group_size,
            num_generations=group_size,
            max_completion_length=max_completion_length,
            reward_weights=reward_weights,
            report_to=[],
            seed=0,
            **config,
        )
        return GRPOTrainer(
            model=copy.deepcopy(loaded),
            reward_funcs=reward_funcs,
            args=args,
            train_dataset=Dataset.from_list(rows),
            processing_class=tokenizer,
        )

    return make


def trl_scored_batch(trainer, group_size: int) -> dict:
    """TRL's own generate-and-score step on the trainer's data set, each prompt repeated G times
    consecutively (the order of TRL's RepeatSampler). Returns TRL's output dict."""
    batch = [row for row in trainer.train_dataset for _ in range(group_size)]
    return trainer._generate_and_score_completions(batch)


def _sharpen_attention(model, seed: int = 1):
    """Make a random Qwen2-layout model's attention far from uniform, in place: q and k weights
    scaled 30x, the q/k/v biases drawn under ``seed`` (the random init gives near-uniform attention
    and zero biases, under which a wrong key-head mapping or a dropped bias goes unseen)."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for layer in model.model.layers:
            attn = layer.self_attn
            attn.q_proj.weight.mul_(30), attn.k_proj.weight.mul_(30)
            for proj in (attn.q_proj, attn.k_proj, attn.v_proj):
                proj.bias.copy_(torch.randn_like(proj.bias))
    return model


@pytest.fixture
def sharpen_attention():
    """:func:`_sharpen_attention`, for tests that build their own Qwen2-layout model."""
    return _sharpen_attention
