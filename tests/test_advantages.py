import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from course_lib.advantages import group_advantages


def test_a_worked_example():
    # group 1: one right answer of four; group 2: all wrong
    adv, zero = group_advantages([1, 0, 0, 0, 0, 0, 0, 0], group_size=4, eps=0.0)
    std = math.sqrt(0.75 * 0.25 * 4 / 3)  # unbiased std of (1, 0, 0, 0)
    assert adv[:4].tolist() == pytest.approx([0.75 / std, -0.25 / std, -0.25 / std, -0.25 / std])
    assert adv[4:].tolist() == [0.0] * 4
    assert zero.tolist() == [False, True]


def test_population_std_is_smaller_by_sqrt_g_minus_1_over_g():
    r = [1.0, 0.0, 1.0, 1.0, 0.0, 0.0]
    unbiased = group_advantages(r, 6, eps=0.0).advantages
    population = group_advantages(r, 6, eps=0.0, unbiased=False).advantages
    torch.testing.assert_close(population, unbiased * math.sqrt(6 / 5))


def test_scale_none_only_centres():
    adv, _ = group_advantages([2.0, 0.0, 1.0, 1.0], 2, scale="none")
    assert adv.tolist() == [1.0, -1.0, 0.0, 0.0]


def test_batch_scale_divides_by_the_std_of_all_rewards():
    r = torch.tensor([2.0, 0.0, 1.0, 1.0, 5.0, 3.0])
    adv, _ = group_advantages(r, 2, scale="batch", eps=0.0)
    centred = torch.tensor([1.0, -1.0, 0.0, 0.0, 1.0, -1.0])
    torch.testing.assert_close(adv, centred / r.std())


def test_order_is_kept():
    r = torch.tensor([3.0, 1.0, 2.0, 7.0, 9.0, 8.0])
    adv, _ = group_advantages(r, 3)
    assert torch.equal(adv.view(2, 3).argsort(dim=1), r.view(2, 3).argsort(dim=1))
    assert adv[1] < adv[2] < adv[0] and adv[3] < adv[5] < adv[4]


def test_group_of_one_and_constant_groups_give_zero_never_nan():
    adv, zero = group_advantages([5.0, 2.0], 1)
    assert adv.tolist() == [0.0, 0.0] and zero.all()
    adv, zero = group_advantages([0.1] * 8, 4, eps=0.0)  # 0/0 without the mask
    assert adv.tolist() == [0.0] * 8 and zero.tolist() == [True, True]


def test_bad_input_is_a_clear_error():
    with pytest.raises(ValueError, match="multiple of group_size=4"):
        group_advantages([1.0, 0.0, 1.0], 4)
    with pytest.raises(ValueError, match="scale must be one of"):
        group_advantages([1.0, 0.0], 2, scale="global")
    with pytest.raises(ValueError, match="finite"):
        group_advantages([1.0, float("nan")], 2)


reward_values = st.integers(-1000, 1000).map(lambda i: i / 100)  # rewards on a 0.01 grid
rewards_batches = st.integers(1, 4).flatmap(
    lambda p: st.integers(2, 8).flatmap(
        lambda g: st.tuples(st.just(g), st.lists(reward_values, min_size=p * g, max_size=p * g))
    )
)


@settings(max_examples=300, deadline=None)
@given(rewards_batches, st.floats(0.1, 10), st.floats(-5, 5), st.sampled_from(["group", "batch"]))
def test_scale_invariance(batch, a, b, scale):
    """Group and batch scaling give the same advantages for r and a*r + b (a > 0) when eps = 0."""
    g, r = batch
    r = torch.tensor(r, dtype=torch.float64)
    a1, z1 = group_advantages(r, g, scale=scale, eps=0.0)
    a2, z2 = group_advantages(a * r + b, g, scale=scale, eps=0.0)
    torch.testing.assert_close(a1, a2, rtol=1e-6, atol=1e-6)
    assert torch.equal(z1, z2)


@settings(max_examples=300, deadline=None)
@given(rewards_batches, st.sampled_from(["group", "batch", "none"]), st.booleans())
def test_each_group_sums_to_zero_and_nothing_is_nan(batch, scale, unbiased):
    g, r = batch
    adv, zero = group_advantages(r, g, scale=scale, unbiased=unbiased)
    assert torch.isfinite(adv).all()
    sums = adv.view(-1, g).sum(dim=1)
    assert sums.abs().max() < 1e-2 * max(1.0, adv.abs().max().item())
    assert (adv.view(-1, g)[zero] == 0).all()


# ----------------------------------------------------------------- agreement with TRL
@pytest.fixture(scope="module")
def trl_scorer(grpo_trainer):
    """Runs TRL's GRPOTrainer._generate_and_score_completions with rewards we choose."""
    from conftest import trl_scored_batch

    chosen = {}

    def scripted_reward(completions, **kwargs):
        return chosen["rewards"].tolist()

    def score(rewards: torch.Tensor, group_size: int, scale: str):
        chosen["rewards"] = rewards
        rows = [{"prompt": f"Q{i}", "answer": "1"} for i in range(len(rewards) // group_size)]
        trainer = grpo_trainer(rows, scripted_reward, group_size, scale_rewards=scale)
        out = trl_scored_batch(trainer, group_size)
        mode = "train" if trainer.model.training else "eval"
        return out["advantages"], trainer._metrics[mode]["frac_reward_zero_std"][-1]

    return score


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_equals_trl_grpo_trainer(trl_scorer, scale):
    generator = torch.Generator().manual_seed(0)
    # 0/1 correctness with the Trelis-shaped reward's 0.5-point format steps: ties, all-equal groups, mixes
    dyadic = torch.randint(0, 5, (6 * 8,), generator=generator).float() / 2
    dyadic[:8] = 1.0  # one zero-variance group
    continuous = torch.randn(6 * 8, generator=generator)
    for rewards in (dyadic, continuous):
        theirs, frac_zero_std = trl_scorer(rewards, 8, scale)
        ours = group_advantages(rewards, 8, scale=scale)
        torch.testing.assert_close(ours.advantages, theirs)
        if scale != "batch":  # with batch scaling TRL's flag looks at the batch std instead
            assert ours.zero_variance.float().mean().item() == pytest.approx(frac_zero_std)


def test_rloo_is_the_leave_one_out_baseline_and_gg1_times_the_centred_reward():
    from course_lib.advantages import rloo_advantages

    rewards = torch.tensor([1.0, 0.0, 0.0, 2.0, 0.5, 0.5, 1.5, 0.0])
    got = rloo_advantages(rewards, 4)
    brute = torch.tensor(
        [
            float(rewards[i] - torch.cat([rewards[g * 4 : i], rewards[i + 1 : g * 4 + 4]]).mean())
            for g in (0, 1)
            for i in range(g * 4, g * 4 + 4)
        ]
    )
    torch.testing.assert_close(got, brute)
    torch.testing.assert_close(got, 4 / 3 * group_advantages(rewards, 4, scale="none").advantages)
    with pytest.raises(ValueError, match="group_size >= 2"):
        rloo_advantages(rewards, 1)


def test_a_kl_charged_in_the_reward_cancels_within_a_group_when_it_is_the_same():
    from course_lib.advantages import kl_in_reward

    rewards = torch.tensor([1.0, 0.0, 1.0, 0.0])
    same = kl_in_reward(rewards, torch.full((4,), 5.0), 4, beta=0.1)
    torch.testing.assert_close(same, group_advantages(rewards, 4).advantages)  # a shared KL moves nothing
    drifted = kl_in_reward(rewards, torch.tensor([0.0, 0.0, 9.0, 0.0]), 4, beta=0.1, scale="none")
    assert drifted[2] < drifted[0]  # the right answer that drifted further gets less than its twin
    torch.testing.assert_close(drifted.sum(), torch.tensor(0.0))  # still centred
