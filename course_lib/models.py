"""Loading models: the shipped pocket model offline, a profile's model by name, or a policy to train.

A policy is the model plus, optionally, LoRA adapters (:func:`lora_config`): Unsloth's
``FastLanguageModel`` where CUDA exists and the profile asks for it, transformers + PEFT
everywhere else.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib.util
import os
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

from course_lib.config import Profile, import_unsloth_first, uses_unsloth

REPO_ROOT = Path(__file__).resolve().parents[1]
POCKET_MODEL_DIR = REPO_ROOT / "data" / "pocket_model"
# The pretrained model the base was mid-trained from: a strong solver, the teacher for distillation.
POCKET_TEACHER_DIR = REPO_ROOT / "data" / "pocket_teacher"
# The control of lesson 05: the base's mid-training with no step-by-step solution in the corpus.
POCKET_ANSWER_ONLY_DIR = REPO_ROOT / "data" / "pocket_answer_only"


def pocket_model_dir() -> Path:
    """``$COURSE_POCKET_MODEL`` if set, else the checkpoint shipped in ``data/pocket_model``."""
    return Path(os.environ.get("COURSE_POCKET_MODEL", POCKET_MODEL_DIR)).expanduser()


def load_pocket_model(path: str | Path | None = None, device: str = "cpu"):
    """The pocket model and its tokenizer, from local files only (no network).

    Returns ``(model, tokenizer)``; the model is in eval mode, float32.
    """
    path = Path(path) if path is not None else pocket_model_dir()
    if not (path / "model.safetensors").is_file():
        raise FileNotFoundError(
            f"No pocket model at {path} (model.safetensors missing). The pocket models ship with the "
            "course under data/ (pocket_model, pocket_teacher, pocket_answer_only); restore one with "
            "`git checkout -- data/<folder>`, or build it again with `python -m course_lib.pocket.pretrain "
            "--recipe base` (or teacher, answer_only; see course_lib.pocket.pretrain.RECIPES)."
        )
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = LlamaForCausalLM.from_pretrained(path, local_files_only=True, dtype=torch.float32)
    return model.to(device).eval(), tokenizer


def load_model(profile: Profile):
    """The profile's model and tokenizer: the pocket model, or a hub model by name.

    A hub model is read from the local cache when ``HF_HUB_OFFLINE=1``; the error
    says how to fetch it when it is missing.
    """
    if profile.model_name == "pocket":
        return load_pocket_model(device=profile.device)
    device = profile.device if profile.device != "cuda" or torch.cuda.is_available() else "cpu"
    try:
        tokenizer = AutoTokenizer.from_pretrained(profile.model_name)
        model = AutoModelForCausalLM.from_pretrained(profile.model_name, dtype=getattr(torch, profile.dtype))
    except OSError as e:
        raise OSError(
            f"Could not load {profile.model_name!r} ({e}). On a machine with network, "
            "unset HF_HUB_OFFLINE so it downloads once; offline, use the 'pocket' profile."
        ) from e
    _pad_left(tokenizer)
    return model.to(device).eval(), tokenizer


def load_teacher(profile: Profile):
    """The profile's teacher for distillation (lesson 07): the pocket teacher (the same
    architecture trained 3x longer, data/pocket_teacher), or a larger hub model of the same
    family on the GPU profile. Returns ``(model, tokenizer)`` in eval mode, for sampling only."""
    if profile.teacher_model is None:
        raise ValueError(f"profile {profile.name!r} names no teacher_model to distil from")
    if profile.teacher_model == "pocket_teacher":
        return load_pocket_model(POCKET_TEACHER_DIR, device=profile.device)
    return load_model(dataclasses.replace(profile, model_name=profile.teacher_model))


def _pad_left(tokenizer) -> None:
    """Left padding (what batched generation needs), with EOS as the pad token if none is set."""
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token


# The adapter of Yiqiao Yin's GRPO tutorial: the attention projections.
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")


def lora_config(
    r: int = 16, alpha: int = 32, dropout: float = 0.05, target_modules: tuple[str, ...] = LORA_TARGETS
) -> LoraConfig:
    """A PEFT ``LoraConfig`` for a causal LM: W + (alpha / r) B A on each target module."""
    return LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=list(target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )


def with_lora(model, lora: LoraConfig, seed: int = 0):
    """``model`` wrapped with PEFT LoRA adapters (``B = 0``: the wrapped model computes what the model
    did), their random ``A`` drawn from ``seed``, as :func:`load_policy` does."""
    torch.manual_seed(seed)
    return get_peft_model(model, copy.deepcopy(lora))  # PEFT writes the base model's path into the config it gets


def count_parameters(model: torch.nn.Module) -> int:
    """Distinct parameters (tied input/output embeddings counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def policy_backend(profile: Profile) -> str:
    """``"unsloth"`` when the profile asks for it and CUDA exists, else ``"transformers"``.

    Unsloth 2026.10.9 imports on a CPU-only machine but its kernels need CUDA, so the
    decision is made on ``torch.cuda.is_available()``, not on whether the import works.
    """
    return "unsloth" if uses_unsloth(profile) else "transformers"


def vllm_available() -> bool:
    """Whether vLLM can serve generation here: CUDA and an installed ``vllm`` (GPU extras)."""
    return torch.cuda.is_available() and importlib.util.find_spec("vllm") is not None


def load_policy(
    profile: Profile,
    lora: LoraConfig | None = None,
    max_seq_length: int = 1024,
    seed: int = 0,
    fast_inference: bool = False,
):
    """The model to train and its tokenizer, with LoRA adapters when ``lora`` (a PEFT
    ``LoraConfig``, e.g. :func:`lora_config`) is given.

    With CUDA and ``profile.use_unsloth``: Unsloth's ``FastLanguageModel`` (its fast kernels
    and its own LoRA wrapper; import Unsloth before transformers/trl/peft, which
    :func:`import_unsloth_first` does). Otherwise transformers + PEFT. Prints one line
    saying which path was taken. ``fast_inference`` (Unsloth only, and only with vLLM
    installed): Unsloth starts a vLLM engine on the same weights, which TRL's GRPOTrainer then
    uses for its rollouts when ``use_vllm=True``.
    """
    backend = policy_backend(profile)
    if backend == "unsloth":
        FastLanguageModel = import_unsloth_first(profile).FastLanguageModel
        model, tokenizer = FastLanguageModel.from_pretrained(
            model_name=profile.model_name,
            max_seq_length=max_seq_length,
            dtype=getattr(torch, profile.dtype),
            load_in_4bit=False,
            **(
                dict(fast_inference=True, max_lora_rank=lora.r if lora is not None else 16)
                if fast_inference and vllm_available()
                else {}
            ),
        )
        if lora is not None:
            model = FastLanguageModel.get_peft_model(
                model,
                r=lora.r,
                lora_alpha=lora.lora_alpha,
                lora_dropout=lora.lora_dropout,
                target_modules=sorted(lora.target_modules),
                bias="none",
                use_gradient_checkpointing="unsloth",
                random_state=seed,
            )
        _pad_left(tokenizer)
    else:
        model, tokenizer = load_model(profile)
        if lora is not None:
            model = with_lora(model, lora, seed)
    adapters = f"LoRA r={lora.r}, alpha={lora.lora_alpha}" if lora is not None else "full fine-tuning"
    why = "" if backend == "unsloth" else (" (no CUDA: Unsloth skipped)" if profile.use_unsloth else "")
    print(f"policy: {profile.model_name} via {backend}{why}, {adapters}, on {next(model.parameters()).device}")
    return model, tokenizer
