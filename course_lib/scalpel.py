"""Scalpel vs hammer (lesson 10): what SFT and GRPO change in the weights, what they gain, what they forget.

A small replication, on the pocket model, of Rajani et al., "Scalpel vs. Hammer: GRPO Amplifies
Existing Capabilities, SFT Replaces Them" (arXiv:2507.10616). Every arm starts from the same
base, trains **every weight** (no LoRA: with an adapter on q/k/v/o the MLPs could not change,
and the question of where each method writes would be answered by the adapter), on the **same
training questions with the same number of sampled completions**:

* **SFT-RS**: k samples per question from the base, the correct ones (deduped, capped) as SFT
  rows, one epoch (lesson 07's recipe, full fine-tuning).
* **GRPO**: the course's loop (lesson 05) on the same questions, each once: P questions per step
  with G = k completions each, KL to the base (beta 0.04), full fine-tuning.
* **SFT-RS, MLPs frozen** and **SFT-RS, q and k only**: the paper's two freezing experiments,
  on the same SFT rows.

Each arm is measured on held-out maths (per-sample accuracy over the test problems, and pass@k
up to k = 64 on the first of them), on two skills no arm trains: the facts probe (the gold
answer's log-probability, item by item; accuracy sits at its ceiling) and the sorting probe
(greedy, exact), and by where its weights moved (:mod:`course_lib.weight_changes`), recorded at
checkpoints along the way. Every change against the base is paired (same problems, same items,
same sampling seeds).

A finished arm is written to ``<out>/scalpel-<profile>-<mode>/<arm>.json`` at once; a study
that is started again loads the arms made under the same plan and runs only the rest.
Command line: ``python -m course_lib.scalpel`` (``--help``).
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from course_lib import behaviours
from course_lib.config import Profile, fast_mode, get_profile, setup_torch
from course_lib.data import eval_problems, facts_probe_items, sorting, train_problems
from course_lib.evaluation import (
    PairedChange,
    evaluate_profile,
    facts_item_scores,
    paired_difference,
    pass_at_k,
    pass_at_k_from_counts,
    sorting_item_scores,
)
from course_lib.models import load_model
from course_lib.report import Budget, fingerprint, read_saved, results_dir, study_parser, write_json
from course_lib.train.expert_iteration import RSSettings, cached_pool
from course_lib.train.grpo import GRPOLoop, GRPOSettings
from course_lib.train.recipes import grpo_recipe, rs_recipe
from course_lib.train.rejection_sampling import SampledPool, sft_records
from course_lib.train.sft import sft_trainer
from course_lib.train.trainers import live_curves_callback
from course_lib.weight_changes import (
    ATTENTION_TYPES,
    MLP_TYPES,
    MODULE_TYPES,
    ChangeTracker,
    by_module,
    group_change,
    module_type,
)

ARMS = ("base", "sft_rs", "grpo", "sft_frozen_mlp", "sft_qk_only", "sft_rs_hot", "grpo_hot")
LABELS = {
    "base": "Base",
    "sft_rs": "SFT-RS",
    "grpo": "GRPO",
    "sft_frozen_mlp": "SFT-RS, MLPs frozen",
    "sft_qk_only": "SFT-RS, q and k only",
    "sft_rs_hot": "SFT-RS, 3x lr",
    "grpo_hot": "GRPO, 3x lr",
}
HOT = {"sft_rs_hot", "grpo_hot"}  # the same method at HOT_LR_FACTOR x the learning rate
HOT_LR_FACTOR = 3
#: The module types each arm trains (the others keep requires_grad False).
TRAINS: dict[str, tuple[str, ...]] = {
    "base": (),
    "sft_rs": MODULE_TYPES,
    "grpo": MODULE_TYPES,
    "sft_frozen_mlp": tuple(m for m in MODULE_TYPES if m not in MLP_TYPES),
    "sft_qk_only": ("q", "k"),
    "sft_rs_hot": MODULE_TYPES,
    "grpo_hot": MODULE_TYPES,
}
# Full fine-tuning of the pocket model, one learning rate for both methods (the paper trains both
# with similar settings). Measured on 2 cores (160 training questions x 8 samples, per-sample
# accuracy on 200 test problems x 8, base 31.4 %; sorting on a first probe of 100 lists, base 51 %;
# the study's probe has 300 lists, where the base scores 42.3 %):
#   GRPO lr 1e-4 (20 steps, 40 s) ... 92.6 %, sorting 47 %   <- the study
#   GRPO lr 3e-4 ................... 85.3 %, sorting 33 %  (forgets the sorting skill)
#   SFT-RS lr 1e-4 (16 s with its pool) ... 88.4 %, sorting 47 %   <- the study
#   SFT-RS lr 3e-5 ................. 64.0 %; lr 3e-4 ... 85.8 %, sorting 44 %
# The study keeps both at 3e-4 too (the "3x lr" arms): the setting where a skill is lost.
# (The LoRA recipes of lessons 05-08 use 1e-3: an adapter's few weights need larger steps.)
FULL_FT_LR = 1e-4
KL_BETA = 0.04  # DeepSeekMath's KL weight, as in the showdown
TRAIN_SEED = 100  # the showdown's training questions (pocket-math draw)


@dataclass(frozen=True)
class ScalpelPlan:
    """Everything the study depends on; a saved arm is reused only under the same plan."""

    profile: str
    fast: bool
    questions: int  # training questions, the same for every arm
    k: int  # samples per training question (GRPO's group size)
    n_eval: int  # test problems for per-sample accuracy (the profile's k samples each)
    pass_k_problems: int  # the first test problems, sampled pass_k_samples times for pass@k
    pass_k_samples: int
    sorting_items: int
    snapshots: int  # weight-change records per trained arm (the last one at the end)
    rs: RSSettings
    grpo: GRPOSettings
    train_seed: int = TRAIN_SEED

    def fingerprint(self) -> str:
        """A short hash of the whole plan."""
        return fingerprint(self)

    def budget_note(self) -> str:
        g, rs = self.grpo, self.rs
        cap = "no cap" if rs.max_per_question is None else f"at most {rs.max_per_question} per question"
        return (
            f"Every trained arm learns from the same {self.questions} training questions with {self.k} sampled "
            f"completions each ({self.questions * self.k} in all): the SFT-RS arms share one pool sampled "
            f"from the base and keep its correct samples ({'deduplicated, ' if rs.dedup else ''}{cap}), "
            f"{rs.epochs} epoch(s); GRPO samples its own, {g.steps} steps of {g.prompts_per_step} x {g.group_size}, "
            f"KL beta {g.beta:g} to the base. Every weight the arm trains is trained (no adapter), at learning "
            f"rate {g.learning_rate:g} (SFT-RS {rs.learning_rate:g})."
        )


def plan_for(profile: Profile, questions: int = 160, n_eval: int = 200) -> ScalpelPlan:
    """The study's plan. Pocket profile only: the probes of what is forgotten (facts, sorting)
    are skills the pocket model was pretrained on; a hub model has none of its own."""
    if profile.name != "pocket":
        raise ValueError(
            f"the scalpel study runs on the pocket profile (got {profile.name!r}): its forgetting probes "
            "(facts, sorting) are skills only the pocket model was pretrained on. Use get_profile('pocket')"
        )
    per_step = grpo_recipe(profile)[0].prompts_per_step
    k = grpo_recipe(profile)[0].group_size
    q = questions // per_step * per_step
    if profile.fast:  # one GRPO epoch of the fast recipe's steps
        q = grpo_recipe(profile)[0].steps * per_step
    if q < per_step:
        raise ValueError(f"need at least {per_step} training questions (one GRPO step), got {questions}")
    rs, _ = rs_recipe(profile, rounds=1, questions_per_round=q, k=k, learning_rate=FULL_FT_LR)
    grpo, _ = grpo_recipe(
        profile,
        steps=q // per_step,
        group_size=k,
        learning_rate=FULL_FT_LR,
        beta=KL_BETA,
        max_new_tokens=rs.max_new_tokens,
    )
    fast = profile.fast
    return ScalpelPlan(
        profile=profile.name,
        fast=fast,
        questions=q,
        k=k,
        n_eval=profile.n_eval_problems if fast else n_eval,
        pass_k_problems=4 if fast else 64,
        pass_k_samples=8 if fast else 64,
        sorting_items=16 if fast else 300,
        snapshots=2 if fast else 4,
        rs=rs,
        grpo=grpo,
    )


# --------------------------------------------------------------------------- one arm's record


@dataclass
class ScalpelArm:
    """One arm, as measured. Per-item lists are in the order of the study's problems and items,
    the same for every arm, so any two arms compare item by item."""

    arm: str
    label: str
    plan: str  # the fingerprint of the plan it was made under
    trains: list[str]  # the module types it trained
    trainable_parameters: int
    accuracy: list[float]  # per test problem: the share of its samples that are right
    pass_k_correct: list[int]  # per pass@k problem: right samples out of pass_k_samples
    pass_k_samples: int
    facts_gold_logprob: list[float]  # per fact: log-prob of the gold answer sentence
    facts_correct: list[bool]
    sorting_correct: list[bool]
    behaviours: dict[str, float]  # share of each behaviour among the test completions
    changes: list[dict]  # weight_changes.relative_changes rows at each snapshot, with "step"
    budget: Budget
    history: list[dict] = field(default_factory=list)

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, record: dict) -> ScalpelArm:
        return cls(**{**record, "budget": Budget(**record["budget"])})

    def change_table(self) -> pd.DataFrame:
        """The weight changes at every snapshot (empty for the base)."""
        return pd.DataFrame(self.changes)

    def final_changes(self) -> pd.DataFrame:
        """The weight changes at the end of training."""
        table = self.change_table()
        return table[table["step"] == table["step"].max()]


def set_trainable(model, modules: tuple[str, ...]) -> int:
    """Train only the weights of ``modules`` (module types of :mod:`course_lib.weight_changes`);
    returns how many parameters stay trainable."""
    count = 0
    for name, p in model.named_parameters():
        p.requires_grad_(module_type(name) in modules)
        count += p.numel() if p.requires_grad else 0
    if modules and count == 0:
        raise ValueError(f"no parameter of the model belongs to {modules}: check the module names")
    return count


# --------------------------------------------------------------------------- the study


class ScalpelStudy:
    """The plan, where its files go, and what every arm shares (problems, probes, the SFT pool)."""

    def __init__(
        self,
        profile: Profile,
        plan: ScalpelPlan,
        out_dir: str | Path | None = None,
        progress: bool = True,
        log: Callable[[str], None] = print,
        fresh: bool = False,
    ):
        self.profile, self.plan, self.progress, self.log, self.fresh = profile, plan, progress, log, fresh
        self.out_dir = Path(out_dir) if out_dir is not None else results_dir()
        self.arm_dir = self.out_dir / f"scalpel-{plan.profile}-{'fast' if plan.fast else 'full'}"
        self.test = eval_problems(profile, plan.n_eval)
        self.pass_k_test = eval_problems(profile, plan.pass_k_problems)
        self.train = train_problems(profile, plan.questions, seed=plan.train_seed)
        self.facts = facts_probe_items(profile)
        self.sorting = sorting.probe_set(plan.sorting_items)

    # -------------------------------------------------------------- arms on disk
    def arm_path(self, arm: str) -> Path:
        return self.arm_dir / f"{arm}.json"

    def load_arm(self, arm: str) -> ScalpelArm | None:
        """A finished arm from disk, or None when there is none or it was made under another plan."""
        return read_saved(self.arm_path(arm), ScalpelArm.from_json, self.plan.fingerprint(), LABELS[arm], self.log,
                          self.fresh)  # fmt: skip

    # -------------------------------------------------------------- the shared SFT pool
    def pool(self) -> tuple[SampledPool, float]:
        """The base's k samples per training question, graded, kept on disk: the three SFT arms
        learn from the same rows."""
        path = self.arm_dir / "pool.json"
        return cached_pool(
            self.profile, self.train, self.plan.rs, path, self.plan.fingerprint(), self.fresh, self.progress
        )

    # -------------------------------------------------------------- measuring one model
    def measure(self, arm: str, model, tokenizer, budget: Budget, history: list[dict], changes) -> ScalpelArm:
        """Held-out maths, pass@k, both probes; the arm's record."""
        start = time.perf_counter()
        model.eval()
        result = evaluate_profile(model, tokenizer, self.test, self.profile, progress=self.progress)
        curve = evaluate_profile(
            model, tokenizer, self.pass_k_test, self.profile, n=self.plan.pass_k_samples, progress=self.progress
        )
        facts = facts_item_scores(model, tokenizer, self.facts)
        sorted_right = sorting_item_scores(model, tokenizer, self.sorting)
        budget = dataclasses.replace(budget, eval_seconds=time.perf_counter() - start)
        texts = [t for group in result.completions for t in group]
        return ScalpelArm(
            arm=arm,
            label=LABELS[arm],
            plan=self.plan.fingerprint(),
            trains=list(TRAINS[arm]),
            trainable_parameters=sum(p.numel() for p in model.parameters() if p.requires_grad) if arm != "base" else 0,
            accuracy=result.per_problem["per_sample_accuracy"].astype(float).tolist(),
            pass_k_correct=result_counts(curve),
            pass_k_samples=self.plan.pass_k_samples,
            facts_gold_logprob=[i["gold_logprob"] for i in facts],
            facts_correct=[bool(i["correct"]) for i in facts],
            sorting_correct=[bool(r) for r in sorted_right],
            behaviours=behaviours.shares(texts),
            changes=[] if changes is None else changes.to_dict("records"),
            budget=budget,
            history=history,
        )


def result_counts(result) -> list[int]:
    """Each problem's number of right samples in an :class:`~course_lib.evaluation.EvalResult`."""
    return [int(c) for c in result.per_problem["n_correct"]]


# --------------------------------------------------------------------------- the arms


def run_base(study: ScalpelStudy) -> ScalpelArm:
    model, tokenizer = load_model(study.profile)
    return study.measure("base", model, tokenizer, Budget(0, 0, 0, 0.0, 0.0), [], None)


def run_sft(study: ScalpelStudy, arm: str) -> ScalpelArm:
    """One of the SFT-RS arms: the shared pool's rows, the arm's modules trainable, its learning rate."""
    pool, sample_seconds = study.pool()
    rs = study.plan.rs
    if arm in HOT:
        rs = dataclasses.replace(rs, learning_rate=HOT_LR_FACTOR * rs.learning_rate)
    records = sft_records(pool, rs.dedup, rs.max_per_question)
    completions = study.plan.questions * study.plan.k
    model, tokenizer = load_model(study.profile)
    set_trainable(model, TRAINS[arm])
    if not records:  # the base got no training question right: nothing to learn, the model is the base
        study.log(f"{LABELS[arm]}: no correct sample in the pool, so nothing to train on")
        return study.measure(arm, model, tokenizer, Budget(completions, 0, 0, sample_seconds, 0.0), [], None)
    steps = math.ceil(len(records) / rs.batch_size) * rs.epochs
    tracker = ChangeTracker(model, every=max(1, steps // study.plan.snapshots))
    history: list[dict] = []
    trainer = sft_trainer(
        study.profile,
        model,
        tokenizer,
        records,
        study.arm_dir / arm,
        rs,
        lora=None,  # full fine-tuning: every weight the arm allows
        callbacks=[tracker.trainer_callback(), live_curves_callback(history.append, {"loss": "loss"})],
        progress=study.progress,
    )
    start = time.perf_counter()
    trainer.train()
    seconds, done = time.perf_counter() - start, int(trainer.state.global_step)
    tracker.record(done)
    budget = Budget(completions, len(records), done, sample_seconds, seconds)
    return study.measure(arm, trainer.model, tokenizer, budget, history, tracker.table())


def run_grpo(study: ScalpelStudy, arm: str = "grpo") -> ScalpelArm:
    """GRPO with the course's loop, every weight trainable, the KL to a frozen copy of the base."""
    g = study.plan.grpo
    if arm in HOT:
        g = dataclasses.replace(g, learning_rate=HOT_LR_FACTOR * g.learning_rate)
    model, tokenizer = load_model(study.profile)
    set_trainable(model, TRAINS[arm])
    tracker = ChangeTracker(model, every=max(1, g.steps // study.plan.snapshots))
    loop = GRPOLoop(model, tokenizer, study.train, g, system_prompt=study.profile.system_prompt)
    start = time.perf_counter()
    loop.train(callbacks=[tracker], progress=study.progress)
    seconds = time.perf_counter() - start
    if g.steps not in tracker.snapshots:
        tracker.record(g.steps)
    completions = g.steps * g.prompts_per_step * g.group_size
    # GRPO samples while it trains: its sampling time is inside its training time.
    budget = Budget(completions, completions, g.steps, 0.0, seconds)
    history = [{k: v for k, v in row.items() if isinstance(v, int | float)} for row in loop.history]
    return study.measure(arm, model, tokenizer, budget, history, tracker.table())


RUNNERS: dict[str, Callable[[ScalpelStudy], ScalpelArm]] = {
    "base": run_base,
    "sft_rs": lambda study: run_sft(study, "sft_rs"),
    "grpo": run_grpo,
    "sft_frozen_mlp": lambda study: run_sft(study, "sft_frozen_mlp"),
    "sft_qk_only": lambda study: run_sft(study, "sft_qk_only"),
    "sft_rs_hot": lambda study: run_sft(study, "sft_rs_hot"),
    "grpo_hot": lambda study: run_grpo(study, "grpo_hot"),
}


def run_scalpel(
    profile: Profile,
    plan: ScalpelPlan | None = None,
    out_dir: str | Path | None = None,
    fresh: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = print,
    arms: tuple[str, ...] = ARMS,
) -> dict[str, ScalpelArm]:
    """Run (or resume) the study's arms; returns ``{arm: ScalpelArm}`` in ``arms`` order.
    ``fresh=True`` ignores saved arms and the saved pool."""
    unknown = [a for a in arms if a not in RUNNERS]
    if unknown or "base" not in arms:
        raise ValueError(f"arms must include 'base' and come from {', '.join(ARMS)} (got {', '.join(arms)})")
    plan = plan or plan_for(profile)
    study = ScalpelStudy(profile, plan, out_dir, progress, log, fresh)
    results = {}
    for arm in tqdm(arms, desc="scalpel arms", disable=not progress):
        record = study.load_arm(arm)
        if record is None:
            log(f"{LABELS[arm]}: running")
            record = RUNNERS[arm](study)
            write_json(study.arm_path(arm), record.to_json())
        else:
            log(f"{LABELS[arm]}: loaded from {study.arm_path(arm)}")
        results[arm] = record
    return results


# --------------------------------------------------------------------------- reading the results


def changes_against(arms: dict[str, ScalpelArm], arm: str, against: str = "base") -> dict[str, PairedChange]:
    """The paired changes of ``arm`` against ``against``: in-domain per-sample accuracy (points),
    the facts' gold log-prob (nats per answer) and the sorting probe (points)."""
    a, b = arms[arm], arms[against]
    return {
        "in_domain": paired_difference(a.accuracy, b.accuracy),
        "facts_logprob": paired_difference(a.facts_gold_logprob, b.facts_gold_logprob, scale=1),
        "sorting": paired_difference(a.sorting_correct, b.sorting_correct),
    }


def results_table(arms: dict[str, ScalpelArm], against: str = "base") -> pd.DataFrame:
    """One row per arm: what it trains, in-domain accuracy and both probes, each with its paired
    change against ``against`` (95 % interval), and what it cost."""
    rows = []
    for arm, r in arms.items():
        change = changes_against(arms, arm, against) if arm != against else None
        rows.append(
            {
                "arm": r.label,
                "trains": _trains_text(r.trains),
                "trainable params": r.trainable_parameters,
                "maths (%)": round(100 * float(np.mean(r.accuracy)), 1),
                "maths change": str(change["in_domain"]) if change else "",
                "facts right (%)": round(100 * float(np.mean(r.facts_correct)), 1),
                "facts log-prob change (nats)": _nats(change["facts_logprob"]) if change else "",
                "sorting (%)": round(100 * float(np.mean(r.sorting_correct)), 1),
                "sorting change": str(change["sorting"]) if change else "",
                "rows trained on": r.budget.sequences_trained_on,
                "optimizer steps": r.budget.optimizer_steps,
                "train s": round(r.budget.train_seconds, 1),
            }
        )
    return pd.DataFrame(rows).set_index("arm")


def _trains_text(trains: list[str]) -> str:
    if not trains:
        return "nothing"
    if set(trains) == set(MODULE_TYPES):
        return "every weight"
    left_out = [m for m in MODULE_TYPES if m not in trains]
    return ", ".join(trains) if len(trains) <= 3 else "all but " + ", ".join(left_out)


def _nats(change: PairedChange) -> str:
    return f"{change.points:+.5f} [{change.ci_low:+.5f}, {change.ci_high:+.5f}]"


def pass_k_curves(arms: dict[str, ScalpelArm]) -> dict[str, pd.DataFrame]:
    """pass@k against k (1, 2, 4, ... up to the samples drawn), with intervals, per arm label."""
    return {r.label: pass_at_k_from_counts(r.pass_k_correct, r.pass_k_samples) for r in arms.values()}


def pass_k_changes(arms: dict[str, ScalpelArm], ks: tuple[int, ...] | None = None, against: str = "base"):
    """Arm x k: the paired change of pass@k against ``against`` (points, 95 % interval), per problem
    from the unbiased estimator; default ks: 1, 8 and the most samples drawn."""
    n = arms[against].pass_k_samples
    ks = ks or tuple(sorted({1, min(8, n), n}))
    per = {
        arm: {k: [pass_at_k(r.pass_k_samples, c, k) for c in r.pass_k_correct] for k in ks} for arm, r in arms.items()
    }
    rows = {
        r.label: {f"pass@{k}": paired_difference(per[arm][k], per[against][k]) for k in ks}
        for arm, r in arms.items()
        if arm != against
    }
    return pd.DataFrame(rows).T


def module_table(arms: dict[str, ScalpelArm], value: str = "rel_change") -> pd.DataFrame:
    """Module type x arm: the final relative (or RMS) change over all layers."""
    columns = {r.label: by_module(r.final_changes())[value] for r in arms.values() if r.changes}
    return pd.DataFrame(columns)


# --------------------------------------------------------------------------- the paper's claims, measured


MARGIN = 0.2  # how much larger "most" and "hit" must be, for the weight claims (which have no interval)


def claims(arms: dict[str, ScalpelArm], mid_layers: tuple[int, ...] | None = None) -> pd.DataFrame:
    """Each claim of "Scalpel vs. Hammer" (as ``../shared/sources.md`` summarises it), what the pocket
    study measured, and whether it reproduces. ``mid_layers``: the middle layers (default: the
    middle third of the model's layers)."""
    sft, grpo = arms["sft_rs"], arms["grpo"]
    c_sft, c_grpo = changes_against(arms, "sft_rs"), changes_against(arms, "grpo")
    between = changes_against(arms, "sft_rs", "grpo")  # SFT-RS minus GRPO, paired
    sft_final, grpo_final = sft.final_changes(), grpo.final_changes()
    layers = sorted(int(x) for x in sft_final["layer"].dropna().unique())
    mid = mid_layers or tuple(layers[len(layers) // 3 : len(layers) - len(layers) // 3])
    matrices = ATTENTION_TYPES + MLP_TYPES
    rows = [
        _claim(
            "SFT gains more in domain than GRPO",
            f"maths: SFT-RS {c_sft['in_domain']}, GRPO {c_grpo['in_domain']}; SFT-RS - GRPO {between['in_domain']}",
            between["in_domain"].verdict,
        ),
        _claim(
            "SFT forgets more than GRPO: facts",
            f"gold log-prob (nats): SFT-RS {_nats(c_sft['facts_logprob'])}, GRPO {_nats(c_grpo['facts_logprob'])}; "
            f"SFT-RS - GRPO {_nats(between['facts_logprob'])}",
            _flip(between["facts_logprob"].verdict),
        ),
        _claim(
            "SFT forgets more than GRPO: sorting (a second skill)",
            f"sorting: SFT-RS {c_sft['sorting']}, GRPO {c_grpo['sorting']}; SFT-RS - GRPO {between['sorting']}",
            _flip(between["sorting"].verdict),
        ),
    ]
    if HOT <= set(arms):
        hot = changes_against(arms, "sft_rs_hot", "grpo_hot")
        c_hs, c_hg = changes_against(arms, "sft_rs_hot"), changes_against(arms, "grpo_hot")
        rows.append(
            _claim(
                f"SFT forgets more than GRPO: sorting, both at {HOT_LR_FACTOR}x the learning rate",
                f"sorting: SFT-RS {c_hs['sorting']}, GRPO {c_hg['sorting']}; SFT-RS - GRPO {hot['sorting']}",
                _flip(hot["sorting"].verdict),
            )
        )
    for record in (sft, grpo):
        ranked = by_module(record.final_changes()).loc[list(matrices), "rel_change"].sort_values(ascending=False)
        rows.append(
            _claim(
                f"{record.label} changes query and key weights most (by {MARGIN:.0%} over the next)",
                "largest relative change first: " + ", ".join(f"{m} {v:.4f}" for m, v in ranked.items()),
                "better"
                if set(ranked.index[:2]) == {"q", "k"} and ranked.iloc[1] > (1 + MARGIN) * ranked.iloc[2]
                else "worse",
            )
        )
    ratio = group_change(sft_final, matrices) / group_change(grpo_final, matrices)
    rows.append(
        _claim(
            "SFT's updates are much larger than GRPO's",
            f"relative change of all weight matrices, SFT-RS / GRPO = {ratio:.2f}",
            "better" if ratio > 1.5 else "worse",
        )
    )
    per_step = ratio * grpo.budget.optimizer_steps / sft.budget.optimizer_steps
    rows.append(
        _claim(
            "... and per optimizer step (Adam moves each weight about lr per step: steps count)",
            f"SFT-RS {sft.budget.optimizer_steps} steps, GRPO {grpo.budget.optimizer_steps}: per step, SFT-RS / GRPO "
            f"= {per_step:.2f}",
            "better" if per_step > 1 + MARGIN else "worse",
        )
    )
    mlp_ratio = group_change(sft_final, MLP_TYPES, mid) / group_change(grpo_final, MLP_TYPES, mid)
    attn_ratio = group_change(sft_final, ATTENTION_TYPES, mid) / group_change(grpo_final, ATTENTION_TYPES, mid)
    rows.append(
        _claim(
            f"SFT's updates hit the mid-layer MLPs (SFT / GRPO {MARGIN:.0%} higher there than on attention)",
            f"layers {', '.join(map(str, mid))}: SFT-RS / GRPO = {mlp_ratio:.2f} on the MLPs, "
            f"{attn_ratio:.2f} on attention",
            "better" if mlp_ratio > (1 + MARGIN) * attn_ratio else "worse",
        )
    )
    for arm in ("sft_frozen_mlp", "sft_qk_only"):
        if arm in arms:
            diff = changes_against(arms, arm, "sft_rs")
            verdicts = {diff["in_domain"].verdict, diff["sorting"].verdict, diff["facts_logprob"].verdict}
            mixed = verdicts == {"cannot tell"} or {"better", "worse"} <= verdicts
            rows.append(
                _claim(
                    f"{LABELS[arm]}: inconclusive against full SFT-RS (judged against SFT-RS, not GRPO)",
                    f"minus SFT-RS: maths {diff['in_domain']}, sorting {diff['sorting']} points, facts log-prob "
                    f"{_nats(diff['facts_logprob'])} nats",
                    "better" if mixed else "worse",
                )
            )
    return pd.DataFrame(rows).set_index("claim")


def _flip(verdict: str) -> str:
    """A claim that SFT's score is *lower*: "worse" (SFT - GRPO below 0) supports it."""
    return {"better": "worse", "worse": "better"}.get(verdict, verdict)


def _claim(claim: str, measured: str, verdict: str) -> dict:
    """``verdict``: a PairedChange verdict in the claim's direction ("better": the data support it)."""
    answer = {"better": "yes", "worse": "no"}.get(verdict, "cannot tell (the interval holds 0)")
    return {"claim": claim, "pocket model": measured, "reproduces": answer}


# --------------------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    parser = study_parser("python -m course_lib.scalpel", __doc__.split("\n")[0])
    args = parser.parse_args(argv)
    profile = get_profile("pocket", fast=args.fast if args.fast is not None else fast_mode())
    setup_torch(profile, seed=0)
    start = time.perf_counter()
    arms = run_scalpel(profile, out_dir=args.out, fresh=args.fresh, progress=not args.quiet)
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(results_table(arms).to_string())
        print(claims(arms).to_string())
    print(f"{time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
