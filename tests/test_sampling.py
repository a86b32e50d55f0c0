import pytest
import torch

from course_lib.data import pocket_math
from course_lib.losses import completion_logprobs, samples_logprobs
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
    with torch.no_grad():
        recomputed = samples_logprobs(model, tok, out, temperature=0.7)  # one forward over prompt + completion
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
    from course_lib.sampling import top_p_filter

    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    kept = torch.isfinite(top_p_filter(logits, 0.7))
    assert kept.tolist() == [[True, True, False, False]]  # 0.5 + 0.3 reach 0.7
    assert torch.isfinite(top_p_filter(logits, 0.01)).sum() == 1  # the most likely token always stays


def test_draws_follow_the_distribution():
    from course_lib.sampling import DrawSettings, draw
    from course_lib.streams import row_keys, uniforms

    probs = torch.tensor([0.6, 0.3, 0.1, 0.0])
    logits = torch.log(probs).expand(20_000, -1).clone()
    token, logp = draw(logits, DrawSettings(), uniforms(row_keys(0, ["p"], 20_000), 0))
    freq = torch.bincount(token, minlength=4).float() / len(token)
    torch.testing.assert_close(freq, probs, atol=0.015, rtol=0)
    assert (token != 3).all()  # probability 0 is never drawn
    torch.testing.assert_close(logp, torch.log(probs[token]))


def test_a_uniform_at_the_very_top_never_draws_a_token_of_probability_zero():
    from course_lib.sampling import _categorical

    probs = torch.tensor([[0.3, 0.7, 0.0, 0.0]])
    assert _categorical(probs, torch.tensor([1.0])).tolist() == [1]  # float rounding can put the target at the top
    assert _categorical(probs, torch.tensor([0.0])).tolist() == [0]


# --------------------------------------------------------------------------- the random streams


def test_streams_are_uniform_and_independent_across_rows_and_steps():
    from course_lib.streams import row_keys, uniforms

    keys = row_keys(0, [f"prompt {i}" for i in range(200)], 50)  # 10,000 rows
    u = torch.stack([uniforms(keys, t) for t in range(8)])  # (8, 10000)
    assert 0 < u.min() and u.max() < 1
    counts = torch.histc(u.float(), bins=10, min=0, max=1)
    torch.testing.assert_close(counts / counts.sum(), torch.full((10,), 0.1), atol=0.005, rtol=0)
    assert abs(torch.corrcoef(u[:2])[0, 1]) < 0.05  # step t and t + 1
    assert abs(torch.corrcoef(u[:, 0::2][:, :4999].T.reshape(-1, 2).T)[0, 1]) < 0.05  # neighbouring rows
    assert not torch.equal(uniforms(row_keys(1, ["prompt 0"], 1), 0), uniforms(row_keys(0, ["prompt 0"], 1), 0))


def test_the_uniform_table_holds_each_steps_uniforms():
    """decode draws every step's numbers at once: column t must be what ``uniforms`` gives at step t."""
    from course_lib.streams import row_keys, uniform_table, uniforms

    keys = row_keys(5, ["a", "b", "c"], 4)  # (12, 2)
    table = uniform_table(keys, 9)  # (12, 9)
    assert table.shape == (12, 9)
    for t in range(9):
        assert torch.equal(table[:, t], uniforms(keys, t))


def test_a_repeated_prompt_gets_its_own_streams():
    from course_lib.streams import row_keys

    keys = row_keys(3, ["a", "b", "a"], 2)  # (6, 2)
    assert len({tuple(k) for k in keys.tolist()}) == 6
    assert torch.equal(keys[:2], row_keys(3, ["a"], 2))  # the first copy keeps the keys it has alone


def test_a_completion_does_not_depend_on_its_batch(pocket):
    """Completion j of a prompt is the same whatever the batch size or the other prompts in the call."""
    model, tok = pocket
    prompts = _prompts(tok, 6)
    full = sample(model, tok, prompts, n=4, max_new_tokens=120, batch_size=64, seed=3)
    small_batches = sample(model, tok, prompts, n=4, max_new_tokens=120, batch_size=4, seed=3)
    subset = sample(model, tok, [prompts[4], prompts[1]], n=4, max_new_tokens=120, batch_size=8, seed=3)
    assert small_batches.texts == full.texts
    assert subset.texts == full.texts[16:20] + full.texts[4:8]
    torch.testing.assert_close(
        subset.logprobs[:4, : full.logprobs.shape[1]],
        full.logprobs[16:20, : subset.logprobs.shape[1]],
        atol=1e-4,
        rtol=1e-4,
    )
    assert sample(model, tok, prompts, n=4, max_new_tokens=120, seed=4).texts != full.texts


def test_dropping_finished_rows_does_not_change_the_completions(pocket, monkeypatch):
    import course_lib.sampling as sampling

    model, tok = pocket
    prompts = _prompts(tok, 4)
    compacted = sample(model, tok, prompts, n=4, max_new_tokens=120, seed=5)
    monkeypatch.setattr(sampling, "COMPACT_WHEN_DONE", 2.0)  # never: every row stays to the last step
    kept = sample(model, tok, prompts, n=4, max_new_tokens=120, seed=5)
    assert len(set(compacted.lengths.tolist())) > 1  # rows did finish at different steps
    assert kept.texts == compacted.texts
    torch.testing.assert_close(kept.logprobs, compacted.logprobs, atol=1e-4, rtol=1e-4)


# --------------------------------------------------------------------------- stopping, broken logits


def test_every_eos_id_of_the_generation_config_ends_a_row():
    """A second EOS id in the model's generation config (Qwen2.5-Instruct lists two) ends rows too."""
    from course_lib.sampling import stop_token_ids

    model, tok = _tiny_causal_lm("llama"), _Ids()
    model.generation_config.eos_token_id = 1
    prompts = ["5 17 3 9 22", "40 2"]
    before = sample(model, tok, prompts, n=8, max_new_tokens=16, seed=0)
    drawn = torch.cat([row[:-1] for row in before.completion_ids])  # tokens that did not end a row
    second = int(torch.bincount(drawn[drawn > 1]).argmax())  # a token the rows do emit mid-way
    model.generation_config.eos_token_id = [1, second]
    assert stop_token_ids(model, tok) == [1, second]
    after = sample(model, tok, prompts, n=8, max_new_tokens=16, seed=0)
    cut = 0
    for old, new, old_len, new_len in zip(before.completion_ids, after.completion_ids, before.lengths, after.lengths):
        old, new = old[:old_len].tolist(), new[:new_len].tolist()
        stop = old.index(second) + 1 if second in old else len(old)
        assert new == old[:stop]  # the same draws, cut at the first of either EOS
        cut += stop < len(old)
    assert cut > 0
    assert (after.completion_mask.sum(1) == after.lengths).all()


def test_stop_ids_put_the_tokenizers_eos_first_and_drop_repeats():
    from course_lib.sampling import stop_token_ids

    model, tok = _tiny_causal_lm("qwen2"), _Ids()
    model.generation_config.eos_token_id = [7, 1, 7]
    assert stop_token_ids(model, tok) == [1, 7]
    model.generation_config.eos_token_id = None
    assert stop_token_ids(model, tok) == [1]


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_broken_logits_raise_naming_the_step(bad):
    model, tok = _tiny_causal_lm("llama"), _Ids()
    with torch.no_grad():
        model.lm_head.weight[5] = bad
    with pytest.raises(FloatingPointError, match="decoding step 0"):
        sample(model, tok, ["5 17 3"], n=2, max_new_tokens=4)


def test_training_settings_refuse_temperature_zero():
    from course_lib.train.expert_iteration import RSSettings
    from course_lib.train.grpo import GRPOSettings

    with pytest.raises(ValueError, match="temperature > 0"):
        GRPOSettings(temperature=0)
    with pytest.raises(ValueError, match="greedy decoding gives one completion"):
        RSSettings(temperature=0, k=8)
    assert RSSettings(temperature=0, k=1).k == 1  # one greedy answer per question is a choice, not a mistake


# --------------------------------------------------------------------------- temperature, top-k, top-p, min-p


@pytest.mark.parametrize(
    "rule",
    [dict(temperature=0.7, top_p=0.8), dict(temperature=1.3, top_k=3), dict(temperature=1.0, min_p=0.2)],
)
def test_sampled_tokens_follow_the_warped_distribution(rule):
    """20,000 first tokens through sample() against transformers' own warpers on the model's logits."""
    from transformers.generation.logits_process import (
        MinPLogitsWarper,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    model, tok = _tiny_causal_lm("llama", vocab=12), _Ids()
    with torch.no_grad():
        model.lm_head.weight.mul_(40)  # a peaked distribution, so each filter removes tokens
    prompt = "5 3 9"
    out = sample(model, tok, [prompt], n=20_000, max_new_tokens=1, batch_size=20_000, seed=0, **rule)
    with torch.no_grad():
        logits = model(**tok([prompt])).logits[:, -1]  # (1, V)
    warped = TemperatureLogitsWarper(rule["temperature"])(None, logits)
    if "top_k" in rule:
        warped = TopKLogitsWarper(rule["top_k"])(None, warped)
    if "top_p" in rule:
        warped = TopPLogitsWarper(rule["top_p"])(None, warped)
    if "min_p" in rule:
        warped = MinPLogitsWarper(rule["min_p"])(None, warped)
    expected = warped.softmax(-1)[0]
    assert 1 < int((expected > 0).sum()) < 12  # the filter kept some tokens and removed others
    freq = torch.bincount(out.completion_ids[:, 0], minlength=12).float() / 20_000
    torch.testing.assert_close(freq, expected, atol=0.015, rtol=0)
    assert (freq[expected == 0] == 0).all()
    full = torch.log_softmax(logits / rule["temperature"], -1)[0]  # log-probs are of the untruncated softmax
    torch.testing.assert_close(out.logprobs[:, 0], full[out.completion_ids[:, 0]], atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------- attention, adapters, Unsloth


def test_grouped_query_attention_far_from_uniform_with_biases(monkeypatch, sharpen_attention):
    """Qwen2's layout with sharp attention and non-zero q/k/v biases: the shared-prefix step gives a
    forward pass's log-probs and draws what the model's own forward draws."""
    import course_lib.sampling as sampling

    model = sharpen_attention(_tiny_causal_lm("qwen2", attn_implementation="eager"), seed=1)
    tok, prompts = _Ids(), ["5 17 3 9 22 30 31 32", "40 2", "7 7 7 8 9 10 11"]
    with torch.no_grad():
        weights = model(**tok(prompts), output_attentions=True).attentions  # per layer (P, H, L, L)
    assert max(float(w.max(-1).values.mean()) for w in weights) > 0.6  # the random init gives 0.32 (near uniform)
    out = sample(model, tok, prompts, n=3, temperature=1.0, max_new_tokens=12, seed=0)
    enc = tok([prompts[i] for i in out.prompt_index])
    with torch.no_grad():
        recomputed = completion_logprobs(
            model, enc["input_ids"], enc["attention_mask"], out.completion_ids, out.completion_mask
        )
    torch.testing.assert_close(recomputed, out.logprobs, atol=1e-4, rtol=1e-4)
    monkeypatch.setattr(sampling, "supports", lambda model: False)
    assert sample(model, tok, prompts, n=3, temperature=1.0, max_new_tokens=12, seed=0).texts == out.texts


def test_adapters_off_sample_the_base_model(pocket):
    """A LoRA model with its adapters switched off (GRPO's reference) samples what the base samples."""
    import copy

    from peft import LoraConfig, get_peft_model

    model, tok = pocket
    base = copy.deepcopy(model)
    torch.manual_seed(0)
    lora = LoraConfig(r=4, lora_alpha=32, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    wrapped = get_peft_model(copy.deepcopy(model), lora)
    prompts = _prompts(tok, 3)
    expected = sample(base, tok, prompts, n=4, max_new_tokens=100, seed=2)
    with wrapped.disable_adapter():
        off = sample(wrapped, tok, prompts, n=4, max_new_tokens=100, seed=2)
    on = sample(wrapped, tok, prompts, n=4, max_new_tokens=100, seed=2)
    assert off.texts == expected.texts
    torch.testing.assert_close(off.logprobs, expected.logprobs, atol=1e-5, rtol=1e-5)
    assert on.texts != expected.texts  # the adapters do change the policy


def _unsloth_patched(model):
    """Make ``model`` look as Unsloth leaves it: its attention class replaced by one from ``unsloth``."""
    attn = model.model.layers[0].self_attn
    cls = type(attn)

    def forward(self, *args, **kwargs):
        return cls.forward(self, *args, **kwargs)

    forward.__module__ = "unsloth.models.llama"
    attn.__class__ = type(cls.__name__, (cls,), {"forward": forward, "__module__": "unsloth.models.llama"})
    return model


def test_a_model_patched_by_unsloth_samples_through_generate(pocket, caplog, monkeypatch):
    import copy

    import course_lib.sampling as sampling
    from course_lib.sampling import decoding_path, patched_by_unsloth

    model, tok = pocket
    assert decoding_path(model) == "shared-prefix" and not patched_by_unsloth(model)
    assert decoding_path(_tiny_causal_lm("gpt2")) == "forward"
    patched = _unsloth_patched(copy.deepcopy(model))
    patched.generation_config.repetition_penalty, patched.generation_config.top_k = 1.5, 2  # as Qwen's config sets some
    assert patched_by_unsloth(patched) and decoding_path(patched) == "generate"
    prompts = _prompts(tok, 3)
    monkeypatch.setattr(sampling, "_announced", set())  # said once per process: start from "not yet"
    with caplog.at_level("WARNING", logger="course_lib.sampling"):
        greedy = sample(patched, tok, prompts, n=1, temperature=0, max_new_tokens=150)
        drawn = sample(patched, tok, prompts, n=3, temperature=0.8, max_new_tokens=150, seed=1)
    assert greedy.texts == sample(model, tok, prompts, n=1, temperature=0, max_new_tokens=150).texts
    assert drawn.texts == sample(patched, tok, prompts, n=3, temperature=0.8, max_new_tokens=150, seed=1).texts
    with torch.no_grad():
        recomputed = samples_logprobs(model, tok, drawn, temperature=0.8)  # the unpatched model's forward
    torch.testing.assert_close(recomputed, drawn.logprobs, atol=1e-4, rtol=1e-4)
    for ids, length in zip(drawn.completion_ids, drawn.lengths):
        assert (ids[: length - 1] != tok.eos_token_id).all()
    assert caplog.text.count("patched by Unsloth") == 1  # said once, not at every call


def test_rotary_pairs_side_by_side_are_one_complex_product():
    """The step turns q and k as complex numbers with each head's dimensions in pair order: the same
    vectors (reordered) as Llama's rotate_half, and the same dot products q . k."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    from course_lib.decoding import pair_order, rotation_table

    model = _tiny_causal_lm("llama")
    head_dim = model.config.hidden_size // model.config.num_attention_heads  # 8
    order = pair_order(head_dim)
    assert order.tolist() == [0, 4, 1, 5, 2, 6, 3, 7]
    torch.manual_seed(0)
    q, k, positions = torch.randn(3, 4, 1, head_dim), torch.randn(3, 4, 1, head_dim), torch.tensor([0, 7, 40])
    cos, sin = model.model.rotary_emb(q, positions[:, None])  # (3, 1, D)
    q_hf, k_hf = apply_rotary_pos_emb(q, k, cos, sin)  # (3, 4, 1, D)
    turn = rotation_table(model.model.rotary_emb, 41, head_dim, q.device)[positions][:, None, None]  # (3, 1, 1, D/2)
    q_ours = torch.view_as_real(torch.view_as_complex(q[..., order].reshape(3, 4, 1, -1, 2)) * turn).flatten(-2)
    k_ours = torch.view_as_real(torch.view_as_complex(k[..., order].reshape(3, 4, 1, -1, 2)) * turn).flatten(-2)
    torch.testing.assert_close(q_ours, q_hf[..., order], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close((q_ours * k_ours).sum(-1), (q_hf * k_hf).sum(-1), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_fused_rms_norm_equals_the_models_norm(dtype):
    from course_lib.decoding import rms_norm

    norm = _tiny_causal_lm("qwen2").model.norm.to(dtype)
    with torch.no_grad():
        norm.weight.copy_(torch.linspace(0.5, 2.0, norm.weight.numel()))
    x = (torch.randn(5, norm.weight.numel()) * 3).to(dtype)
    torch.testing.assert_close(rms_norm(norm, x), norm(x), atol=0, rtol=0)
    assert rms_norm(torch.nn.LayerNorm(x.shape[-1]).to(dtype), x).dtype == dtype  # another norm: through its module


def test_the_fused_step_equals_the_modules_step_with_lora_merged_or_switched_off(pocket):
    """q/k/v and gate/up as one product each, LoRA deltas merged in: the logits the modules give."""
    import copy

    from peft import LoraConfig, get_peft_model
    from transformers.cache_utils import DynamicCache

    from course_lib.decoding import Decoder, fused_layer

    model, tok = pocket
    torch.manual_seed(0)
    lora = LoraConfig(
        r=4, lora_alpha=32, target_modules=["q_proj", "v_proj", "o_proj", "up_proj"], init_lora_weights=False
    )
    wrapped = get_peft_model(copy.deepcopy(model), lora).eval()
    enc = tok(_prompts(tok, 2), return_tensors="pt", padding=True, add_special_tokens=False, padding_side="left")

    def logits(fuse: bool) -> torch.Tensor:
        cache = DynamicCache()
        wrapped(**enc, past_key_values=cache, use_cache=True)
        keys, values = [layer.keys for layer in cache.layers], [layer.values for layer in cache.layers]
        decoder = Decoder(wrapped, keys, values, enc["attention_mask"], 3, 4, fuse=fuse)
        assert all(f is not None for f in decoder.fused) == fuse
        tokens, positions = torch.tensor([40, 41, 42, 43, 44, 45]), enc["attention_mask"].sum(1).repeat_interleave(3)
        return torch.stack([decoder.step(tokens, positions + t) for t in range(3)])  # (3, B, V)

    with torch.no_grad():
        torch.testing.assert_close(logits(True), logits(False), atol=1e-4, rtol=1e-4)
        with wrapped.disable_adapter():
            off = logits(True)
            torch.testing.assert_close(off, logits(False), atol=1e-4, rtol=1e-4)
        assert not torch.allclose(off, logits(True), atol=1e-3)  # the adapters did take part
    dora = get_peft_model(copy.deepcopy(model), LoraConfig(r=4, target_modules=["q_proj"], use_dora=True))
    assert fused_layer(dora.base_model.model.model.layers[0]) is None  # DoRA: through the modules
