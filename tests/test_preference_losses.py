"""course_lib.losses: ORPO and DPO, by hand and against TRL's trainers on the same batch."""

import math

import pytest
import torch

from course_lib.losses import dpo_loss, encode_sequences, log1mexp, log_odds, orpo_loss, per_token_logprobs

PAIRS = [  # prompt question, chosen (correct), rejected (wrong)
    (
        "Ana has 3 apples and buys 4 more. How many apples does Ana have?",
        "3+4 = <<3+4=7>>7 apples.\n#### 7",
        "3+4 = <<3+4=8>>8 apples.\n#### 8",
    ),
    (
        "Max has 10 pens and gives away 6. How many pens does Max have left?",
        "10-6 = <<10-6=4>>4 pens.\n#### 4",
        "10+6 = <<10+6=16>>16 pens.\nSo he has 16 pens left.\n#### 16",
    ),
    (
        "Eli reads 5 pages a day for 3 days. How many pages does Eli read?",
        "5*3 = <<5*3=15>>15 pages.\n#### 15",
        "5+3 = <<5+3=8>>8\n#### 8",
    ),
]


def fresh_pocket():
    """A private copy of the pocket model: TRL's trainers patch the model they are given."""
    from course_lib.models import load_pocket_model

    return load_pocket_model()


def preference_rows(tokenizer) -> list[dict]:
    from course_lib.prompts import format_prompt

    return [{"prompt": format_prompt(tokenizer, q), "chosen": c, "rejected": r} for q, c, r in PAIRS]


def trl_side(model, batch, name: str):
    """Per-token log-probs of one side ("chosen" or "rejected") of a batch TRL's ORPOTrainer collated,
    with its completion mask (the labels that are not -100) and its attention mask, both shifted."""
    ids, attn, labels = (batch[f"{name}_{k}"] for k in ("input_ids", "attention_mask", "labels"))
    return per_token_logprobs(model, ids, attn), (labels[:, 1:] != -100).float(), attn[:, 1:].float()


# ----------------------------------------------------------------- by hand
def test_log_odds_is_logit_of_p():
    p = torch.tensor([1e-6, 0.1, 0.5, 0.9, 0.999999])
    expected = torch.log(p / (1 - p))
    assert torch.allclose(log_odds(torch.log(p).double()), expected.double(), rtol=1e-6)
    # near log p = 0 the naive log(1 - exp(x)) cancels; log1mexp does not
    x = torch.tensor([-1e-10], dtype=torch.float64)
    assert log1mexp(x).item() == pytest.approx(math.log(1e-10), rel=1e-6)


def test_orpo_by_hand_on_two_pairs():
    # two pairs, two completion tokens each; log-probs chosen so the means are easy
    chosen = torch.log(torch.tensor([[0.5, 0.5], [0.8, 0.8]]))
    rejected = torch.log(torch.tensor([[0.2, 0.2], [0.8, 0.8]]))
    mask = torch.ones(2, 2)
    out = orpo_loss(chosen, mask, rejected, mask, beta=0.5)
    # pair 1: odds 1 vs 0.25 -> log-odds ratio log 4; pair 2: equal -> 0
    or_terms = torch.tensor([-math.log(1 / (1 + 1 / 4)), math.log(2)])
    nll = -(2 * math.log(0.5) + 2 * math.log(0.8)) / 4
    assert torch.allclose(out.per_pair_loss, or_terms.float(), atol=1e-6)
    assert out.loss.item() == pytest.approx(nll + 0.5 * or_terms.mean().item(), abs=1e-6)
    assert out.metrics["rewards/accuracies"] == 0.5


def test_orpo_pushes_chosen_up_and_rejected_down():
    chosen = torch.log(torch.full((1, 3), 0.4)).requires_grad_()
    rejected = torch.log(torch.full((1, 3), 0.4)).requires_grad_()
    mask = torch.ones(1, 3)
    orpo_loss(chosen, mask, rejected, mask, beta=1.0, nll_mask=torch.zeros(1, 3)).loss.backward()
    assert (chosen.grad < 0).all() and (rejected.grad > 0).all()  # descent raises chosen, lowers rejected


def test_masks_decide_which_tokens_count():
    logps = torch.log(torch.tensor([[0.1, 0.9, 0.9]]))
    mask = torch.tensor([[0.0, 1.0, 1.0]])
    a = orpo_loss(logps, mask, logps, mask)
    assert a.metrics["logps/chosen"] == pytest.approx(math.log(0.9), rel=1e-6)
    assert a.metrics["nll_loss"] == pytest.approx(-math.log(0.9), rel=1e-6)
    b = orpo_loss(logps, mask, logps, mask, nll_mask=torch.ones(1, 3))
    assert b.metrics["nll_loss"] == pytest.approx(-(math.log(0.1) + 2 * math.log(0.9)) / 3, rel=1e-6)


def test_dpo_by_hand_and_at_the_reference():
    mask = torch.ones(1, 2)
    pi_w, pi_l = torch.tensor([[-1.0, -1.0]]), torch.tensor([[-2.0, -2.0]])
    ref_w, ref_l = torch.tensor([[-1.5, -1.5]]), torch.tensor([[-1.5, -1.5]])
    out = dpo_loss(pi_w, mask, pi_l, mask, ref_w, ref_l, beta=0.1)
    h = (-2.0 + 3.0) - (-4.0 + 3.0)  # 2
    assert out.loss.item() == pytest.approx(math.log1p(math.exp(-0.1 * h)), abs=1e-6)
    assert out.metrics["rewards/margins"] == pytest.approx(0.2, abs=1e-6)
    at_ref = dpo_loss(ref_w, mask, ref_l, mask, ref_w, ref_l)
    assert at_ref.loss.item() == pytest.approx(math.log(2), abs=1e-6)  # pi = pi_ref: no preference yet


# ----------------------------------------------------------------- against TRL
def test_orpo_equals_trl_orpo_trainer(tmp_path):
    """TRL 1.16's ``trl.experimental.orpo.ORPOTrainer.compute_loss`` and ``orpo_loss`` on the
    same model and the same collated batch: same loss, same gradients; and our
    ``encode_sequences`` builds the same token ids as TRL's tokenizer pipeline."""
    from datasets import Dataset
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    model, tokenizer = fresh_pocket()
    rows = preference_rows(tokenizer)
    args = ORPOConfig(
        output_dir=str(tmp_path),
        use_cpu=True,
        bf16=False,
        beta=0.25,
        max_length=256,
        per_device_train_batch_size=len(rows),
        report_to=[],
        remove_unused_columns=False,
    )
    trainer = ORPOTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer)
    batch = next(iter(trainer.get_train_dataloader()))
    model.train()

    theirs = trainer.compute_loss(model, batch)
    their_grads = torch.autograd.grad(theirs, [p for p in model.parameters() if p.requires_grad])

    chosen, chosen_mask, chosen_attn = trl_side(model, batch, "chosen")
    rejected, rejected_mask, _ = trl_side(model, batch, "rejected")
    ours = orpo_loss(chosen, chosen_mask, rejected, rejected_mask, beta=0.25, nll_mask=chosen_attn)
    our_grads = torch.autograd.grad(ours.loss, [p for p in model.parameters() if p.requires_grad])

    assert ours.loss.item() == pytest.approx(theirs.item(), abs=1e-6)
    for a, b in zip(our_grads, their_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)
    logged = trainer._stored_metrics["train"]
    assert ours.metrics["log_odds_chosen"] == pytest.approx(logged["log_odds_chosen"][-1], abs=1e-5)
    assert ours.metrics["nll_loss"] == pytest.approx(logged["nll_loss"][-1], abs=1e-6)

    # TRL's sampler shuffles the rows: compare them as (ids, completion mask) pairs, padding removed
    enc = encode_sequences(tokenizer, [r["prompt"] for r in rows], [r["chosen"] for r in rows])
    ours_rows = {
        (tuple(i[a == 1].tolist()), tuple(m[a == 1].tolist()))
        for i, a, m in zip(enc["input_ids"], enc["attention_mask"], enc["completion_mask"])
    }
    trl_rows = {
        (tuple(i[a == 1].tolist()), tuple((lab[a == 1] != -100).long().tolist()))
        for i, a, lab in zip(batch["chosen_input_ids"], batch["chosen_attention_mask"], batch["chosen_labels"])
    }
    assert ours_rows == trl_rows


def test_the_completion_nll_orpo_trainer_is_the_papers_loss(tmp_path):
    """``CompletionNLLORPOTrainer`` (``ORPOSettings(nll_on_prompt=False)``) gives ``orpo_loss`` with the
    NLL over the chosen completion only, gradients included; TRL's own trainer covers the prompt too."""
    import dataclasses

    from course_lib.config import get_profile
    from course_lib.train.orpo import CompletionNLLORPOTrainer, ORPOSettings, orpo_trainer

    model, tokenizer = fresh_pocket()
    rows = preference_rows(tokenizer)
    settings = ORPOSettings(beta=0.25, batch_size=len(rows), nll_on_prompt=False)
    profile = dataclasses.replace(get_profile("pocket", fast=False))
    trainer = orpo_trainer(profile, model, tokenizer, rows, tmp_path, settings, progress=False)
    assert isinstance(trainer, CompletionNLLORPOTrainer)
    batch = next(iter(trainer.get_train_dataloader()))
    model.train()
    theirs = trainer.compute_loss(model, batch)
    their_grads = torch.autograd.grad(theirs, [p for p in model.parameters() if p.requires_grad])

    chosen, chosen_mask, chosen_attn = trl_side(model, batch, "chosen")
    rejected, rejected_mask, _ = trl_side(model, batch, "rejected")
    ours = orpo_loss(chosen, chosen_mask, rejected, rejected_mask, beta=0.25)  # NLL mask: the completion
    our_grads = torch.autograd.grad(ours.loss, [p for p in model.parameters() if p.requires_grad])
    assert ours.loss.item() == pytest.approx(theirs.item(), abs=1e-6)
    for a, b in zip(our_grads, their_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)  # float noise: the loss sums in another order
    with_prompt = orpo_loss(chosen, chosen_mask, rejected, rejected_mask, beta=0.25, nll_mask=chosen_attn)
    assert with_prompt.loss.item() > ours.loss.item() + 0.5  # the prompt's tokens are far from predicted


def test_dpo_equals_trl_dpo_trainer(tmp_path):
    """TRL 1.16's ``DPOTrainer`` (sigmoid loss) and ``dpo_loss`` on the same collated batch, with
    a policy moved away from the reference so that the margin is not zero."""
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    model, tokenizer = fresh_pocket()
    reference, _ = fresh_pocket()
    rows = preference_rows(tokenizer)
    args = DPOConfig(
        output_dir=str(tmp_path),
        use_cpu=True,
        bf16=False,
        beta=0.3,
        max_length=256,
        per_device_train_batch_size=len(rows),
        report_to=[],
        precompute_ref_log_probs=False,
    )
    trainer = DPOTrainer(
        model=model, ref_model=reference, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer
    )
    with torch.no_grad():  # pi != pi_ref
        gen = torch.Generator().manual_seed(0)
        for p in model.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=gen))
    batch = next(iter(trainer.get_train_dataloader()))
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    theirs = trainer.compute_loss(model, batch)
    their_grads = torch.autograd.grad(theirs, params)

    ids, attn = batch["input_ids"], batch["attention_mask"]
    mask = batch["completion_mask"][:, 1:].float()
    logps = per_token_logprobs(model, ids, attn)
    with torch.no_grad():
        ref = per_token_logprobs(reference, ids, attn)
    (c, r), (cm, rm), (rc, rr) = logps.chunk(2), mask.chunk(2), ref.chunk(2)
    ours = dpo_loss(c, cm, r, rm, rc, rr, beta=0.3)
    our_grads = torch.autograd.grad(ours.loss, params)

    assert abs(ours.loss.item() - math.log(2)) > 1e-3  # a real margin
    assert ours.loss.item() == pytest.approx(theirs.item(), rel=1e-5)  # TRL sums log-probs from a fused kernel
    for a, b in zip(our_grads, their_grads, strict=True):
        # fused vs unfused float32 log-softmax: agree to 1e-4 of each gradient's scale
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4 * float(b.abs().max()))


def test_dpo_trainer_uses_the_adapter_free_model_as_reference_and_trains(tmp_path):
    from course_lib.config import get_profile
    from course_lib.models import lora_config
    from course_lib.train.dpo import DPOSettings, dpo_trainer

    model, tokenizer = fresh_pocket()
    rows = preference_rows(tokenizer)
    profile = get_profile("pocket", fast=False)
    trainer = dpo_trainer(profile, model, tokenizer, rows, tmp_path, DPOSettings(batch_size=3), lora=lora_config())
    assert trainer.ref_model is None  # the reference is the same model with its adapters off
    result = trainer.train()
    assert result.global_step == 1 and math.isfinite(result.training_loss)
    with pytest.raises(ValueError, match="no preference pairs"):
        dpo_trainer(profile, model, tokenizer, [], tmp_path, DPOSettings())


def test_the_odds_ratio_stops_pushing_the_rejected_answer_once_the_chosen_is_near_certain():
    """ORPO's reason for odds (Hong et al.): beside SFT, a probability ratio keeps suppressing y_l."""
    from course_lib.losses import rejected_push

    near_certain, even = rejected_push(0.999, 0.3), rejected_push(0.5, 0.3)
    assert near_certain["odds ratio: push on the rejected"] < 1e-3
    assert near_certain["probability ratio: push on the rejected"] > 0.2  # 1 - sigmoid(log(0.999 / 0.3))
    assert even["odds ratio: push on the rejected"] > 0.3
    assert near_certain["probability ratio: push on the rejected"] == pytest.approx(1 - 0.999 / (0.999 + 0.3))
