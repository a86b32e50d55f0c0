"""The showdown (lesson 09): base vs SFT with rejection sampling vs ORPO vs GRPO, one command.

Every arm starts from the same base model and learns from the **same Q training questions,
each seen once, with k samples per question**:

* **SFT-RS**: sample k completions per question from the base, keep the correct ones (deduped,
  capped per question), one epoch of SFT (seed 000's recipe: one round, constant LR).
* **ORPO**: pairs (a correct and a wrong completion of the same question) from the *same*
  sampled pool, one epoch of ORPO.
* **GRPO**: Q / P steps of P questions x G = k completions each, on-policy, with seed 000's
  reward (correctness 0/2 plus four 0.5-point format components), a KL penalty to the base
  and the clipped ratio.

So the **generation budget is matched exactly**: Q x k completions per arm (SFT-RS and ORPO
sample from the same base with the same seed, so they share one pool, sampled once). Sampling
is the dominant cost at every scale. Optimizer steps and wall time follow from each method
and are reported next to the results, not matched: filtering leaves SFT fewer rows than
GRPO has completions, so it takes fewer steps.

Each arm is evaluated on the same test problems with the same sampling seeds
(:func:`course_lib.evaluation.evaluate_profile`), and on the pocket track also on the facts
probe (the second skill: forgetting). Changes against the base come with *paired* bootstrap
intervals (resampling problems, the same ones for both models), which are narrower than two
unpaired intervals side by side because problem difficulty cancels.

A finished arm is written to ``<out>/arms-<profile>-<mode>/<arm>.json`` at once; a run that
is interrupted and started again loads the finished arms (when they were made with the same
plan) and runs only the rest.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from tqdm.auto import tqdm

from course_lib.evaluation import METRICS, evaluate_profile, facts_probe, paired_difference
from course_lib.rewards import FORMAT_COMPONENTS, SEED_000, format_components
from course_lib.train.grpo import GRPOSettings
from course_lib.train.recipes import ORPOSettings
from course_lib.train.rejection_sampling import RSSettings

ARMS = ("base", "sft_rs", "orpo", "grpo")
LABELS = {"base": "Base", "sft_rs": "SFT-RS", "orpo": "ORPO", "grpo": "GRPO"}
KL_BETA = 0.04          # the KL weight of DeepSeekMath's GRPO (and TRL's former default)
TRAIN_SEED = 100        # the training questions: the same pocket-math draw as lessons 07-08


@dataclass
class ShowdownPlan:
    """Everything the study depends on; a saved arm is reused only under the same plan."""

    profile: str
    fast: bool
    questions: int            # Q training questions, the same for every arm
    k: int                    # samples per training question (GRPO's group size G)
    n_eval: int               # test problems
    rs: RSSettings
    orpo: ORPOSettings
    grpo: GRPOSettings
    lora: dict                # r, alpha, dropout, target_modules
    train_seed: int = TRAIN_SEED  # which training questions (pocket-math draw; GSM8K: ignored, the first Q)

    def fingerprint(self) -> str:
        """A short hash of the whole plan."""
        text = json.dumps(dataclasses.asdict(self), sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    @property
    def completions_per_arm(self) -> int:
        return self.questions * self.k

    def budget_note(self) -> str:
        g = self.grpo
        return (f"Every trained arm sees the same {self.questions} training questions once with {self.k} samples "
                f"each: {self.completions_per_arm} completions generated per arm (SFT-RS and ORPO share one pool "
                f"from the base; GRPO samples its own on-policy, {g.steps} steps of {g.prompts_per_step} x "
                f"{g.group_size}). Optimizer steps and wall time follow from each method and are reported.")


def plan_for(profile, fast: bool = False, questions: int | None = None, n_eval: int | None = None,
             train_seed: int = TRAIN_SEED) -> ShowdownPlan:
    """The study's plan for a profile, built from the recipes of lessons 05-08.

    Pocket: 128 questions x 8 samples (one GRPO epoch of 16 steps of 8 x 8); full mode's
    evaluation is the profile's 200 test problems. GPU: seed 000's setting, the GSM8K train set
    (7,472 questions: 7,473 rounded down to whole GRPO steps) x 8 samples, on all 1,319 test
    problems. ``questions`` / ``n_eval`` override the counts (e.g. a documented GPU subset);
    ``questions`` is rounded down to a multiple of GRPO's prompts per step. ``train_seed`` draws
    other pocket-math training questions (a second run of the study with other training data).
    """
    from course_lib.train.recipes import grpo_recipe, orpo_recipe, rs_recipe

    rs, lora = rs_recipe(profile, fast)
    orpo, _ = orpo_recipe(profile, fast)
    grpo, _ = grpo_recipe(profile, fast)
    per_step = grpo.prompts_per_step
    default_q, k = ((4, 4) if fast else (128, 8)) if profile.dataset == "pocket_math" else (7473, 8)
    q = (questions or default_q) // per_step * per_step
    if q < per_step:
        raise ValueError(f"need at least {per_step} training questions (one GRPO step of {per_step} prompts), "
                         f"got {questions}")
    tokens = rs.max_new_tokens
    rs = dataclasses.replace(rs, rounds=1, questions_per_round=q, k=k)
    orpo = dataclasses.replace(orpo, questions=q, k=k, max_new_tokens=tokens, seed=rs.seed)
    grpo = dataclasses.replace(grpo, steps=q // per_step, group_size=k, max_new_tokens=tokens,
                               reward=SEED_000, beta=KL_BETA)
    lora_args = dict(r=lora.r, alpha=lora.lora_alpha, dropout=lora.lora_dropout,
                     target_modules=tuple(sorted(lora.target_modules)))
    return ShowdownPlan(profile.name, fast, q, k, n_eval or profile.n_eval_problems, rs, orpo, grpo, lora_args,
                        train_seed)


def plan_table(plan: ShowdownPlan):
    """What each trained arm does under ``plan``, one row per arm (for lesson 09)."""
    import pandas as pd

    rs, orpo, g = plan.rs, plan.orpo, plan.grpo
    lora = f"LoRA r={plan.lora['r']}"
    return pd.DataFrame([
        {"arm": "SFT-RS", "samples from": "base (shared pool)", "learns from": "correct samples, deduped"
         + (f", <= {rs.max_per_question} per question" if rs.max_per_question else ", all of them"),
         "update": "SFT, 1 epoch", "learning rate": rs.learning_rate,
         "batch": rs.batch_size, "adapter": lora},
        {"arm": "ORPO", "samples from": "base (shared pool)", "learns from": f"<= {orpo.pairs_per_question} "
         "(correct, wrong) pairs per question", "update": f"ORPO (beta {orpo.beta}), 1 epoch",
         "learning rate": orpo.learning_rate, "batch": orpo.batch_size, "adapter": lora},
        {"arm": "GRPO", "samples from": "itself, on-policy", "learns from": "every completion, group advantages",
         "update": f"{g.steps} steps, seed 000 reward, KL beta {g.beta}, clip {g.epsilon_low}",
         "learning rate": g.learning_rate, "batch": f"{g.prompts_per_step} x {g.group_size}", "adapter": lora},
    ]).set_index("arm")


# --------------------------------------------------------------------------- one study

class Showdown:
    """One study: the plan, where its files go, and the shared pieces (test problems, pool)."""

    def __init__(self, profile, plan: ShowdownPlan, out_dir: str | Path = "results", progress: bool = True,
                 log: Callable[[str], None] = print, fresh: bool = False):
        self.profile, self.plan, self.progress, self.log, self.fresh = profile, plan, progress, log, fresh
        self.out_dir = Path(out_dir)
        mode = "fast" if plan.fast else "full"
        self.arm_dir = self.out_dir / f"arms-{plan.profile}-{mode}"
        self._problems: dict[str, list[dict]] = {}

    # -------------------------------------------------------------- data
    def test_problems(self) -> list[dict]:
        from course_lib.data import eval_problems

        if "test" not in self._problems:
            self._problems["test"] = eval_problems(self.profile, self.plan.n_eval)
        return self._problems["test"]

    def train_questions(self) -> list[dict]:
        from course_lib.data import train_problems

        if "train" not in self._problems:
            self._problems["train"] = train_problems(self.profile, self.plan.questions, seed=self.plan.train_seed)
        return self._problems["train"]

    def facts(self) -> list[dict] | None:
        """The forgetting probe (pocket track only: the facts are the pocket model's second skill)."""
        from course_lib.data import facts

        if self.profile.dataset != "pocket_math":
            return None
        probe = facts.probe_set(facts.build_knowledge_base())
        return probe[:24] if self.plan.fast else probe

    # -------------------------------------------------------------- arms on disk
    def arm_path(self, arm: str) -> Path:
        return self.arm_dir / f"{arm}.json"

    def load_arm(self, arm: str) -> dict | None:
        """A finished arm from disk, or None when there is none or it was made under another plan."""
        path = self.arm_path(arm)
        if not path.is_file():
            return None
        record = json.loads(path.read_text())
        if record.get("plan") != self.plan.fingerprint():
            self.log(f"{arm}: the saved result was made with other settings; running it again")
            return None
        return record

    def save_arm(self, record: dict) -> Path:
        return _write_json(self.arm_path(record["arm"]), record)

    # -------------------------------------------------------------- the shared pool
    def pool(self):
        """The base model's k samples per training question, graded: SFT-RS and ORPO both learn
        from it. Sampled once and kept on disk, so a resumed run does not sample it again."""
        from course_lib.models import load_model
        from course_lib.train.rejection_sampling import SampledPool, sample_pool

        path = self.arm_dir / "pool.json"
        if path.is_file() and not self.fresh:
            saved = json.loads(path.read_text())
            if saved["plan"] == self.plan.fingerprint():
                pool = SampledPool(self.train_questions(), saved["prompts"], saved["texts"], saved["correct"])
                return pool, saved["seconds"]
        model, tokenizer = load_model(self.profile)
        rs = self.plan.rs
        start = time.perf_counter()
        pool = sample_pool(model, tokenizer, self.train_questions(), rs.k, temperature=rs.temperature,
                           max_new_tokens=rs.max_new_tokens, batch_size=rs.sample_batch_size, seed=rs.seed,
                           system_prompt=self.profile.system_prompt, progress=self.progress)
        seconds = time.perf_counter() - start
        _write_json(path, {"plan": self.plan.fingerprint(), "prompts": pool.prompts, "texts": pool.texts,
                           "correct": pool.correct, "seconds": seconds})
        return pool, seconds

    # -------------------------------------------------------------- evaluation of one model
    def measure(self, arm: str, model, tokenizer, budget: dict, history: list[dict]) -> dict:
        """Evaluate ``model`` on the test problems and the facts probe; the arm's record."""
        start = time.perf_counter()
        result = evaluate_profile(model, tokenizer, self.test_problems(), self.profile, progress=self.progress)
        probe = self.facts()
        facts = facts_probe(model, tokenizer, probe) if probe is not None else None
        budget = {**budget, "eval_seconds": time.perf_counter() - start}
        texts = [t for group in result.completions for t in group]
        components = [format_components(t) for t in texts]          # once per completion, not per component
        fmt = {c: float(np.mean([parts[c] for parts in components])) for c in FORMAT_COMPONENTS}
        names = {m: m.replace("@k", f"@{result.k}") for m in METRICS}      # "pass@k" -> "pass@8"
        return {
            "arm": arm, "label": LABELS[arm], "plan": self.plan.fingerprint(),
            "metrics": {name: result.summary.loc[name, ["value", "ci_low", "ci_high"]].astype(float).to_dict()
                        for name in names.values()},
            "per_problem": {name: result.per_problem[m].astype(float).tolist() for m, name in names.items()},
            "facts": facts, "format": fmt,
            "mean_completion_chars": float(np.mean([len(t) for t in texts])),
            "budget": budget, "history": history,
        }


def _write_json(path: Path, obj) -> Path:
    """Write then rename: a run killed while writing leaves no half-written file to resume from."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    tmp.replace(path)
    return path


# --------------------------------------------------------------------------- the four arms
# Each takes the study and returns the arm's record (measured by Showdown.measure).

def run_base(study: Showdown) -> dict:
    from course_lib.models import load_model

    model, tokenizer = load_model(study.profile)
    return study.measure("base", model, tokenizer, _budget(0, 0, 0, 0.0, 0.0), [])


def run_sft_rs(study: Showdown) -> dict:
    from course_lib.train.recipes import sft_trainer
    from course_lib.train.rejection_sampling import sft_records

    pool, sample_seconds = study.pool()
    rs = study.plan.rs
    records = sft_records(pool, rs.dedup, rs.max_per_question)
    model, tokenizer = _policy(study)
    history: list[dict] = []
    trainer = sft_trainer(study.profile, model, tokenizer, records, study.arm_dir / "sft_rs", rs,
                          callbacks=[_history(history, {"loss": "loss", "mean_token_accuracy": "token_accuracy"})],
                          progress=study.progress)
    seconds, steps = _train(trainer)
    budget = _budget(study.plan.completions_per_arm, len(records), steps, sample_seconds, seconds)
    return study.measure("sft_rs", trainer.model, tokenizer, budget, history)


def run_orpo(study: Showdown) -> dict:
    from course_lib.train.recipes import ORPO_METRIC_NAMES, orpo_trainer
    from course_lib.train.rejection_sampling import preference_pairs

    pool, sample_seconds = study.pool()
    orpo = study.plan.orpo
    pairs = preference_pairs(pool, orpo.pairs_per_question, seed=orpo.seed)
    model, tokenizer = _policy(study)
    history: list[dict] = []
    trainer = orpo_trainer(study.profile, model, tokenizer, pairs, study.arm_dir / "orpo", orpo,
                           callbacks=[_history(history, ORPO_METRIC_NAMES)], progress=study.progress)
    seconds, steps = _train(trainer)
    budget = _budget(study.plan.completions_per_arm, len(pairs), steps, sample_seconds, seconds)
    return study.measure("orpo", trainer.model, tokenizer, budget, history)


def run_grpo(study: Showdown) -> dict:
    from course_lib.train.recipes import TRL_METRIC_NAMES, grpo_trainer, vllm_generation

    g = study.plan.grpo
    vllm = vllm_generation(study.profile)
    model, tokenizer = _policy(study, fast_inference=bool(vllm))
    history: list[dict] = []
    trainer = grpo_trainer(study.profile, model, tokenizer, study.train_questions(), study.arm_dir / "grpo", g,
                           callbacks=[_history(history, TRL_METRIC_NAMES)], system_prompt=study.profile.system_prompt,
                           disable_tqdm=not study.progress, **vllm)
    seconds, steps = _train(trainer)
    completions = g.steps * g.prompts_per_step * g.group_size
    # GRPO samples while it trains: its sampling time is inside its training time.
    budget = _budget(completions, completions, steps, 0.0, seconds)
    return study.measure("grpo", trainer.model, tokenizer, budget, history)


RUNNERS: dict[str, Callable[[Showdown], dict]] = {
    "base": run_base, "sft_rs": run_sft_rs, "orpo": run_orpo, "grpo": run_grpo}


def _policy(study: Showdown, fast_inference: bool = False):
    """A fresh copy of the base model with the plan's LoRA adapter (Unsloth on a GPU)."""
    from course_lib.models import load_policy
    from course_lib.train.recipes import lora_config

    return load_policy(study.profile, lora_config(**study.plan.lora), fast_inference=fast_inference)


def _history(rows: list[dict], names: dict[str, str]):
    from course_lib.train.recipes import live_curves_callback

    return live_curves_callback(rows.append, names=names)


def _train(trainer) -> tuple[float, int]:
    """Train; returns (seconds, optimizer steps)."""
    start = time.perf_counter()
    trainer.train()
    return time.perf_counter() - start, int(trainer.state.global_step)


def _budget(completions: int, trained_on: int, steps: int, sample_seconds: float, train_seconds: float) -> dict:
    return {"completions_generated": completions, "sequences_trained_on": trained_on, "optimizer_steps": steps,
            "sample_seconds": sample_seconds, "train_seconds": train_seconds}


# --------------------------------------------------------------------------- the whole study

def run_showdown(profile, plan: ShowdownPlan | None = None, out_dir: str | Path = "results", fresh: bool = False,
                 progress: bool = True, log: Callable[[str], None] = print) -> dict:
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
    report = build_report(plan, arms, time.perf_counter() - start, resumed)
    write_reports(report, out_dir)
    return report


def build_report(plan: ShowdownPlan, arms: dict[str, dict], run_seconds: float, resumed: list[str]) -> dict:
    """The study as one JSON-ready dict: plan, arms and their paired changes against the base."""
    base = arms["base"]["per_problem"]
    changes = {arm: {metric: paired_difference(values, base[metric]) for metric, values in r["per_problem"].items()}
               for arm, r in arms.items() if arm != "base"}
    pool = arms["sft_rs"]["budget"]["sample_seconds"]
    compute = pool + sum(r["budget"]["train_seconds"] + r["budget"]["eval_seconds"] for r in arms.values())
    return {"plan": dataclasses.asdict(plan), "plan_fingerprint": plan.fingerprint(),
            "budget_note": plan.budget_note(), "arms": arms, "changes": changes,
            "seconds": {"this_run": run_seconds, "all_arms": compute}, "resumed": resumed}


def report_name(plan: dict) -> str:
    """The reports' file name for a report's ``plan`` (a dict): ``showdown`` for the pocket study in
    full mode; other runs carry profile and mode in the name, so a fast run (the test suite's)
    never overwrites a full one."""
    suffix = ("" if plan["profile"] == "pocket" else f"-{plan['profile']}") + ("-fast" if plan["fast"] else "")
    return "showdown" + suffix


def write_reports(report: dict, out_dir: str | Path = "results") -> dict[str, Path]:
    """``<name>.json``, ``<name>.md`` and ``<name>.html`` in ``out_dir``; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    name = report_name(report["plan"])
    paths = {"json": out / f"{name}.json", "md": out / f"{name}.md", "html": out / f"{name}.html"}
    paths["json"].write_text(json.dumps(report, indent=1))
    paths["md"].write_text(markdown_report(report))
    paths["html"].write_text(html_report(report))
    return paths


def load_report(path: str | Path) -> dict:
    """A report written by :func:`write_reports`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No showdown report at {path}. Run `python -m course_lib showdown --profile pocket` "
                                "(or `make showdown`) first.")
    return json.loads(path.read_text())


# --------------------------------------------------------------------------- tables and reports

def results_table(report: dict):
    """One row per arm: each metric in % with its 95 % interval, the facts probe, the share of
    completions in strict format, and the budget spent."""
    import pandas as pd

    rows = []
    for r in report["arms"].values():
        row = {"arm": r["label"], **{metric: _pct(m) for metric, m in r["metrics"].items()}}
        row["facts probe"] = r["facts"]["accuracy"] if r["facts"] else float("nan")
        row["strict format"] = r["format"]["strict_format"]
        b = r["budget"]
        row.update({"completions generated": b["completions_generated"], "trained on": b["sequences_trained_on"],
                    "optimizer steps": b["optimizer_steps"], "train s": round(b["train_seconds"], 1)})
        rows.append(row)
    return pd.DataFrame(rows).set_index("arm")


def changes_table(report: dict):
    """One row per trained arm: the change against the base in points, with paired 95 % intervals."""
    import pandas as pd

    rows = {report["arms"][arm]["label"]: {metric: _points(c) for metric, c in metrics.items()}
            for arm, metrics in report["changes"].items()}
    return pd.DataFrame(rows).T


def _points(change: dict) -> str:
    """A paired change as "+2.0 [+0.4, +3.6]" (points)."""
    return f"{change['points']:+.1f} [{change['ci_low']:+.1f}, {change['ci_high']:+.1f}]"


def _pct(m: dict) -> str:
    return f"{100 * m['value']:.1f} [{100 * m['ci_low']:.1f}, {100 * m['ci_high']:.1f}]"


def markdown_report(report: dict) -> str:
    """The study as Markdown: the results table, the paired changes, the budget and the plan."""
    arms = report["arms"]
    metrics = list(next(iter(arms.values()))["metrics"])
    has_facts = any(r["facts"] for r in arms.values())
    head = ["arm", *metrics] + (["facts probe"] if has_facts else []) + ["strict format"]
    lines = [f"# Showdown: {report['plan']['profile']} profile ({'fast' if report['plan']['fast'] else 'full'} mode)",
             "", f"{report['plan']['n_eval']} test problems; every metric in % with its 95 % bootstrap interval.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in arms.values():
        cells = [r["label"], *(_pct(r["metrics"][m]) for m in metrics)]
        if has_facts:
            cells.append(f"{100 * r['facts']['accuracy']:.1f}" if r["facts"] else "n/a")
        cells.append(f"{100 * r['format']['strict_format']:.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "## Change against the base (points, paired 95 % interval)", "",
              "| arm | " + " | ".join(metrics) + " |", "|" + "---|" * (len(metrics) + 1)]
    for arm, changes in report["changes"].items():
        lines.append(f"| {arms[arm]['label']} | " + " | ".join(_points(c) for c in changes.values()) + " |")
    lines += ["", "## Budget", "", report["budget_note"], "",
              "| arm | completions generated | trained on | optimizer steps | sampling s | training s | evaluation s |",
              "|---|---|---|---|---|---|---|"]
    for r in arms.values():
        b = r["budget"]
        lines.append(f"| {r['label']} | {b['completions_generated']} | {b['sequences_trained_on']} | "
                     f"{b['optimizer_steps']} | {b['sample_seconds']:.0f} | {b['train_seconds']:.0f} | "
                     f"{b['eval_seconds']:.0f} |")
    s = report["seconds"]
    lines += ["", f"Compute for all arms: {s['all_arms']:.0f} s (the shared pool counted once); this run: "
              f"{s['this_run']:.0f} s" + (f", with {', '.join(report['resumed'])} loaded from disk." if report["resumed"]
                                          else "."), ""]
    return "\n".join(lines)


def html_report(report: dict) -> str:
    """A self-contained HTML page (plotly's script inlined: it opens offline) with the tables
    and the charts of :mod:`course_lib.plots`."""
    import markdown_it

    from course_lib import plots

    figures = [plots.showdown_metrics(report), plots.showdown_changes(report), plots.showdown_budget(report)]
    if any(r["facts"] for r in report["arms"].values()):
        figures.append(plots.showdown_forgetting(report))
    charts = [fig.to_html(full_html=False, include_plotlyjs=(i == 0)) for i, fig in enumerate(figures)]
    body = markdown_it.MarkdownIt().enable("table").render(markdown_report(report))
    return ("<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>Showdown</title>"
            "<style>body{font-family:sans-serif;max-width:1100px;margin:auto}table{border-collapse:collapse}"
            "td,th{border:1px solid #ccc;padding:4px 8px}</style></head><body>\n"
            + body + "\n".join(charts) + "\n</body></html>\n")
