import pytest
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
        if length < 120:  # it stopped by itself: the EOS it chose is its last masked token (so GRPO learns to stop)
            assert eos_positions == [int(length) - 1]
        else:  # cut off at max_new_tokens: no EOS anywhere
            assert eos_positions == []
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


# --------------------------------------------------------------------------- the decoding loop itself


def _tiny_causal_lm(model_type: str, vocab: int = 96, **overrides):
    """A small random model of a real architecture, built from a config (nothing is downloaded)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    shapes = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
    if model_type == "gpt2":
        shapes = dict(n_embd=32, n_layer=2, n_head=4, n_positions=256)
    elif model_type != "llama":
        shapes["num_key_value_heads"] = 2  # grouped-query attention, as in Qwen2.5
    config = AutoConfig.for_model(model_type, vocab_size=vocab, **{**shapes, **overrides})
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config).eval()


class _Ids:
    """A tokenizer for prompts that are already token ids written as text ("5 17 3")."""

    eos_token_id, pad_token_id = 1, 0

    def __call__(self, prompts, return_tensors="pt", padding=True, add_special_tokens=False, padding_side="left"):
        rows = [[int(t) for t in p.split()] for p in prompts]
        width = max(map(len, rows))
        ids = torch.tensor([[0] * (width - len(r)) + r for r in rows])
        return {"input_ids": ids, "attention_mask": torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])}

    def batch_decode(self, ids, skip_special_tokens=True):
        return [" ".join(str(t) for t in row.tolist() if t > 1) for row in ids]


@pytest.mark.parametrize("model_type", ["llama", "qwen2", "gpt2"])
def test_log_probs_equal_a_forward_pass_for_other_architectures(model_type):
    """Qwen2's grouped-query attention and q/k/v biases take the shared-prefix step; GPT-2 is decoded
    by its own forward: both must give the log-probs a plain forward pass gives."""
    from course_lib import decoding

    model, tok = _tiny_causal_lm(model_type), _Ids()
    assert decoding.supports(model) == (model_type != "gpt2")
    prompts = ["5 17 3 9 22", "40 2", "7 7 7 8 9 10 11"]  # different lengths: left padding
    out = sample(model, tok, prompts, n=3, temperature=1.3, max_new_tokens=12, seed=0)
    enc = tok([prompts[i] for i in out.prompt_index])
    with torch.no_grad():
        recomputed = completion_logprobs(
            model, enc["input_ids"], enc["attention_mask"], out.completion_ids, out.completion_mask, temperature=1.3
        )
    torch.testing.assert_close(recomputed, out.logprobs, atol=1e-4, rtol=1e-4)


def test_the_shared_prefix_step_draws_what_the_models_own_forward_draws(pocket, monkeypatch):
    """The same seed through both decoding steps: the same tokens (the logits agree to float error)."""
    import course_lib.sampling as sampling

    model, tok = pocket
    prompts = _prompts(tok, 3)
    fast = sample(model, tok, prompts, n=4, max_new_tokens=120, batch_size=8, seed=3)
    monkeypatch.setattr(sampling, "supports", lambda model: False)
    generic = sample(model, tok, prompts, n=4, max_new_tokens=120, batch_size=8, seed=3)
    assert fast.texts == generic.texts
    torch.testing.assert_close(fast.logprobs, generic.logprobs, atol=1e-4, rtol=1e-4)


def test_greedy_decoding_equals_transformers_generate(pocket):
    model, tok = pocket
    prompts = _prompts(tok, 4)
    ours = sample(model, tok, prompts, n=1, temperature=0, max_new_tokens=150, batch_size=4)
    enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False, padding_side="left")
    with torch.no_grad():
        theirs = model.generate(
            **enc, max_new_tokens=150, do_sample=False, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id
        )
    texts = tok.batch_decode(theirs[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    assert ours.texts == texts
    for new, ids, length in zip(theirs[:, enc["input_ids"].shape[1] :], ours.completion_ids, ours.lengths):
        stop = (new == tok.eos_token_id).nonzero().flatten()
        expected = new[: int(stop[0]) + 1] if len(stop) else new  # generate's tokens up to and incl. its EOS
        assert ids[:length].tolist() == expected.tolist()


def test_top_p_keeps_the_nucleus_only():
    from course_lib.sampling import _top_p

    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    kept = torch.isfinite(_top_p(logits, 0.7))
    assert kept.tolist() == [[True, True, False, False]]  # 0.5 + 0.3 reach 0.7
    assert torch.isfinite(_top_p(logits, 0.01)).sum() == 1  # the most likely token always stays


def test_draws_follow_the_distribution():
    from course_lib.sampling import _draw

    probs = torch.tensor([0.6, 0.3, 0.1, 0.0])
    logits = torch.log(probs).expand(20_000, -1).clone()
    token, logp = _draw(logits, 1.0, 1.0, torch.Generator().manual_seed(0))
    freq = torch.bincount(token, minlength=4).float() / len(token)
    torch.testing.assert_close(freq, probs, atol=0.015, rtol=0)
    assert (token != 3).all()  # probability 0 is never drawn
    torch.testing.assert_close(logp, torch.log(probs[token]))
