"""The GRPO variants lab (lesson 14): one recipe, one change at a time, measured alike.

Lessons 03-05 explain the knobs papers turn on GRPO: how rewards are scaled (per group, per batch,
or not at all as Dr. GRPO argues), how the loss is aggregated over tokens (``grpo``, ``bnpo``,
``dr_grpo``, ``dapo``), DAPO's clip-higher and dynamic sampling, the KL term (with and without the
ratio correction of DeepSeek-V3.2), DAPO's overlong shaping, several updates per batch (mu), the
group size and the temperature. This module trains lesson 05's recipe (the baseline) and one arm
per change, on the pocket model, each with several seeds, and measures every arm the same way:

* **the same budget of sampled completions** (the baseline's steps x P x G): an arm that samples
  more per step (dynamic sampling refills flat groups) takes fewer steps;
* **held-out accuracy along the way**: after a few chosen steps, the same test problems with the
  same sampling seed (paired across arms), so accuracy can be read at matched completions, at
  matched wall time (the last checkpoint an arm reached within the baseline's training time), and
  averaged over the run (how fast it learns);
* the run's own curves: reward, length, entropy, flat groups, clipping, KL.

Each (arm, seed) is saved to ``<out>/variants-<profile>-<mode>/<arm>-s<seed>.json`` when it
finishes and loaded again under the same plan, like the showdown's arms. The full study takes
longer than a lesson (its wall time is in ``data/variants/README.md``); lesson 14 reads the saved
full run shipped in ``data/variants/`` and says how to run it again:
``python -m course_lib.variants`` (``--fast`` for the test suite's tiny version).
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from course_lib import behaviours
from course_lib.advantages import group_advantages
from course_lib.config import Profile, fast_mode, get_profile, setup_torch
from course_lib.data import eval_problems, train_problems
from course_lib.evaluation import PairedChange, evaluate, paired_difference
from course_lib.models import load_policy
from course_lib.report import fingerprint, read_saved, results_dir, study_parser, write_json
from course_lib.rewards import RewardConfig
from course_lib.train.grpo import GRPOLoop, GRPOSettings
from course_lib.train.recipes import grpo_recipe

BASELINE = "baseline"
EVAL_SEED = 12345  # one sampling seed for every checkpoint of every arm: the evaluations are paired
TRAIN_SEED = 1  # lesson 05's training problems (pocket-math draw)
RUN_KEYS = ("reward", "reward_std", "accuracy", "frac_zero_std", "advantage_std", "completion_length", "entropy",
            "kl", "clip_ratio/region", "grad_norm", "loss", "share_step_by_step", "rows_trained",
            "completions_sampled", "sampling_rounds", "seconds")  # fmt: skip


@dataclass(frozen=True)
class Variant:
    """One arm: the baseline's settings with ``changes`` applied."""

    name: str
    label: str
    family: str  # which knob it turns (the lesson groups arms by it)
    changes: dict  # GRPOSettings fields -> values
    why: str  # what the change does, in one sentence
    compare_to: str = BASELINE  # the arm it differs from by exactly this change
    central: bool = False  # one of the comparisons that get every seed of the plan (the others get one)

    def settings(self, base: GRPOSettings, seed: int) -> GRPOSettings:
        """The arm's settings for one seed. A change of the group size G keeps the completions per
        step: P becomes the baseline's P x G divided by the new G."""
        changes = dict(self.changes)
        if "group_size" in changes:
            changes["prompts_per_step"] = max(1, base.prompts_per_step * base.group_size // changes["group_size"])
        return dataclasses.replace(base, **changes, seed=seed)


# DAPO's overlong shaping: the reward falls linearly over the last 48 tokens of the 160-token budget.
OVERLONG = RewardConfig(length_weight=1.0, max_length=160, length_buffer=48)


def _variant(name, label, family, changes, why, compare_to=BASELINE, central=False) -> tuple[str, Variant]:
    return name, Variant(name, label, family, changes, why, compare_to, central)


# fmt: off
VARIANTS: dict[str, Variant] = dict([
    _variant(BASELINE, "baseline (lesson 05)", "baseline", {},
             "group-scaled rewards, dapo aggregation, mu = 1, no KL, G = 8, temperature 1", central=True),
    _variant("scale_batch", "scale by the batch's std", "reward scaling", {"scale_rewards": "batch"},
             "one std for the whole batch: a group's advantages keep the size of its reward gap", central=True),
    _variant("scale_none", "no std scaling (Dr. GRPO)", "reward scaling", {"scale_rewards": "none"},
             "advantages are the reward minus the group mean: nearly solved or nearly failed groups are not "
             "scaled up", central=True),
    _variant("loss_grpo", "loss_type grpo", "loss aggregation", {"loss_type": "grpo"},
             "each completion's tokens averaged, then the completions: a long completion's tokens weigh less",
             central=True),
    _variant("loss_bnpo", "loss_type bnpo", "loss aggregation", {"loss_type": "bnpo"},
             "each micro-batch's token mean, as TRL does it: tokens of short micro-batches weigh more",
             central=True),
    _variant("loss_dr_grpo", "loss_type dr_grpo", "loss aggregation", {"loss_type": "dr_grpo"},
             "token sums divided by a constant (completions x budget): no length normalisation", central=True),
    _variant("mu2", "mu = 2 updates per batch", "updates per batch", {"num_iterations": 2},
             "two optimizer steps on each sampled batch: the second is off-policy, so the clip acts"),
    _variant("mu4", "mu = 4 updates per batch", "updates per batch", {"num_iterations": 4},
             "four optimizer steps on each sampled batch: more learning per sample, more time per step"),
    _variant("clip_higher", "mu = 2, clip-higher (eps_high 0.28)", "clipping",
             {"num_iterations": 2, "epsilon_high": 0.28},
             "DAPO's wider upper clip lets unlikely good tokens grow faster (at mu = 1 the ratio is 1 and no "
             "clip acts, so it is compared at mu = 2)", compare_to="mu2"),
    _variant("kl", "KL beta 0.04 (with r_it)", "KL", {"beta": 0.04},
             "a penalty on the k3 estimate of KL(pi || pi_ref), weighted by the ratio as in TRL 1.16", central=True),
    _variant("kl_no_ratio", "KL beta 0.04 (without r_it)", "KL", {"beta": 0.04, "kl_ratio_correction": False},
             "the same penalty as the original GRPO wrote it: its gradient follows the other KL direction",
             compare_to="kl", central=True),
    _variant("dynamic", "dynamic sampling (DAPO)", "sampling", {"dynamic_sampling": True},
             "flat groups are replaced by fresh prompts until P groups carry a signal; the extra samples count",
             central=True),
    _variant("overlong", "overlong shaping (DAPO)", "length", {"reward": OVERLONG},
             "the reward falls by up to 1 over the last 48 tokens of the budget"),
    _variant("g4", "G = 4 (twice the prompts)", "group size", {"group_size": 4},
             "smaller groups, more prompts, the same completions per step"),
    _variant("g16", "G = 16 (half the prompts)", "group size", {"group_size": 16},
             "larger groups, fewer prompts, the same completions per step"),
    _variant("t07", "temperature 0.7", "temperature", {"temperature": 0.7},
             "sharper sampling: fewer mixed groups, less exploration"),
    _variant("t13", "temperature 1.3", "temperature", {"temperature": 1.3},
             "flatter sampling: more mixed groups, noisier completions"),
])
# fmt: on


@dataclass(frozen=True)
class VariantsPlan:
    """Everything the study depends on; a saved run is reused only under the same plan."""

    profile: str
    fast: bool
    base: GRPOSettings  # the baseline: lesson 05's recipe
    lora: tuple[int, int, float]  # rank, alpha, dropout of the adapter (lesson 05's)
    train_questions: int  # the problem stream every arm draws from (dynamic sampling draws the most)
    n_eval: int  # held-out problems at every checkpoint
    eval_k: int  # samples per held-out problem
    eval_steps: tuple[int, ...]  # steps after which held-out accuracy is measured (and at the end)
    seeds: tuple[int, ...]  # the seeds of the arms in ``repeated``; the other arms run the first
    arms: tuple[str, ...]
    repeated: tuple[str, ...]  # the arms that run every seed
    records: int = 1  # what a saved run holds

    def runs(self) -> list[tuple[str, int]]:
        """(arm, seed) in the order they run: every arm's first seed, then the repeated arms' others."""
        first = [(arm, self.seeds[0]) for arm in self.arms]
        return first + [(arm, seed) for seed in self.seeds[1:] for arm in self.arms if arm in self.repeated]

    @property
    def budget(self) -> int:
        """Sampled completions per arm: the baseline's steps x P x G."""
        return self.base.steps * self.base.prompts_per_step * self.base.group_size

    def fingerprint(self) -> str:
        """A short hash of the whole plan."""
        return fingerprint(self)

    def budget_note(self) -> str:
        b = self.base
        return (
            f"baseline: {b.steps} steps of {b.prompts_per_step} prompts x {b.group_size} completions "
            f"({self.budget} sampled completions), LoRA r={self.lora[0]}, lr {b.learning_rate:g}, "
            f"loss {b.loss_type}, scale_rewards {b.scale_rewards}, mu {b.num_iterations}, beta {b.beta:g}; "
            f"every arm gets {self.budget} sampled completions; {len(self.arms)} arms, {len(self.repeated)} of them "
            f"with {len(self.seeds)} seeds ({len(self.runs())} runs); held-out accuracy after steps "
            f"{', '.join(map(str, self.eval_steps))} and at the end, on {self.n_eval} test problems "
            f"x {self.eval_k} samples"
        )


def plan_for(profile: Profile, seeds: int = 3, arms: tuple[str, ...] | None = None) -> VariantsPlan:
    """The study's plan: lesson 05's recipe as the baseline and every variant, the central ones with
    ``seeds`` seeds, the others with one. ``arms``: a subset instead, every one of them with ``seeds``
    seeds, with the baseline and each arm's partner added (so each can still be compared)."""
    if profile.name != "pocket":
        raise ValueError(
            f"the variants lab runs on the pocket profile (got {profile.name!r}): {len(VARIANTS)} arms x {seeds} "
            "seeds are hours on a real model. Use get_profile('pocket')"
        )
    unknown = set(arms or ()) - set(VARIANTS)
    if unknown:
        raise ValueError(f"unknown arm(s) {', '.join(sorted(unknown))}; choose from {', '.join(VARIANTS)}")
    if arms:
        wanted = {BASELINE, *arms, *(VARIANTS[a].compare_to for a in arms)}
        arms = tuple(a for a in VARIANTS if a in wanted)
        repeated = arms
    else:
        arms = (BASELINE, "scale_none", "dynamic", "g4") if profile.fast else tuple(VARIANTS)
        repeated = tuple(a for a in arms if VARIANTS[a].central)
    base, lora = grpo_recipe(profile)
    adapter = (lora.r, lora.lora_alpha, lora.lora_dropout)
    stream = 4 * base.steps * base.prompts_per_step  # dynamic sampling draws more problems than P a step
    if profile.fast:
        return VariantsPlan(profile.name, True, base, adapter, stream, 8, 2, (1,), tuple(range(min(seeds, 2))),
                            arms, repeated)  # fmt: skip
    return VariantsPlan(profile.name, False, base, adapter, stream, 128, 4, (2, 4, 6, 8, 12, 16),
                        tuple(range(seeds)), arms, repeated)  # fmt: skip


# --------------------------------------------------------------------------- one run


@dataclass
class Checkpoint:
    """Held-out accuracy after ``step`` steps: per test problem, how many of ``eval_k`` samples were right."""

    step: int
    completions: int  # sampled completions so far (the budget's unit)
    seconds: float  # training time so far (sampling + updates; the evaluations excluded)
    k: int  # samples per test problem
    n_correct: list[int]  # (n_eval,) right samples per test problem
    behaviours: dict[str, float]  # each behaviour's share among the samples


@dataclass
class VariantRun:
    """One (arm, seed) as trained and measured."""

    arm: str
    seed: int
    plan: str
    checkpoints: list[Checkpoint]
    history: list[dict]  # the loop's rows, numbers only
    seconds: float = 0.0  # training time in all
    eval_seconds: float = 0.0

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, record: dict) -> VariantRun:
        return cls(**{**record, "checkpoints": [Checkpoint(**c) for c in record["checkpoints"]]})

    @property
    def final(self) -> Checkpoint:
        return self.checkpoints[-1]


class VariantsStudy:
    """The plan, its problems, and the runs on disk."""

    def __init__(self, profile: Profile, plan: VariantsPlan, out_dir=None, progress=True, log=print, fresh=False):
        self.profile, self.plan, self.progress, self.log, self.fresh = profile, plan, progress, log, fresh
        self.run_dir = Path(out_dir or results_dir()) / f"variants-{plan.profile}-{'fast' if plan.fast else 'full'}"
        self.train_set = train_problems(profile, plan.train_questions, seed=TRAIN_SEED)
        self.test = eval_problems(profile, plan.n_eval)

    def path(self, arm: str, seed: int) -> Path:
        return self.run_dir / f"{arm}-s{seed}.json"

    def load(self, arm: str, seed: int) -> VariantRun | None:
        """A finished run from disk, or None when there is none or it was made under another plan."""
        fingerprint = self.plan.fingerprint()
        return read_saved(self.path(arm, seed), VariantRun.from_json, fingerprint, f"{arm} seed {seed}", self.log,
                          self.fresh)  # fmt: skip

    def checkpoint(self, model, tokenizer, step: int, completions: int, seconds: float) -> Checkpoint:
        """Held-out accuracy of ``model`` now, on the plan's test problems, with the shared sampling seed."""
        result = evaluate(model, tokenizer, self.test, k=self.plan.eval_k, temperature=self.profile.temperature,
                          max_new_tokens=self.profile.max_new_tokens, batch_size=self.profile.sample_batch_size,
                          seed=EVAL_SEED, system_prompt=self.profile.system_prompt, progress=False)  # fmt: skip
        n_correct = [int(c) for c in result.per_problem["n_correct"]]
        texts = [t for group in result.completions for t in group]
        return Checkpoint(step, completions, seconds, self.plan.eval_k, n_correct, behaviours.shares(texts))

    def start(self, model, tokenizer) -> Checkpoint:
        """The base's checkpoint (step 0): every run starts from the same model (LoRA's B starts at
        0), so it is measured once and saved beside the runs."""
        path = self.run_dir / "base.json"
        if not self.fresh and path.is_file():
            record = json.loads(path.read_text())
            if record["plan"] == self.plan.fingerprint():
                return Checkpoint(**record["checkpoint"])
        checkpoint = self.checkpoint(model, tokenizer, 0, 0, 0.0)
        write_json(path, {"plan": self.plan.fingerprint(), "checkpoint": dataclasses.asdict(checkpoint)})
        return checkpoint


def run_variant(study: VariantsStudy, arm: str, seed: int) -> VariantRun:
    """Train one arm with one seed until it has sampled the plan's budget of completions,
    evaluating after each of the plan's ``eval_steps`` (and at the start and the end)."""
    plan, variant = study.plan, VARIANTS[arm]
    settings = variant.settings(plan.base, seed)
    rank, alpha, dropout = plan.lora
    lora = grpo_recipe(study.profile)[1]
    lora = dataclasses.replace(lora, r=rank, lora_alpha=alpha, lora_dropout=dropout)
    model, tokenizer = load_policy(study.profile, lora=lora, seed=seed)
    loop = GRPOLoop(model, tokenizer, study.train_set, settings, system_prompt=study.profile.system_prompt)
    start = time.perf_counter()
    checkpoints = [study.start(model, tokenizer)]
    completions, seconds = 0, 0.0
    bar = tqdm(total=plan.budget, desc=f"{arm} s{seed}", unit="completion", disable=not study.progress)
    while completions < plan.budget:
        row = loop.train_step()
        completions += row["completions_sampled"]
        seconds += row["seconds"]
        bar.update(row["completions_sampled"])
        if loop.step in plan.eval_steps or completions >= plan.budget:
            checkpoints.append(study.checkpoint(model, tokenizer, loop.step, completions, seconds))
    bar.close()
    history = [{k: float(v) for k, v in row.items() if k in RUN_KEYS or k == "step"} for row in loop.history]
    eval_seconds = time.perf_counter() - start - seconds
    return VariantRun(arm, seed, plan.fingerprint(), checkpoints, history, seconds, eval_seconds)


def run_variants(
    profile: Profile,
    plan: VariantsPlan | None = None,
    out_dir: str | Path | None = None,
    fresh: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict[tuple[str, int], VariantRun]:
    """Run (or resume) every (arm, seed) of the plan; returns ``{(arm, seed): VariantRun}``."""
    plan = plan or plan_for(profile)
    study = VariantsStudy(profile, plan, out_dir, progress, log, fresh)
    runs = {}
    for arm, seed in tqdm(plan.runs(), desc="variant runs", disable=not progress):
        run = study.load(arm, seed)
        if run is None:
            log(f"{arm} seed {seed}: running")
            run = run_variant(study, arm, seed)
            write_json(study.path(arm, seed), run.to_json())
        runs[(arm, seed)] = run
    return runs


# --------------------------------------------------------------------------- saved results


def save_runs(runs: dict[tuple[str, int], VariantRun], plan: VariantsPlan, path: str | Path) -> Path:
    """Every run of a study in one gzipped JSON file (what ``data/variants/`` ships)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"plan": plan.fingerprint(), "runs": [r.to_json() for r in runs.values()]}
    with gzip.open(path, "wt") as f:
        json.dump(record, f)
    return path


def load_runs(path: str | Path, plan: VariantsPlan | None = None) -> dict[tuple[str, int], VariantRun]:
    """Runs saved by :func:`save_runs`; with ``plan``, refuse a file made under another plan."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no saved variants study at {path}: run `python -m course_lib.variants` to make one")
    with gzip.open(path, "rt") as f:
        record = json.load(f)
    if plan is not None and record["plan"] != plan.fingerprint():
        raise ValueError(
            f"{path} was made under another plan ({record['plan']}, this one is {plan.fingerprint()}): "
            "run `python -m course_lib.variants` again, or read it without a plan"
        )
    runs = [VariantRun.from_json(r) for r in record["runs"]]
    return {(r.arm, r.seed): r for r in runs}


SHIPPED = Path(__file__).resolve().parents[1] / "data" / "variants" / "variants-pocket-full.json.gz"


def lesson_runs(
    profile: Profile, out_dir: str | Path | None = None, progress: bool = True, log: Callable[[str], None] = print
) -> tuple[VariantsPlan, dict[tuple[str, int], VariantRun]]:
    """Lesson 14's runs. Fast mode: the tiny plan, trained now. Full mode: the runs under ``out_dir``
    when every run of today's plan is there (``python -m course_lib.variants`` writes them), else the
    full study shipped in ``data/variants/`` (about an hour of training on 2 cores)."""
    plan = plan_for(profile)
    if profile.fast:
        return plan, run_variants(profile, plan, out_dir, progress=progress, log=log)
    study = VariantsStudy(profile, plan, out_dir, progress, log=lambda message: None)
    saved = {key: study.load(*key) for key in plan.runs()}
    if all(saved.values()):
        log(f"read {len(saved)} runs from {study.run_dir}")
        return plan, saved
    runs = load_runs(SHIPPED)
    made = {r.plan for r in runs.values()}
    log(f"read the shipped study: {len(runs)} runs from {SHIPPED.relative_to(SHIPPED.parents[2])}")
    if made != {plan.fingerprint()}:
        log(f"note: it was made under plan {', '.join(sorted(made))}, and today's code plans {plan.fingerprint()} "
            "(a setting or default changed since): `python -m course_lib.variants` runs it again")  # fmt: skip
    return plan, runs


# --------------------------------------------------------------------------- reading the results


def arms_of(runs: dict[tuple[str, int], VariantRun]) -> list[str]:
    """The arms present, in the order of :data:`VARIANTS`."""
    present = {arm for arm, _ in runs}
    return [a for a in VARIANTS if a in present]


def seeds_of(runs: dict[tuple[str, int], VariantRun], arm: str) -> list[VariantRun]:
    return [r for (a, _), r in sorted(runs.items()) if a == arm]


def accuracy(checkpoint: Checkpoint) -> np.ndarray:
    """Per test problem, the share of its samples that were right: (n_eval,)."""
    return np.asarray(checkpoint.n_correct, dtype=float) / checkpoint.k


def matched_time(runs: dict[tuple[str, int], VariantRun]) -> float:
    """The wall time every arm is read at: what the baseline needed for its budget (its slowest seed,
    so that the baseline itself is read at its end; timings of one arm vary by several seconds)."""
    return float(max(r.seconds for r in seeds_of(runs, BASELINE)))


def within(run: VariantRun, seconds: float) -> Checkpoint:
    """The last checkpoint ``run`` reached within ``seconds`` of training (the start if none)."""
    return [c for c in run.checkpoints if c.seconds <= seconds][-1]


def per_problem(runs: dict[tuple[str, int], VariantRun], arm: str, at: str | float = "end") -> np.ndarray:
    """Per test problem, ``arm``'s accuracy averaged over its seeds: at its end (``"end"``: the
    matched budget of completions), averaged over the run (``"run"``: :func:`mean_over_run`), or at
    the last checkpoint within ``at`` seconds of training."""
    budget = budget_of(runs)
    values = [accuracy(r.final) if at == "end" else mean_over_run(r, budget) if at == "run"
              else accuracy(within(r, float(at))) for r in seeds_of(runs, arm)]  # fmt: skip
    return np.mean(values, axis=0)


def budget_of(runs: dict[tuple[str, int], VariantRun]) -> int:
    """The budget of completions the study gave every arm (the baseline's at its end)."""
    return int(seeds_of(runs, BASELINE)[0].final.completions)


def learning_area(completions, accuracy_curves, budget: float) -> np.ndarray:
    """The mean of a learning curve over a budget: (1 / B) * integral_0^B y(c) dc, with y drawn straight
    between checkpoints (and held at its last value past the last one).

    Args:
        completions: (C,) completions sampled at each checkpoint, rising from 0.
        accuracy_curves: (C, n) accuracy of each of n problems at each checkpoint.
        budget: B, where the curve is cut (a run may overshoot it).
    Returns:
        (n,) each problem's accuracy averaged over the budget: how fast it was learned.
    """
    x = np.asarray(completions, dtype=float)  # (C,)
    y = np.asarray(accuracy_curves, dtype=float).reshape(len(x), -1)  # (C, n)
    grid = np.union1d(x[x < budget], [budget])  # the checkpoints inside the budget, then the budget itself
    values = np.stack([np.interp(grid, x, y[:, i]) for i in range(y.shape[1])])  # (n, len(grid))
    return np.trapezoid(values, grid, axis=1) / budget


def mean_over_run(run: VariantRun, budget: int) -> np.ndarray:
    """Per test problem, held-out accuracy averaged over the budget of completions
    (:func:`learning_area` of the run's checkpoints): how fast the arm learned. (n_eval,)"""
    curves = np.stack([accuracy(c) for c in run.checkpoints])  # (checkpoints, n_eval)
    return learning_area([c.completions for c in run.checkpoints], curves, budget)


def seed_spread(runs: dict[tuple[str, int], VariantRun], arm: str, at: str = "end") -> float:
    """Largest gap between two seeds of ``arm``, in points: of their final accuracy (``"end"``) or of
    their accuracy averaged over the run (``"run"``); 0 with one seed."""
    budget = budget_of(runs)
    values = [
        100 * (accuracy(r.final) if at == "end" else mean_over_run(r, budget)).mean() for r in seeds_of(runs, arm)
    ]
    return float(max(values) - min(values))


def change(runs: dict[tuple[str, int], VariantRun], arm: str, against: str | None = None,
           at: str | float = "end") -> PairedChange:  # fmt: skip
    """``arm`` minus the arm it differs from (``Variant.compare_to``, or ``against``), per problem
    and paired, both read the same way (``at``, as in :func:`per_problem`)."""
    other = against or VARIANTS[arm].compare_to
    return paired_difference(per_problem(runs, arm, at), per_problem(runs, other, at))


def history_frame(runs: dict[tuple[str, int], VariantRun]) -> pd.DataFrame:
    """Every training step of every run, one row each: arm, seed, step, completions and seconds
    so far, and the loop's metrics (reward, length, entropy, flat groups, ...)."""
    rows = []
    for (arm, seed), run in sorted(runs.items()):
        drawn = spent = 0.0
        for row in run.history:
            drawn, spent = drawn + row["completions_sampled"], spent + row["seconds"]
            rows.append({"arm": arm, "seed": seed, "completions": drawn, "train seconds": spent, **row})
    return pd.DataFrame(rows)


def curve_frame(runs: dict[tuple[str, int], VariantRun]) -> pd.DataFrame:
    """Every checkpoint of every run: arm, seed, step, completions, seconds, held-out accuracy (%)
    and the step-by-step share (%)."""
    rows = [
        {"arm": arm, "seed": seed, "step": c.step, "completions": c.completions, "train seconds": c.seconds,
         "accuracy (%)": 100 * accuracy(c).mean(), "step by step (%)": 100 * c.behaviours["step_by_step"]}
        for (arm, seed), run in sorted(runs.items()) for c in run.checkpoints
    ]  # fmt: skip
    return pd.DataFrame(rows)


def summary_table(runs: dict[tuple[str, int], VariantRun]) -> pd.DataFrame:
    """One row per arm: what it cost (steps, completions, training time), its held-out accuracy at
    the matched budget of completions and averaged over the run, each with its paired change against
    the arm it differs from and that change read against the spread used (the larger seed spread of
    the two arms, :func:`seed_spread`, measured the same way), its accuracy at the matched wall time
    against the baseline's, and its last steps' length, entropy and flat groups (for dynamic sampling:
    of the batch it trained on, after the refills)."""
    at = matched_time(runs)
    rows = []
    for arm in arms_of(runs):
        variant, seeds = VARIANTS[arm], seeds_of(runs, arm)
        last = pd.DataFrame([row for r in seeds for row in r.history[-3:]])  # the last 3 steps of each seed
        other = None if arm == BASELINE else variant.compare_to
        spread = {at: max(seed_spread(runs, arm, at), seed_spread(runs, other or arm, at)) for at in ("end", "run")}
        end = change(runs, arm) if other else None
        speed = change(runs, arm, at="run") if other else None
        timed = change(runs, arm, BASELINE, at=at) if other else None
        rows.append({
            "arm": arm,
            "variant": variant.label,
            "family": variant.family,
            "seeds": len(seeds),
            "steps": float(np.mean([r.final.step for r in seeds])),
            "completions": float(np.mean([r.final.completions for r in seeds])),
            "train s": float(np.mean([r.seconds for r in seeds])),
            "compared to": other or "",
            "accuracy (%)": 100 * float(per_problem(runs, arm).mean()),
            "change": "" if end is None else str(end),
            "spread": spread["end"],
            "reading": "" if end is None else end.read_against(spread["end"]),
            "mean over the run (%)": 100 * float(per_problem(runs, arm, "run").mean()),
            "change over the run": "" if speed is None else str(speed),
            "spread over the run": spread["run"],
            "reading over the run": "" if speed is None else speed.read_against(spread["run"]),
            "at matched time (%)": 100 * float(per_problem(runs, arm, at).mean()),
            "steps by then": float(np.mean([within(r, at).step for r in seeds])),
            "vs baseline at matched time": "" if timed is None else str(timed),
            "length": float(last["completion_length"].mean()),
            "entropy": float(last["entropy"].mean()),
            "flat groups (%)": 100 * float(last["frac_zero_std"].mean()),
        })  # fmt: skip
    return pd.DataFrame(rows).set_index("arm")


def group_scale_factors(group_size: int) -> pd.DataFrame:
    """With 0/1 rewards, how much group scaling multiplies a group's advantages against no scaling
    (Dr. GRPO), by the number right in the group: 1 / (std + 1e-4), from :func:`group_advantages`."""
    rows = []
    for right in range(1, group_size):
        rewards = torch.tensor([1.0] * right + [0.0] * (group_size - right))
        scaled = group_advantages(rewards, group_size, scale="group").advantages[0]
        plain = group_advantages(rewards, group_size, scale="none").advantages[0]
        rows.append({"right of G": f"{right} of {group_size}", "factor": float(scaled / plain)})
    return pd.DataFrame(rows).set_index("right of G")


#: The columns lesson 14 shows of :func:`summary_table`, in reading order.
SUMMARY_COLUMNS = ("variant", "seeds", "steps", "completions", "train s", "accuracy (%)", "change", "spread", "reading",
                   "mean over the run (%)", "change over the run", "spread over the run", "reading over the run",
                   "at matched time (%)", "steps by then", "vs baseline at matched time", "length", "entropy",
                   "flat groups (%)")  # fmt: skip


def clear_differences(table: pd.DataFrame) -> list[str]:
    """One line per arm that differs from its partner by more than noise, at the end or over the run
    (:func:`summary_table`'s readings), then how many arms differ at the end."""
    rows = table.drop(index=BASELINE)
    lines = [
        f"{row['variant']} vs {row['compared to']}: at the end {row['change']} ({row['reading']}); "
        f"over the run {row['change over the run']} ({row['reading over the run']})"
        for _, row in rows.iterrows()
        if not (row["reading"].startswith("cannot tell") and row["reading over the run"].startswith("cannot tell"))
    ]
    apart = (~rows["reading"].str.startswith("cannot tell")).sum()
    return lines + [f"{apart} of {len(rows)} arms differ from their partner at the end by more than noise"]


def metric_last(history: pd.DataFrame, arm: str, key: str) -> float:
    """A logged metric at each seed's last step, averaged over ``arm``'s seeds (:func:`history_frame`)."""
    return float(history[history["arm"] == arm].groupby("seed")[key].last().mean())


def sampling_cost(history: pd.DataFrame, plan: VariantsPlan, arm: str = "dynamic") -> dict[str, float]:
    """What an arm sampled per step against a plain step's P x G: mean completions a step, the ratio,
    and the mean number of steps it took within the budget."""
    rows = history[history["arm"] == arm]
    per_step = plan.base.prompts_per_step * plan.base.group_size
    drawn = float(rows["completions_sampled"].mean())
    return {"per step": drawn, "ratio": drawn / per_step, "plain step": per_step,
            "steps": float(rows.groupby("seed")["step"].max().mean())}  # fmt: skip


def adam_rescaling(steps: int = 20, groups: int = 8, size: int = 512, lr: float = 1e-3, seed: int = 0) -> pd.DataFrame:
    """Why a variant that rescales advantages changes little under Adam. A step's gradient is the sum of
    its groups' gradients (random vectors here, ``groups`` a step, each over all ``size`` weights);
    the same sums are rebuilt with each group's part multiplied by a factor that is (a) one constant,
    (b) a new number each step, the same for every group (as a batch-wide normaliser that changes
    from batch to batch), (c) a different number for each group (as group scaling weights each
    group by 1 / its std), and SGD and AdamW each take ``steps`` steps. Each row: how far the weights
    end from where the unscaled sums take them, relative to how far those moved (0: the same run)."""
    g = torch.Generator().manual_seed(seed)
    parts = torch.randn(steps, groups, size, generator=g)  # (steps, groups, weights): each group's gradient
    factors = {
        "x 2.3 for every group, every step": torch.full((steps, groups, 1), 2.3),
        "a new factor each step (1.9-2.8), shared by the groups": (
            1.87 + 0.96 * torch.rand(steps, 1, 1, generator=g)
        ).expand(steps, groups, 1),
        "a factor per group (1.9-2.8), as group scaling": 1.87 + 0.96 * torch.rand(steps, groups, 1, generator=g),
    }
    rows = []
    for name, factor in factors.items():
        row = {"rescaling": name}
        for optimizer in (torch.optim.SGD, torch.optim.AdamW):
            ends = []
            for scaled in (parts, parts * factor):  # (steps, groups, weights)
                weight = torch.zeros(size, requires_grad=True)
                opt = optimizer([weight], lr=lr)
                for gradient in scaled.sum(dim=1):  # (weights,) each step's sum over its groups
                    weight.grad = gradient.clone()
                    opt.step()
                ends.append(weight.detach().clone())
            row[optimizer.__name__] = float((ends[1] - ends[0]).norm() / ends[0].norm())
        rows.append(row)
    return pd.DataFrame(rows).set_index("rescaling")


def arms_table(plan: VariantsPlan) -> pd.DataFrame:
    """The plan's arms: what each changes, the arm it is compared to, its seeds and what it does."""

    def changes(v: Variant) -> str:
        named = {k: "overlong shaping" if k == "reward" else val for k, val in v.changes.items()}
        return ", ".join(f"{k}={val}" for k, val in named.items()) or "-"

    return pd.DataFrame([
        {"arm": v.name, "variant": v.label, "changes": changes(v), "compared to": "" if v.name == BASELINE
         else v.compare_to, "seeds": len(plan.seeds) if v.name in plan.repeated else 1, "what it does": v.why}
        for v in VARIANTS.values() if v.name in plan.arms
    ]).set_index("arm")  # fmt: skip


def family_lines(table: pd.DataFrame, family: str) -> list[str]:
    """One sentence per arm of a family, from :func:`summary_table`: its end accuracy and its mean over
    the run, each with the paired change against its partner (or "the reference")."""
    return [
        f"{row['variant']:>38}: end {row['accuracy (%)']:.1f} % ({row['change'] or 'the reference'}), "
        f"over the run {row['mean over the run (%)']:.1f} % ({row['change over the run'] or 'the reference'})"
        for _, row in table[table["family"] == family].iterrows()
    ]


def metric_mean(history: pd.DataFrame, arm: str, key: str) -> float:
    """The mean of a logged metric over every step of every seed of ``arm`` (:func:`history_frame`)."""
    return float(history.loc[history["arm"] == arm, key].mean())


# --------------------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    parser = study_parser("python -m course_lib.variants", __doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=3, help="seeds per arm (default 3)")
    parser.add_argument("--arms", nargs="*", default=None, help=f"a subset of: {' '.join(VARIANTS)}")
    parser.add_argument("--save", default=None, help="also write every run to this .json.gz (data/variants/ ships one)")
    args = parser.parse_args(argv)
    profile = get_profile("pocket", fast=args.fast if args.fast is not None else fast_mode())
    setup_torch(profile, seed=0)
    plan = plan_for(profile, seeds=args.seeds, arms=tuple(args.arms) if args.arms else None)
    print(plan.budget_note())
    start = time.perf_counter()
    runs = run_variants(profile, plan, out_dir=args.out, fresh=args.fresh, progress=not args.quiet)
    if args.save:
        print("saved to", save_runs(runs, plan, args.save))
    with pd.option_context("display.width", 250, "display.max_columns", 30):
        print(summary_table(runs).drop(columns=["variant", "family"]).round(1).to_string())
    print(f"{time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
