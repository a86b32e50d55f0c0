"""course_lib.train.recipes, the TRL trainers (grpo_trl, sft, orpo) and models.load_policy on the CPU track."""

import dataclasses

import pytest
import torch

from course_lib.config import get_profile
from course_lib.data import train_problems
from course_lib.models import load_policy, lora_config, policy_backend
from course_lib.rewards import RewardConfig
from course_lib.train.grpo import GRPOSettings
from course_lib.train.grpo_trl import grpo_config, grpo_trainer
from course_lib.train.trainers import live_curves_callback

SETTINGS = GRPOSettings(steps=2, prompts_per_step=2, group_size=4, max_new_tokens=32, learning_rate=1e-3)


def test_grpo_config_carries_the_settings_and_the_cpu_facts(tmp_path):
    args = grpo_config(get_profile("pocket"), tmp_path, SETTINGS)
    assert args.per_device_train_batch_size == 8 and args.num_generations == 4  # completions, not prompts
    assert args.use_cpu and not args.bf16 and not args.gradient_checkpointing
    assert args.learning_rate == 1e-3 and args.max_completion_length == 32
    assert args.loss_type == "dapo" and args.beta == 0.0 and args.epsilon == args.epsilon_high == 0.2
    assert args.lr_scheduler_type == "constant"


def test_lora_config_is_the_grpo_tutorials():
    config = lora_config()
    assert (config.r, config.lora_alpha, config.lora_dropout) == (16, 32, 0.05)
    assert set(config.target_modules) == {"q_proj", "k_proj", "v_proj", "o_proj"}


def test_load_policy_falls_back_to_transformers_and_peft_without_cuda(capsys):
    model, _ = load_policy(get_profile("pocket"), lora=lora_config())
    assert "via transformers" in capsys.readouterr().out
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)


def test_the_backend_is_chosen_by_cuda_not_by_import(monkeypatch):
    gpu = get_profile("gpu", fast=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert policy_backend(gpu) == "transformers"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert policy_backend(gpu) == "unsloth"
    assert policy_backend(get_profile("pocket")) == "transformers"  # the profile does not ask for it


def test_trl_grpo_with_lora_trains_only_the_adapters_and_streams_our_metric_names(tmp_path):
    profile = get_profile("pocket")
    model, tokenizer = load_policy(profile, lora=lora_config())
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    rows = []
    callback = live_curves_callback(rows.append)
    # a hot sampler and a length penalty: rewards that differ inside the groups, so there is a gradient
    spread = dataclasses.replace(
        SETTINGS,
        temperature=2.0,
        max_new_tokens=48,
        reward=RewardConfig(length_weight=1.0, max_length=48, length_buffer=40),
    )
    trainer = grpo_trainer(
        profile,
        model,
        tokenizer,
        train_problems(profile, 8, max_steps=2),
        tmp_path,
        spread,
        callbacks=[callback],
        disable_tqdm=True,
    )
    from transformers.trainer_callback import PrinterCallback

    assert not any(isinstance(c, PrinterCallback) for c in trainer.callback_handler.callbacks)  # no dict per step
    trainer.train()
    assert [r["step"] for r in rows] == [1, 2] and rows == callback.history
    for key in ("reward", "accuracy", "entropy", "completion_length", "frac_zero_std", "loss"):
        assert key in rows[0], key
    assert 0 <= rows[0]["accuracy"] <= 1 and min(r["frac_zero_std"] for r in rows) < 1
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all("lora_" in n for n in changed)


@pytest.mark.parametrize("steps", [1])
def test_the_benchmark_runs_both_trainers(steps, capsys):
    from course_lib.bench import main

    result = main(["grpo", "--steps", str(steps), "--prompts", "2", "--group", "2", "--max-new-tokens", "16"])
    assert result["ours_samples_per_s"] > 0 and result["trl_samples_per_s"] > 0
    assert result["trl_course_sampler_samples_per_s"] > 0
    assert "ratio (ours / TRL)" in capsys.readouterr().out


def test_the_step_benchmark_prints_a_roofline_line_per_batch_size(capsys):
    from course_lib.bench import main

    rows = main(["step", "--batch-sizes", "8,16"])
    assert [r["batch_size"] for r in rows] == [8, 16]
    for r in rows:
        assert 0 < r["floor_ms"] < r["ours_ms"] and r["unfused_ms"] > 0 and r["python_step_ms"] > 0
        assert r["ratio_to_floor"] == pytest.approx(r["ours_ms"] / r["floor_ms"])
        floors = [f for f in (r["torch_floor_ms"], r["blas_floor_ms"]) if f is not None]
        assert r["floor_ms"] == min(floors) and len(r["paired_ratios"]) == 5  # the faster floor; each round's ratio
    assert capsys.readouterr().out.count("floor (weight products alone)") == 2


def test_the_sampling_benchmark_times_both_samplers(capsys):
    from course_lib.bench import main

    rows = main(["sample", "--batch-sizes", "4", "--problems", "2", "--n", "2", "--max-new-tokens", "24"])
    assert rows[0]["completions"] == 4 and rows[0]["generate_per_s"] > 0 and rows[0]["ours_per_s"] > 0
    assert "ratio" in capsys.readouterr().out


def test_trls_rollouts_can_come_from_our_sampler(tmp_path):
    """With course_sampler=True, TRL's GRPOTrainer trains on the completions course_lib.sampling draws
    (the same ones, seed for seed) and on their log-probs."""
    from course_lib.prompts import format_prompt
    from course_lib.sampling import sample
    from course_lib.train.grpo_trl import course_rollouts

    profile = get_profile("pocket")
    model, tokenizer = load_policy(profile, lora=lora_config())
    problems = train_problems(profile, 4, max_steps=2)
    prompts = [format_prompt(tokenizer, p["question"]) for p in problems[:2]]
    rows = [p for p in prompts for _ in range(SETTINGS.group_size)]
    trainer = grpo_trainer(
        profile, model, tokenizer, problems, tmp_path, SETTINGS, disable_tqdm=True, course_sampler=True
    )
    out = course_rollouts(tokenizer, SETTINGS)(rows, trainer)
    expected = sample(
        model,
        tokenizer,
        prompts,
        n=SETTINGS.group_size,
        max_new_tokens=SETTINGS.max_new_tokens,
        seed=SETTINGS.seed * 1_000_003,
    )
    assert tokenizer.batch_decode(out["completion_ids"], skip_special_tokens=True) == expected.texts
    assert [len(ids) for ids in out["completion_ids"]] == [len(lp) for lp in out["logprobs"]]
    assert out["prompt_ids"][0] == tokenizer(prompts[0], add_special_tokens=False)["input_ids"]
    with pytest.raises(ValueError, match="in a row"):
        course_rollouts(tokenizer, SETTINGS)(prompts + prompts, trainer)
    trainer.train()
    lengths = [row["completions/mean_length"] for row in trainer.state.log_history if "completions/mean_length" in row]
    assert len(lengths) == SETTINGS.steps and all(0 < n <= SETTINGS.max_new_tokens for n in lengths)


def test_our_rollouts_follow_the_trainers_sampling_arguments_or_refuse_them(tmp_path):
    from course_lib.prompts import format_prompt
    from course_lib.sampling import sample
    from course_lib.train.grpo_trl import course_rollouts

    profile = get_profile("pocket")
    model, tokenizer = load_policy(profile, lora=lora_config())
    problems = train_problems(profile, 4, max_steps=2)
    trainer = grpo_trainer(
        profile,
        model,
        tokenizer,
        problems,
        tmp_path,
        SETTINGS,
        course_sampler=True,
        top_p=0.6,
        top_k=4,
        temperature=0.8,
    )
    prompts = [format_prompt(tokenizer, p["question"]) for p in problems[:2]]
    out = course_rollouts(tokenizer, SETTINGS)([p for p in prompts for _ in range(SETTINGS.group_size)], trainer)
    expected = sample(
        model,
        tokenizer,
        prompts,
        n=SETTINGS.group_size,
        temperature=0.8,
        top_p=0.6,
        top_k=4,
        max_new_tokens=SETTINGS.max_new_tokens,
        seed=SETTINGS.seed * 1_000_003,
    )
    assert tokenizer.batch_decode(out["completion_ids"], skip_special_tokens=True) == expected.texts
    for refused in (dict(repetition_penalty=1.2), dict(generation_kwargs={"no_repeat_ngram_size": 3})):
        with pytest.raises(ValueError, match="cannot honour"):
            grpo_trainer(profile, model, tokenizer, problems, tmp_path, SETTINGS, course_sampler=True, **refused)


# ----------------------------------------------------------------- SFT and ORPO (lessons 07-08)
def test_sft_config_trains_on_completions_at_a_constant_rate(tmp_path):
    from course_lib.train.recipes import rs_recipe
    from course_lib.train.sft import sft_config

    settings, lora = rs_recipe(get_profile("pocket"))
    args = sft_config(get_profile("pocket"), tmp_path, settings)
    assert args.completion_only_loss and not args.packing
    assert args.num_train_epochs == 1 and args.lr_scheduler_type == "constant"
    assert args.learning_rate == settings.learning_rate and args.use_cpu and not args.bf16
    gpu, gpu_lora = rs_recipe(get_profile("gpu", fast=False))
    assert (gpu.k, gpu.questions_per_round, gpu.rounds, gpu.epochs) == (8, 7473, 1, 1)  # Trelis's setting
    assert gpu_lora is not None and gpu.max_new_tokens == 512


def test_the_sft_collator_ignores_the_prompt(tmp_path, pocket):
    from course_lib.prompts import format_prompt
    from course_lib.train.recipes import rs_recipe
    from course_lib.train.sft import sft_trainer

    model, tokenizer = pocket
    settings, _ = rs_recipe(get_profile("pocket", fast=True))
    prompt = format_prompt(tokenizer, "Ana has 3 apples and buys 4 more. How many apples does Ana have?")
    trainer = sft_trainer(
        get_profile("pocket"),
        model,
        tokenizer,
        [{"prompt": prompt, "completion": "3+4 = 7\n#### 7"}],
        tmp_path,
        settings,
        progress=False,
    )
    batch = next(iter(trainer.get_train_dataloader()))
    n_prompt = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    completion = tokenizer("3+4 = 7\n#### 7", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    labels = batch["labels"][0]
    assert (labels[:n_prompt] == -100).all()
    assert labels[n_prompt : n_prompt + len(completion)].tolist() == completion


def test_no_rows_is_a_clear_error(tmp_path, pocket):
    from course_lib.train.orpo import orpo_trainer
    from course_lib.train.recipes import rs_recipe
    from course_lib.train.sft import sft_trainer

    model, tokenizer = pocket
    settings, _ = rs_recipe(get_profile("pocket", fast=True))
    with pytest.raises(ValueError, match="filter kept no sample"):
        sft_trainer(get_profile("pocket"), model, tokenizer, [], tmp_path, settings)
    with pytest.raises(ValueError, match="no preference pairs"):
        orpo_trainer(get_profile("pocket"), model, tokenizer, [], tmp_path)


def test_trl_orpo_with_lora_trains_only_the_adapters_and_streams_our_metric_names(tmp_path):
    from course_lib.models import load_pocket_model
    from course_lib.prompts import format_prompt
    from course_lib.train.orpo import orpo_trainer
    from course_lib.train.recipes import orpo_recipe
    from course_lib.train.trainers import ORPO_METRIC_NAMES

    profile = get_profile("pocket")
    model, tokenizer = load_pocket_model()
    settings, lora = orpo_recipe(get_profile("pocket", fast=True))
    settings = dataclasses.replace(settings, batch_size=2)
    prompt = format_prompt(tokenizer, "Max has 10 pens and gives away 6. How many pens does Max have left?")
    pairs = [
        {"prompt": prompt, "chosen": "10-6 = <<10-6=4>>4\n#### 4", "rejected": f"10+6 = <<10+6={n}>>{n}\n#### {n}"}
        for n in (16, 15, 14, 13)
    ]
    rows = []
    trainer = orpo_trainer(
        profile,
        model,
        tokenizer,
        pairs,
        tmp_path,
        settings,
        lora=lora,
        callbacks=[live_curves_callback(rows.append, names=ORPO_METRIC_NAMES)],
        progress=False,
    )
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    odds_before = log_odds_ratio(trainer.model, tokenizer, pairs)
    trainer.train()
    assert [r["step"] for r in rows] == [1, 2]
    for key in ORPO_METRIC_NAMES.values():
        assert key in rows[0], key
    changed = {n for n, p in trainer.model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all("lora_" in n for n in changed)
    assert log_odds_ratio(trainer.model, tokenizer, pairs) > odds_before  # chosen pulled away from rejected


@torch.no_grad()
def log_odds_ratio(model, tokenizer, pairs) -> float:
    """Mean log-odds ratio chosen/rejected of the pairs under ``model`` (via losses.orpo_loss)."""
    from course_lib.losses import encode_sequences, orpo_loss, per_token_logprobs

    prompts = [p["prompt"] for p in pairs]
    sides = []
    for side in ("chosen", "rejected"):
        enc = encode_sequences(tokenizer, prompts, [p[side] for p in pairs])
        sides += [
            per_token_logprobs(model, enc["input_ids"], enc["attention_mask"]),
            enc["completion_mask"][:, 1:].float(),
        ]
    return orpo_loss(*sides).metrics["log_odds_chosen"]


def test_load_teacher_is_the_stronger_pocket_model():
    from course_lib.models import POCKET_TEACHER_DIR, load_pocket_model, load_teacher

    teacher, _ = load_teacher(get_profile("pocket"))
    shipped, _ = load_pocket_model(POCKET_TEACHER_DIR)
    assert all(torch.equal(a, b) for a, b in zip(teacher.state_dict().values(), shipped.state_dict().values()))
    with pytest.raises(ValueError, match="teacher_model"):
        load_teacher(dataclasses.replace(get_profile("pocket"), teacher_model=None))


def test_trl_takes_micro_batches_that_divide_the_step_and_keeps_one_optimizer_step_per_generation(tmp_path):
    """TRL splits the P x G completions of a step into micro-batches by gradient accumulation: the
    largest size up to micro_batch_size that divides P x G (the laptop was killed for memory in one pass)."""
    from course_lib.train.grpo_trl import trl_micro_batches

    settings = GRPOSettings(steps=2, prompts_per_step=4, group_size=4, micro_batch_size=4)
    assert trl_micro_batches(settings) == (4, 4)
    assert trl_micro_batches(dataclasses.replace(settings, micro_batch_size=6)) == (4, 4)  # 6 does not divide 16
    assert trl_micro_batches(dataclasses.replace(settings, micro_batch_size=64)) == (16, 1)
    args = grpo_config(get_profile("pocket"), tmp_path, settings)
    assert (args.per_device_train_batch_size, args.gradient_accumulation_steps) == (4, 4)
    assert args.generation_batch_size == 16 and args.steps_per_generation == 4  # one generation per optimizer step
