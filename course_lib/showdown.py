"""The showdown (lesson 09): base vs SFT with rejection sampling vs ORPO vs GRPO, one command.

Every arm starts from the same base model and learns from the **same Q training questions,
each seen once, with k samples per question**:

* **SFT-RS**: sample k completions per question from the base, keep the correct ones (deduped,
  capped per question), one epoch of SFT (Trelis Research's recipe: one round, constant LR).
* **ORPO**: pairs (a correct and a wrong completion of the same question) from the *same*
  sampled pool, one epoch of ORPO.
* **GRPO**: Q / P steps of P questions x G = k completions each, on-policy, with a reward of
  Trelis Research's shape (correctness 0/2 plus four 0.5-point format components), a KL
  penalty to the base and the clipped ratio.

So the **generation budget is matched exactly**: Q x k completions per arm (SFT-RS and ORPO
sample from the same base with the same seed, so they share one pool, sampled once). Sampling
is the dominant cost at every scale. Optimizer steps and wall time follow from each method
and are reported next to the results, not matched: filtering leaves SFT fewer rows than
GRPO has completions, so it takes fewer steps.

Each arm is evaluated on the same test problems with the same sampling seeds
(:func:`course_lib.evaluation.evaluate_profile`), and, where the model has one, on the facts
probe (the second skill: forgetting). The report (:mod:`course_lib.report`) gives changes
against the base with *paired* bootstrap intervals.

A finished arm is written to ``<out>/arms-<profile>-<mode>/<arm>.json`` at once; a run that
is interrupted and started again loads the finished arms (when they were made with the same
plan) and runs only the rest.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from course_lib import behaviours
from course_lib.config import Profile
from course_lib.data import eval_problems, facts_probe_items, train_problems
from course_lib.evaluation import METRICS, evaluate_profile, facts_probe
from course_lib.models import load_model, load_policy, lora_config
from course_lib.report import (
    ArmResult,
    Budget,
    FactsScore,
    StudyReport,
    fingerprint,
    read_saved,
    write_json,
    write_reports,
)
from course_lib.rewards import FORMAT_COMPONENTS, TRELIS_SHAPED_REWARD, format_components
from course_lib.train.expert_iteration import RSSettings, cached_pool
from course_lib.train.grpo import GRPOSettings
from course_lib.train.grpo_trl import grpo_trainer, vllm_generation
from course_lib.train.orpo import ORPOSettings, orpo_trainer
from course_lib.train.recipes import grpo_recipe, orpo_recipe, rs_recipe
from course_lib.train.rejection_sampling import SampledPool, preference_pairs, sft_records
from course_lib.train.sft import sft_trainer
from course_lib.train.trainers import ORPO_METRIC_NAMES, TRL_METRIC_NAMES, live_curves_callback

ARMS = ("base", "sft_rs", "orpo", "grpo")
LABELS = {"base": "Base", "sft_rs": "SFT-RS", "orpo": "ORPO", "grpo": "GRPO"}
KL_BETA = 0.04  # the KL weight of DeepSeekMath's GRPO (and TRL's former default)
TRAIN_SEED = 100  # the training questions: the same pocket-math draw as lessons 07-08


@dataclass(frozen=True)
class ShowdownPlan:
    """Everything the study depends on; a saved arm is reused only under the same plan."""

    profile: str
    fast: bool
    questions: int  # Q training questions, the same for every arm
    k: int  # samples per training question (GRPO's group size G)
    n_eval: int  # test problems
    rs: RSSettings
    orpo: ORPOSettings
    grpo: GRPOSettings
    lora: dict  # r, alpha, dropout, target_modules
    train_seed: int = TRAIN_SEED  # which training questions (pocket-math draw; GSM8K: ignored, the first Q)

    def fingerprint(self) -> str:
        """A short hash of the whole plan."""
        return fingerprint(self)

    @property
    def completions_per_arm(self) -> int:
        return self.questions * self.k

    def budget_note(self) -> str:
        g = self.grpo
        return (
            f"Every trained arm sees the same {self.questions} training questions once with {self.k} samples "
            f"each: {self.completions_per_arm} completions generated per arm (SFT-RS and ORPO share one pool "
            f"from the base; GRPO samples its own on-policy, {g.steps} steps of {g.prompts_per_step} x "
            f"{g.group_size}). Optimizer steps and wall time follow from each method and are reported."
        )


def plan_for(
    profile: Profile, questions: int | None = None, n_eval: int | None = None, train_seed: int = TRAIN_SEED
) -> ShowdownPlan:
    """The study's plan for a profile, built from the recipes of lessons 05-08.

    Pocket: 128 questions x 8 samples (one GRPO epoch of 16 steps of 8 x 8); full mode's
    evaluation is the profile's 500 study test problems. GPU: the setting of Trelis Research's study,
    the GSM8K train set (7,472 questions: 7,473 rounded down to whole GRPO steps) x 8 samples,
    on all 1,319 test problems. ``questions`` / ``n_eval`` override the counts (e.g. a documented
    GPU subset); ``questions`` is rounded down to a multiple of GRPO's prompts per step.
    ``train_seed`` draws other pocket-math training questions (a second run with other data).
    """
    per_step = grpo_recipe(profile)[0].prompts_per_step
    q = (questions or profile.study_questions) // per_step * per_step
    if q < per_step:
        raise ValueError(
            f"need at least {per_step} training questions (one GRPO step of {per_step} prompts), got {questions}"
        )
    k = profile.study_samples
    rs, lora = rs_recipe(profile, rounds=1, questions_per_round=q, k=k)
    tokens, seed = rs.max_new_tokens, rs.seed
    orpo, _ = orpo_recipe(profile, questions=q, k=k, max_new_tokens=tokens, seed=seed)
    grpo, _ = grpo_recipe(
        profile, steps=q // per_step, group_size=k, max_new_tokens=tokens, reward=TRELIS_SHAPED_REWARD, beta=KL_BETA
    )
    lora_args = dict(
        r=lora.r, alpha=lora.lora_alpha, dropout=lora.lora_dropout, target_modules=tuple(sorted(lora.target_modules))
    )
    return ShowdownPlan(
        profile.name,
        profile.fast,
        q,
        k,
        n_eval or profile.study_eval_problems or profile.n_eval_problems,
        rs,
        orpo,
        grpo,
        lora_args,
        train_seed,
    )


def plan_table(plan: ShowdownPlan) -> pd.DataFrame:
    """What each trained arm does under ``plan``, one row per arm (for lesson 09)."""
    rs, orpo, g = plan.rs, plan.orpo, plan.grpo
    lora = f"LoRA r={plan.lora['r']}"
    return pd.DataFrame(
        [
            {
                "arm": "SFT-RS",
                "samples from": "base (shared pool)",
                "learns from": "correct samples, deduped"
                + (f", <= {rs.max_per_question} per question" if rs.max_per_question else ", all of them"),
                "update": "SFT, 1 epoch",
                "learning rate": rs.learning_rate,
                "batch": rs.batch_size,
                "adapter": lora,
            },
            {
                "arm": "ORPO",
                "samples from": "base (shared pool)",
                "learns from": f"<= {orpo.pairs_per_question} (correct, wrong) pairs per question",
                "update": f"ORPO (beta {orpo.beta}), 1 epoch",
                "learning rate": orpo.learning_rate,
                "batch": orpo.batch_size,
                "adapter": lora,
            },
            {
                "arm": "GRPO",
                "samples from": "itself, on-policy",
                "learns from": "every completion, group advantages",
                "update": f"{g.steps} steps, Trelis-shaped reward, KL beta {g.beta}, clip {g.epsilon_low}",
                "learning rate": g.learning_rate,
                "batch": f"{g.prompts_per_step} x {g.group_size}",
                "adapter": lora,
            },
        ]
    ).set_index("arm")


# --------------------------------------------------------------------------- one study


class Showdown:
    """One study: the plan, where its files go, and the shared pieces (test problems, pool)."""

    def __init__(
        self,
        profile: Profile,
        plan: ShowdownPlan,
        out_dir: str | Path = "results",
        progress: bool = True,
        log: Callable[[str], None] = print,
        fresh: bool = False,
    ):
        self.profile, self.plan, self.progress, self.log, self.fresh = profile, plan, progress, log, fresh
        self.out_dir = Path(out_dir)
        mode = "fast" if plan.fast else "full"
        self.arm_dir = self.out_dir / f"arms-{plan.profile}-{mode}"
        self._problems: dict[str, list[dict]] = {}

    # -------------------------------------------------------------- data
    def test_problems(self) -> list[dict]:
        if "test" not in self._problems:
            self._problems["test"] = eval_problems(self.profile, self.plan.n_eval)
        return self._problems["test"]

    def train_questions(self) -> list[dict]:
        if "train" not in self._problems:
            self._problems["train"] = train_problems(self.profile, self.plan.questions, seed=self.plan.train_seed)
        return self._problems["train"]

    # -------------------------------------------------------------- arms on disk
    def arm_path(self, arm: str) -> Path:
        return self.arm_dir / f"{arm}.json"

    def load_arm(self, arm: str) -> ArmResult | None:
        """A finished arm from disk, or None when there is none or it was made under another plan."""
        return read_saved(self.arm_path(arm), ArmResult.from_json, self.plan.fingerprint(), arm, self.log)

    def save_arm(self, record: ArmResult) -> Path:
        return write_json(self.arm_path(record.arm), record.to_json())

    # -------------------------------------------------------------- the shared pool
    def pool(self) -> tuple[SampledPool, float]:
        """The base model's k samples per training question, graded: SFT-RS and ORPO both learn
        from it. Sampled once and kept on disk, so a resumed run does not sample it again."""
        return cached_pool(
            self.profile,
            self.train_questions(),
            self.plan.rs,
            self.arm_dir / "pool.json",
            self.plan.fingerprint(),
            self.fresh,
            self.progress,
        )

    # -------------------------------------------------------------- evaluation of one model
    def measure(self, arm: str, model, tokenizer, budget: Budget, history: list[dict]) -> ArmResult:
        """Evaluate ``model`` on the test problems and the facts probe; the arm's record."""
        start = time.perf_counter()
        result = evaluate_profile(model, tokenizer, self.test_problems(), self.profile, progress=self.progress)
        probe = facts_probe_items(self.profile)
        facts = FactsScore(**facts_probe(model, tokenizer, probe)) if probe is not None else None
        budget = dataclasses.replace(budget, eval_seconds=time.perf_counter() - start)
        texts = [t for group in result.completions for t in group]
        components = [format_components(t) for t in texts]  # once per completion, not per component
        fmt = {c: float(np.mean([parts[c] for parts in components])) for c in FORMAT_COMPONENTS}
        names = {m: m.replace("@k", f"@{result.k}") for m in METRICS}  # "pass@k" -> "pass@8"
        return ArmResult(
            arm=arm,
            label=LABELS[arm],
            plan=self.plan.fingerprint(),
            metrics={name: result.estimate(name) for name in names.values()},
            per_problem={name: result.per_problem[m].astype(float).tolist() for m, name in names.items()},
            facts=facts,
            format=fmt,
            mean_completion_chars=float(np.mean([len(t) for t in texts])),
            budget=budget,
            history=history,
            behaviours=behaviours.shares(texts),
        )


# --------------------------------------------------------------------------- the four arms
# Each takes the study and returns the arm's record (measured by Showdown.measure).


def run_base(study: Showdown) -> ArmResult:
    model, tokenizer = load_model(study.profile)
    return study.measure("base", model, tokenizer, Budget(0, 0, 0, 0.0, 0.0), [])


def run_sft_rs(study: Showdown) -> ArmResult:
    pool, sample_seconds = study.pool()
    rs = study.plan.rs
    records = sft_records(pool, rs.dedup, rs.max_per_question)
    if not records:
        return _nothing_to_train(study, "sft_rs", sample_seconds)
    model, tokenizer = _policy(study)
    history: list[dict] = []
    trainer = sft_trainer(
        study.profile,
        model,
        tokenizer,
        records,
        study.arm_dir / "sft_rs",
        rs,
        callbacks=[_history(history, {"loss": "loss", "mean_token_accuracy": "token_accuracy"})],
        progress=study.progress,
    )
    seconds, steps = _train(trainer)
    budget = Budget(study.plan.completions_per_arm, len(records), steps, sample_seconds, seconds)
    return study.measure("sft_rs", trainer.model, tokenizer, budget, history)


def run_orpo(study: Showdown) -> ArmResult:
    pool, sample_seconds = study.pool()
    orpo = study.plan.orpo
    pairs = preference_pairs(pool, orpo.pairs_per_question, seed=orpo.seed)
    if not pairs:
        return _nothing_to_train(study, "orpo", sample_seconds)
    model, tokenizer = _policy(study)
    history: list[dict] = []
    trainer = orpo_trainer(
        study.profile,
        model,
        tokenizer,
        pairs,
        study.arm_dir / "orpo",
        orpo,
        callbacks=[_history(history, ORPO_METRIC_NAMES)],
        progress=study.progress,
    )
    seconds, steps = _train(trainer)
    budget = Budget(study.plan.completions_per_arm, len(pairs), steps, sample_seconds, seconds)
    return study.measure("orpo", trainer.model, tokenizer, budget, history)


def _nothing_to_train(study: Showdown, arm: str, sample_seconds: float) -> ArmResult:
    """An arm whose filter kept nothing from the pool (no correct sample for SFT-RS, no question with
    both kinds for ORPO): it trains nothing, so its model is the base and so is its record (the
    base's measurement, not a second evaluation of the same weights), with 0 rows and 0 steps."""
    base = study.load_arm("base") or run_base(study)
    budget = Budget(study.plan.completions_per_arm, 0, 0, sample_seconds, 0.0)
    return dataclasses.replace(base, arm=arm, label=LABELS[arm], budget=budget, history=[])


def run_grpo(study: Showdown) -> ArmResult:
    g = study.plan.grpo
    vllm = vllm_generation(study.profile)
    model, tokenizer = _policy(study, fast_inference=bool(vllm))
    history: list[dict] = []
    trainer = grpo_trainer(
        study.profile,
        model,
        tokenizer,
        study.train_questions(),
        study.arm_dir / "grpo",
        g,
        callbacks=[_history(history, TRL_METRIC_NAMES)],
        system_prompt=study.profile.system_prompt,
        disable_tqdm=not study.progress,
        course_sampler=not vllm,  # our sampler where vLLM does not serve the rollouts (7x generate on the CPU)
        **vllm,
    )
    seconds, steps = _train(trainer)
    completions = g.steps * g.prompts_per_step * g.group_size
    # GRPO samples while it trains: its sampling time is inside its training time.
    budget = Budget(completions, completions, steps, 0.0, seconds)
    return study.measure("grpo", trainer.model, tokenizer, budget, history)


RUNNERS: dict[str, Callable[[Showdown], ArmResult]] = {
    "base": run_base,
    "sft_rs": run_sft_rs,
    "orpo": run_orpo,
    "grpo": run_grpo,
}


def _policy(study: Showdown, fast_inference: bool = False):
    """A fresh copy of the base model with the plan's LoRA adapter (Unsloth on a GPU)."""
    return load_policy(study.profile, lora_config(**study.plan.lora), fast_inference=fast_inference)


def _history(rows: list[dict], names: dict[str, str]):
    return live_curves_callback(rows.append, names=names)


def _train(trainer) -> tuple[float, int]:
    """Train; returns (seconds, optimizer steps)."""
    start = time.perf_counter()
    trainer.train()
    return time.perf_counter() - start, int(trainer.state.global_step)


# --------------------------------------------------------------------------- the whole study


def run_showdown(
    profile: Profile,
    plan: ShowdownPlan | None = None,
    out_dir: str | Path = "results",
    fresh: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> StudyReport:
    """Run (or resume) every arm, then write the JSON, Markdown and HTML reports.

    Returns the report (what ``showdown.json`` holds). ``fresh=True`` ignores saved arms and the
    saved pool, and runs everything again.
    """
    plan = plan or plan_for(profile)
    study = Showdown(profile, plan, out_dir, progress, log, fresh)
    start = time.perf_counter()
    arms, resumed = {}, []
    for arm in tqdm(ARMS, desc="showdown arms", disable=not progress):
        record = None if fresh else study.load_arm(arm)
        if record is None:
            log(f"{LABELS[arm]}: running")
            record = RUNNERS[arm](study)
            study.save_arm(record)
        else:
            resumed.append(arm)
            log(f"{LABELS[arm]}: loaded from {study.arm_path(arm)}")
        arms[arm] = record
    report = StudyReport.from_arms(
        dataclasses.asdict(plan), plan.fingerprint(), plan.budget_note(), arms, time.perf_counter() - start, resumed
    )
    write_reports(report, out_dir)
    return report
