"""DeepSpeed and accelerate configs for training on several processes, GPUs or machines (lesson 12).

Four DeepSpeed configs ship here, each with a matching ``accelerate`` YAML file:

=================  ============================================================  ==========================
name               what is split across the N processes / moved to the CPU         for
=================  ============================================================  ==========================
``zero2``          optimizer states and gradients split N ways                   full fine-tuning, N GPUs
``zero2_offload``  + optimizer states and the update on the CPU (DeepSpeed's     Yin's tutorial: 1.5B on
                   CPU Adam)                                                     an 8 GB GPU
``zero3``          + the weights themselves split N ways (gathered per layer)    a model too big for 1 GPU
``zero3_offload``  + weights and optimizer on the CPU                            the last resort: slow
=================  ============================================================  ==========================

Values written ``"auto"`` are filled in by the Hugging Face Trainer from its own arguments
(batch size, gradient accumulation, clipping, learning rate, bf16), so one file serves every
recipe. :func:`resolve_auto` does the same filling by hand, and :func:`validate` checks the
result with DeepSpeed's own config classes and says in plain words what does not fit.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parent
NAMES = ("zero2", "zero2_offload", "zero3", "zero3_offload")


class DeepSpeedConfigError(ValueError):
    """A DeepSpeed config that DeepSpeed would reject, explained."""


def deepspeed_config_path(name: str | Path) -> Path:
    """The file of a shipped config (``"zero2"`` ...), or ``name`` itself if it is a path to a file."""
    if str(name) in NAMES:
        return CONFIG_DIR / f"ds_{name}.json"
    path = Path(name)
    if not path.is_file():
        raise FileNotFoundError(
            f"No DeepSpeed config {str(name)!r}: give one of {', '.join(NAMES)} or the path of a JSON file"
        )
    return path


def load_deepspeed_config(name: str | Path) -> dict:
    """A DeepSpeed config as a dict, ``"auto"`` values included (see :func:`resolve_auto`)."""
    path = deepspeed_config_path(name)
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DeepSpeedConfigError(f"{path} is not valid JSON: line {e.lineno}, column {e.colno}: {e.msg}") from e


def zero_stage(config: dict) -> int:
    return int(config.get("zero_optimization", {}).get("stage", 0))


def offloads(config: dict) -> dict[str, bool]:
    """Which parts a config moves to the CPU: ``{"optimizer": bool, "params": bool}``."""
    zero = config.get("zero_optimization", {})
    on_cpu = lambda key: zero.get(key, {}).get("device", "none") == "cpu"  # noqa: E731
    return {"optimizer": on_cpu("offload_optimizer"), "params": on_cpu("offload_param")}


def resolve_auto(
    config: dict,
    *,
    micro_batch_size: int,
    gradient_accumulation_steps: int = 1,
    world_size: int = 1,
    learning_rate: float = 1e-5,
    weight_decay: float = 0.0,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    max_grad_norm: float = 1.0,
    bf16: bool = False,
    fp16: bool = False,
    hidden_size: int = 1024,
) -> dict:
    """A copy of ``config`` with every ``"auto"`` replaced as the Hugging Face Trainer does it.

    ``train_batch_size = micro_batch_size * gradient_accumulation_steps * world_size``; the bucket
    sizes of ZeRO follow the model's hidden size (``h*h``, ``0.9*h*h`` and ``10*h``).
    """
    values = {
        "train_micro_batch_size_per_gpu": micro_batch_size,
        "gradient_accumulation_steps": gradient_accumulation_steps,
        "train_batch_size": micro_batch_size * gradient_accumulation_steps * world_size,
        "gradient_clipping": max_grad_norm,
        "bf16.enabled": bf16,
        "fp16.enabled": fp16,
        "optimizer.params.lr": learning_rate,
        "optimizer.params.betas": list(betas),
        "optimizer.params.eps": eps,
        "optimizer.params.weight_decay": weight_decay,
        "zero_optimization.reduce_bucket_size": hidden_size * hidden_size,
        "zero_optimization.stage3_prefetch_bucket_size": int(0.9 * hidden_size * hidden_size),
        "zero_optimization.stage3_param_persistence_threshold": 10 * hidden_size,
    }
    resolved = copy.deepcopy(config)

    def fill(node: dict, prefix: str) -> None:
        for key, value in node.items():
            name = f"{prefix}{key}"
            if isinstance(value, dict):
                fill(value, name + ".")
            elif value == "auto":
                if name not in values:
                    raise DeepSpeedConfigError(
                        f"'{name}' is \"auto\", which only the Hugging Face Trainer "
                        "knows how to fill for keys it owns; write a value instead"
                    )
                node[key] = values[name]

    fill(resolved, "")
    return resolved


def validate(config: dict | str | Path, world_size: int = 1, **auto) -> deepspeed.runtime.config.DeepSpeedConfig:  # noqa: F821
    """Check a config with DeepSpeed's own classes (``deepspeed.runtime.config.DeepSpeedConfig``)
    after filling its ``"auto"`` values with ``auto`` (the arguments of :func:`resolve_auto`), for a
    run on ``world_size`` processes.

    Returns DeepSpeed's parsed config. Raises :class:`DeepSpeedConfigError` saying what is wrong:
    an unknown or misspelt key, a value of the wrong type, or batch sizes that do not multiply up.
    """
    # lazy: DeepSpeed takes seconds to import and only validation needs it
    import pydantic
    from deepspeed.runtime.config import DeepSpeedConfig

    raw = load_deepspeed_config(config) if not isinstance(config, dict) else config
    resolved = resolve_auto(raw, world_size=world_size, **auto) if auto else copy.deepcopy(raw)
    if "auto" in json.dumps(resolved):
        raise DeepSpeedConfigError(
            'the config still holds "auto" values: pass the training settings '
            "(micro_batch_size=..., world_size=...) to fill them, as the Trainer would"
        )
    # DeepSpeed checks train_batch_size against the world size of a running process group; outside
    # one it assumes 1 process, so the product for world_size processes is checked here instead.
    total = resolved.pop("train_batch_size", None)
    micro, steps = resolved.get("train_micro_batch_size_per_gpu", 1), resolved.get("gradient_accumulation_steps", 1)
    if total is not None and total != micro * steps * world_size:
        raise DeepSpeedConfigError(
            f"train_batch_size is {total}, but train_micro_batch_size_per_gpu x gradient_accumulation_steps x "
            f"processes = {micro} x {steps} x {world_size} = {micro * steps * world_size}: the three must multiply "
            'up. Leave them "auto" and the Trainer computes them'
        )
    try:
        return DeepSpeedConfig(resolved)
    except pydantic.ValidationError as e:
        problems = "; ".join(f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in e.errors())
        raise DeepSpeedConfigError(
            f"DeepSpeed rejects the config ({problems}). An 'extra inputs' error is an "
            "unknown key: check its spelling against the shipped configs"
        ) from e
    except AssertionError as e:
        raise DeepSpeedConfigError(f"DeepSpeed rejects the config: {e}") from e


def accelerate_config(name: str, out_dir: str | Path, num_processes: int = 2, num_machines: int = 1) -> Path:
    """A copy of the shipped ``accelerate_<name>.yaml`` with an absolute path to its DeepSpeed file (so
    ``accelerate launch --config_file`` works from any directory) and the given process counts."""
    if name not in NAMES:
        raise ValueError(f"unknown config {name!r}; choose one of {', '.join(NAMES)}")
    text = (CONFIG_DIR / f"accelerate_{name}.yaml").read_text()
    text = text.replace(
        f"deepspeed_config_file: course_lib/configs/ds_{name}.json",
        f"deepspeed_config_file: {CONFIG_DIR / f'ds_{name}.json'}",
    )
    text = text.replace("num_processes: 2", f"num_processes: {num_processes * num_machines}")
    text = text.replace("num_machines: 1", f"num_machines: {num_machines}")
    path = Path(out_dir) / f"accelerate_{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path
