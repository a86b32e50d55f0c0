"""Profiles: everything that depends on the scale of the run, in one place.

Three profiles ship with the course:

* ``pocket`` (default): the course's own tiny model on pocket-math, on the CPU.
* ``laptop``: a real pretrained instruct model (SmolLM2-135M-Instruct, read from a package
  on the Python package index, no Hub needed) on real GSM8K, on the CPU, through the GPU
  profile's code paths: real weights, a real tokenizer and chat template, real mistakes.
* ``gpu``: a real small instruct model on real GSM8K, with Unsloth where CUDA exists.

Choose one with ``get_profile("gpu")`` or the environment variable ``COURSE_PROFILE``.
What differs between the tracks is data in the profile (model, data source, system prompt,
counts, whether the facts probe exists), never an ``if`` on the profile's name elsewhere.

**Fast mode** (``COURSE_FAST=1``, set by the test suite) shrinks every count so that each
notebook runs in seconds. It is applied in exactly one place: :func:`for_mode` reads the
table :data:`FAST_MODE`, which lists every count fast mode changes, for the profile and for
each method's settings. :func:`get_profile` applies it to the profile, and the recipes
(:mod:`course_lib.train.recipes`) to the settings they build from that profile.
"""

from __future__ import annotations

import dataclasses
import os
import random
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch

from course_lib.prompts import GSM8K_SYSTEM_PROMPT

Settings = TypeVar("Settings")


@dataclass(frozen=True)
class Profile:
    """One track of the course: which model, which data, how many of everything."""

    name: str
    model_name: str  # "pocket", a key of models.PACKAGED_MODELS, or a Hugging Face model id or folder
    dataset: str  # a data source of course_lib.data.SOURCES: "pocket_math" or "gsm8k"
    device: str  # "cpu", or "cuda" where available
    dtype: str  # "float32" on CPU, "bfloat16" on GPU
    system_prompt: str | None  # None: the model answers in GSM8K format unprompted
    use_unsloth: bool  # use Unsloth's FastLanguageModel when CUDA exists
    max_new_tokens: int  # completion budget when sampling
    temperature: float  # sampling temperature for evaluation
    eval_k: int  # samples per problem for pass@k / maj@k
    n_eval_problems: int  # test problems in a before/after table
    sample_batch_size: int  # completions decoded together in one batch
    torch_threads: int  # CPU threads for torch (0: leave torch's default)
    teacher_model: str | None = None  # a stronger model to distil from (lesson 07)
    control_model: str | None = None  # the base without its reliable behaviour (lesson 05's control), if one exists
    study_questions: int = 128  # training questions per arm of a study (lesson 09's showdown)
    study_samples: int = 8  # samples per training question in a study (GRPO's group size there)
    study_eval_problems: int = 0  # test problems of a study (0: n_eval_problems)
    facts_probe_size: int = 0  # held-out facts asked to measure forgetting (0: the model has none)
    fast: bool = False  # fast mode: counts shrunk by FAST_MODE (see for_mode)


PROFILES: dict[str, Profile] = {
    "pocket": Profile(
        name="pocket",
        model_name="pocket",
        dataset="pocket_math",
        device="cpu",
        dtype="float32",
        system_prompt=None,
        use_unsloth=False,
        max_new_tokens=200,
        temperature=1.0,
        eval_k=8,
        n_eval_problems=200,
        sample_batch_size=256,  # rows decoded together (course_lib.bench sample: 64 -> 256 is 1.5x faster)
        torch_threads=2,
        teacher_model="pocket_teacher",
        control_model="pocket_answer_only",
        study_questions=128,
        study_eval_problems=500,  # the showdown's paired intervals need more problems than a lesson's table
        facts_probe_size=120,
    ),
    "laptop": Profile(
        name="laptop",
        model_name="SmolLM2-135M-Instruct",
        dataset="gsm8k",
        device="cpu",
        dtype="float32",
        system_prompt=GSM8K_SYSTEM_PROMPT,
        use_unsloth=False,
        max_new_tokens=256,
        temperature=1.0,
        eval_k=4,
        n_eval_problems=64,  # about 1.2 completions per second at 256 tokens on 2 cores
        sample_batch_size=64,
        torch_threads=2,
        study_questions=64,
        study_samples=4,
        facts_probe_size=0,
    ),
    "gpu": Profile(
        name="gpu",
        model_name="Qwen/Qwen2.5-0.5B-Instruct",
        dataset="gsm8k",
        device="cuda",
        dtype="bfloat16",
        system_prompt=GSM8K_SYSTEM_PROMPT,
        use_unsloth=True,
        max_new_tokens=512,
        temperature=1.0,
        eval_k=8,
        n_eval_problems=1319,
        sample_batch_size=256,
        torch_threads=0,
        teacher_model="Qwen/Qwen2.5-1.5B-Instruct",
        study_questions=7473,
        study_eval_problems=1319,
        facts_probe_size=0,
    ),
}

#: Every count fast mode changes, by the class of settings it changes (the values are caps:
#: a count already below its cap stays). The only place fast mode is defined.
FAST_MODE: dict[str, dict[str, int]] = {
    "Profile": dict(
        n_eval_problems=8,
        eval_k=4,
        max_new_tokens=160,
        study_questions=4,
        study_samples=4,
        study_eval_problems=8,
        facts_probe_size=24,
    ),
    # completions keep the profile's budget (160): a step-by-step solution needs about 100 tokens
    "GRPOSettings": dict(steps=2, prompts_per_step=2, group_size=4, max_new_tokens=160),
    "RSSettings": dict(rounds=2, questions_per_round=6, k=4, max_new_tokens=160, batch_size=4),
    "ORPOSettings": dict(questions=8, k=4, max_new_tokens=160, batch_size=4),
    "DPOSettings": dict(batch_size=4),
}


def for_mode(settings: Settings, fast: bool) -> Settings:
    """``settings`` as they are (full mode), or with the counts of :data:`FAST_MODE` capped."""
    if not fast:
        return settings
    caps = FAST_MODE.get(type(settings).__name__)
    if caps is None:
        raise ValueError(f"fast mode does not know {type(settings).__name__}: add its counts to config.FAST_MODE")
    return dataclasses.replace(settings, **{k: min(getattr(settings, k), v) for k, v in caps.items()})


def fast_mode() -> bool:
    """True when ``COURSE_FAST`` is set to 1/true/yes (the test suite sets it)."""
    return os.environ.get("COURSE_FAST", "").strip().lower() in ("1", "true", "yes")


def get_profile(name: str | None = None, fast: bool | None = None) -> Profile:
    """The profile called ``name``, else ``$COURSE_PROFILE``, else ``pocket``.

    ``fast`` defaults to :func:`fast_mode`. An unknown name raises ``ValueError``
    listing the valid ones.
    """
    name = (name or os.environ.get("COURSE_PROFILE") or "pocket").strip().lower()
    if name not in PROFILES:
        raise ValueError(
            f"Unknown profile {name!r}. Valid profiles: {', '.join(sorted(PROFILES))}. "
            "Pass one to get_profile() or set COURSE_PROFILE."
        )
    fast = fast_mode() if fast is None else fast
    return dataclasses.replace(for_mode(PROFILES[name], fast), fast=fast)


def by_profile(table: dict[str, Any], profile: Profile, what: str) -> Any:
    """``table[profile.name]``, or an error that says which profiles ``table`` knows."""
    if profile.name not in table:
        raise ValueError(f"no {what} for profile {profile.name!r}; known: {', '.join(sorted(table))}")
    return table[profile.name]


def setup_torch(profile: Profile, seed: int = 0) -> None:
    """Seed every RNG and cap torch's CPU threads as the profile says."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if profile.torch_threads:
        torch.set_num_threads(profile.torch_threads)


def uses_unsloth(profile: Profile) -> bool:
    """Whether a policy of this profile is built with Unsloth: the profile asks for it and CUDA exists.

    Unsloth 2026.10.9 imports on a CPU-only machine but its kernels need CUDA, so the
    decision is made on ``torch.cuda.is_available()``, not on whether the import works.
    """
    return profile.use_unsloth and torch.cuda.is_available()


def import_unsloth_first(profile: Profile):
    """Import Unsloth when the profile will use it (:func:`uses_unsloth`), before transformers, trl
    and peft so that it can patch them; call it first in a lesson. Returns the module, or None.

    It lives here because this module imports neither transformers nor peft nor trl.
    """
    if not uses_unsloth(profile):
        return None
    import unsloth  # lazy: a GPU-only dependency (requirements-gpu.txt) that must load before transformers

    return unsloth
