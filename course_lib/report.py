"""A study's report: typed records of its arms and of their paired changes, and the ways to read it.

A study (lesson 09's showdown) evaluates several *arms* (the base model and models trained
from it) on the same test problems with the same seeds. Its report is a
:class:`StudyReport`: one :class:`ArmResult` per arm (metrics with intervals, per-problem
values, the facts probe, format shares, the budget spent, the training log) and the paired
change of every trained arm against the base (:class:`~course_lib.evaluation.PairedChange`).
It is saved as JSON and read back with :meth:`StudyReport.from_json` (a round trip that the
tests check); the tables, the Markdown and the HTML page below read the typed fields only.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import markdown_it
import numpy as np
import pandas as pd

from course_lib import plots
from course_lib.evaluation import Estimate, PairedChange, paired_difference


@dataclass(frozen=True)
class FactsScore:
    """The facts probe (:func:`course_lib.evaluation.facts_probe`) of one model."""

    accuracy: float
    chance: float
    mean_gold_logprob: float
    n_items: int


@dataclass(frozen=True)
class Budget:
    """What an arm cost: completions sampled, rows trained on, optimizer steps, seconds by phase."""

    completions_generated: int
    sequences_trained_on: int
    optimizer_steps: int
    sample_seconds: float
    train_seconds: float
    eval_seconds: float = 0.0


@dataclass
class ArmResult:
    """One arm of a study, as measured on the test problems.

    ``metrics``: ``{"pass@8": Estimate, ...}``; ``per_problem``: the same metrics per test problem
    (what paired changes are computed from); ``format``: the share of completions meeting each
    format component; ``history``: the training log, one dict per step (empty for the base).
    """

    arm: str
    label: str
    plan: str  # the fingerprint of the plan it was made under
    metrics: dict[str, Estimate]
    per_problem: dict[str, list[float]]
    facts: FactsScore | None
    format: dict[str, float]
    mean_completion_chars: float
    budget: Budget
    history: list[dict] = field(default_factory=list)
    behaviours: dict[str, float] = field(default_factory=dict)  # share of each behaviour among the completions

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, record: dict) -> ArmResult:
        return cls(
            **{
                **record,
                "metrics": {m: Estimate(**e) for m, e in record["metrics"].items()},
                "facts": FactsScore(**record["facts"]) if record["facts"] else None,
                "budget": Budget(**record["budget"]),
            }
        )


@dataclass
class StudyReport:
    """A whole study: its plan, every arm, and each trained arm's paired change against the base."""

    profile: str
    fast: bool
    n_eval: int
    plan: dict  # every setting the study ran with, as saved
    plan_fingerprint: str
    budget_note: str
    arms: dict[str, ArmResult]
    changes: dict[str, dict[str, PairedChange]]  # arm -> metric -> change against the base
    seconds: dict[str, float]  # "this_run" and "all_arms" (compute, the shared pool once)
    resumed: list[str]  # arms loaded from disk instead of run

    @classmethod
    def from_arms(
        cls,
        plan: dict,
        fingerprint: str,
        budget_note: str,
        arms: dict[str, ArmResult],
        run_seconds: float,
        resumed: list[str],
        base: str = "base",
    ) -> StudyReport:
        """The report of finished ``arms``: paired changes of every other arm against ``base``."""
        reference = arms[base].per_problem
        changes = {
            arm: {metric: paired_difference(values, reference[metric]) for metric, values in r.per_problem.items()}
            for arm, r in arms.items()
            if arm != base
        }
        pool = arms["sft_rs"].budget.sample_seconds if "sft_rs" in arms else 0.0
        compute = pool + sum(r.budget.train_seconds + r.budget.eval_seconds for r in arms.values())
        return cls(
            plan["profile"],
            plan["fast"],
            plan["n_eval"],
            plan,
            fingerprint,
            budget_note,
            arms,
            changes,
            {"this_run": run_seconds, "all_arms": compute},
            resumed,
        )

    @property
    def name(self) -> str:
        """The reports' file name: ``showdown`` for the pocket study in full mode; other runs carry
        profile and mode in the name, so a fast run (the test suite's) never overwrites a full one."""
        return report_name(self.profile, self.fast)

    @property
    def metric_names(self) -> list[str]:
        return list(next(iter(self.arms.values())).metrics)

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, record: dict) -> StudyReport:
        return cls(
            **{
                **record,
                "arms": {a: ArmResult.from_json(r) for a, r in record["arms"].items()},
                "changes": {a: {m: PairedChange(**c) for m, c in cs.items()} for a, cs in record["changes"].items()},
            }
        )


def report_name(profile: str, fast: bool) -> str:
    """``showdown``, ``showdown-fast``, ``showdown-gpu``, ``showdown-gpu-fast``."""
    return "showdown" + ("" if profile == "pocket" else f"-{profile}") + ("-fast" if fast else "")


RESULTS_DIR_VARIABLE = "COURSE_RESULTS_DIR"


def results_dir() -> Path:
    """Where a study writes its reports and finished arms: ``$COURSE_RESULTS_DIR`` if set, else
    ``results/`` at the repository's root (the test suite points it at a fresh temporary folder,
    so that lesson 09 really trains instead of loading arms an earlier run left there)."""
    if os.environ.get(RESULTS_DIR_VARIABLE):
        return Path(os.environ[RESULTS_DIR_VARIABLE]).expanduser()
    return Path(__file__).resolve().parents[1] / "results"


def study_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """The command line every pocket study shares (``python -m course_lib.scalpel``, ``... .overlap``):
    ``--fast``, ``--out``, ``--fresh`` and ``--quiet``."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--fast", action="store_true", default=None, help="tiny counts, as the tests run it")
    parser.add_argument("--out", default=None, help="where finished arms go (default: $COURSE_RESULTS_DIR or results/)")
    parser.add_argument("--fresh", action="store_true", help="ignore finished arms on disk and run every arm")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def fingerprint(plan) -> str:
    """A short hash of a study's whole plan (a dataclass): a saved arm is reused only under the same one."""
    text = json.dumps(dataclasses.asdict(plan), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def read_saved(path: str | Path, from_json, fingerprint: str, name: str, log, fresh: bool = False):
    """A study's finished arm (or run) from ``path`` through ``from_json``, or None: when there is none,
    when ``fresh`` asks for a new one, or when it was made under another plan (its ``plan`` is not
    ``fingerprint``; said in the ``log`` under ``name``). The showdown and the pocket studies all resume so."""
    path = Path(path)
    if fresh or not path.is_file():
        return None
    record = from_json(json.loads(path.read_text()))
    if record.plan != fingerprint:
        log(f"{name}: the saved result was made with other settings; running it again")
        return None
    return record


def write_json(path: str | Path, obj) -> Path:
    """Write ``obj`` as JSON, then rename: a run killed while writing leaves no half-written file
    for a resumed study to load (a study's finished arms are saved this way)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    tmp.replace(path)
    return path


def write_reports(report: StudyReport, out_dir: str | Path = "results") -> dict[str, Path]:
    """``<name>.json``, ``<name>.md`` and ``<name>.html`` in ``out_dir``; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {ext: out / f"{report.name}.{ext}" for ext in ("json", "md", "html")}
    paths["json"].write_text(json.dumps(report.to_json(), indent=1))
    paths["md"].write_text(markdown_report(report))
    paths["html"].write_text(html_report(report))
    return paths


def load_report(path: str | Path) -> StudyReport:
    """A report written by :func:`write_reports`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"No showdown report at {path}. Run `python -m course_lib showdown --profile pocket` "
            "(or `make showdown`) first."
        )
    return StudyReport.from_json(json.loads(path.read_text()))


# --------------------------------------------------------------------------- tables and pages


def results_table(report: StudyReport) -> pd.DataFrame:
    """One row per arm: each metric in % with its 95 % interval, the facts probe, the share of
    completions in strict format and step by step, and the budget spent."""
    rows = []
    for r in report.arms.values():
        row = {"arm": r.label, **{metric: str(m) for metric, m in r.metrics.items()}}
        row["facts probe"] = r.facts.accuracy if r.facts else float("nan")
        row["strict format"] = r.format["strict_format"]
        row["step by step"] = r.behaviours.get("step_by_step", float("nan"))
        b = r.budget
        row.update(
            {
                "completions generated": b.completions_generated,
                "trained on": b.sequences_trained_on,
                "optimizer steps": b.optimizer_steps,
                "train s": round(b.train_seconds, 1),
            }
        )
        rows.append(row)
    return pd.DataFrame(rows).set_index("arm")


def between_arms(report: StudyReport, metric: str = "per_sample_accuracy") -> pd.DataFrame:
    """Every pair of arms on one metric: row minus column, in points with the paired 95 % interval
    (the same problems and seeds for every arm), e.g. ``table.loc["GRPO", "SFT-RS"]``."""
    labels = {arm: r.label for arm, r in report.arms.items()}
    return pd.DataFrame(
        {
            labels[col]: {
                labels[row]: "" if row == col else str(paired_difference(r.per_problem[metric], c.per_problem[metric]))
                for row, r in report.arms.items()
            }
            for col, c in report.arms.items()
        }
    )


def interval_widths(report: StudyReport) -> pd.DataFrame:
    """How much pairing narrows each change's interval, in points: a row per trained arm, columns
    ``(metric, "unpaired")`` and ``(metric, "paired")``. *Unpaired* is the width the change's
    interval would have if the arm's and the base's estimates were independent (their own widths
    added in quadrature); *paired* is the width of the paired interval the course reports. Pairing
    helps as much as the two arms' per-problem scores go together: near a ceiling there is little
    shared spread to remove."""
    base = report.arms["base"].metrics
    rows = {}
    for arm in report.changes:
        row = {}
        for metric, m in report.arms[arm].metrics.items():
            own, base_own = m.ci_high - m.ci_low, base[metric].ci_high - base[metric].ci_low
            change = report.changes[arm][metric]
            row[(metric, "unpaired")] = round(100 * float(np.hypot(own, base_own)), 1)  # independent: add variances
            row[(metric, "paired")] = round(change.ci_high - change.ci_low, 1)  # one bootstrap of d_i
        rows[report.arms[arm].label] = row
    return pd.DataFrame(rows).T


def changes_table(report: StudyReport) -> pd.DataFrame:
    """One row per trained arm: the change against the base in points, with paired 95 % intervals."""
    rows = {
        report.arms[arm].label: {metric: str(c) for metric, c in metrics.items()}
        for arm, metrics in report.changes.items()
    }
    return pd.DataFrame(rows).T


def markdown_report(report: StudyReport) -> str:
    """The study as Markdown: the results table, the paired changes, the budget and the plan."""
    arms = report.arms
    metrics = report.metric_names
    has_facts = any(r.facts for r in arms.values())
    head = ["arm", *metrics] + (["facts probe"] if has_facts else []) + ["strict format"]
    lines = [
        f"# Showdown: {report.profile} profile ({'fast' if report.fast else 'full'} mode)",
        "",
        f"{report.n_eval} test problems; every metric in % with its 95 % bootstrap interval.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for r in arms.values():
        cells = [r.label, *(str(r.metrics[m]) for m in metrics)]
        if has_facts:
            cells.append(f"{100 * r.facts.accuracy:.1f}" if r.facts else "n/a")
        cells.append(f"{100 * r.format['strict_format']:.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "## Change against the base (points, paired 95 % interval)",
        "",
        "| arm | " + " | ".join(metrics) + " |",
        "|" + "---|" * (len(metrics) + 1),
    ]
    for arm, changes in report.changes.items():
        lines.append(f"| {arms[arm].label} | " + " | ".join(str(c) for c in changes.values()) + " |")
    metric = metrics[0]
    lines += ["", f"## Between arms: {metric}, row minus column (points, paired 95 % interval)", ""]
    pairs = between_arms(report, metric)
    lines += ["| | " + " | ".join(pairs.columns) + " |", "|" + "---|" * (len(pairs.columns) + 1)]
    lines += [f"| {row} | " + " | ".join(pairs.loc[row]) + " |" for row in pairs.index]
    lines += [
        "",
        "## Budget",
        "",
        report.budget_note,
        "",
        "| arm | completions generated | trained on | optimizer steps | sampling s | training s | evaluation s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in arms.values():
        b = r.budget
        lines.append(
            f"| {r.label} | {b.completions_generated} | {b.sequences_trained_on} | "
            f"{b.optimizer_steps} | {b.sample_seconds:.0f} | {b.train_seconds:.0f} | "
            f"{b.eval_seconds:.0f} |"
        )
    s = report.seconds
    loaded = f", with {', '.join(report.resumed)} loaded from disk." if report.resumed else "."
    lines += [
        "",
        f"Compute for all arms: {s['all_arms']:.0f} s (the shared pool counted once); this run: "
        f"{s['this_run']:.0f} s" + loaded,
        "",
    ]
    return "\n".join(lines)


def html_report(report: StudyReport) -> str:
    """A self-contained HTML page (plotly's script inlined: it opens offline) with the tables
    and the charts of :mod:`course_lib.plots`."""
    figures = [plots.showdown_metrics(report), plots.showdown_changes(report), plots.showdown_budget(report)]
    if any(r.facts for r in report.arms.values()):
        figures.append(plots.showdown_forgetting(report))
    charts = [fig.to_html(full_html=False, include_plotlyjs=(i == 0)) for i, fig in enumerate(figures)]
    body = markdown_it.MarkdownIt().enable("table").render(markdown_report(report))
    return (
        "<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>Showdown</title>"
        "<style>body{font-family:sans-serif;max-width:1100px;margin:auto}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px}</style></head><body>\n"
        + body
        + "\n".join(charts)
        + "\n</body></html>\n"
    )
