"""The compiled pieces of the CPU decoding step (course_lib.decoding_kernels) against PyTorch's."""

import logging
import shutil

import pytest
import torch
from transformers.cache_utils import DynamicCache

from course_lib import decoding_kernels
from course_lib.data import pocket_math
from course_lib.decoding import Decoder
from course_lib.prompts import format_prompt
from course_lib.sampling import sample

needs_compiler = pytest.mark.skipif(
    not any(map(shutil.which, ("cc", "gcc", "clang"))),
    reason="no C compiler here: the decoder runs PyTorch's attention (test_without_a_compiler_... covers that)",
)


@pytest.fixture
def fresh_build(tmp_path, monkeypatch):
    """An empty kernel cache and no library loaded yet; the loaded one comes back after the test."""
    monkeypatch.setenv("COURSE_CACHE", str(tmp_path))
    decoding_kernels.load.cache_clear()
    yield tmp_path
    decoding_kernels.load.cache_clear()


def _qwen2(head_dim: int = 16):
    """A random Qwen2-layout model (grouped-query attention, 2 query heads per key head, q/k/v
    biases) with the given head dimension; the tests sharpen its attention (``sharpen_attention``)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(
        "qwen2", vocab_size=64, hidden_size=4 * head_dim, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=head_dim,
    )  # fmt: skip
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config).eval()


def _decode(
    model, ids, mask, group_size: int, steps: int, kernel: bool, keep_at: dict, whole_step: bool = False
) -> list[torch.Tensor]:
    """Logits of ``steps`` decoding steps (fixed tokens), dropping rows ``keep_at[step]`` before that step."""
    cache = DynamicCache()
    with torch.no_grad():
        model(input_ids=ids, attention_mask=mask, past_key_values=cache, use_cache=True)
        keys, values = [layer.keys for layer in cache.layers], [layer.values for layer in cache.layers]
        decoder = Decoder(model, keys, values, mask, group_size, steps, kernel=kernel, whole_step=whole_step)
        assert decoder.kernel == kernel and (decoder.whole is not None) == whole_step
        rows = torch.arange(len(ids) * group_size)
        positions = mask.sum(1).repeat_interleave(group_size)  # (B,)
        logits = []
        for step in range(steps):
            if step in keep_at:
                decoder.keep(keep_at[step])
                rows, positions = rows[keep_at[step]], positions[keep_at[step]]
            tokens = (rows * 7 + step * 3) % 60 + 2  # (B,) a fixed token per row and step
            logits.append(decoder.step(tokens, positions + step))
    return logits


@needs_compiler
def test_the_kernels_build_on_this_machine():
    """Where there is a C compiler (CI's machine has one: DeepSpeed's ops need it too) the kernels build and load."""
    assert decoding_kernels.load() is not None
    assert decoding_kernels.usable(torch.float32, torch.device("cpu"), 32)
    assert not decoding_kernels.usable(torch.bfloat16, torch.device("cpu"), 32)  # float32 only
    assert not decoding_kernels.usable(torch.float32, torch.device("cpu"), 8)  # a head dimension of whole vectors


@needs_compiler
@pytest.mark.parametrize("whole_step", [False, True], ids=["step-in-python", "whole-step-in-c"])
@pytest.mark.parametrize("head_dim", [16, 32])
def test_kernel_attention_equals_pytorch_attention_with_gqa_padding_and_dropped_rows(
    head_dim, whole_step, sharpen_attention
):
    """Grouped-query attention (2 query heads per key head), sharp attention, biases, left padding,
    prompts whose lengths are not whole vectors, 6 rows per prompt (12 queries per key head: a full
    block of 8 and a partial one), more steps than one block of own keys, and rows dropped twice
    (the second time every row of one prompt): the kernel's logits are PyTorch's, with the step's
    other operations in Python or the whole step in one compiled call (q/k/v biases, rotary, SiLU,
    the products through PyTorch's BLAS)."""
    model = sharpen_attention(_qwen2(head_dim))
    lengths = [5, 19, 33]  # left padding; none a multiple of 16
    width = max(lengths)
    ids = torch.randint(2, 60, (3, width), generator=torch.Generator().manual_seed(1))
    mask = torch.tensor([[0] * (width - n) + [1] * n for n in lengths])
    first = torch.tensor([0, 1, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17])  # rows 2 and 12 finished
    second = torch.tensor([0, 1, 2, 3, 4, 11, 12, 13, 14, 15])  # entries 5-10 (prompt 1's rows 6-11) finished
    keep_at = {7: first, 21: second}  # from step 21: rows 0, 1, 3, 4, 5 and 13-17; prompt 1 has no row left
    ours = _decode(model, ids, mask, 6, 30, kernel=True, keep_at=keep_at, whole_step=whole_step)
    theirs = _decode(model, ids, mask, 6, 30, kernel=False, keep_at=keep_at)
    for step, (a, b) in enumerate(zip(ours, theirs)):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4, msg=lambda m, step=step: f"step {step}: {m}")
    spread = torch.stack([logit.std() for logit in theirs]).min()
    assert spread > 0.1  # the logits are not flat: a wrong attention would show


@needs_compiler
@pytest.mark.parametrize("whole_step", [False, True], ids=["step-in-python", "whole-step-in-c"])
def test_a_wrong_row_to_prompt_map_is_caught(whole_step, sharpen_attention):
    """Planted fault: rows read another prompt's keys. The comparison above must fail on it."""
    model = sharpen_attention(_qwen2())
    ids = torch.randint(2, 60, (2, 20), generator=torch.Generator().manual_seed(2))
    mask = torch.ones_like(ids)
    cache = DynamicCache()
    with torch.no_grad():
        model(input_ids=ids, attention_mask=mask, past_key_values=cache, use_cache=True)
        keys, values = [layer.keys for layer in cache.layers], [layer.values for layer in cache.layers]
        right = Decoder(model, keys, values, mask, 2, 4, kernel=True, whole_step=whole_step)
        wrong = Decoder(model, keys, values, mask, 2, 4, kernel=True, whole_step=whole_step)
        wrong.prompt_rows = torch.tensor([0, 1, 4])  # prompt 0 gets row 0 only, prompt 1 rows 1-3
        if whole_step:
            wrong.whole.set_caches(*wrong._caches())
        tokens, positions = torch.tensor([5, 6, 7, 8]), torch.full((4,), 20)
        assert not torch.allclose(right.step(tokens, positions), wrong.step(tokens, positions), atol=1e-3)


@needs_compiler
def test_the_kernels_sample_the_same_completions(pocket, monkeypatch):
    """The pocket model, 64 completions of 120 tokens with finished rows dropped: the same texts with
    the kernels as with PyTorch's attention (``COURSE_KERNELS=0``), log-probs to float error."""
    model, tok = pocket
    prompts = [format_prompt(tok, p["question"]) for p in pocket_math.pocket_test_set(8)]
    ours = sample(model, tok, prompts, n=8, max_new_tokens=120, seed=11)
    monkeypatch.setenv("COURSE_KERNELS", "0")
    assert not decoding_kernels.usable(torch.float32, torch.device("cpu"), 32)
    theirs = sample(model, tok, prompts, n=8, max_new_tokens=120, seed=11)
    assert len(set(ours.lengths.tolist())) > 1  # rows finished at different steps
    assert ours.texts == theirs.texts
    torch.testing.assert_close(ours.logprobs, theirs.logprobs, atol=1e-4, rtol=1e-4)


@needs_compiler
def test_the_rms_norm_kernel_equals_the_models_norm(pocket):
    model, _ = pocket
    norm = model.model.layers[0].input_layernorm
    x = torch.randn(37, model.config.hidden_size) * 3
    with torch.no_grad():
        torch.testing.assert_close(decoding_kernels.rms_norm(x, norm.weight, norm.variance_epsilon), norm(x))


@needs_compiler
def test_the_silu_mul_kernel_equals_the_models_mlp_activation(pocket):
    model, _ = pocket
    mlp = model.model.layers[0].mlp
    gate_up = torch.randn(37, 2 * model.config.intermediate_size) * 4  # (B, 2 I): gate, then up
    gate, up = gate_up.chunk(2, dim=-1)
    with torch.no_grad():
        torch.testing.assert_close(decoding_kernels.silu_mul(gate_up), mlp.act_fn(gate) * up)


def _pocket_decoder(model, rows_per_prompt: int = 2, steps: int = 4, **options) -> Decoder:
    """A decoder over the pocket model's cache of one 3-token prompt."""
    cache, ids = DynamicCache(), torch.tensor([[5, 6, 7]])
    with torch.no_grad():
        model(input_ids=ids, past_key_values=cache, use_cache=True)
    keys, values = [layer.keys for layer in cache.layers], [layer.values for layer in cache.layers]
    return Decoder(model, keys, values, torch.ones_like(ids), rows_per_prompt, steps, **options)


@needs_compiler
def test_the_whole_step_refuses_bad_tokens_and_steps_aside_without_blas(pocket, monkeypatch):
    """A token outside the vocabulary raises (the C code would read past the embedding table);
    ``whole_step=True`` where it cannot run raises; without PyTorch's sgemm the step runs in
    Python and gives the same logits."""
    if decoding_kernels.blas_sgemm() is None:
        pytest.skip("PyTorch's library here has no BLAS sgemm_ (not an x86-64 MKL build): the step stays in Python")
    model, _ = pocket
    tokens, positions = torch.tensor([8, 9]), torch.tensor([3, 3])
    with torch.no_grad():
        whole = _pocket_decoder(model)
        assert whole.whole is not None
        with pytest.raises(IndexError, match="outside the vocabulary"):
            whole.step(torch.tensor([8, model.config.vocab_size]), positions)
        for decoder in (whole, _pocket_decoder(model, whole_step=False)):  # the kernels read every row
            with pytest.raises(ValueError, match="each of the 2 rows"):
                decoder.step(tokens[:1], positions[:1])
        expected = whole.step(tokens, positions)
        with pytest.raises(ValueError, match="whole_step=True needs"):
            _pocket_decoder(model, fuse=False, whole_step=True)
        monkeypatch.setattr(decoding_kernels, "blas_sgemm", lambda: None)
        python = _pocket_decoder(model)
        assert python.whole is None and python.kernel
        torch.testing.assert_close(python.step(tokens, positions), expected, atol=1e-5, rtol=1e-5)
    assert decoding_kernels.gemm_floor_ms([model.lm_head.weight], 4, repeats=2) is None  # no BLAS, no floor


@needs_compiler
def test_attend_and_the_decoder_refuse_what_the_kernel_would_misread(pocket):
    """Arguments the C code would read out of bounds or misread raise first, with what to do."""
    rows, heads, head_dim, length = 4, 2, 16, 16
    args = dict(
        qk=torch.zeros(rows, 2 * heads, head_dim), new_v=torch.zeros(rows, heads * head_dim), heads=heads,
        prompt_kt=torch.zeros(1, heads, 1, head_dim, 16), prompt_v=torch.zeros(1, heads, length, head_dim),
        prompt_pad=torch.zeros(1, length, dtype=torch.uint8), own_kt=torch.zeros(rows, heads, 1, head_dim, 16),
        own_v=torch.zeros(rows, heads, 16, head_dim), prompt_rows=torch.tensor([0, rows]), own_len=1,
    )  # fmt: skip
    assert decoding_kernels.attend(**args).shape == (rows, heads * head_dim)  # the arguments as they should be
    wrong = {
        "qk": torch.zeros(2 * heads, rows, head_dim).transpose(0, 1),  # not contiguous
        "own_len": 0,  # would write before the cache
        "prompt_rows": torch.tensor([0, rows - 1]),  # a row no prompt owns
        "own_v": torch.zeros(rows, heads, 16, head_dim, dtype=torch.float64),
    }
    for name, value in wrong.items():
        with pytest.raises(ValueError, match="float32 CPU tensors"):
            decoding_kernels.attend(**{**args, name: value})
    model, tok = pocket
    cache = DynamicCache()
    ids = torch.tensor([[5, 6, 7]])
    with torch.no_grad():
        model(input_ids=ids, past_key_values=cache, use_cache=True)
    keys, values = [layer.keys for layer in cache.layers], [layer.values for layer in cache.layers]
    half = [k.to(torch.bfloat16) for k in keys], [v.to(torch.bfloat16) for v in values]
    with pytest.raises(ValueError, match="float32 on the CPU"):
        Decoder(model, *half, torch.ones_like(ids), 2, 4, kernel=True)
    decoder = Decoder(model, keys, values, torch.ones_like(ids), 2, 1, kernel=True)
    with pytest.raises(ValueError, match="increasing order"):
        decoder.keep(torch.tensor([1, 0]))
    with torch.no_grad():
        decoder.step(torch.tensor([8, 9]), torch.tensor([3, 3]))
        with pytest.raises(ValueError, match="larger max_new_tokens"):
            decoder.step(torch.tensor([8, 9]), torch.tensor([4, 4]))


def test_without_a_compiler_the_decoder_falls_back_and_says_so(fresh_build, monkeypatch, caplog, pocket):
    monkeypatch.setenv("CC", str(fresh_build / "no-such-compiler"))
    with caplog.at_level(logging.WARNING, logger="course_lib.decoding_kernels"):
        assert decoding_kernels.load() is None
    assert "PyTorch operations" in caplog.text
    assert not decoding_kernels.usable(torch.float32, torch.device("cpu"), 32)
    model, tok = pocket
    out = sample(model, tok, [format_prompt(tok, pocket_math.pocket_test_set(1)[0]["question"])], n=2, seed=0)
    assert len(out.texts) == 2  # sampling goes on through PyTorch's attention


@needs_compiler
def test_a_fresh_build_lands_in_the_cache_and_is_reused(fresh_build):
    assert decoding_kernels.load() is not None
    built = list((fresh_build / "kernels").glob("decoding-*.so"))
    assert len(built) == 1
    stamp = built[0].stat().st_mtime_ns
    decoding_kernels.load.cache_clear()
    assert decoding_kernels.load() is not None
    assert built[0].stat().st_mtime_ns == stamp  # loaded, not compiled again
