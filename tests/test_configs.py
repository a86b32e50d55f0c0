"""The shipped DeepSpeed / accelerate configs: DeepSpeed's own classes accept them, and mistakes are explained."""

import json

import pytest

from course_lib import configs
from course_lib.configs import NAMES, DeepSpeedConfigError

AUTO = dict(micro_batch_size=4, gradient_accumulation_steps=2, learning_rate=1e-4, hidden_size=160)


@pytest.mark.parametrize("name", NAMES)
def test_every_shipped_config_passes_deepspeeds_own_validation(name):
    parsed = configs.validate(name, world_size=2, **AUTO)
    raw = configs.load_deepspeed_config(name)
    assert parsed.zero_optimization_stage == configs.zero_stage(raw) == (3 if "zero3" in name else 2)
    assert parsed.train_micro_batch_size_per_gpu == 4 and parsed.gradient_accumulation_steps == 2
    assert parsed.zero_config.offload_optimizer is not None if "offload" in name else True
    # Offloading the optimizer means DeepSpeed builds its CPU Adam: the config names the optimizer.
    assert ("optimizer" in raw) == configs.offloads(raw)["optimizer"] == ("offload" in name)
    assert configs.offloads(raw)["params"] == (name == "zero3_offload")
    if parsed.zero_optimization_stage == 3:  # else saving a ZeRO-3 model writes empty weights
        assert raw["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True


@pytest.mark.parametrize("name", NAMES)
def test_every_accelerate_file_points_at_its_deepspeed_config(name, tmp_path):
    text = (configs.CONFIG_DIR / f"accelerate_{name}.yaml").read_text()
    assert f"deepspeed_config_file: course_lib/configs/ds_{name}.json" in text
    assert "distributed_type: DEEPSPEED" in text and "use_cpu: false" in text
    copy = configs.accelerate_config(name, tmp_path, num_processes=2).read_text()
    assert f"deepspeed_config_file: {configs.CONFIG_DIR / f'ds_{name}.json'}" in copy


def test_a_misspelt_key_is_named(tmp_path):
    config = configs.load_deepspeed_config("zero2_offload")
    config["zero_optimization"]["offload_optimiser"] = config["zero_optimization"].pop("offload_optimizer")
    with pytest.raises(DeepSpeedConfigError, match="offload_optimiser.*unknown key"):
        configs.validate(config, **AUTO)


def test_batch_sizes_that_do_not_multiply_up_are_explained():
    config = configs.resolve_auto(configs.load_deepspeed_config("zero2"), world_size=2, **AUTO)
    assert config["train_batch_size"] == 4 * 2 * 2
    configs.validate(config, world_size=2)
    with pytest.raises(DeepSpeedConfigError, match="4 x 2 x 3 = 24: the three must multiply up"):
        configs.validate(config, world_size=3)


def test_unfilled_auto_values_and_bad_files_are_explained(tmp_path):
    with pytest.raises(DeepSpeedConfigError, match='still holds "auto"'):
        configs.validate("zero3")
    bad = tmp_path / "ds.json"
    bad.write_text('{"zero_optimization": {"stage": 2,}}')
    with pytest.raises(DeepSpeedConfigError, match="line 1"):
        configs.load_deepspeed_config(bad)
    with pytest.raises(FileNotFoundError, match="zero2, zero2_offload"):
        configs.deepspeed_config_path("zero4")
    with pytest.raises(DeepSpeedConfigError, match="only the Hugging Face Trainer"):
        configs.resolve_auto({"scheduler": {"params": {"warmup_num_steps": "auto"}}}, micro_batch_size=1)


def test_resolve_auto_fills_as_the_trainer_does():
    resolved = configs.resolve_auto(configs.load_deepspeed_config("zero3_offload"), world_size=2, **AUTO)
    assert "auto" not in json.dumps(resolved)
    assert resolved["optimizer"]["params"]["lr"] == 1e-4
    assert resolved["zero_optimization"]["reduce_bucket_size"] == 160 * 160
    assert resolved["zero_optimization"]["stage3_param_persistence_threshold"] == 1600
