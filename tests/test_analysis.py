import pytest
import torch

from course_lib.analysis import ending, ending_table, group_summary, reward_table
from course_lib.losses import samples_logprobs
from course_lib.rewards import TRELIS_SHAPED_REWARD
from course_lib.sampling import Samples


def fake_samples(texts: list[str], n: int) -> Samples:
    """Samples with given texts (token ids are placeholders of length 3 + row index)."""
    rows = len(texts)
    mask = torch.zeros(rows, 12, dtype=torch.long)
    for r in range(rows):
        mask[r, : 3 + r] = 1
    return Samples(
        [f"p{i}" for i in range(rows // n)],
        n,
        texts,
        [r // n for r in range(rows)],
        torch.zeros(rows, 12, dtype=torch.long),
        mask,
        torch.zeros(rows, 12),
    )


def test_reward_table_and_group_summary():
    problems = [
        {"question": "q0", "answer": "7", "n_steps": 2},
        {"question": "q1", "answer": "5", "solution": "a\nb\nc\n#### 5"},
    ]  # GSM8K-style: steps from lines
    samples = fake_samples(["x\n#### 7", "x\n#### 7", "#### 4", "x\n#### 4"], n=2)
    table = reward_table(samples, problems, TRELIS_SHAPED_REWARD)
    assert table.correct.tolist() == [True, True, False, False]
    assert table.tokens.tolist() == [3, 4, 5, 6]
    assert table.total.tolist() == [4.0, 4.0, 1.0, 2.0]  # Trelis's shape pays format to wrong answers
    assert table.n_steps.tolist() == [2, 2, 3, 3]
    groups = group_summary(table)
    assert groups.zero_variance.tolist() == [True, False]
    assert groups.n_correct.tolist() == [2, 0]
    assert group_summary(table, reward="correctness").zero_variance.tolist() == [True, True]
    assert groups.reward_std.iloc[1] == pytest.approx(torch.tensor([1.0, 2.0]).std().item())


def test_endings_of_a_real_models_completions():
    """SmolLM2's failures: the final line written many times (the last one cut off), none at all."""
    texts = ["2 + 3 = 5\n#### 5", "#### 10800\n#### 10800\n#### 108", "So she has 12 left.", "I think it is"]
    assert [ending(t) for t in texts] == ["one final line", "final line repeated", "no final line", "no final line"]
    problems = [{"answer": "5"}, {"answer": "10800"}, {"answer": "12"}, {"answer": "3"}]
    table = reward_table(fake_samples(texts, n=1), problems)  # tokens: 3, 4, 5, 6
    summary = ending_table(table, budget=5)
    assert list(summary.index) == ["one final line", "final line repeated", "no final line"]
    assert summary.completions.tolist() == [1, 1, 2]
    assert summary["cut at the budget"].tolist() == [0.0, 0.0, 1.0]
    assert summary["answer extracted"].tolist() == [1.0, 1.0, 0.5]  # the last number, where there is one
    assert summary.correct.tolist() == [1.0, 0.0, 0.5]  # the cut-off last marker reads 108, not 10800


def test_reward_table_checks_problem_count():
    with pytest.raises(ValueError, match="2 prompts were sampled but 1 problems"):
        reward_table(fake_samples(["a", "b"], n=1), [{"answer": "1"}])


def test_samples_logprobs_are_the_sampling_logprobs_with_gradients(pocket):
    from course_lib.sampling import sample

    model, tok = pocket
    prompts = [
        "<|begin|><|user|>\nTom has 3 apples and buys 4. How many?\n<|assistant|>\n",
        "<|begin|><|user|>\n5 birds and 2 more?\n<|assistant|>\n",
    ]
    samples = sample(model, tok, prompts, n=2, max_new_tokens=20, seed=0)
    logps = samples_logprobs(model, tok, samples)
    assert logps.requires_grad and logps.shape == samples.logprobs.shape
    torch.testing.assert_close(logps.detach(), samples.logprobs, atol=1e-4, rtol=1e-4)


def test_kl_estimator_table_k3_unbiased_and_non_negative_k2_biased():
    from course_lib.analysis import kl_estimator_table

    table = kl_estimator_table(shifts=(0.25, 2.0), n_samples=20_000)
    far = table[table["shift"] == 2.0].set_index("estimator")
    assert abs(far.loc["k3", "bias"]) < 0.1 * far.loc["k3", "exact_kl"]
    assert far.loc["k2", "bias"] > 0.2 * far.loc["k2", "exact_kl"]
    assert far.loc["k1", "share_negative"] > 0 and far.loc["k3", "share_negative"] == 0


def test_the_kl_table_and_the_kl_explorer_agree_at_the_same_shift():
    from course_lib.analysis import kl_estimator_samples, kl_estimator_table

    row = kl_estimator_table(shifts=(0.5,)).set_index("estimator")
    samples = kl_estimator_samples(0.5)
    assert row["exact_kl"].iloc[0] == samples["exact"]
    assert [row.loc[k, "mean"] for k in ("k1", "k2", "k3")] == [float(samples[k].mean()) for k in ("k1", "k2", "k3")]
