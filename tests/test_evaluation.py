import itertools
import math

import numpy as np
import pytest
import torch

from course_lib.evaluation import (
    EvalResult,
    HeldOutProbe,
    before_after,
    bootstrap_ci,
    consistency_at_k,
    evaluate,
    evaluate_profile,
    facts_probe,
    load_result,
    maj_at_k,
    majority_answer,
    paired_pass_at_k,
    pass_at_k,
    pass_at_k_curve,
    save_result,
    score_problems,
    summarize,
    wilson_interval,
)


def brute_force_pass_at_k(n, c, k):
    """Share of all k-subsets of the n samples that contain at least one correct one."""
    samples = [1] * c + [0] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(samples[i] for i in s) for s in subsets) / len(subsets)


@pytest.mark.parametrize("n,c,k", [(8, 0, 1), (8, 3, 1), (8, 3, 4), (8, 6, 3), (10, 1, 8), (5, 5, 2)])
def test_pass_at_k_matches_enumeration(n, c, k):
    assert pass_at_k(n, c, k) == pytest.approx(brute_force_pass_at_k(n, c, k))


def test_pass_at_k_special_cases():
    assert pass_at_k(8, 3, 1) == pytest.approx(3 / 8)  # pass@1 is per-sample accuracy
    assert pass_at_k(8, 1, 8) == 1.0 and pass_at_k(8, 0, 8) == 0.0
    assert pass_at_k(200, 10, 100) == pytest.approx(1 - math.comb(190, 100) / math.comb(200, 100))
    with pytest.raises(ValueError):
        pass_at_k(4, 5, 1)


def test_majority_vote_differs_from_consistency():
    # 3 of 8 correct, the 5 wrong answers all disagree: maj@8 right, consistency@8 wrong.
    answers = ["7", "7", "7", "1", "2", "3", "4", None]
    correct = [a == "7" for a in answers]
    assert majority_answer(answers) == "7" and maj_at_k(answers, "7", 8)
    assert not consistency_at_k(correct, 8)
    # 5 of 8 correct: both agree.
    assert consistency_at_k([True] * 5 + [False] * 3, 8)
    assert not consistency_at_k([True] * 4 + [False] * 4, 8)
    assert majority_answer([None, None]) is None and not maj_at_k([None], "1", 1)


def test_a_tie_goes_to_the_tied_answer_that_appears_first():
    """ "5" reaches two votes first (third sample), "2" appears first: the vote goes to "2"."""
    assert majority_answer(["2", "5", "5", "2"]) == "2"


def test_score_and_summarize():
    problems = [{"question": "a", "answer": "1"}, {"question": "b", "answer": "2"}]
    completions = [["#### 1", "#### 1", "#### 3", "#### 1"], ["#### 5", "#### 5", "#### 2", "x"]]
    per_problem = score_problems(problems, completions, k=4)
    assert list(per_problem["n_correct"]) == [3, 1]
    assert list(per_problem["maj@k"]) == [1.0, 0.0]
    assert list(per_problem["consistency@k"]) == [1.0, 0.0]
    summary = summarize(per_problem, k=4)
    assert summary.loc["per_sample_accuracy", "value"] == pytest.approx(0.5)
    assert summary.loc["pass@4", "value"] == 1.0
    assert summary.loc["maj@4", "value"] == 0.5
    for _, row in summary.iterrows():
        assert row["ci_low"] <= row["value"] <= row["ci_high"]


def test_intervals():
    values = np.r_[np.ones(30), np.zeros(70)]
    low, high = bootstrap_ci(values, seed=0)
    assert low < 0.3 < high and high - low < 0.25
    assert bootstrap_ci(values, seed=0) == (low, high)  # seeded
    wl, wh = wilson_interval(30, 100)
    assert wl == pytest.approx(0.2189, abs=1e-3) and wh == pytest.approx(0.3958, abs=1e-3)


def test_evaluate_pocket_model(pocket):
    from course_lib.data import pocket_math

    model, tok = pocket
    problems = pocket_math.pocket_test_set(6, min_steps=1, max_steps=1)
    result = evaluate(model, tok, problems, k=4, max_new_tokens=120, progress=False)
    assert list(result.summary.index) == ["per_sample_accuracy", "pass@4", "maj@4", "consistency@4"]
    assert len(result.per_problem) == 6 and all(len(c) == 4 for c in result.completions)
    # pass@k >= per-sample accuracy, always.
    assert result.value("pass@4") >= result.value("per_sample_accuracy")
    # one-step problems are easy for the pocket model when it works step by step (lesson 01)
    from course_lib.behaviours import result_table

    table = result_table(result)
    assert table.loc["step_by_step", "n"] >= 3 and table.loc["step_by_step", "accuracy"] >= 0.8


def test_evaluate_profile_uses_every_setting_of_the_profile(pocket):
    import dataclasses

    from course_lib.config import get_profile
    from course_lib.data import pocket_math

    model, tok = pocket
    problems = pocket_math.pocket_test_set(4, min_steps=1, max_steps=2)
    profile = dataclasses.replace(
        get_profile("pocket"), eval_k=3, temperature=0.7, max_new_tokens=60, sample_batch_size=5, system_prompt=None
    )
    ours = evaluate_profile(model, tok, problems, profile, seed=2, progress=False)
    direct = evaluate(
        model,
        tok,
        problems,
        k=3,
        temperature=0.7,
        max_new_tokens=60,
        batch_size=5,
        seed=2,
        system_prompt=None,
        progress=False,
    )
    assert ours.completions == direct.completions and ours.summary.equals(direct.summary)

    table = before_after(direct, ours)
    assert list(table.columns) == ["before", "after", "change (points)", "change_low", "change_high", "verdict"]
    assert (table["change (points)"] == 0).all() and (table["verdict"] == "cannot tell").all()


def result_from(problems, n_correct: list[int], n: int = 8):
    """An EvalResult whose i-th problem has n_correct[i] right answers out of n."""
    completions = [["#### 1"] * c + ["#### 0"] * (n - c) for c in n_correct]
    per_problem = score_problems(problems, completions, k=n)
    return EvalResult(summarize(per_problem, n), per_problem, completions, n)


def test_before_after_carries_the_paired_change_and_its_interval():
    problems = [{"question": f"q{i}", "answer": "1"} for i in range(40)]
    before = result_from(problems, [i % 4 for i in range(40)])
    after = result_from(problems, [min(8, i % 4 + 3) for i in range(40)])  # every problem 3 more right
    table = before_after(before, after)
    row = table.loc["per_sample_accuracy"]
    assert row["change (points)"] == pytest.approx(100 * 3 / 8)
    assert row["change_low"] == pytest.approx(100 * 3 / 8) and row["verdict"] == "better"  # the same gain everywhere
    assert row["after"] - row["before"] == pytest.approx(3 / 8)
    with pytest.raises(ValueError, match="different problems"):
        before_after(before, result_from(problems[::-1], [0] * 40))


def test_pass_at_k_curve_rises_with_k_and_ends_at_any_correct():
    problems = [{"question": f"q{i}", "answer": "1"} for i in range(20)]
    result = result_from(problems, [0, 1, 2, 8] * 5)
    curve = pass_at_k_curve(result)
    assert list(curve.index) == [1, 2, 4, 8]
    assert curve["pass@k"].is_monotonic_increasing
    assert curve.loc[1, "pass@k"] == pytest.approx(result.value("per_sample_accuracy"))
    assert curve.loc[8, "pass@k"] == pytest.approx(0.75)  # all but the problems with no correct sample
    table = paired_pass_at_k(result, result_from(problems, [1, 1, 2, 8] * 5), ks=[1, 8])
    assert table.loc[8, "change (points)"] == pytest.approx(25.0) and table.loc[1, "change (points)"] > 0


def test_a_saved_evaluation_comes_back_rescored_with_what_produced_it(tmp_path):
    problems = [{"question": "q0", "answer": "7"}, {"question": "q1", "answer": "1,000"}]
    completions = [["#### 7", "#### 8"], ["so 1000 in all\n#### 1,000", "no final line, 999"]]
    per_problem = score_problems(problems, completions, 2)
    result = EvalResult(summarize(per_problem, 2), per_problem, completions, 2)
    path = save_result(result, tmp_path / "base.json.gz", {"model": "m", "seconds": 3.0})
    back, about = load_result(path)
    assert about == {"model": "m", "seconds": 3.0} and back.completions == completions and back.k == 2
    assert back.per_problem.n_correct.tolist() == [1, 1]
    assert back.summary.equals(result.summary)
    with pytest.raises(FileNotFoundError, match="python -m course_lib evaluate"):
        load_result(tmp_path / "missing.json.gz")


def test_the_held_out_probe_adds_its_numbers_to_the_row_without_touching_training(pocket):
    from course_lib.data import pocket_math

    model, tok = pocket
    probe = HeldOutProbe(model, tok, pocket_math.pocket_test_set(3), every=2, k=2, max_new_tokens=40)
    state = torch.get_rng_state()
    rows = [{"step": s} for s in (1, 2, 3)]
    for row in rows:
        probe(row)
    assert torch.equal(state, torch.get_rng_state())  # its sampling has its own generator
    assert "heldout_accuracy" in rows[0] and "heldout_accuracy" in rows[1] and "heldout_accuracy" not in rows[2]
    shares = [rows[0][f"heldout_{name}"] for name in ("answer_only", "step_by_step", "other")]
    assert sum(shares) == pytest.approx(1.0) and probe.seconds > 0
    assert rows[0]["heldout_accuracy"] == rows[1]["heldout_accuracy"]  # the same model, the same seeded samples


def test_facts_probe_beats_chance(pocket):
    from course_lib.data import facts

    model, tok = pocket
    probe = facts.probe_set(facts.build_knowledge_base())[:30]
    scores = facts_probe(model, tok, probe)
    assert scores["n_items"] == 30 and 0.09 < scores["chance"] < 0.13
    assert scores["accuracy"] > 2 * scores["chance"]


def test_saved_summaries_never_mix_profiles_or_evaluation_sizes(tmp_path):
    from course_lib.config import get_profile
    from course_lib.evaluation import EvalResult, save_summary, saved_values, score_problems, summarize

    problems = [{"question": "q", "answer": "7"}, {"question": "r", "answer": "3"}]
    per_problem = score_problems(problems, [["#### 7", "#### 1"], ["#### 3", "#### 3"]], k=2)
    result = EvalResult(summarize(per_problem, k=2), per_problem, [], 2)
    full, fast = get_profile("pocket", fast=False), get_profile("pocket", fast=True)
    save_summary(result, "sft_rs", full, tmp_path)
    found = saved_values({"SFT-RS": "sft_rs", "ORPO": "orpo"}, full, tmp_path)
    assert list(found) == ["SFT-RS"] and found["SFT-RS"]["per_sample_accuracy"] == 0.75
    assert saved_values({"SFT-RS": "sft_rs"}, fast, tmp_path) == {}  # a fast run is not a full run
    assert saved_values({"SFT-RS": "sft_rs"}, get_profile("gpu", fast=False), tmp_path) == {}


def test_paired_difference_is_narrower_than_separate_intervals_when_problems_vary():
    from course_lib.evaluation import bootstrap_ci, paired_difference

    rng = np.random.default_rng(0)
    difficulty = rng.uniform(0, 1, size=300)  # shared by both models: the problems
    before = (rng.uniform(size=300) > difficulty).astype(float)
    after = np.where(rng.uniform(size=300) < 0.1, 1.0, before)  # fixes about 10 % of its misses
    change = paired_difference(after, before)
    assert change.points == pytest.approx(100 * (after.mean() - before.mean()))
    assert change.ci_low > 0  # the paired interval sees the gain ...
    low_a, _ = bootstrap_ci(after)
    _, high_b = bootstrap_ci(before)
    assert low_a < high_b  # ... which the separate intervals hide


def test_paired_difference_matches_a_brute_force_paired_bootstrap_and_is_seeded():
    from course_lib.evaluation import paired_difference

    rng = np.random.default_rng(1)
    p = rng.uniform(size=120)  # each problem's difficulty, shared by both models
    before = rng.binomial(8, p) / 8  # per-sample accuracy over 8 samples, per problem
    after = rng.binomial(8, np.clip(p + 0.1, 0, 1)) / 8
    diffs = 100 * (after - before)
    # Brute force: resample problems 20,000 times, mean of the paired differences, 2.5 % and 97.5 % points.
    means = np.sort(diffs[rng.integers(0, 120, size=(20_000, 120))].mean(axis=1))
    low, high = means[500], means[19_499]
    change = paired_difference(after, before, n_boot=4000, seed=3)
    assert change.ci_low == pytest.approx(low, abs=1.0) and change.ci_high == pytest.approx(high, abs=1.0)
    assert change.ci_low < change.points < change.ci_high
    assert paired_difference(after, before, seed=3) == paired_difference(after, before, seed=3)  # seeded
    assert paired_difference(after, before, seed=3) != paired_difference(after, before, seed=4)
