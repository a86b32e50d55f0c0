"""Common GRPO failures, each reproduced on the pocket model with its fix (lesson 13).

:mod:`course_lib.monitoring` says what a failure looks like on the dashboard; this module makes
the failures happen, so that a learner sees each one and its fix measured:

* **a format reward whose layout patterns never match** (the ``re.DOTALL`` bug of lesson 02: a
  ``.`` that stops at a newline fails on every solution with two lines of working or more, which is
  every worked solution of a problem of 2 steps or more): :func:`failure_runs` ``format_bug`` and
  ``format_fixed``;
* **reward hacking**: a brevity bonus paid to every answer, right or wrong (lesson 09's sweep at a
  weight past its flip), against the same bonus paid to correct answers only: ``hacking`` and
  ``hacking_fixed``;
* **instability** (lesson 13's collapsing run, a learning rate 30x the recipe's) with the two fixes
  other than the learning rate: a KL penalty and tighter gradient clipping (``collapsing_kl``,
  ``collapsing_clipped``);
* **low reward variance** on problems too hard for the base (lesson 13's stalled run), and three
  fixes that keep the problems: DAPO's dynamic sampling, a hotter sampler, and larger groups at the
  same number of completions: ``stalled_dynamic``, ``stalled_hot`` and ``stalled_g16``;
* **a NaN**: advantages written straight from the formula, (r - mean) / std with no epsilon, are
  0 / 0 on a group whose rewards all agree; :class:`NoEpsilonLoop` trains with them, and the loop's
  guard stops before the NaN reaches the weights (:class:`UnguardedLoop` shows what it prevents);
* **out of memory**: :func:`memory_probe` runs one GRPO step in a child process under a limit of its
  address space (``RLIMIT_AS``: what the process may map, a stand-in for a GPU's fixed memory; what
  it reports is the peak of what was resident, which is less); one pass over all P x G completions
  fails, micro-batches of a few pass. :func:`planned_step_mb` is the memory planner's forecast of
  both, :func:`out_of_memory_case` puts the two together.
"""

from __future__ import annotations

import dataclasses
import json
import os
import resource
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from course_lib.advantages import GroupAdvantages
from course_lib.config import Profile, get_profile
from course_lib.data import train_problems
from course_lib.memory import GB, MODELS, TrainingSetup, estimate
from course_lib.models import load_policy
from course_lib.monitoring import COLLAPSE_LR_FACTOR, HARD_STEPS, ExampleRun
from course_lib.rewards import RewardConfig
from course_lib.shaping import shaped_reward
from course_lib.train.grpo import GRPOLoop
from course_lib.train.recipes import grpo_recipe

HACKING_WEIGHT = 4.0  # the brevity bonus of lesson 09's sweep past its flip (predicted at w* = 3)


def failure_runs(profile: Profile) -> dict[str, ExampleRun]:
    """Lesson 05's recipe, broken in one way each and fixed (see the module docstring); the problems of
    lesson 13's healthy run, except for the format runs (2 to 5 steps) and the stalled ones (6 to 8)."""
    settings, _ = grpo_recipe(profile)
    n = settings.steps * settings.prompts_per_step
    problems = train_problems(profile, n, seed=1)
    low, high = HARD_STEPS
    hard = train_problems(profile, 4 * n, seed=1, min_steps=low, max_steps=high)  # room for dynamic sampling
    g = settings.prompts_per_step * settings.group_size // 16  # G = 16 at the recipe's completions per step
    collapsing = dataclasses.replace(settings, learning_rate=COLLAPSE_LR_FACTOR * settings.learning_rate)
    worked = train_problems(profile, n, seed=1, min_steps=2)  # 2+ lines of working before the answer line
    buggy, fixed = RewardConfig(format_weight=1.0, dotall=False), RewardConfig(format_weight=1.0)
    return {
        "format_bug": ExampleRun(dataclasses.replace(settings, reward=buggy), worked,
                                 "correctness + a format reward whose two layout patterns lack re.DOTALL"),
        "format_fixed": ExampleRun(dataclasses.replace(settings, reward=fixed), worked,
                                   "the same format reward with re.DOTALL"),
        "hacking": ExampleRun(dataclasses.replace(settings, reward=shaped_reward(HACKING_WEIGHT)), problems,
                              f"format points and a brevity bonus of {HACKING_WEIGHT:g} paid to every answer"),
        "hacking_fixed": ExampleRun(
            dataclasses.replace(settings, reward=shaped_reward(HACKING_WEIGHT, gated=True)), problems,
            "the same bonuses paid to correct answers only"),
        "collapsing_kl": ExampleRun(dataclasses.replace(collapsing, beta=0.04), problems,
                                    f"the learning rate x {COLLAPSE_LR_FACTOR} with a KL penalty (beta 0.04)"),
        "collapsing_clipped": ExampleRun(dataclasses.replace(collapsing, max_grad_norm=0.1), problems,
                                         f"the learning rate x {COLLAPSE_LR_FACTOR}, gradients clipped to norm 0.1"),
        "stalled_dynamic": ExampleRun(dataclasses.replace(settings, dynamic_sampling=True), hard,
                                      f"problems of {low}-{high} steps with DAPO's dynamic sampling"),
        "stalled_hot": ExampleRun(dataclasses.replace(settings, temperature=1.5), hard[:n],
                                  f"problems of {low}-{high} steps, sampled at temperature 1.5"),
        "stalled_g16": ExampleRun(dataclasses.replace(settings, group_size=16, prompts_per_step=max(1, g)), hard[:n],
                                  f"problems of {low}-{high} steps, groups of 16 (same completions per step)"),
    }  # fmt: skip


# --------------------------------------------------------------------------- a NaN


class NoEpsilonLoop(GRPOLoop):
    """GRPO with advantages written straight from the formula, ``(r - mean) / std``, without the
    small epsilon (and without special-casing flat groups): a group whose rewards all agree gives
    0 / 0 = NaN, and so does the loss of the whole batch."""

    def advantages(self, rewards: torch.Tensor) -> GroupAdvantages:
        groups = rewards.view(-1, self.settings.group_size)  # (P, G)
        std = groups.std(dim=1, keepdim=True)  # (P, 1), 0 for a flat group
        advantages = (groups - groups.mean(dim=1, keepdim=True)) / std  # (P, G): NaN where std = 0
        return GroupAdvantages(advantages.reshape(-1), (std == 0).squeeze(1))


class UnguardedLoop(NoEpsilonLoop):
    """The same without the loop's guard: a NaN loss goes through backward and the optimizer."""

    def _check_finite(self, what: str, value: torch.Tensor) -> None:
        return None


def non_finite_weights(model) -> int:
    """How many trainable weights are NaN or infinite."""
    return sum(int((~torch.isfinite(p)).sum()) for p in model.parameters() if p.requires_grad)


# --------------------------------------------------------------------------- out of memory


@dataclass(frozen=True)
class MemoryProbe:
    """One GRPO step in a child process under a memory limit: did it fit, and how much did it take?"""

    micro_batch_size: int
    limit_mb: float  # the address space the step may add to what the loaded process already used
    ok: bool
    error: str  # the first line of the error when it did not fit
    grew_mb: float  # the step's peak resident memory above the process's before it (0 if none measured)


def planned_step_mb(micro_batch_size: int, completions: int, seq_len: int, lora_rank: int = 16) -> float:
    """The memory planner's forecast (:func:`course_lib.memory.estimate`, fp32 as on the CPU) of what a
    pocket GRPO step adds: activations and logits of one micro-batch, the KV cache of sampling all
    ``completions``, the adapter's gradients and Adam states. In MB."""
    setup = TrainingSetup(precision="fp32", lora_rank=lora_rank, micro_batch=micro_batch_size, seq_len=seq_len,
                          grpo_completions=completions)  # fmt: skip
    parts = estimate(MODELS["pocket"], setup)["GB"] * GB / 2**20  # MiB, as the limit
    return float(sum(parts[k] for k in ("activations", "logits", "KV cache (generation)", "gradients", "optimizer")))


def out_of_memory_case(micro_batches: tuple[int, int] = (64, 8), completions: int = 64, seq_len: int = 220
                       ) -> pd.DataFrame:  # fmt: skip
    """The out-of-memory case, planned and measured: the planner's forecast for one pass over every
    completion and for micro-batches, a limit between the two (their geometric mean), and one probe
    of each under it (:func:`memory_probe`). One row per micro-batch size."""
    planned = {m: planned_step_mb(m, completions, seq_len) for m in micro_batches}
    limit = round(float(np.sqrt(np.prod(list(planned.values())))))
    rows = []
    for m in micro_batches:
        probe = memory_probe(m, limit)
        rows.append({"micro-batch": m, "planned MiB": round(planned[m]), "limit MiB": limit, "fits": probe.ok,
                     "grew MiB": round(probe.grew_mb), "error": probe.error})  # fmt: skip
    return pd.DataFrame(rows).set_index("micro-batch")


def memory_probe(micro_batch_size: int, limit_mb: float, timeout: int = 600) -> MemoryProbe:
    """Run one step of lesson 05's GRPO recipe (full mode: 8 prompts x 8 completions) in a child
    process that may grow by at most ``limit_mb`` of address space once the model is loaded."""
    command = [sys.executable, "-m", "course_lib.troubleshooting", str(micro_batch_size), str(limit_mb)]
    env = {**os.environ, "MALLOC_ARENA_MAX": "2", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env,
                          cwd=Path(__file__).resolve().parents[1])  # fmt: skip
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if not lines:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise RuntimeError(f"the memory probe ended without a result (exit {done.returncode}): {' | '.join(tail)}")
    return MemoryProbe(**json.loads(lines[-1]))


def _vm_kb(field: str) -> int:
    """A field of /proc/self/status in kB (VmSize: address space, VmRSS: resident memory)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}: the memory probe needs Linux")


def _probe(micro_batch_size: int, limit_mb: float) -> MemoryProbe:
    """The child's side of :func:`memory_probe`."""
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    profile = get_profile("pocket", fast=False)
    settings, lora = grpo_recipe(profile, steps=1, micro_batch_size=micro_batch_size)
    model, tokenizer = load_policy(profile, lora=lora)
    loop = GRPOLoop(model, tokenizer, train_problems(profile, settings.prompts_per_step, seed=1), settings)
    with torch.no_grad():  # thread pools and allocator arenas exist before the limit is set
        model(torch.ones(2, 8, dtype=torch.long))
    # The peak is read from VmHWM, reset to the present first ("5" > clear_refs): ru_maxrss would also
    # count the loading, and on Linux it starts a child at its parent's peak (a notebook kernel's).
    Path("/proc/self/clear_refs").write_text("5")
    before_rss = _vm_kb("VmRSS")
    limit = (_vm_kb("VmSize") + int(limit_mb * 1024)) * 1024
    resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))
    try:
        loop.train_step()
        ok, error = True, ""
    except (RuntimeError, MemoryError) as e:  # torch: "DefaultCPUAllocator: can't allocate memory"
        ok, error = False, f"{type(e).__name__}: {str(e).splitlines()[0]}"
    return MemoryProbe(micro_batch_size, limit_mb, ok, error, max(0.0, (_vm_kb("VmHWM") - before_rss) / 1024))


if __name__ == "__main__":  # python -m course_lib.troubleshooting MICRO_BATCH LIMIT_MB (memory_probe's child)
    print(json.dumps(dataclasses.asdict(_probe(int(sys.argv[1]), float(sys.argv[2])))))
