"""course_lib.train.rejection_sampling: filtering, pairs, yields, and a real expert-iteration run."""

import pytest
import torch

from course_lib.train.expert_iteration import RSSettings, expert_iteration
from course_lib.train.rejection_sampling import (
    SampledPool,
    gold_records,
    pool_yield,
    preference_pairs,
    sample_pool,
    sft_records,
)


def hand_pool() -> SampledPool:
    """Three questions x 4 samples: one all right (with duplicates), one mixed, one all wrong."""
    problems = [{"question": "q1", "answer": "7"}, {"question": "q2", "answer": "4"}, {"question": "q3", "answer": "9"}]
    texts = [
        ["a\n#### 7", "a\n#### 7", "b\n#### 7", "c\n#### 7"],
        ["x\n#### 4", "y\n#### 5", "z\n#### 6", "x\n#### 4"],
        ["u\n#### 1", "v\n#### 2", "w\n#### 3", "t\n#### 8"],
    ]
    correct = [[True] * 4, [True, False, False, True], [False] * 4]
    return SampledPool(problems, ["P1", "P2", "P3"], texts, correct)


def test_sft_records_keep_only_correct_dedup_and_cap():
    pool = hand_pool()
    every = sft_records(pool, dedup=False)
    assert [r["completion"] for r in every] == ["a\n#### 7"] * 2 + ["b\n#### 7", "c\n#### 7"] + ["x\n#### 4"] * 2
    unique = sft_records(pool, dedup=True)
    assert [(r["prompt"], r["completion"]) for r in unique] == [
        ("P1", "a\n#### 7"),
        ("P1", "b\n#### 7"),
        ("P1", "c\n#### 7"),
        ("P2", "x\n#### 4"),
    ]
    capped = sft_records(pool, dedup=True, max_per_question=2)
    assert [r["completion"] for r in capped] == ["a\n#### 7", "b\n#### 7", "x\n#### 4"]


def test_yield_counts_what_the_filter_lets_through():
    pool = hand_pool()
    row = pool_yield(pool, sft_records(pool, max_per_question=2))
    assert row == {
        "questions": 3,
        "solved": 2,
        "solved_share": pytest.approx(2 / 3),
        "samples": 12,
        "correct": 6,
        "correct_share": 0.5,
        "distinct": 4,
        "kept": 3,
    }
    assert pool.mixed() == 1


def test_pairs_come_from_the_same_question_correct_over_wrong():
    pool = hand_pool()
    pairs = preference_pairs(pool, pairs_per_question=3, seed=0)
    assert {p["prompt"] for p in pairs} == {"P2"}  # only the mixed question gives pairs
    assert all(p["chosen"] == "x\n#### 4" for p in pairs)  # its one distinct correct answer
    # no wrong answer is reused while a distinct one is left: 2 distinct wrong -> 2 pairs, not 3
    assert sorted(p["rejected"] for p in pairs) == ["y\n#### 5", "z\n#### 6"]
    assert preference_pairs(pool, 3, seed=0) == pairs  # reproducible


def test_gold_records_use_the_reference_solution(pocket):
    _, tokenizer = pocket
    rows = gold_records([{"question": "Q?", "answer": "3", "solution": "1+2 = 3\n#### 3"}], tokenizer)
    assert rows[0]["completion"] == "1+2 = 3\n#### 3" and rows[0]["prompt"].endswith("<|assistant|>\n")


def test_settings_refuse_nonsense():
    with pytest.raises(ValueError, match="rounds"):
        RSSettings(rounds=0)
    with pytest.raises(ValueError, match="max_per_question"):
        RSSettings(max_per_question=0)


def test_sample_pool_grades_each_sample(pocket):
    from course_lib.data import pocket_math

    model, tokenizer = pocket
    problems = pocket_math.generate(3, "train", seed=5, max_steps=1)
    pool = sample_pool(model, tokenizer, problems, k=4, max_new_tokens=48, seed=0, progress=False)
    assert len(pool.texts) == 3 and all(len(t) == 4 for t in pool.texts)
    from course_lib.rewards import is_correct

    assert pool.correct == [[is_correct(t, p["answer"]) for t in ts] for p, ts in zip(problems, pool.texts)]
    again = sample_pool(model, tokenizer, problems, k=4, max_new_tokens=48, seed=0, progress=False)
    assert again.texts == pool.texts  # seeded


def _two_rounds(model, tokenizer, output_dir, **options):
    """Two real rounds of expert iteration with LoRA on 6 fresh pocket-math questions each (k = 4)."""
    from course_lib.config import get_profile
    from course_lib.data import pocket_math
    from course_lib.models import lora_config

    settings = RSSettings(rounds=2, questions_per_round=6, k=4, max_new_tokens=64, batch_size=4, learning_rate=1e-3)
    return expert_iteration(
        model,
        tokenizer,
        get_profile("pocket"),
        settings,
        lambda r: pocket_math.generate(6, "train", seed=10 + r, max_steps=2),
        output_dir,
        lora=lora_config(),
        progress=False,
        **options,
    )


def test_expert_iteration_two_rounds_with_lora(tmp_path):
    """Two real rounds (sample -> filter -> TRL SFT with LoRA): the yield table has a row per
    round, only the adapter's weights move, and the second round samples from the trained model."""
    from course_lib.models import load_pocket_model

    model, tokenizer = load_pocket_model()
    base = {k: v.clone() for k, v in model.state_dict().items()}
    seen = []
    trained, yields = _two_rounds(model, tokenizer, tmp_path, on_round=seen.append)
    assert list(yields.index) == [1, 2] and len(seen) == 2
    assert (yields["solved"] > 0).all() and (yields["kept"] <= 4 * 6).all()
    assert (yields["sft_steps"] > 0).all() and yields["sft_loss"].notna().all()
    merged = trained.merge_and_unload()
    moved = [k for k, v in merged.state_dict().items() if not torch.equal(v, base[k])]
    assert moved and all(any(t in k for t in ("q_proj", "k_proj", "v_proj", "o_proj")) for k in moved)


def test_a_round_that_keeps_nothing_trains_nothing_and_the_next_one_still_gets_the_adapter(tmp_path):
    from course_lib.config import get_profile
    from course_lib.data import pocket_math
    from course_lib.models import load_pocket_model, lora_config

    model, tokenizer = load_pocket_model()
    base = {k: v.clone() for k, v in model.state_dict().items()}
    unsolvable = [dict(p, answer="-12345") for p in pocket_math.generate(4, "train", seed=3, max_steps=1)]
    easy = pocket_math.generate(4, "train", seed=4, max_steps=1)
    settings = RSSettings(rounds=2, questions_per_round=4, k=4, max_new_tokens=48, batch_size=4, learning_rate=1e-3)
    trained, yields = expert_iteration(
        model,
        tokenizer,
        get_profile("pocket"),
        settings,
        lambda r: unsolvable if r == 0 else easy,
        tmp_path,
        lora=lora_config(),
        progress=False,
    )
    assert yields.loc[1, "kept"] == 0 and yields.loc[1, "sft_steps"] == 0
    assert yields.loc[2, "kept"] > 0 and yields.loc[2, "sft_steps"] > 0
    merged = trained.merge_and_unload()
    moved = [k for k, v in merged.state_dict().items() if not torch.equal(v, base[k])]
    assert moved and all(any(t in k for t in ("q_proj", "k_proj", "v_proj", "o_proj")) for k in moved)


def test_a_pool_from_a_saved_evaluation_grades_every_completion():
    from course_lib.evaluation import EvalResult, score_problems, summarize

    problems = [{"question": "q0", "answer": "7"}, {"question": "q1", "answer": "3"}]
    completions = [["#### 7", "#### 7", "#### 1"], ["#### 4", "no answer", "#### 5"]]
    per_problem = score_problems(problems, completions, 3)
    pool = SampledPool.from_result(EvalResult(summarize(per_problem, 3), per_problem, completions, 3), ["p0", "p1"])
    assert pool.problems == problems and pool.prompts == ["p0", "p1"] and pool.k == 3
    assert pool.correct == [[True, True, False], [False, False, False]]
    assert pool_yield(pool, sft_records(pool)) == {
        "questions": 2,
        "solved": 1,
        "solved_share": 0.5,
        "samples": 6,
        "correct": 2,
        "correct_share": 2 / 6,
        "distinct": 1,
        "kept": 1,
    }


@pytest.mark.parametrize("restart", [False, True], ids=["continue-one-adapter", "restart-from-base"])
def test_expert_iteration_continues_one_adapter_or_restarts_each_round_from_the_base(tmp_path, monkeypatch, restart):
    """Continuing: round 2 trains round 1's model further (no new adapter). Restarting (STaR, ReST-EM):
    round 2 trains a fresh copy of the untouched base with a new adapter, on samples from round 1's model."""
    from course_lib.models import load_pocket_model
    from course_lib.train import expert_iteration as module

    model, tokenizer = load_pocket_model()
    base = {k: v.clone() for k, v in model.state_dict().items()}
    trained_by_round, sampled_from = [], []
    real_trainer, real_pool = module.sft_trainer, module.sample_pool

    def spy_trainer(profile, round_model, tok, records, out, settings, lora=None, progress=True):
        start = {k: v.clone() for k, v in round_model.state_dict().items()}  # before the trainer wraps it
        trainer = real_trainer(profile, round_model, tok, records, out, settings, lora=lora, progress=progress)
        trained_by_round.append(
            {"model": round_model, "start": start, "new_adapter": lora is not None, "trained": trainer.model}
        )
        return trainer

    def spy_pool(source, *args, **kwargs):
        sampled_from.append(source)
        return real_pool(source, *args, **kwargs)

    monkeypatch.setattr(module, "sft_trainer", spy_trainer)
    monkeypatch.setattr(module, "sample_pool", spy_pool)
    trained, _ = _two_rounds(model, tokenizer, tmp_path, restart_from_base=restart)
    first, second = trained_by_round
    assert sampled_from[1] is first["trained"], "round 2 samples from the model round 1 trained, either way"
    assert trained is second["trained"]
    if restart:
        assert second["new_adapter"] and second["model"] is not first["trained"]
        assert second["start"].keys() == base.keys(), "round 2 must start from a model without an adapter"
        assert all(torch.equal(second["start"][k], base[k]) for k in base), "round 2 must start from the base"
    else:
        assert not second["new_adapter"] and second["model"] is first["trained"]
