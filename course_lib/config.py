"""Profiles: everything that depends on the scale of the run, in one place.

Two profiles ship with the course:

* ``pocket`` (default): the course's own tiny model on pocket-math, on the CPU.
* ``gpu``: a real small instruct model on real GSM8K, with Unsloth where CUDA exists.

Choose one with ``get_profile("gpu")`` or the environment variable ``COURSE_PROFILE``.
Lessons also read ``COURSE_FAST=1`` (set by the test suite) and then shrink every
count with :meth:`Profile.fast`, so each notebook runs in seconds in CI.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

from course_lib.prompts import GSM8K_SYSTEM_PROMPT


@dataclass(frozen=True)
class Profile:
    name: str
    model_name: str                 # "pocket" or a Hugging Face model id
    dataset: str                    # "pocket_math" or "gsm8k"
    device: str                     # "cpu", or "cuda" where available
    dtype: str                      # "float32" on CPU, "bfloat16" on GPU
    system_prompt: str | None       # None: the model answers in GSM8K format unprompted
    use_unsloth: bool               # use Unsloth's FastLanguageModel when CUDA exists
    max_new_tokens: int             # completion budget when sampling
    temperature: float              # sampling temperature for evaluation
    eval_k: int                     # samples per problem for pass@k / maj@k
    n_eval_problems: int            # test problems in a before/after table
    sample_batch_size: int          # sequences per generate() call
    torch_threads: int              # CPU threads for torch (0: leave torch's default)
    teacher_model: str | None = None  # a stronger model to distil from (lesson 07)

    def fast(self) -> "Profile":
        """The same profile with counts shrunk for the test suite (``COURSE_FAST=1``)."""
        return dataclasses.replace(self, n_eval_problems=min(self.n_eval_problems, 8),
                                   eval_k=min(self.eval_k, 4),
                                   max_new_tokens=min(self.max_new_tokens, 160))


PROFILES: dict[str, Profile] = {
    "pocket": Profile(
        name="pocket", model_name="pocket", dataset="pocket_math", device="cpu",
        dtype="float32", system_prompt=None, use_unsloth=False, max_new_tokens=200,
        temperature=1.0, eval_k=8, n_eval_problems=200, sample_batch_size=64,
        torch_threads=2, teacher_model="pocket_teacher",
    ),
    "gpu": Profile(
        name="gpu", model_name="Qwen/Qwen2.5-0.5B-Instruct", dataset="gsm8k", device="cuda",
        dtype="bfloat16", system_prompt=GSM8K_SYSTEM_PROMPT, use_unsloth=True,
        max_new_tokens=512, temperature=1.0, eval_k=8, n_eval_problems=1319,
        sample_batch_size=256, torch_threads=0, teacher_model="Qwen/Qwen2.5-1.5B-Instruct",
    ),
}


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
        raise ValueError(f"Unknown profile {name!r}. Valid profiles: {', '.join(sorted(PROFILES))}. "
                         "Pass one to get_profile() or set COURSE_PROFILE.")
    profile = PROFILES[name]
    if fast if fast is not None else fast_mode():
        profile = profile.fast()
    return profile


def setup_torch(profile: Profile, seed: int = 0) -> None:
    """Seed every RNG and cap torch's CPU threads as the profile says."""
    import random

    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if profile.torch_threads:
        torch.set_num_threads(profile.torch_threads)
