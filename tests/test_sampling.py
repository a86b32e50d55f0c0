import torch

from course_lib.data import pocket_math
from course_lib.losses import completion_logprobs
from course_lib.prompts import format_prompt
from course_lib.sampling import sample


def _prompts(tok, n=3):
    return [format_prompt(tok, p["question"]) for p in pocket_math.pocket_test_set(n)]


def test_shapes_masks_and_eos(pocket):
    model, tok = pocket
    out = sample(model, tok, _prompts(tok), n=4, max_new_tokens=120, batch_size=5, seed=0)
    N = 12
    assert len(out.texts) == N and out.prompt_index == [0] * 4 + [1] * 4 + [2] * 4
    assert out.completion_ids.shape == out.completion_mask.shape == out.logprobs.shape
    assert out.completion_ids.shape[0] == N
    for ids, mask, length in zip(out.completion_ids, out.completion_mask, out.lengths):
        assert mask[:length].all() and not mask[length:].any()
        eos_positions = (ids[:length] == tok.eos_token_id).nonzero().flatten().tolist()
        assert eos_positions in ([], [int(length) - 1])  # EOS only as the last real token
        assert (ids[length:] == tok.pad_token_id).all()
    assert (out.logprobs[out.completion_mask == 0] == 0).all()
    assert (out.logprobs[out.completion_mask == 1] <= 0).all()
    assert len(out.grouped_texts()) == 3 and len(out.grouped_texts()[0]) == 4


def test_same_seed_same_samples(pocket):
    model, tok = pocket
    a = sample(model, tok, _prompts(tok, 2), n=3, seed=7, max_new_tokens=60)
    b = sample(model, tok, _prompts(tok, 2), n=3, seed=7, max_new_tokens=60)
    c = sample(model, tok, _prompts(tok, 2), n=3, seed=8, max_new_tokens=60)
    assert a.texts == b.texts and torch.equal(a.logprobs, b.logprobs)
    assert a.texts != c.texts


def test_logprobs_match_a_forward_pass(pocket):
    """The sampler's log-probs equal log_softmax(logits / T) recomputed by a plain forward."""
    model, tok = pocket
    prompts = _prompts(tok, 2)
    out = sample(model, tok, prompts, n=2, temperature=0.7, max_new_tokens=80, seed=1)
    enc = tok(
        [prompts[i] for i in out.prompt_index],
        return_tensors="pt",
        padding=True,
        add_special_tokens=False,
        padding_side="left",
    )
    with torch.no_grad():
        recomputed = completion_logprobs(
            model, enc["input_ids"], enc["attention_mask"], out.completion_ids, out.completion_mask, temperature=0.7
        )
    torch.testing.assert_close(recomputed, out.logprobs, atol=1e-4, rtol=1e-4)


def test_greedy_is_deterministic_and_stops_at_eos(pocket):
    model, tok = pocket
    a = sample(model, tok, _prompts(tok, 2), n=2, temperature=0, max_new_tokens=200)
    assert a.texts[0] == a.texts[1]  # greedy: both samples of a prompt agree
    assert all("####" in t for t in a.texts)  # the pocket model answers in GSM8K format
    assert (a.lengths < 200).all()


def test_sampling_leaves_the_callers_random_stream_alone(pocket):
    model, tok = pocket
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    sample(model, tok, _prompts(tok, 1), n=2, seed=5, max_new_tokens=20)
    assert torch.equal(torch.rand(3), expected)


def test_bad_arguments(pocket):
    import pytest

    model, tok = pocket
    with pytest.raises(ValueError, match="n and batch_size"):
        sample(model, tok, _prompts(tok, 1), n=0)


def test_group_selects_one_prompts_completions(pocket):
    from course_lib.sampling import sample

    model, tok = pocket
    samples = sample(
        model,
        tok,
        ["<|begin|><|user|>\n1+1?\n<|assistant|>\n", "<|begin|><|user|>\n2+2?\n<|assistant|>\n"],
        n=3,
        max_new_tokens=6,
        seed=0,
    )
    second = samples.group(1)
    assert second.prompts == samples.prompts[1:] and second.texts == samples.texts[3:]
    assert second.prompt_index == [0, 0, 0]
    assert torch.equal(second.completion_ids, samples.completion_ids[3:])
