import dataclasses
import math

import torch

from course_lib.pocket.pretrain import PretrainConfig, collate, encode, lr_at, pretrain


def tiny(**kw):
    base = dict(
        train_steps=6,
        batch_size=4,
        warmup_steps=2,
        hidden_size=32,
        num_layers=1,
        num_heads=2,
        intermediate_size=64,
        eval_every=0,
        save_every=0,
    )
    return PretrainConfig(**{**base, **kw})


def held_out_loss(model, tok) -> float:
    from course_lib.data import pocket_math

    pairs = [encode(tok, p) for p in pocket_math.pocket_test_set(16)]
    input_ids, labels, mask = collate(pairs, tok.pad_token_id)
    with torch.no_grad():
        return float(model(input_ids=input_ids, attention_mask=mask, labels=labels).loss)


def test_same_seed_same_run_and_held_out_loss_falls(tmp_path):
    cfg = tiny(train_steps=30, lr=3e-3)
    model, tok, log_a = pretrain(cfg, out_dir=tmp_path, progress=False)
    untrained, _, log_b = pretrain(dataclasses.replace(cfg, train_steps=0), out_dir="", progress=False)
    _, _, log_c = pretrain(cfg, out_dir="", progress=False)
    assert [r["loss"] for r in log_a] == [r["loss"] for r in log_c]
    assert held_out_loss(model, tok) < held_out_loss(untrained, tok) - 1.0
    assert (tmp_path / "model.safetensors").is_file() and (tmp_path / "pretrain_log.json").is_file()
    from course_lib.models import load_pocket_model

    model, tok = load_pocket_model(tmp_path)
    assert model.config.hidden_size == 32 and tok.chat_template


def test_other_seed_other_run():
    _, _, a = pretrain(tiny(train_steps=10), out_dir="", progress=False)
    _, _, b = pretrain(tiny(train_steps=10, seed=1), out_dir="", progress=False)
    assert a[-1]["loss"] != b[-1]["loss"]


def test_loss_only_on_the_answer():
    from course_lib.pocket.pretrain import build_tokenizer

    tok = build_tokenizer(tiny())
    ids, labels = encode(tok, {"question": "Q 1+1?", "solution": "1+1 = 2\n#### 2"})
    masked = [i for i, label in enumerate(labels) if label == -100]
    assert masked == list(range(len(masked)))  # a prefix: the prompt
    assert tok.decode([i for i, label in zip(ids, labels) if label != -100]) == "1+1 = 2\n#### 2<|end|>"
    input_ids, lab, mask = collate([(ids, labels), (ids[:5], labels[:5])], tok.pad_token_id)
    assert input_ids.shape == lab.shape == mask.shape == (2, len(ids))
    assert mask[1].sum() == 5 and (lab[1, 5:] == -100).all()


def test_learning_rate_schedule():
    cfg = PretrainConfig(train_steps=1000, warmup_steps=100, lr=1e-3, min_lr_ratio=0.1)
    assert lr_at(0, cfg) == 1e-5 and lr_at(99, cfg) == 1e-3
    assert math.isclose(lr_at(999, cfg), 1e-4, rel_tol=1e-3)
    assert all(lr_at(s, cfg) >= lr_at(s + 1, cfg) for s in range(100, 999))


def test_config_that_cannot_train_is_rejected_clearly():
    import pytest

    with pytest.raises(ValueError, match=r"hidden_size \(100\) must be a multiple of num_heads \(3\)"):
        PretrainConfig(hidden_size=100, num_heads=3)
    with pytest.raises(ValueError, match="min_steps"):
        PretrainConfig(min_steps=4, max_steps=2)
