"""course_lib.train.grpo: the from-scratch GRPO loop on the pocket model (tiny settings)."""

import copy
import math

import pytest
import torch

from course_lib.config import get_profile
from course_lib.data import train_problems
from course_lib.losses import samples_inputs, samples_logprobs
from course_lib.models import load_pocket_model
from course_lib.plots import LiveCurves
from course_lib.train.grpo import GRPOLoop, GRPOSettings

TIMING = {"seconds", "samples_per_s"}
TINY = dict(prompts_per_step=3, group_size=4, max_new_tokens=48, learning_rate=1e-3)


@pytest.fixture(scope="module")
def problems():
    return train_problems(get_profile(), 40, min_steps=1, max_steps=2)


def fresh_loop(problems, **settings) -> GRPOLoop:
    model, tokenizer = load_pocket_model()
    return GRPOLoop(model, tokenizer, problems, GRPOSettings(**{**TINY, **settings}))


def without_timing(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in TIMING} for row in history]


def test_steps_log_every_metric_and_feed_the_callbacks(problems):
    loop = fresh_loop(problems, steps=2)
    curves = LiveCurves(("reward", "accuracy", "entropy"))
    table = loop.train(callbacks=[curves], progress=False)
    assert list(table["step"]) == [1, 2]
    for key in (
        "reward",
        "reward_std",
        "accuracy",
        "advantage_mean",
        "advantage_std",
        "frac_zero_std",
        "completion_length",
        "entropy",
        "clip_ratio/low",
        "clip_ratio/high",
        "clip_ratio/region",
        "loss",
        "grad_norm",
        "samples_per_s",
    ):
        assert key in table and table[key].map(math.isfinite).all(), key
    assert (table["clip_ratio/region"] == 0).all()  # mu = 1: pi = pi_old, nothing clips
    assert curves.values("accuracy") == list(table["accuracy"])


def test_one_update_raises_the_logprob_of_the_better_completions(problems):
    """The first-order promise of the policy gradient: after one small step,
    sum_i A_i log pi(y_i) over the batch just trained on goes up."""
    loop = fresh_loop(problems, learning_rate=1e-4)
    for _ in range(10):  # find a batch with signal
        before = copy.deepcopy(loop.policy)
        loop.train_step()
        samples, advantages = loop.last_batch
        if advantages.abs().sum() > 0:
            break
    else:
        pytest.fail("ten batches without a single mixed group")

    def objective(model) -> float:
        with torch.no_grad():
            return float((samples_logprobs(model, loop.tokenizer, samples).sum(1) * advantages).sum())

    assert objective(loop.policy) > objective(before)


def test_resume_gives_the_same_numbers_as_an_uninterrupted_run(problems, tmp_path):
    settings = dict(num_iterations=2, beta=0.04)  # exercise pi_old, pi_ref and Adam state
    straight = fresh_loop(problems, **settings)
    straight.train(steps=4, progress=False)

    first = fresh_loop(problems, **settings)
    first.train(steps=2, checkpoint_every=2, checkpoint_path=tmp_path / "grpo.pt", progress=False)
    resumed = fresh_loop(problems, **settings).load(tmp_path / "grpo.pt")
    assert resumed.step == 2
    resumed.train(steps=4, progress=False)

    assert without_timing(resumed.history) == without_timing(straight.history)
    for a, b in zip(resumed.policy.parameters(), straight.policy.parameters()):
        assert torch.equal(a, b)


def test_resume_refuses_other_settings(problems, tmp_path):
    loop = fresh_loop(problems)
    loop.save(tmp_path / "grpo.pt")
    with pytest.raises(ValueError, match="learning_rate"):
        fresh_loop(problems, learning_rate=0.5).load(tmp_path / "grpo.pt")
    with pytest.raises(FileNotFoundError, match="No GRPO checkpoint"):
        loop.load(tmp_path / "missing.pt")


def test_kl_to_the_reference_starts_at_zero_and_mu_2_clips(problems):
    loop = fresh_loop(problems, beta=0.04, num_iterations=2, learning_rate=3e-3)
    table = loop.train(steps=3, progress=False)
    # pi_ref is the starting policy: step 1's first inner update is at KL 0, so its mean is far below later ones
    assert table["kl"].iloc[0] < 0.5 * table["kl"].iloc[-1]
    assert table["clip_ratio/region"].max() > 0  # the second inner step moved pi off pi_old


def test_zero_variance_groups_can_be_dropped(problems):
    loop = fresh_loop(problems, filter_zero_variance=True, steps=3)
    table = loop.train(progress=False)
    expected = (1 - table["frac_zero_std"]) * TINY["prompts_per_step"] * TINY["group_size"]
    assert (table["rows_trained"] == expected.round().astype(int)).all()


def test_dynamic_sampling_refills_flat_groups_with_fresh_problems_and_counts_what_it_drew(problems):
    plain = fresh_loop(problems, steps=3)
    dynamic = fresh_loop(problems, steps=3, dynamic_sampling=True, max_sampling_rounds=6)
    plain_table, table = plain.train(progress=False), dynamic.train(progress=False)
    p, g = TINY["prompts_per_step"], TINY["group_size"]
    assert (plain_table["completions_sampled"] == p * g).all() and (plain_table["sampling_rounds"] == 1).all()
    assert plain.cursor == 3 * p
    # every group it trained on has a signal, unless the rounds ran out; the extra draws are counted
    samples, advantages = dynamic.last_batch
    flat = (advantages.view(p, g) == 0).all(dim=1)
    assert len(samples.texts) == p * g and len(dynamic.last_problems) == p
    assert not flat.any() or table["sampling_rounds"].iloc[-1] == 6
    assert (table["completions_sampled"] >= p * g).all() and table["completions_sampled"].sum() > 3 * p * g
    assert dynamic.cursor * g == table["completions_sampled"].sum()  # every drawn problem was counted
    # what it drew, kept or not, is logged apart from the batch it trained on (which has no flat group)
    assert (plain_table["accuracy_drawn"] == plain_table["accuracy"]).all()
    assert (table["frac_zero_std_drawn"] >= table["frac_zero_std"]).all()
    # the rows line up: group i of the batch holds the completions of problem i
    texts = samples.grouped_texts()
    assert all(len(group) == g for group in texts) and samples.prompt_index == [i for i in range(p) for _ in range(g)]


def test_samples_concat_pads_to_the_longest_and_keeps_each_prompts_rows():
    from course_lib.sampling import Samples

    a = Samples(["x"], 2, ["1", "2"], [0, 0], torch.tensor([[5, 6], [7, 0]]), torch.tensor([[1, 1], [1, 0]]),
                torch.tensor([[-0.1, -0.2], [-0.3, 0.0]]))  # fmt: skip
    b = Samples(["y"], 2, ["3", "4"], [0, 0], torch.tensor([[8, 9, 4], [3, 0, 0]]),
                torch.tensor([[1, 1, 1], [1, 0, 0]]), torch.full((2, 3), -0.5))  # fmt: skip
    both = Samples.concat([a, b], pad_id=0)
    assert both.prompts == ["x", "y"] and both.texts == ["1", "2", "3", "4"] and both.prompt_index == [0, 0, 1, 1]
    assert both.completion_ids.shape == (4, 3) and both.completion_ids[0].tolist() == [5, 6, 0]
    assert both.lengths.tolist() == [2, 1, 3, 1] and both.logprobs[0, 2] == 0
    with pytest.raises(ValueError, match="same number of samples"):
        Samples.concat([a, Samples(["z"], 1, ["5"], [0], torch.zeros(1, 1), torch.ones(1, 1), torch.zeros(1, 1))], 0)


def test_the_kl_ratio_correction_changes_the_update_not_the_kl_value(problems):
    # mu = 1: r_it is 1 in value, so both runs log the same KL; its gradient differs once pi != pi_ref
    def two_steps(correction: bool):
        loop = fresh_loop(problems, beta=0.5, kl_ratio_correction=correction, learning_rate=1e-4)
        return loop.train(steps=2, progress=False), [p.detach().clone() for p in loop.policy.parameters()]

    (on, on_weights), (off, off_weights) = two_steps(True), two_steps(False)
    assert on["kl"].iloc[0] == off["kl"].iloc[0] == 0.0  # step 1: pi = pi_ref, the KL's gradient is 0 either way
    assert on["kl"].iloc[1] == pytest.approx(off["kl"].iloc[1], rel=1e-5) and on["kl"].iloc[1] > 0
    assert any(not torch.allclose(a, b, atol=1e-9, rtol=0) for a, b in zip(on_weights, off_weights))


def test_the_advantage_stage_can_be_replaced_by_a_subclass(problems):
    from course_lib.advantages import GroupAdvantages

    class NoSignal(GRPOLoop):
        def advantages(self, rewards):
            return GroupAdvantages(torch.zeros_like(rewards), torch.ones(len(rewards) // self.settings.group_size,
                                                                          dtype=torch.bool))  # fmt: skip

    model, tokenizer = load_pocket_model()
    loop = NoSignal(model, tokenizer, problems, GRPOSettings(**TINY))
    row = loop.train_step()
    assert row["frac_zero_std"] == 1.0 and row["advantage_std"] == 0.0 and row["grad_norm"] == 0.0


def test_a_non_finite_loss_stops_with_a_clear_message_and_no_update(problems):
    loop = fresh_loop(problems)
    weights = [p.detach().clone() for p in loop.policy.parameters()]

    def blow_up(module, args, output):  # only in training mode: sampling still works
        return output * float("nan") if module.training else output

    loop.policy.model.norm.register_forward_hook(blow_up)
    with pytest.raises(FloatingPointError, match="lower the learning rate"):
        for _ in range(10):
            loop.train_step()
    assert all(torch.equal(a, b) for a, b in zip(loop.policy.parameters(), weights))


def test_bad_settings_are_clear_errors(problems):
    with pytest.raises(ValueError, match="loss_type"):
        GRPOSettings(loss_type="ppo")
    with pytest.raises(ValueError, match="group_size"):
        GRPOSettings(group_size=1)
    with pytest.raises(ValueError, match="prompts_per_step"):
        fresh_loop(problems[:2])


# --------------------------------------------------------------------------- the normaliser, the reference, resuming


@pytest.mark.parametrize("loss_type", ["grpo", "dr_grpo", "dapo"])
def test_micro_batches_do_not_change_the_update(problems, loss_type):
    """The batch's counts are the one normaliser: 12 rows in micro-batches of 5 (5 + 5 + 2) must move
    the weights exactly as one pass over all 12 does."""
    whole = fresh_loop(problems, loss_type=loss_type, micro_batch_size=64, temperature=1.5)
    split = fresh_loop(problems, loss_type=loss_type, micro_batch_size=5, temperature=1.5)
    start = [p.detach().clone() for p in whole.policy.parameters()]
    for _ in range(4):  # until a step has signal
        a, b = whole.train_step(), split.train_step()
        if a["rows_trained"] and abs(a["advantage_std"]) > 0:
            break
    assert a["loss"] == pytest.approx(b["loss"], abs=1e-6)
    # Adam divides each gradient by its own size, so an element whose gradient is ~0 can differ by
    # float noise alone; the update as a whole must agree (a wrong normaliser differs by tens of %).
    step_whole = torch.cat([(p - s).flatten() for p, s in zip(whole.policy.parameters(), start)])
    step_split = torch.cat([(q - s).flatten() for q, s in zip(split.policy.parameters(), start)])
    assert step_whole.norm() > 0
    assert (step_split - step_whole).norm() / step_whole.norm() < 1e-3


def test_bnpo_normalises_each_micro_batch_as_trl_does(problems):
    """TRL 1.16's bnpo: each micro-batch's token mean, divided by the accumulation steps. In one pass
    it is dapo; split into micro-batches of unequal token counts it is another update."""

    def first_update(loss_type: str, micro: int):
        loop = fresh_loop(problems, loss_type=loss_type, micro_batch_size=micro, temperature=1.5)
        start = [p.detach().clone() for p in loop.policy.parameters()]
        for _ in range(4):  # until a step has signal
            row = loop.train_step()
            if abs(row["advantage_std"]) > 0:
                break
        return row, torch.cat([(p - s).flatten() for p, s in zip(loop.policy.parameters(), start)])

    (dapo_row, dapo), (one_row, one) = first_update("dapo", 64), first_update("bnpo", 64)
    assert one_row["loss"] == pytest.approx(dapo_row["loss"], abs=1e-6)
    assert (one - dapo).norm() / dapo.norm() < 1e-3  # one micro-batch: bnpo is dapo
    split_row, split = first_update("bnpo", 5)  # 12 rows sorted by length: 5 + 5 + 2, unequal token counts
    assert (split - dapo).norm() / dapo.norm() > 1e-2


def test_with_mu_1_the_kl_is_to_the_starting_policy_not_to_the_sampler(problems):
    """mu = 1: pi_old is the policy that sampled, so a KL to pi_old is always 0. The KL to pi_ref
    starts at 0 and grows as the policy moves away from where it started."""
    loop = fresh_loop(problems, beta=0.04, num_iterations=1, learning_rate=3e-3)
    table = loop.train(steps=4, progress=False)
    assert table["kl"].iloc[0] == pytest.approx(0.0, abs=1e-6)
    assert table["kl"].iloc[-1] > 1e-3


def test_the_reference_is_the_starting_model_computed_independently(problems):
    from course_lib.losses import samples_inputs

    loop = fresh_loop(problems, beta=0.04, learning_rate=3e-3)
    loop.train(steps=2, progress=False)
    samples, _ = loop.last_batch
    inputs = samples_inputs(loop.tokenizer, samples)
    base, _ = load_pocket_model()
    expected = samples_logprobs(base, loop.tokenizer, samples).detach()
    mask = inputs["completion_mask"].bool()  # padding columns are not compared: the loop leaves them 0
    torch.testing.assert_close(loop._reference_logprobs(inputs)[mask], expected[mask], atol=1e-5, rtol=1e-5)


def test_resume_is_exact_with_lora_dropout_and_micro_batches(problems, tmp_path):
    """LoRA's dropout draws from the global RNG at every forward: a resumed run is exact only if the
    checkpoint restores that RNG too."""
    from course_lib.models import load_policy, lora_config

    settings = GRPOSettings(**{**TINY, "micro_batch_size": 5, "num_iterations": 2})

    def lora_loop():
        model, tokenizer = load_policy(get_profile(), lora=lora_config(dropout=0.05))
        return GRPOLoop(model, tokenizer, problems, settings)

    straight = lora_loop()
    straight.train(steps=4, progress=False)
    first = lora_loop()
    first.train(steps=2, checkpoint_every=2, checkpoint_path=tmp_path / "lora.pt", progress=False)
    torch.rand(7)  # anything else that touched the RNG in between
    resumed = lora_loop().load(tmp_path / "lora.pt")
    resumed.train(steps=4, progress=False)
    assert without_timing(resumed.history) == without_timing(straight.history)
    for a, b in zip(resumed.policy.parameters(), straight.policy.parameters()):
        assert torch.equal(a, b)


def test_the_benchmarks_update_timer_counts_each_update_and_changes_nothing(problems):
    from course_lib.bench import time_updates

    plain, timed = fresh_loop(problems, steps=2), fresh_loop(problems, steps=2)
    calls = time_updates(timed)
    plain.train(progress=False)
    timed.train(progress=False)
    assert without_timing(timed.history) == without_timing(plain.history)
    assert len(calls) == 2 and all(c["seconds"] > 0 for c in calls)
    inputs = samples_inputs(timed.tokenizer, timed.last_batch[0])  # every row is kept without a filter
    assert calls[-1]["tokens"] == int(inputs["prompt_mask"].sum() + inputs["completion_mask"].sum())
    group = timed.settings.group_size  # each prompt's G rows share it: its tokens count once
    prompts_once = int(inputs["prompt_mask"][::group].sum())
    assert calls[-1]["tokens_run"] == prompts_once + int(inputs["completion_mask"].sum())


def test_an_update_with_each_prompt_run_once_equals_running_every_row_whole(problems, monkeypatch):
    """The loop runs each distinct prompt once per update (and for pi_old, pi_ref): the same step as
    running every row's prompt and completion together, to float rounding."""
    import course_lib.train.grpo as grpo

    settings = dict(num_iterations=2, beta=0.04, micro_batch_size=5)  # micro-batches split the groups
    shared = fresh_loop(problems, **settings)
    start = [p.detach().clone() for p in shared.policy.parameters()]
    shared.train(steps=1, progress=False)
    monkeypatch.setattr(grpo, "shares_prompts", lambda model, prompt_ids: False)
    whole = fresh_loop(problems, **settings)
    whole.train(steps=1, progress=False)
    a, b = without_timing(shared.history)[0], without_timing(whole.history)[0]
    assert a.keys() == b.keys()
    for key in a:
        assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), key
    moved = [
        (p.detach() - p0, q.detach() - p0)
        for p, q, p0 in zip(shared.policy.parameters(), whole.policy.parameters(), start)
    ]
    assert all(float(d.norm()) > 0 for _, d in moved)  # the step did change every weight
    for ours, theirs in moved:  # and both changed them alike (Adam magnifies rounding where a gradient is ~0)
        assert float((ours - theirs).norm() / theirs.norm()) < 1e-3
