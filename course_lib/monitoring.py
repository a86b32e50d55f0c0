"""Monitoring a GRPO run: what to watch, what healthy looks like, and what it means when it is not.

A GRPO run logs one row of metrics per step (:class:`course_lib.train.grpo.GRPOLoop`, or TRL's
``GRPOTrainer`` through :data:`course_lib.train.trainers.TRL_METRIC_NAMES`, which renames TRL's
keys to the same names). :func:`healthy_bands` says, for the metrics that can go wrong, which
range is healthy for a run with given settings, what leaving it means and what to try; the
bands are rules of thumb, measured on the pocket model's runs (the comments say which), not laws.
:func:`diagnose` checks the last steps of a run against them; :func:`dashboard` draws a run (or
several side by side) with the bands shaded; :class:`LiveDashboard` does it while training.

Entropy here is the entropy of the policy's whole next-token distribution, averaged over the
completion's tokens (``losses.token_entropy``), not minus the mean log-probability of the sampled
tokens, which is only a one-sample estimate of it.

A run's log is saved as JSON lines (:func:`save_history`, one row per line) and read back with
:func:`load_history`, so the dashboard draws saved runs the same way as live ones. A run can also go
to trackio, the local experiment tracker TRL's ``report_to="trackio"`` writes to (offline: one SQLite
file per project under ``$TRACKIO_DIR``, by default ``~/.cache/huggingface/trackio``): our loop through
:class:`TrackioLog`, TRL's trainers through :func:`trackio_arguments`; :func:`load_trackio` reads
either back with the course's metric names, and ``trackio show`` opens trackio's own dashboard.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
import trackio
from plotly.subplots import make_subplots
from trackio.sqlite_storage import SQLiteStorage

from course_lib.data import train_problems
from course_lib.plots import live_figure
from course_lib.train.grpo import GRPOSettings
from course_lib.train.recipes import grpo_recipe
from course_lib.train.trainers import TRL_METRIC_NAMES

#: The dashboard's panels, in reading order: what the model earns, then the signal GRPO gets from
#: it, then how far and how hard the update moves the policy, then what the completions look like.
DASHBOARD_KEYS = (
    "reward",
    "reward_std",
    "accuracy",
    "frac_zero_std",
    "advantage_mean",
    "advantage_std",
    "entropy",
    "kl",
    "clip_ratio/region",
    "grad_norm",
    "completion_length",
    "loss",
)
#: Panels drawn only when a run logs them: a format reward and the layout parts of it that a
#: missing ``re.DOTALL`` silences (lesson 02).
FORMAT_KEYS = ("format_reward", "format/strict_format", "format/soft_format")


@dataclass(frozen=True)
class Band:
    """The healthy range of one metric (None: no bound on that side), and what to do outside it."""

    metric: str
    low: float | None
    high: float | None
    means: str  # what a value outside the band means
    fix: str  # what to try
    relative: bool = False  # low and high are multiples of the run's own first steps

    def bounds(self, start: float) -> tuple[float | None, float | None]:
        """The band's limits for a run that started at ``start`` (the mean of its first steps)."""
        scale = start if self.relative else 1.0
        return (None if self.low is None else self.low * scale, None if self.high is None else self.high * scale)

    def contains(self, value: float, start: float = 1.0) -> bool:
        if math.isnan(value):
            return True  # not logged (e.g. kl with beta = 0): nothing to judge
        low, high = self.bounds(start)
        return (low is None or value >= low) and (high is None or value <= high)


def healthy_bands(settings: GRPOSettings = GRPOSettings()) -> dict[str, Band]:
    """Healthy ranges for a run with ``settings`` (its clipping, budget and KL weight set some of them)."""
    bands = [
        Band(
            "reward_std",
            0.05,
            None,
            "the rewards inside the batch barely differ, so the advantages carry almost no signal",
            "raise the temperature or the group size G; drop prompts that are always or never solved",
        ),
        Band(
            "frac_zero_std",
            None,
            0.5,
            "most groups earn one reward for every completion: their advantages are 0 and they teach nothing",
            "filter by difficulty, refill flat groups (DAPO's dynamic sampling), or raise G or the temperature",
        ),
        Band(
            "advantage_mean",
            -0.05,
            0.05,
            "group-normalised advantages average 0 by construction; a drift means the scaling is off",
            "check scale_rewards and that every group holds exactly G completions",
        ),
        Band(
            "reward_change",
            -0.1,
            None,
            "the reward fell from where the run started: the policy is getting worse",
            "lower the learning rate and restart from the last good checkpoint",
        ),
        Band(
            "accuracy_change",
            -0.1,
            None,
            "fewer answers are right than when the run started; if the reward did not fall with it, the reward "
            "pays for something other than right answers (reward hacking)",
            "pay format and length bonuses to correct answers only (RewardConfig(format_needs_correct=True)); "
            "read what the best-rewarded completions have in common",
        ),
        # The pocket model's healthy run (lesson 05's recipe) ends with its entropy 40x below its
        # start (0.16 -> 0.004 nats per token) while accuracy climbs to 97 %: a sharper policy, not
        # a broken one. Its run at a 30x learning rate collapsed to 0 % while the entropy *rose* 6-13x.
        Band(
            "entropy",
            None,
            3.0,
            "the entropy rose far above where the run started: the policy is losing its grip on the language",
            "lower the learning rate (and restart from a checkpoint); add or raise the KL term",
            relative=True,
        ),
        Band(
            "clip_ratio/region",
            None,
            0.2,
            "the clip stops the gradient of many tokens: each update moves the policy far from pi_old",
            "lower the learning rate or mu (updates per batch)",
        ),
        Band(
            "grad_norm",
            None,
            20 * settings.max_grad_norm,
            f"the gradient (before clipping to {settings.max_grad_norm}) is huge: the clip does all the work",
            "lower the learning rate; look for a reward or log-prob that is exploding",
        ),
        Band(
            "completion_length",
            None,
            0.95 * settings.max_new_tokens,
            f"completions run into the budget of {settings.max_new_tokens} tokens: cut off, with no final answer",
            "raise max_new_tokens, or penalise overlong completions (DAPO's overlong shaping)",
        ),
    ]
    if settings.reward.format_weight > 0:
        bands += [
            Band(
                f"format/{part}",
                0.001,
                None,
                f"no completion earns the format reward's {part.replace('_', ' ')}: its pattern matches nothing "
                "(a multi-line pattern compiled without re.DOTALL?), or the completions left that layout",
                "run the reward on a real multi-line completion; compile multi-line patterns with re.DOTALL",
            )
            for part in ("strict_format", "soft_format")
        ]
    if settings.beta > 0:
        bands.append(
            Band(
                "kl",
                None,
                0.5,
                "the policy has drifted far from the reference model",
                "raise beta or lower the learning rate",
            )
        )
    return {b.metric: b for b in bands}


def _table(history) -> pd.DataFrame:
    return history if isinstance(history, pd.DataFrame) else pd.DataFrame(list(history))


def diagnose(history, bands: dict[str, Band] | None = None, last: int = 3) -> pd.DataFrame:
    """Each banded metric's mean over the run's ``last`` steps against its band: one row per metric
    with ``value`` (and its first steps' mean, ``start``), ``low``, ``high``, ``healthy`` and, where
    not, what it means and what to try. Accuracy falling while the reward does not is read as reward
    hacking (and flat groups then as the policy settled on the bonus); both falling, as a collapse."""
    table = _table(history)
    if table.empty:
        raise ValueError("the run has no logged steps yet: train at least one step, then diagnose it")
    for key in ("reward", "accuracy"):  # each against the run's own start
        if key in table:
            table = table.assign(**{f"{key}_change": table[key] - table[key].head(last).mean()})
    bands = healthy_bands() if bands is None else bands
    accuracy = float(table["accuracy"].tail(last).mean()) if "accuracy" in table else math.nan
    fell = {k: float(table[f"{k}_change"].tail(last).mean()) < -0.1 for k in ("reward", "accuracy") if k in table}
    hacked = fell.get("accuracy", False) and not fell.get("reward", True)  # fewer right answers, no less reward
    rows = []
    for metric, band in bands.items():
        if metric not in table:
            continue
        start, value = float(table[metric].head(last).mean()), float(table[metric].tail(last).mean())
        ok, means, fix = band.contains(value, start), band.means, band.fix
        if not ok and metric == "accuracy_change" and not hacked:  # the reward fell too: a collapse, not a hack
            means, fix = "fewer answers are right than when the run started, and the reward fell with it", ""
        elif not ok and metric in FLAT_METRICS and hacked:
            means = "flat because every completion now earns the same: the policy settled on what the reward pays for"
            fix = "see accuracy_change"
        elif not ok and metric in FLAT_METRICS and accuracy >= SOLVED:
            ok, means, fix = True, "flat because nearly every completion is right: these prompts are solved", ""
        elif not ok and metric in FLAT_METRICS and accuracy <= 1 - SOLVED:
            means = "flat because nearly every completion is wrong: the prompts are too hard, or the policy collapsed"
            fix = "if the reward fell (reward_change), lower the learning rate; else easier prompts or a larger G"
        low, high = band.bounds(start)
        rows.append(
            {"metric": metric, "value": value, "start": start, "low": low, "high": high, "healthy": ok,
             "means": "" if ok and not means.startswith("flat because") else means, "try": "" if ok else fix}
        )  # fmt: skip
    return pd.DataFrame(rows).set_index("metric")


FLAT_METRICS = ("frac_zero_std", "reward_std")  # flat groups: a stall, a success or a collapse, by accuracy
SOLVED = 0.9  # accuracy at which flat groups mean "solved" (and at 1 - SOLVED, "never solved")


def _grid(keys: Sequence[str], cols: int) -> tuple[int, int]:
    cols = min(cols, len(keys))
    return -(-len(keys) // cols), cols


def _shade_bands(fig, keys: Sequence[str], bands: dict[str, Band], cols: int) -> None:
    """A green rectangle over each panel's healthy range (to the panel's edge where a side is open)."""
    for i, key in enumerate(keys):
        band = bands.get(key)
        if band is None:
            continue
        y0 = band.low if band.low is not None else (0.0 if (band.high or 0) > 0 else -1e9)
        y1 = band.high if band.high is not None else 1e9
        fig.add_hrect(y0=y0, y1=y1, fillcolor="green", opacity=0.08, line_width=0, row=i // cols + 1, col=i % cols + 1)


def dashboard(
    runs: dict[str, object] | object,
    bands: dict[str, Band] | None = None,
    keys: Sequence[str] = DASHBOARD_KEYS + FORMAT_KEYS,
    title: str = "GRPO dashboard",
    cols: int = 4,
) -> go.Figure:
    """One panel per metric of ``keys`` (those any run logged), one line per run, healthy bands
    shaded green. ``runs``: a run's history (a list of rows or a DataFrame) or ``{name: history}``."""
    runs = runs if isinstance(runs, dict) else {"run": runs}
    tables = {name: _table(h) for name, h in runs.items()}
    keys = [k for k in keys if any(k in t for t in tables.values())]
    if not keys:
        raise ValueError(f"none of the dashboard's metrics ({', '.join(DASHBOARD_KEYS)}) is in the runs' logs")
    bands = healthy_bands() if bands is None else bands
    rows, cols = _grid(keys, cols)
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=list(keys))
    palette = ("#1f77b4", "#d62728", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b")
    for j, (name, table) in enumerate(tables.items()):
        for i, key in enumerate(keys):
            if key in table:
                fig.add_scatter(
                    x=table["step"], y=table[key], mode="lines", name=name, legendgroup=name, showlegend=i == 0,
                    line={"color": palette[j % len(palette)]}, row=i // cols + 1, col=i % cols + 1,
                )  # fmt: skip
    _shade_bands(fig, keys, bands, cols)
    _fit_axes(fig, keys, tables)
    fig.update_layout(title=title, height=230 * rows + 80)
    return fig


def _fit_axes(fig, keys: Sequence[str], tables: dict[str, pd.DataFrame]) -> None:
    """Each panel's y range fits its data (the open-ended band rectangles would stretch it otherwise);
    panel i of a subplot grid has the y axis ``yaxis{i + 1}``."""
    for i, key in enumerate(keys):
        columns = [t[key] for t in tables.values() if key in t]
        values = pd.concat(columns).dropna() if columns else pd.Series(dtype=float)
        if values.empty:
            continue
        low, high = float(values.min()), float(values.max())
        pad = 0.1 * (high - low) or 0.1 * abs(high) or 0.1
        fig.update_layout({"yaxis" if i == 0 else f"yaxis{i + 1}": {"range": [low - pad, high + pad]}})


class LiveDashboard:
    """The dashboard while a run trains: pass the object as a callback of ``GRPOLoop.train`` (or wrap
    it with ``trainers.live_curves_callback`` for a TRL trainer); ``display(dash.figure)`` first."""

    def __init__(self, settings: GRPOSettings = GRPOSettings(), keys: Sequence[str] = DASHBOARD_KEYS, cols: int = 4):
        keys = tuple(keys) + (FORMAT_KEYS if settings.reward.format_weight > 0 else ())
        self.keys = [k for k in keys if k != "kl" or settings.beta > 0]  # no reference model, no KL logged
        self.cols, self.bands = cols, healthy_bands(settings)
        self.rows: list[dict] = []
        rows, cols = _grid(self.keys, cols)
        base = make_subplots(rows=rows, cols=cols, subplot_titles=self.keys)
        for i, key in enumerate(self.keys):
            base.add_scatter(x=[], y=[], mode="lines+markers", name=key, row=i // cols + 1, col=i % cols + 1)
        _shade_bands(base, self.keys, self.bands, cols)
        base.update_layout(title="GRPO dashboard (live)", showlegend=False, height=230 * rows + 80)
        self.figure = live_figure(base)

    def __call__(self, row: dict) -> None:
        self.rows.append(row)
        table = pd.DataFrame(self.rows)
        with self.figure.batch_update():
            for trace in self.figure.data:
                if trace.name in table:
                    trace.x, trace.y = tuple(table["step"]), tuple(table[trace.name])
            _fit_axes(self.figure, self.keys, {"run": table})

    def diagnose(self, last: int = 3) -> pd.DataFrame:
        return diagnose(self.rows, self.bands, last)


def save_history(history, path: str | Path) -> Path:
    """A run's log as JSON lines, one step per line (numbers only)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = _table(history).to_dict("records")
    path.write_text(
        "".join(json.dumps({k: v for k, v in r.items() if isinstance(v, int | float)}) + "\n" for r in rows)
    )
    return path


def load_history(path: str | Path) -> pd.DataFrame:
    """A log written by :func:`save_history`; a malformed line is reported with its number."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No run log at {path}: save one with monitoring.save_history(loop.history, path)")
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise ValueError(
                f"{path}, line {number}: not a JSON object ({e.msg}); each line must be one step's row"
            ) from e
    return pd.DataFrame(rows)


def compare_runs(histories: dict, pairs: Sequence[tuple[str, str, str]], keys: Sequence[str], last: int = 3
                 ) -> pd.DataFrame:  # fmt: skip
    """Before and after a fix: for each ``(case, broken run, fixed run)``, each metric of ``keys`` over
    the last ``last`` steps of both runs (``histories``: run name -> its log)."""
    rows = []
    for case, broken, fixed in pairs:
        before, after = _table(histories[broken]).tail(last), _table(histories[fixed]).tail(last)
        row = {"case": case, "before": broken, "after": fixed}
        for key in keys:
            row[f"{key} before"], row[f"{key} after"] = float(before[key].mean()), float(after[key].mean())
        rows.append(row)
    return pd.DataFrame(rows).set_index("case")


class TrackioLog:
    """A ``GRPOLoop`` callback that logs each step's numbers to trackio, locally.

    ``with TrackioLog("course", "healthy", settings) as log: loop.train(callbacks=[log])``: the run's
    settings go in as its config, each step's row as one trackio step; leaving the block finishes the
    run. No dashboard server is started and no system metrics are sampled (``trackio show --project
    course`` opens the dashboard when you want it).
    """

    def __init__(self, project: str, name: str, settings: GRPOSettings | None = None):
        self.project, self.name = project, _unused_name(project, name)  # "healthy", else "healthy-2", ...
        config = None if settings is None else json.loads(json.dumps(dataclasses.asdict(settings), default=str))
        trackio.init(project=project, name=self.name, config=config, embed=False, auto_log_cpu=False,
                     auto_log_gpu=False)  # fmt: skip

    def __call__(self, row: dict) -> None:
        trackio.log({k: v for k, v in row.items() if isinstance(v, int | float) and k != "step"}, step=int(row["step"]))

    def finish(self) -> None:
        trackio.finish()

    def __enter__(self) -> TrackioLog:
        return self

    def __exit__(self, *exc) -> None:
        self.finish()


def _unused_name(project: str, name: str) -> str:
    """``name``, or ``name-2``, ``name-3``, ... where the project already has a run of that name (trackio
    keeps both, and a read by name would find the older one)."""
    if not SQLiteStorage.get_project_db_path(project).exists():
        return name
    taken = {r.name for r in trackio.Api().runs(project)}
    return next(n for n in [name] + [f"{name}-{i}" for i in range(2, len(taken) + 3)] if n not in taken)


def trackio_arguments(project: str, name: str) -> dict:
    """``GRPOConfig`` (any ``TrainingArguments``) overrides that send a TRL run to trackio, locally: TRL's
    own ``report_to="trackio"``, under ``project`` and ``name``, with no Hub Space made after training.
    E.g. ``grpo_trainer(..., **trackio_arguments("course", "trl-run"))``."""
    return {"report_to": ["trackio"], "project": project, "run_name": name, "trackio_static_space_id": False}


def load_trackio(project: str, name: str) -> pd.DataFrame:
    """A run logged to trackio, one row per step, with the course's metric names: our loop's rows as
    they were; a TRL trainer's with ``train/`` dropped and its names mapped as ``TRL_METRIC_NAMES`` does
    (``train/rewards/correctness_reward/mean`` -> ``accuracy``), its ``step`` the trainer's global step.
    Reads trackio's local store (``trackio.sqlite_storage``, what ``trackio show`` reads)."""
    if not SQLiteStorage.get_project_db_path(project).exists():
        raise FileNotFoundError(
            f"no trackio project {project!r} under {trackio.utils.TRACKIO_DIR}: log a run first "
            "(TrackioLog for GRPOLoop, trackio_arguments for a TRL trainer), or set TRACKIO_DIR where it was written"
        )
    logs = SQLiteStorage.get_logs(project, name)
    if not logs:
        runs = [r.name for r in trackio.Api().runs(project)]
        raise ValueError(f"no logged steps for run {name!r} in project {project!r}; its runs: {', '.join(runs)}")
    steps: dict[int, dict] = {}
    for log in logs:
        row = {k.removeprefix("train/"): v for k, v in log.items() if isinstance(v, int | float)}
        step = int(row.pop("global_step", row["step"]))  # TRL's rows: trackio counts every log call
        row = {TRL_METRIC_NAMES.get(k, k): v for k, v in row.items() if k != "step" and not k.startswith("profiling/")}
        if row:  # TRL also logs its timings, and a last row with the step alone
            steps.setdefault(step, {"step": step}).update(row)
    return pd.DataFrame(list(steps.values())).sort_values("step").reset_index(drop=True)


@dataclass(frozen=True)
class ExampleRun:
    """One of the dashboard's reference runs: its settings, its training problems and what it shows."""

    settings: GRPOSettings
    problems: list[dict]
    shows: str


COLLAPSE_LR_FACTOR = 30  # the recipe's learning rate x 30: the pocket run collapsed to 0 % within 5 steps
HARD_STEPS = (6, 8)  # pocket-math problems of 6 to 8 steps: beyond the base (the recipe trains on 1 to 5)


def example_runs(profile) -> dict[str, ExampleRun]:
    """Three runs of lesson 05's recipe that differ in one thing each: ``healthy`` (the recipe),
    ``collapsing`` (a learning rate 30x too high) and ``stalled`` (problems too hard for the base,
    so most groups are all wrong). Measured on 2 cores, 20 steps each (about a minute): accuracy on
    the training samples 33 -> 97 %, 33 -> 0 % (from step 5 on), 9 -> 0-9 % with 75-100 % flat groups."""
    settings, _ = grpo_recipe(profile)
    n = settings.steps * settings.prompts_per_step
    low, high = HARD_STEPS
    collapsing = dataclasses.replace(settings, learning_rate=COLLAPSE_LR_FACTOR * settings.learning_rate)
    return {
        "healthy": ExampleRun(settings, train_problems(profile, n, seed=1), "lesson 05's recipe"),
        "collapsing": ExampleRun(
            collapsing, train_problems(profile, n, seed=1), f"the learning rate x {COLLAPSE_LR_FACTOR}"
        ),
        "stalled": ExampleRun(
            settings,
            train_problems(profile, n, seed=1, min_steps=low, max_steps=high),
            f"problems of {low}-{high} steps, beyond the base",
        ),
    }
