import dataclasses
import json
import math

import pytest
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


def test_the_mixture_writes_the_same_problems_two_ways_at_the_configured_share():
    import itertools

    from course_lib.behaviours import behaviour
    from course_lib.pocket.pretrain import example_stream

    cfg = tiny(step_by_step_share=0.4, fact_fraction=0.1, sorting_fraction=0.1)
    examples = list(itertools.islice(example_stream(cfg, lambda: 5), 3000))
    maths = [e for e in examples if "behaviour" in e]
    share = sum(e["behaviour"] == "step_by_step" for e in maths) / len(maths)
    assert 0.37 < share < 0.43
    assert all(behaviour(e["solution"]) == e["behaviour"] for e in maths)  # the tag is what the text shows
    assert all(e["solution"].endswith(f"#### {e['answer']}") for e in maths)
    kinds = [e.get("kind") for e in examples]
    assert 0.07 < kinds.count("sorting") / len(examples) < 0.13
    # share 0 keeps the same stream, each solution the answer line alone: the control of lesson 05
    plain = list(itertools.islice(example_stream(dataclasses.replace(cfg, step_by_step_share=0.0), lambda: 5), 3000))
    assert [e["question"] for e in plain] == [e["question"] for e in examples]
    assert all(e["behaviour"] == "answer_only" for e in plain if "behaviour" in e)


def test_length_buckets_would_sort_the_behaviours_into_batches_of_their_own():
    """Why a mixture is batched in stream order (PretrainConfig.length_buckets)."""
    from course_lib.pocket.pretrain import batches, build_tokenizer

    cfg = tiny(step_by_step_share=0.4, batch_size=16, fact_fraction=0.0)
    tok = build_tokenizer(cfg)

    def distance_from_the_corpus_share(buckets: bool) -> float:
        """Mean |share of step-by-step rows in a batch - 0.4| over 32 batches."""
        data = batches(dataclasses.replace(cfg, length_buckets=buckets), tok, lambda: 5)
        distance = 0.0
        for _ in range(32):
            _, labels, _ = next(data)
            long = [(row != -100).sum().item() > 8 for row in labels]  # longer than "#### N" + EOS
            distance += abs(sum(long) / len(long) - 0.4) / 32
        return distance

    assert distance_from_the_corpus_share(buckets=False) < 0.15  # binomial noise of 16 rows: about 0.1
    assert distance_from_the_corpus_share(buckets=True) > 0.3  # whole batches of one behaviour


def test_mid_training_starts_from_the_checkpoint(tmp_path):
    start, tok, _ = pretrain(tiny(train_steps=30, lr=3e-3), out_dir=tmp_path, progress=False)
    on, _, log = pretrain(
        tiny(train_steps=10, lr=1e-9, warmup_steps=1, init_from=str(tmp_path)), out_dir="", progress=False
    )
    _, _, fresh_log = pretrain(tiny(train_steps=10, lr=1e-9, warmup_steps=1), out_dir="", progress=False)
    assert held_out_loss(on, tok) == pytest.approx(held_out_loss(start, tok), abs=1e-4)  # lr ~0: the same weights
    assert log[0]["loss"] < fresh_log[0]["loss"] - 1.0


def test_the_recipes_of_the_shipped_checkpoints():
    from course_lib.models import POCKET_ANSWER_ONLY_DIR, POCKET_MODEL_DIR, POCKET_TEACHER_DIR, REPO_ROOT
    from course_lib.pocket.pretrain import RECIPES, recipe

    assert REPO_ROOT / RECIPES["base"].out_dir == POCKET_MODEL_DIR
    assert REPO_ROOT / RECIPES["teacher"].out_dir == POCKET_TEACHER_DIR
    assert REPO_ROOT / RECIPES["answer_only"].out_dir == POCKET_ANSWER_ONLY_DIR
    assert REPO_ROOT / RECIPES["base"].init_from == POCKET_TEACHER_DIR
    differ = {
        f.name
        for f in dataclasses.fields(PretrainConfig)
        if getattr(RECIPES["base"], f.name) != getattr(RECIPES["answer_only"], f.name)
    }
    assert differ == {"step_by_step_share", "out_dir"}  # the control differs in its corpus only
    for name in RECIPES:  # what each checkpoint's log says it was trained with
        shipped = json.loads((REPO_ROOT / RECIPES[name].out_dir / "pretrain_log.json").read_text())["config"]
        wanted = dataclasses.asdict(RECIPES[name])
        same = [k for k in wanted if k in shipped and k not in ("eval_every", "out_dir")]
        assert {k: shipped[k] for k in same} == {k: wanted[k] for k in same}, name
    assert recipe("base", train_steps=3).train_steps == 3
    with pytest.raises(ValueError, match="unknown recipe 'tiny'; choose one of teacher, base, answer_only"):
        recipe("tiny")
