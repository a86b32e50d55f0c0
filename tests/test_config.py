import pytest

from course_lib.config import PROFILES, get_profile


def test_default_profile_is_pocket(monkeypatch):
    monkeypatch.delenv("COURSE_PROFILE", raising=False)
    monkeypatch.delenv("COURSE_FAST", raising=False)
    assert get_profile() == PROFILES["pocket"]
    assert get_profile().device == "cpu"


def test_profile_from_environment(monkeypatch):
    monkeypatch.setenv("COURSE_PROFILE", "gpu")
    profile = get_profile(fast=False)
    assert profile.name == "gpu" and profile.dataset == "gsm8k" and profile.use_unsloth
    assert "/" in profile.model_name  # a hub id such as Qwen/Qwen2.5-0.5B-Instruct


def test_argument_wins_over_environment(monkeypatch):
    monkeypatch.setenv("COURSE_PROFILE", "gpu")
    assert get_profile("pocket", fast=False).name == "pocket"


def test_unknown_profile_lists_valid_ones(monkeypatch):
    monkeypatch.setenv("COURSE_PROFILE", "tpu-pod")
    with pytest.raises(ValueError) as err:
        get_profile()
    assert "tpu-pod" in str(err.value) and "gpu" in str(err.value) and "pocket" in str(err.value)


def test_fast_mode_shrinks_counts(monkeypatch):
    monkeypatch.setenv("COURSE_FAST", "1")
    fast, full = get_profile("pocket"), get_profile("pocket", fast=False)
    assert fast.n_eval_problems < full.n_eval_problems and fast.eval_k <= full.eval_k
    monkeypatch.setenv("COURSE_FAST", "0")
    assert get_profile("pocket") == full


def test_eval_problems_follow_the_profile(gsm8k_dir):
    from course_lib.data import eval_problems, pocket_math

    pocket = get_profile("pocket", fast=False)
    assert eval_problems(pocket) == pocket_math.pocket_test_set(200)
    gpu_problems = eval_problems(get_profile("gpu", fast=False), data_dir=gsm8k_dir)
    assert len(gpu_problems) == 1319 and gpu_problems[0]["question"].startswith("Janet")
    assert len(eval_problems(get_profile("gpu", fast=True), data_dir=gsm8k_dir)) == 8
