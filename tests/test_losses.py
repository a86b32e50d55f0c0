"""course_lib.losses: KL estimators, aggregations, the clipped GRPO loss, and TRL's agreement."""

import math

import pytest
import torch

from course_lib.losses import (
    KL_ESTIMATORS,
    aggregate,
    completion_logits,
    grpo_loss,
    kl_k3,
    token_entropy,
    token_logprobs,
)


# ----------------------------------------------------------------- building blocks
def test_entropy_of_uniform_and_of_one_hot():
    uniform = torch.zeros(1, 1, 8)
    assert token_entropy(uniform).item() == pytest.approx(math.log(8))
    one_hot = torch.tensor([[[100.0, 0.0, 0.0]]])
    assert token_entropy(one_hot).item() == pytest.approx(0.0, abs=1e-6)


def test_kl_estimators_against_the_exact_kl_of_a_categorical():
    """k1 and k3 are unbiased, k2 is not; k2 and k3 are never negative, k1 is."""
    gen = torch.Generator().manual_seed(0)
    logp = torch.log_softmax(torch.randn(6, generator=gen), dim=0)
    ref = torch.log_softmax(logp.exp().log() + 0.5 * torch.randn(6, generator=gen), dim=0)
    exact = float((logp.exp() * (logp - ref)).sum())
    tokens = torch.multinomial(logp.exp(), 400_000, replacement=True, generator=gen)
    est = {name: f(logp[tokens], ref[tokens]) for name, f in KL_ESTIMATORS.items()}
    assert est["k1"].mean().item() == pytest.approx(exact, rel=0.03)
    assert est["k3"].mean().item() == pytest.approx(exact, rel=0.03)
    assert est["k3"].min() >= 0 and est["k2"].min() >= 0 and est["k1"].min() < 0
    assert est["k3"].std() < est["k1"].std()
    assert kl_k3(logp, logp).abs().max() == 0


def test_the_ratio_makes_the_k3_gradient_the_reverse_kl_gradient():
    """Expected over tokens y ~ pi (summed exactly over a small vocabulary by
    ``analysis.kl_gradient_table``, which calls ``grpo_loss``):
    E[grad r k3] = grad KL(pi || ref), while E[grad k3] = grad KL(ref || pi)."""
    from course_lib.analysis import kl_gradient_table

    for vocab, seed in ((5, 3), (6, 0)):
        table = kl_gradient_table(vocab, seed)
        assert table.iloc[0]["|diff| to ∇forward KL(ref‖π)"] < 1e-6  # plain k3
        assert table.iloc[1]["|diff| to ∇reverse KL(π‖ref)"] < 1e-6  # r * k3
        assert table.iloc[0]["|diff| to ∇reverse KL(π‖ref)"] > 1e-3  # and the two differ


def test_aggregations_by_hand():
    loss = torch.tensor([[1.0, 1.0, 1.0, 1.0], [4.0, 0.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 0, 0, 0]])
    assert aggregate(loss, mask, "grpo").item() == pytest.approx((1 + 4) / 2)  # per-sequence means
    assert aggregate(loss, mask, "bnpo").item() == pytest.approx(8 / 5)  # token mean
    assert aggregate(loss, mask, "dapo").item() == pytest.approx(8 / 5)
    assert aggregate(loss, mask, "dapo", num_tokens=10).item() == pytest.approx(8 / 10)
    assert aggregate(loss, mask, "dr_grpo", max_completion_length=8).item() == pytest.approx(8 / 16)
    with pytest.raises(ValueError, match="max_completion_length"):
        aggregate(loss, mask, "dr_grpo")
    with pytest.raises(ValueError, match="unknown loss_type"):
        aggregate(loss, mask, "ppo")


def test_with_mu_1_the_loss_is_minus_the_mean_advantage_but_the_gradient_is_not_zero():
    """At the first inner step r = 1: the value is -mean(A) (0 for group-normalised A), the
    gradient is the policy gradient -A * grad log pi."""
    logits = torch.randn(2, 3, 5, requires_grad=True)
    targets = torch.randint(0, 5, (2, 3))
    mask = torch.ones(2, 3)
    advantages = torch.tensor([1.0, -1.0])
    out = grpo_loss(token_logprobs(logits, targets), None, advantages, mask, loss_type="bnpo")
    assert out.loss.item() == pytest.approx(0.0, abs=1e-7)
    out.loss.backward()
    assert logits.grad.abs().sum() > 0
    assert out.metrics["clip_ratio/region"] == 0 and out.metrics["ratio"] == pytest.approx(1.0)


def test_clipping_stops_the_gradient_only_on_the_profitable_side():
    """A > 0 and r > 1 + eps: clipped, no gradient. A < 0 and r > 1 + eps: not clipped
    (min picks the unclipped, worse term), so the gradient pushes r back down."""
    logp = torch.zeros(2, 1, requires_grad=True)
    old = torch.full((2, 1), -0.5)  # r = e^0.5 = 1.65 > 1.2
    out = grpo_loss(logp, old, torch.tensor([1.0, -1.0]), torch.ones(2, 1), loss_type="bnpo")
    out.loss.backward()
    assert logp.grad[0, 0] == 0  # clipped
    assert logp.grad[1, 0] > 0  # loss grows with r: descent lowers log pi
    assert out.metrics["clip_ratio/high"] == 0.5 and out.metrics["clip_ratio/low"] == 0.0


def test_beta_needs_a_reference():
    with pytest.raises(ValueError, match="ref_logps"):
        grpo_loss(torch.zeros(1, 1), None, torch.zeros(1), torch.ones(1, 1), beta=0.1)


# ----------------------------------------------------------------- agreement with TRL
def _ours(model, inputs, trainer, loss_type, beta, eps_low, eps_high):
    logits = completion_logits(
        model,
        inputs["prompt_ids"],
        inputs["prompt_mask"],
        inputs["completion_ids"],
        inputs["completion_mask"],
        trainer.temperature,
    )
    logps = token_logprobs(logits, inputs["completion_ids"])
    return grpo_loss(
        logps,
        inputs["old_per_token_logps"],
        inputs["advantages"],
        inputs["completion_mask"],
        ref_logps=inputs.get("ref_per_token_logps"),
        beta=beta,
        epsilon_low=eps_low,
        epsilon_high=eps_high,
        loss_type=loss_type,
        max_completion_length=trainer.max_completion_length,
        num_tokens=inputs["num_items_in_batch"],
        entropy=token_entropy(logits),
    )


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo", "dapo"])
@pytest.mark.parametrize("beta", [0.0, 0.04])
def test_equals_trl_compute_loss(grpo_trainer, pocket, loss_type, beta):
    """TRL's GRPOTrainer samples a batch; we then set its advantages and move pi_old and pi_ref
    away from pi (as after mu > 1 inner steps) so that clipping and the KL term both bind.
    TRL's ``_compute_loss`` and ours must give the same loss, gradient and metrics."""
    from conftest import trl_scored_batch

    from course_lib.data.pocket_math import pocket_test_set
    from course_lib.prompts import format_prompt
    from course_lib.rewards import make_correctness_reward

    rows = [{"prompt": format_prompt(pocket[1], p["question"]), "answer": p["answer"]} for p in pocket_test_set(3)]
    trainer = grpo_trainer(
        rows,
        make_correctness_reward(),
        4,
        max_completion_length=40,
        loss_type=loss_type,
        beta=beta,
        num_iterations=2,
        epsilon=0.2,
        epsilon_high=0.28,
    )
    model = trainer.model
    model.train()
    trainer.current_gradient_accumulation_steps = 1  # what Trainer.train() sets (no accumulation)
    inputs = trl_scored_batch(trainer, 4)
    assert inputs["completion_mask"].sum(1).min() < 40, "want completions of different lengths"
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        current = token_logprobs(
            completion_logits(
                model, inputs["prompt_ids"], inputs["prompt_mask"], inputs["completion_ids"], inputs["completion_mask"]
            ),
            inputs["completion_ids"],
        )
    inputs["advantages"] = torch.randn(len(current), generator=gen)
    inputs["old_per_token_logps"] = current + 0.3 * torch.randn(current.shape, generator=gen)
    if beta:
        inputs["ref_per_token_logps"] = current + 0.5 * torch.randn(current.shape, generator=gen)

    model.zero_grad()
    theirs = trainer._compute_loss(model, inputs)
    theirs.backward()
    their_grads = [p.grad.clone() for p in model.parameters()]
    their_metrics = {k: v[-1] for k, v in trainer._metrics["train"].items()}

    model.zero_grad()
    ours = _ours(model, inputs, trainer, loss_type, beta, 0.2, 0.28)
    ours.loss.backward()

    assert abs(ours.loss.item() - theirs.item()) < 1e-6
    assert abs(theirs.item()) > 1e-3, "a loss of ~0 would make this test weak"
    for mine, theirs_g in zip((p.grad for p in model.parameters()), their_grads):
        torch.testing.assert_close(mine, theirs_g, rtol=1e-4, atol=1e-6)
    for name in ("clip_ratio/low", "clip_ratio/high", "clip_ratio/region"):
        assert ours.metrics[name] == pytest.approx(their_metrics[name + "_mean"], abs=1e-6), name
    # TRL's fused kernel computes the entropy another way: equal up to float32 rounding
    assert ours.metrics["entropy"] == pytest.approx(their_metrics["entropy"], rel=1e-4)
    assert ours.metrics["clip_ratio/region"] > 0
    if beta:
        assert ours.metrics["kl"] == pytest.approx(their_metrics["kl"], abs=1e-6)


def test_old_minus_new_is_an_sft_step_per_token_and_nothing_in_expectation(pocket):
    """The tutorial's mean(old - new): each sampled token's gradient is SFT's, the on-policy mean is 0."""
    from course_lib.losses import old_minus_new_gradient
    from course_lib.prompts import format_prompt

    model, tokenizer = pocket
    norms = old_minus_new_gradient(model, tokenizer, format_prompt(tokenizer, "What is 2 + 3?"))
    assert norms["per_token"] > 1e-3
    assert norms["expected"] < 1e-4 * norms["per_token"]


def test_dropping_zero_variance_groups_rescales_the_gradient_by_the_token_ratio(pocket):
    from course_lib.advantages import group_advantages
    from course_lib.losses import zero_variance_filter_scale
    from course_lib.prompts import format_prompt
    from course_lib.sampling import sample

    model, tokenizer = pocket
    prompts = [format_prompt(tokenizer, q) for q in ("What is 2 + 3?", "What is 4 + 4?", "What is 7 + 1?")]
    samples = sample(model, tokenizer, prompts, n=4, max_new_tokens=40, seed=0)
    rewards = torch.tensor([1.0, 0.0, 1.0, 0.0] + [1.0] * 4 + [0.0, 0.0, 1.0, 0.0])  # group 1 is flat
    advantages, zero = group_advantages(rewards, 4)
    scale = zero_variance_filter_scale(model, tokenizer, samples, advantages, zero)
    assert scale["groups_dropped"] == 1 and scale["token_ratio"] > 1
    assert scale["gradient_ratio"] == pytest.approx(scale["token_ratio"], rel=1e-4)
    with pytest.raises(ValueError, match="every group"):
        zero_variance_filter_scale(model, tokenizer, samples, advantages * 0, torch.ones(3, dtype=torch.bool))


def test_gspos_sequence_ratio_is_the_geometric_mean_of_the_token_ratios():
    from course_lib.losses import sequence_ratio

    logps = torch.log(torch.tensor([[0.5, 0.2, 0.9], [0.3, 0.3, 0.0]]).clamp(min=1e-9))
    old = torch.log(torch.tensor([[0.25, 0.4, 0.9], [0.1, 0.3, 0.5]]))
    mask = torch.tensor([[1.0, 1, 1], [1, 1, 0]])
    expected = torch.tensor([(2.0 * 0.5 * 1.0) ** (1 / 3), (3.0 * 1.0) ** (1 / 2)])
    torch.testing.assert_close(sequence_ratio(logps, old, mask), expected)


# --------------------------------------------------------------------------- each distinct prompt run once


def _grpo_batch(pocket, prompts: int = 4, n: int = 4):
    from course_lib.data import pocket_math
    from course_lib.losses import samples_inputs
    from course_lib.prompts import format_prompt
    from course_lib.sampling import sample

    model, tok = pocket
    texts = [format_prompt(tok, p["question"]) for p in pocket_math.pocket_test_set(prompts)]
    return model, samples_inputs(tok, sample(model, tok, texts, n=n, max_new_tokens=80, seed=0), "cpu")


def test_shared_prompts_give_the_row_by_row_log_probs_and_gradients(pocket):
    """Each distinct prompt run once, its cache read by micro-batches in any order, then one backward
    through the prompts: the log-probs and every weight's gradient of running each row whole."""
    from course_lib.losses import completion_logits, completion_logits_after, run_prompts, shares_prompts

    model, inputs = _grpo_batch(pocket)
    ids, mask = inputs["completion_ids"], inputs["completion_mask"]
    model.train()
    assert shares_prompts(model, inputs["prompt_ids"])
    whole = token_logprobs(completion_logits(model, **inputs), ids)  # (16, T)
    (whole * mask).sum().backward()
    expected = [p.grad.clone() for p in model.parameters()]

    def shared_run() -> tuple[torch.Tensor, list[torch.Tensor]]:
        model.zero_grad()
        prompts = run_prompts(model, inputs["prompt_ids"], inputs["prompt_mask"])
        logps = torch.zeros_like(whole)
        for rows in (torch.tensor([9, 0, 5, 14, 3, 7]), torch.tensor([1, 2, 4, 6, 8, 10, 11, 12, 13, 15])):
            part = token_logprobs(completion_logits_after(model, prompts, rows, ids[rows], mask[rows]), ids[rows])
            (part * mask[rows]).sum().backward()  # stops at the prompts' cache
            logps[rows] = part.detach()
        prompts.backward()  # the cache's gradient through the prompts' forward
        return logps, [p.grad.clone() for p in model.parameters()]

    logps, grads = shared_run()
    torch.testing.assert_close(logps * mask, whole.detach() * mask, atol=1e-5, rtol=1e-5)
    for got, want in zip(grads, expected):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    again = shared_run()
    assert torch.equal(again[0], logps) and all(torch.equal(a, b) for a, b in zip(again[1], grads))  # bit for bit


def test_prompts_are_not_shared_where_none_repeats_or_the_cache_is_off(pocket):
    from course_lib.losses import shares_prompts

    model, inputs = _grpo_batch(pocket, prompts=3, n=2)
    assert shares_prompts(model, inputs["prompt_ids"])
    assert not shares_prompts(model, inputs["prompt_ids"][::2])  # one row per prompt: nothing to share
    model.gradient_checkpointing_enable()
    assert not shares_prompts(model, inputs["prompt_ids"])
