"""The overlap dilemma (lesson 11): should GRPO train on the questions SFT already saw?

A small replication, on the pocket model, of Su, Zhang and Lyu, "SFT-GRPO Data Overlap as a
Post-Training Hyperparameter for Autoformalization" (arXiv:2604.13515): SFT, then GRPO, where a
share of GRPO's questions (0 %, 30 % or 100 %) were also SFT's. Six arms, every one from the
same base, full fine-tuning:

* **Base**; **SFT only** (on questions GRPO never sees); **GRPO only** (from the base);
* **SFT -> GRPO, 0 %, 30 %, 100 % overlap**: an SFT stage on ``sft_questions`` questions of which
  that share are GRPO's, then GRPO on GRPO's questions.

Every SFT stage learns from the same number of questions with the same k samples each (one pool
sampled from the base, shared), every GRPO stage from the same questions with P x G completions
per step: the budgets are matched by construction, and only which questions the two stages share
changes. The SFT stage is deliberately small (few questions, a small learning rate), so that it
leaves GRPO something to do.

The mechanism is measured while GRPO trains: for the questions SFT saw and for the fresh ones
separately, the share of groups whose completions all earn the same reward (zero variance: no policy-
gradient signal) and the mean |advantage| per completion (the weight each completion gets in the
update). Each SFT stage is also evaluated, so GRPO's own gain is a paired change from the model
it started from. A second seed of the three overlap arms (other data order and samples) shows
how much of a difference is training randomness.

Arms are saved to ``<out>/overlap-<profile>-<mode>/<arm>.json`` as they finish and loaded again
under the same plan. Command line: ``python -m course_lib.overlap``.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from course_lib import behaviours
from course_lib.config import Profile, fast_mode, get_profile, setup_torch
from course_lib.data import eval_problems, train_problems
from course_lib.evaluation import Estimate, PairedChange, evaluate_profile, paired_difference, wilson_interval
from course_lib.models import load_model
from course_lib.report import fingerprint, read_saved, results_dir, study_parser, write_json
from course_lib.rewards import is_correct
from course_lib.train.expert_iteration import RSSettings, cached_pool
from course_lib.train.grpo import GRPOLoop, GRPOSettings
from course_lib.train.recipes import grpo_recipe, rs_recipe
from course_lib.train.rejection_sampling import SampledPool, sft_records
from course_lib.train.sft import sft_trainer

OVERLAPS = {"overlap_0": 0.0, "overlap_30": 0.3, "overlap_100": 1.0}
ARMS = ("base", "sft_only", "grpo_only", *OVERLAPS)
LABELS = {
    "base": "Base",
    "sft_only": "SFT only",
    "grpo_only": "GRPO only",
    "overlap_0": "SFT -> GRPO, 0 % overlap",
    "overlap_30": "SFT -> GRPO, 30 % overlap",
    "overlap_100": "SFT -> GRPO, 100 % overlap",
}
SECOND_SEED = "_seed1"  # arm name suffix: the overlap arms again with seed 1
# A small SFT stage: 64 questions x 8 samples, one epoch. Measured (full fine-tuning, 200 test
# problems x 8; base 31.4 %): SFT only reached 54.6 %, leaving GRPO room (lesson 11).
SFT_LR = 5e-5
GRPO_LR = 1e-4  # lesson 10's full fine-tuning rate
KL_BETA = 0.04
GRPO_SEED, FRESH_SEED = 300, 301  # pocket-math draws: GRPO's questions, and the fresh ones


@dataclass(frozen=True)
class OverlapPlan:
    """Everything the study depends on; a saved arm is reused only under the same plan."""

    profile: str
    fast: bool
    grpo_questions: int  # GRPO's questions: each seen once (steps x prompts per step)
    sft_questions: int  # the SFT stage's questions (a share of them GRPO's, the rest fresh)
    k: int  # samples per SFT question in the shared pool (= GRPO's group size)
    n_eval: int
    rs: RSSettings
    grpo: GRPOSettings
    second_seed: bool = True
    records: int = 2  # what an arm's record holds (2: flat groups split into all right / all wrong)

    def fingerprint(self) -> str:
        """A short hash of the whole plan."""
        return fingerprint(self)

    def arms(self) -> tuple[str, ...]:
        return ARMS + (tuple(a + SECOND_SEED for a in OVERLAPS) if self.second_seed else ())

    def budget_note(self) -> str:
        g = self.grpo
        return (
            f"SFT stage: {self.sft_questions} questions x {self.k} samples from the base (one shared pool), "
            f"one epoch at lr {self.rs.learning_rate:g}. GRPO stage: {self.grpo_questions} questions once, "
            f"{g.steps} steps of {g.prompts_per_step} x {g.group_size} at lr {g.learning_rate:g}, KL beta {g.beta}. "
            "Every weight trains (no adapter). Only the share of GRPO's questions the SFT stage also saw changes."
        )


def plan_for(profile: Profile, grpo_questions: int = 64, sft_questions: int = 64, n_eval: int = 200) -> OverlapPlan:
    """The study's plan (pocket profile: the study trains every arm twice over in minutes)."""
    if profile.name != "pocket":
        raise ValueError(
            f"the overlap study runs on the pocket profile (got {profile.name!r}); its budget on a GPU model is "
            "hours per arm. Use get_profile('pocket')"
        )
    recipe = grpo_recipe(profile)[0]
    per_step, k = recipe.prompts_per_step, recipe.group_size
    if profile.fast:
        grpo_questions, sft_questions = recipe.steps * per_step, recipe.steps * per_step
    q = grpo_questions // per_step * per_step
    if q < per_step or sft_questions < 1:
        raise ValueError(f"need at least {per_step} GRPO questions (one step) and one SFT question")
    rs, _ = rs_recipe(profile, rounds=1, questions_per_round=sft_questions, k=k, learning_rate=SFT_LR)
    grpo, _ = grpo_recipe(
        profile,
        steps=q // per_step,
        group_size=k,
        learning_rate=GRPO_LR,
        beta=KL_BETA,
        max_new_tokens=rs.max_new_tokens,
    )
    return OverlapPlan(
        profile.name, profile.fast, q, sft_questions, k, profile.n_eval_problems if profile.fast else n_eval, rs, grpo
    )


@dataclass
class OverlapArm:
    """One arm as measured; per-problem lists in the order of the study's test problems."""

    arm: str
    label: str
    plan: str
    overlap: float | None  # the share of GRPO's questions the SFT stage saw (None: no two stages)
    seed: int
    accuracy: list[float]  # per test problem, the final model
    sft_stage_accuracy: list[float]  # per test problem, after the SFT stage ([] without one)
    behaviours: dict[str, float]
    mechanism: list[dict]  # one row per GRPO step (see mechanism_row)
    sft_rows: int
    grpo_history: list[dict] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, record: dict) -> OverlapArm:
        return cls(**record)


# --------------------------------------------------------------------------- the mechanism


def sft_question_set(grpo_set: list[dict], fresh_set: list[dict], share: float, size: int) -> list[dict]:
    """The SFT stage's ``size`` questions: ``round(share * size)`` of GRPO's (its first ones), the rest
    fresh ones GRPO never sees. The same size at every share: only the overlap changes."""
    if not 0 <= share <= 1:
        raise ValueError(f"the overlap is a share between 0 and 1 (got {share})")
    shared = round(share * min(size, len(grpo_set)))
    if size - shared > len(fresh_set):
        raise ValueError(f"need {size - shared} fresh questions for the SFT stage, have {len(fresh_set)}")
    return grpo_set[:shared] + fresh_set[: size - shared]


def split_groups(advantages: torch.Tensor, group_size: int, seen: list[bool]) -> dict[str, float]:
    """One GRPO batch's groups, split by whether SFT saw their question: for each part, the number of
    groups, the share whose advantages are all 0 (every completion the same reward: no gradient) and
    the mean |advantage| per completion (the weight a completion gets in the update).

    Args:
        advantages: (P * G,) the batch's advantages, group by group.
        group_size: G.
        seen: (P,) whether SFT saw each group's question.
    """
    groups = advantages.view(-1, group_size)  # (P, G)
    flat = (groups == 0).all(dim=1)  # (P,) zero variance: group_advantages writes exact zeros there
    size = groups.abs().mean(dim=1)  # (P,)
    mask = torch.tensor(seen, dtype=torch.bool)
    row = {}
    for part, rows in (("seen", mask), ("fresh", ~mask)):
        n = int(rows.sum())
        row[f"{part}_groups"] = n
        row[f"{part}_zero_variance"] = flat[rows].float().mean().item() if n else float("nan")
        row[f"{part}_abs_advantage"] = size[rows].mean().item() if n else float("nan")
    return row


def mechanism_row(loop: GRPOLoop, step: int, seen: set[str]) -> dict:
    """The GRPO step ``step`` (1-based) just taken by ``loop``, split by whether SFT saw the question
    (:func:`split_groups`), with the training accuracy of each part."""
    samples, advantages = loop.last_batch
    problems = loop.last_problems
    g = samples.n
    flags = [p["question"] in seen for p in problems]
    row = {"step": step, **split_groups(advantages, g, flags)}
    right = [[is_correct(samples.texts[i * g + j], p["answer"]) for j in range(g)] for i, p in enumerate(problems)]
    for part, wanted in (("seen", True), ("fresh", False)):
        groups = [group for group, flag in zip(right, flags) if flag == wanted]  # this part's groups, (n, G)
        row[f"{part}_accuracy"] = float(np.mean(groups)) if groups else float("nan")
        row[f"{part}_all_right"] = float(np.mean([all(x) for x in groups])) if groups else float("nan")
        row[f"{part}_all_wrong"] = float(np.mean([not any(x) for x in groups])) if groups else float("nan")
    return row


# --------------------------------------------------------------------------- the study


class OverlapStudy:
    """The plan, its questions (GRPO's and the fresh ones), the shared pool and the arms on disk."""

    def __init__(self, profile: Profile, plan: OverlapPlan, out_dir=None, progress=True, log=print, fresh=False):
        self.profile, self.plan, self.progress, self.log, self.fresh = profile, plan, progress, log, fresh
        self.arm_dir = Path(out_dir or results_dir()) / f"overlap-{plan.profile}-{'fast' if plan.fast else 'full'}"
        self.test = eval_problems(profile, plan.n_eval)
        self.grpo_set = train_problems(profile, plan.grpo_questions, seed=GRPO_SEED)
        taken = {p["question"] for p in self.grpo_set}
        draw = train_problems(profile, 2 * plan.sft_questions, seed=FRESH_SEED)
        self.fresh_set = [p for p in draw if p["question"] not in taken][: plan.sft_questions]  # never GRPO's
        self._pool: SampledPool | None = None  # sampled (or read from disk) once, by the first SFT stage

    def sft_set(self, overlap: float) -> list[dict]:
        """The SFT stage's questions at that overlap (:func:`sft_question_set`)."""
        return sft_question_set(self.grpo_set, self.fresh_set, overlap, self.plan.sft_questions)

    def arm_path(self, arm: str) -> Path:
        return self.arm_dir / f"{arm}.json"

    def load_arm(self, arm: str) -> OverlapArm | None:
        """A finished arm from disk, or None when there is none or it was made under another plan."""
        return read_saved(self.arm_path(arm), OverlapArm.from_json, self.plan.fingerprint(), arm, self.log, self.fresh)

    def pool(self) -> SampledPool:
        """k samples from the base for every question an SFT stage may use (GRPO's and the fresh
        ones), graded once: the same question has the same samples in every arm."""
        if self._pool is None:
            path, plan = self.arm_dir / "pool.json", self.plan
            questions = self.grpo_set + self.fresh_set
            self._pool, _ = cached_pool(
                self.profile, questions, plan.rs, path, plan.fingerprint(), self.fresh, self.progress
            )
        return self._pool

    def sft_records(self, overlap: float) -> list[dict]:
        """The SFT rows of the stage with that overlap: the pool's correct samples of its questions."""
        pool = self.pool()
        wanted = {p["question"] for p in self.sft_set(overlap)}
        keep = [i for i, p in enumerate(pool.problems) if p["question"] in wanted]
        part = SampledPool(
            [pool.problems[i] for i in keep],
            [pool.prompts[i] for i in keep],
            [pool.texts[i] for i in keep],
            [pool.correct[i] for i in keep],
        )
        return sft_records(part, self.plan.rs.dedup, self.plan.rs.max_per_question)

    def accuracy(self, model, tokenizer) -> tuple[list[float], dict[str, float]]:
        """Per-problem accuracy on the test problems, and the behaviours' shares among the samples."""
        result = evaluate_profile(model.eval(), tokenizer, self.test, self.profile, progress=self.progress)
        texts = [t for group in result.completions for t in group]
        return result.per_problem["per_sample_accuracy"].astype(float).tolist(), behaviours.shares(texts)


# --------------------------------------------------------------------------- training stages


def sft_stage(study: OverlapStudy, model, tokenizer, overlap: float, seed: int, name: str):
    """One epoch of SFT on the stage's rows; returns (model, rows, seconds)."""
    records = study.sft_records(overlap)
    if not records:
        study.log(f"{name}: no correct sample among the SFT questions, so the SFT stage trains nothing")
        return model, 0, 0.0
    rs = dataclasses.replace(study.plan.rs, seed=seed)
    trainer = sft_trainer(study.profile, model, tokenizer, records, study.arm_dir / name, rs, progress=study.progress)
    start = time.perf_counter()
    trainer.train()
    return trainer.model, len(records), time.perf_counter() - start


def grpo_stage(study: OverlapStudy, model, tokenizer, seen: set[str], seed: int):
    """GRPO on GRPO's questions from ``model`` (its KL to ``model`` as it starts); returns
    (history, mechanism rows, seconds)."""
    settings = dataclasses.replace(study.plan.grpo, seed=seed)
    loop = GRPOLoop(model, tokenizer, study.grpo_set, settings, system_prompt=study.profile.system_prompt)
    mechanism: list[dict] = []
    start = time.perf_counter()
    loop.train(
        callbacks=[lambda row: mechanism.append(mechanism_row(loop, row["step"], seen))], progress=study.progress
    )
    history = [{k: v for k, v in row.items() if isinstance(v, int | float)} for row in loop.history]
    return history, mechanism, time.perf_counter() - start


def run_arm(study: OverlapStudy, arm: str) -> OverlapArm:
    """Train and measure one arm (``arm`` may carry the second seed's suffix)."""
    name = arm.removesuffix(SECOND_SEED)
    seed = 1 if arm.endswith(SECOND_SEED) else 0
    model, tokenizer = load_model(study.profile)
    overlap = OVERLAPS.get(name)
    stage_accuracy, rows, history, mechanism, seconds = [], 0, [], [], {}
    if name in ("sft_only", *OVERLAPS):
        model, rows, seconds["sft"] = sft_stage(study, model, tokenizer, overlap or 0.0, seed, arm)
        if name in OVERLAPS:
            stage_accuracy, _ = study.accuracy(model, tokenizer)
    if name in ("grpo_only", *OVERLAPS):
        seen = {p["question"] for p in study.sft_set(overlap)} if name in OVERLAPS else set()
        history, mechanism, seconds["grpo"] = grpo_stage(study, model, tokenizer, seen, seed)
    accuracy, shares = study.accuracy(model, tokenizer)
    label = LABELS[name] + (", seed 1" if seed else "")
    return OverlapArm(
        arm, label, study.plan.fingerprint(), overlap, seed, accuracy, stage_accuracy, shares, mechanism, rows,
        history, seconds,
    )  # fmt: skip


def run_overlap(
    profile: Profile,
    plan: OverlapPlan | None = None,
    out_dir: str | Path | None = None,
    fresh: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, OverlapArm]:
    """Run (or resume) every arm of the plan; returns ``{arm: OverlapArm}``."""
    plan = plan or plan_for(profile)
    study = OverlapStudy(profile, plan, out_dir, progress, log, fresh)
    results = {}
    for arm in tqdm(plan.arms(), desc="overlap arms", disable=not progress):
        record = study.load_arm(arm)
        if record is None:
            log(f"{arm}: running")
            record = run_arm(study, arm)
            write_json(study.arm_path(arm), record.to_json())
        else:
            log(f"{arm}: loaded from {study.arm_path(arm)}")
        results[arm] = record
    return results


# --------------------------------------------------------------------------- reading the results


def results_table(arms: dict[str, OverlapArm]) -> pd.DataFrame:
    """One row per arm: accuracy, its paired change against the base and against SFT only, and
    (two-stage arms) GRPO's own gain over the SFT stage it started from."""
    base, sft = arms["base"].accuracy, arms["sft_only"].accuracy
    rows = []
    for arm, r in arms.items():
        rows.append(
            {
                "arm": r.label,
                "overlap": "" if r.overlap is None else f"{r.overlap:.0%}",
                "accuracy (%)": round(100 * float(np.mean(r.accuracy)), 1),
                "vs base": "" if arm == "base" else str(paired_difference(r.accuracy, base)),
                "vs SFT only": "" if arm in ("base", "sft_only") else str(paired_difference(r.accuracy, sft)),
                "after SFT stage (%)": round(100 * float(np.mean(r.sft_stage_accuracy)), 1)
                if r.sft_stage_accuracy
                else "",
                "GRPO's own gain": str(paired_difference(r.accuracy, r.sft_stage_accuracy))
                if r.sft_stage_accuracy
                else "",
                "SFT rows": r.sft_rows,
            }
        )
    return pd.DataFrame(rows).set_index("arm")


def mean_over_seeds(arms: dict[str, OverlapArm], arm: str, stage: bool = False) -> list[float]:
    """Per-problem accuracy of an overlap arm averaged over its seeds (``stage``: after SFT)."""
    runs = [r for name, r in arms.items() if name.removesuffix(SECOND_SEED) == arm]
    values = [r.sft_stage_accuracy if stage else r.accuracy for r in runs]
    return list(np.mean(values, axis=0))


def overlap_curve(arms: dict[str, OverlapArm]) -> pd.DataFrame:
    """Accuracy against overlap, everything in % (points for the gain): per overlap, the SFT stage's
    and the final accuracy (mean over seeds), each seed's final accuracy, and GRPO's own gain with
    its paired interval."""
    rows = []
    for arm, share in OVERLAPS.items():
        final, stage = mean_over_seeds(arms, arm), mean_over_seeds(arms, arm, stage=True)
        gain = paired_difference(final, stage)
        runs = [r for name, r in arms.items() if name.removesuffix(SECOND_SEED) == arm]
        rows.append(
            {
                "overlap (%)": round(100 * share),
                "seeds": len(runs),
                "after SFT (%)": 100 * float(np.mean(stage)),
                "after GRPO (%)": 100 * float(np.mean(final)),
                "each seed (%)": [round(100 * float(np.mean(r.accuracy)), 1) for r in runs],
                "GRPO's gain (points)": gain.points,
                "gain low": gain.ci_low,
                "gain high": gain.ci_high,
            }
        )
    return pd.DataFrame(rows).set_index("overlap (%)")


def mechanism_table(arms: dict[str, OverlapArm]) -> pd.DataFrame:
    """Per overlap arm (seeds pooled), over all GRPO steps: for questions SFT saw and fresh ones,
    the zero-variance share of their groups (%), the mean |advantage| and the training accuracy (%)."""
    rows = []
    for arm, share in OVERLAPS.items():
        steps = mechanism_steps(arms, arm)
        row = {"overlap (%)": round(100 * share)}
        for part in ("seen", "fresh"):
            weights = steps[f"{part}_groups"]
            measures = (("zero variance (%)", "zero_variance", 100), ("abs advantage", "abs_advantage", 1),
                        ("accuracy (%)", "accuracy", 100))  # fmt: skip
            for what, column, scale in measures:
                values, ok = steps[f"{part}_{column}"], weights > 0
                row[f"{part}: {what}"] = (
                    scale * float(np.average(values[ok], weights=weights[ok])) if ok.any() else float("nan")
                )
            row[f"{part}: groups"] = int(weights.sum())
        rows.append(row)
    return pd.DataFrame(rows).set_index("overlap (%)")


def mechanism_steps(arms: dict[str, OverlapArm], arm: str) -> pd.DataFrame:
    """Every GRPO step's mechanism row of an overlap arm, its seeds pooled."""
    return pd.DataFrame([m for name, r in arms.items() if name.removesuffix(SECOND_SEED) == arm for m in r.mechanism])


def flat_groups_table(arms: dict[str, OverlapArm]) -> pd.DataFrame:
    """Per overlap and kind of question (seen in SFT or fresh), seeds pooled, over all GRPO steps:
    how many groups, and the share that were flat (zero variance), all right and all wrong, each with
    its Wilson 95 % interval (in %). All right and all wrong split the flat groups: a flat group on a
    question SFT taught is "solved", one the model cannot do is "stalled"."""
    rows = []
    for arm, share in OVERLAPS.items():
        steps = mechanism_steps(arms, arm)
        for part in ("seen", "fresh"):
            n = steps[f"{part}_groups"]
            total = int(n.sum())
            if total == 0:
                continue
            row = {"overlap (%)": round(100 * share), "questions": part, "groups": total}
            for what, column in (("flat", "zero_variance"), ("all right", "all_right"), ("all wrong", "all_wrong")):
                count = int(round(float((steps[f"{part}_{column}"].fillna(0) * n).sum())))  # groups, not a share
                row[f"{what} (%)"] = str(Estimate(count / total, *wilson_interval(count, total)))
            rows.append(row)
    return pd.DataFrame(rows).set_index(["overlap (%)", "questions"])


def behaviour_table(arms: dict[str, OverlapArm]) -> pd.DataFrame:
    """Each arm's behaviour shares among its test samples (%), beside its accuracy: does SFT or GRPO
    move the choice of behaviour (step by step vs the answer alone) on every question?"""
    rows = {r.label: {"accuracy (%)": 100 * float(np.mean(r.accuracy))} | {
        f"{name} (%)": 100 * value for name, value in r.behaviours.items()} for r in arms.values()}  # fmt: skip
    return pd.DataFrame.from_dict(rows, orient="index").round(1)


def seed_spread(arms: dict[str, OverlapArm]) -> float:
    """The largest gap, in points, between the two seeds of one overlap arm: how far training
    randomness alone moves the final accuracy (0.0 with one seed)."""
    gaps = [0.0]
    for arm in OVERLAPS:
        seeds = [100 * float(np.mean(r.accuracy)) for name, r in arms.items() if name.removesuffix(SECOND_SEED) == arm]
        gaps.append(max(seeds) - min(seeds))
    return max(gaps)


def paper_verdicts(arms: dict[str, OverlapArm]) -> dict[str, str]:
    """The paper's two claims against this study, each read against the seed spread."""
    findings, spread = paper_comparison(arms), seed_spread(arms)
    zero = findings["0 % minus 100 % overlap"].read_against(spread)
    full = findings["GRPO's gain at 100 % overlap"].read_against(spread)
    first = {"better": "reproduces", "worse": "the opposite here"}.get(zero, zero)
    second = "does not reproduce: GRPO still gained" if full == "better" else "reproduces"
    return {"0 % overlap beats 100 %": first, "at 100 % overlap GRPO adds about nothing": second}


def paper_comparison(arms: dict[str, OverlapArm]) -> dict[str, PairedChange]:
    """The paper's two findings as paired changes (seeds averaged): 0 % minus 100 % overlap (the
    paper: 0 % is better), and GRPO's own gain at 100 % overlap (the paper: about nothing)."""
    zero, full = mean_over_seeds(arms, "overlap_0"), mean_over_seeds(arms, "overlap_100")
    return {
        "0 % minus 100 % overlap": paired_difference(zero, full),
        "GRPO's gain at 100 % overlap": paired_difference(full, mean_over_seeds(arms, "overlap_100", stage=True)),
        "GRPO's gain at 0 % overlap": paired_difference(zero, mean_over_seeds(arms, "overlap_0", stage=True)),
    }


# --------------------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    parser = study_parser("python -m course_lib.overlap", __doc__.split("\n")[0])
    args = parser.parse_args(argv)
    profile = get_profile("pocket", fast=args.fast if args.fast is not None else fast_mode())
    setup_torch(profile, seed=0)
    start = time.perf_counter()
    arms = run_overlap(profile, out_dir=args.out, fresh=args.fresh, progress=not args.quiet)
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(results_table(arms).to_string())
        print(overlap_curve(arms).to_string())
        print(mechanism_table(arms).to_string())
        print(flat_groups_table(arms).to_string())
        print(behaviour_table(arms).to_string())
        for name, change in paper_comparison(arms).items():
            print(f"{name}: {change} points")
        print(f"seed spread: {seed_spread(arms):.1f} points")
        for claim, verdict in paper_verdicts(arms).items():
            print(f"paper: {claim} -> {verdict}")
    print(f"{time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
