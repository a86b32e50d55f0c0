"""Plotly figures used by the lessons. Each function returns a figure; nothing is shown."""

from __future__ import annotations

import contextlib
import os
import sys

import ipywidgets as w
import numpy as np
import pandas as pd
import plotly.graph_objects as go
from IPython.display import clear_output, display
from plotly.subplots import make_subplots

from course_lib.advantages import group_advantages


def length_histograms(named_records: dict[str, list[dict]], field: str = "question") -> go.Figure:
    """Overlaid histograms of word counts of ``field``, one trace per data set (normalised)."""
    fig = go.Figure()
    for name, records in named_records.items():
        fig.add_histogram(
            x=[len(r[field].split()) for r in records], name=name, histnorm="probability", opacity=0.6, nbinsx=40
        )
    fig.update_layout(
        barmode="overlay", xaxis_title=f"words in {field}", yaxis_title="share", title=f"How long is a {field}?"
    )
    return fig


def steps_bar(named_steps: dict[str, list[int]]) -> go.Figure:
    """Share of problems by number of solution steps, one bar group per data set."""
    fig = go.Figure()
    for name, steps in named_steps.items():
        counts = {s: steps.count(s) / len(steps) for s in sorted(set(steps))}
        fig.add_bar(x=list(counts), y=list(counts.values()), name=name)
    fig.update_layout(
        xaxis_title="solution steps", yaxis_title="share", barmode="group", title="How many steps does a solution take?"
    )
    return fig


def metrics_bar(named_summaries: dict, title: str = "Evaluation") -> go.Figure:
    """Bars of each metric with 95% interval whiskers; one colour per model.

    ``named_summaries`` maps a model name to ``EvalResult.summary`` (metric -> value,
    ci_low, ci_high).
    """
    fig = go.Figure()
    for name, table in named_summaries.items():
        fig.add_bar(
            x=list(table.index),
            y=table["value"],
            name=name,
            error_y={
                "type": "data",
                "symmetric": False,
                "array": table["ci_high"] - table["value"],
                "arrayminus": table["value"] - table["ci_low"],
            },
        )
    fig.update_layout(barmode="group", yaxis_range=[0, 1], yaxis_title="share of problems", title=title)
    return fig


def accuracy_by_steps(per_problem, steps: list[int], metric: str = "per_sample_accuracy") -> go.Figure:
    """Mean of a per-problem metric grouped by the problem's number of steps."""
    frame = per_problem.assign(steps=steps).groupby("steps")[metric].mean()
    fig = go.Figure(go.Bar(x=list(frame.index), y=list(frame.values)))
    fig.update_layout(
        xaxis_title="solution steps",
        yaxis_title=metric.replace("_", " "),
        yaxis_range=[0, 1],
        title=f"{metric.replace('_', ' ')} by the number of solution steps",
    )
    return fig


FIGURE_MODES = ("widget", "static")


def figure_mode() -> str:
    """How live figures draw: ``"widget"`` (a plotly ``FigureWidget``, updated in place) or
    ``"static"`` (a plain figure re-drawn into an ``ipywidgets.Output``), for front ends that do
    not show ``FigureWidget`` (Colab, VS Code without the plotly extension). ``COURSE_FIGURES``
    forces one; otherwise static in Colab and VS Code, widget elsewhere."""
    forced = os.environ.get("COURSE_FIGURES", "").strip().lower()
    if forced and forced not in FIGURE_MODES:
        raise ValueError(f"COURSE_FIGURES={forced!r}: use one of {', '.join(FIGURE_MODES)} (or leave it unset)")
    if forced:
        return forced
    return "static" if "google.colab" in sys.modules or "VSCODE_PID" in os.environ else "widget"


class StaticFigure(w.Output):
    """A plain plotly figure shown in an ``ipywidgets.Output`` and drawn again after each change.

    It answers the part of ``FigureWidget``'s interface the course's explorers and live curves
    use: ``data`` and ``layout`` (the figure's own, assign to them), ``batch_update()`` (redraw
    once when the block ends) and ``add_scatter`` / ``update_layout``. ``draws`` counts redraws.
    """

    def __init__(self, figure: go.Figure | None = None):
        super().__init__()
        self.figure = go.Figure(figure) if figure is not None else go.Figure()
        self.draws = 0
        self.redraw()

    @property
    def data(self):
        return self.figure.data

    @data.setter
    def data(self, traces) -> None:
        self.figure.data = traces

    @property
    def layout(self):
        return self.figure.layout

    @layout.setter
    def layout(self, layout) -> None:
        self.figure.layout = layout

    def add_scatter(self, *args, **kwargs):
        return self.figure.add_scatter(*args, **kwargs)

    def add_traces(self, *args, **kwargs):
        return self.figure.add_traces(*args, **kwargs)

    def update_layout(self, *args, **kwargs):
        return self.figure.update_layout(*args, **kwargs)

    @contextlib.contextmanager
    def batch_update(self):
        yield self
        self.redraw()

    def redraw(self) -> None:
        with self:
            clear_output(wait=True)
            display(self.figure)
        self.draws += 1


def live_figure(figure: go.Figure | None = None, mode: str | None = None):
    """A figure that can be updated in place, as :func:`figure_mode` says: a ``go.FigureWidget``
    or a :class:`StaticFigure` (both take ``data[i].x = ...`` inside ``batch_update()``)."""
    mode = mode or figure_mode()
    if mode not in FIGURE_MODES:
        raise ValueError(f"unknown figure mode {mode!r}; use one of {', '.join(FIGURE_MODES)}")
    if mode == "static":
        return StaticFigure(figure)
    return go.FigureWidget(figure) if figure is not None else go.FigureWidget()


def training_curves(keys: tuple[str, ...] = ("loss",), title: str = "Training", cols: int = 3):
    """An empty live figure with one subplot per logged key (``cols`` per row); fill it
    with :func:`append_point`."""
    cols = min(cols, len(keys))
    rows = -(-len(keys) // cols)
    fig = live_figure(make_subplots(rows=rows, cols=cols, subplot_titles=keys))
    for i, key in enumerate(keys):
        fig.add_scatter(
            x=[],
            y=[],
            mode="lines+markers" if key != "loss" else "lines",
            name=key,
            row=i // cols + 1,
            col=i % cols + 1,
        )
    fig.update_layout(title=title, showlegend=False, height=280 * rows + 40)
    if isinstance(fig, StaticFigure):
        fig.redraw()
    return fig


def append_point(fig: go.FigureWidget, row: dict, x_key: str = "step") -> None:
    """Append one logged row to the live curves (keys missing from the row are skipped)."""
    with fig.batch_update():
        for trace in fig.data:
            if trace.name in row:
                trace.x = tuple(trace.x) + (row[x_key],)
                trace.y = tuple(trace.y) + (row[trace.name],)


class LiveCurves:
    """Training curves that redraw as training runs: pass the object as a callback.

    ``curves = LiveCurves(("reward", "accuracy")); display(curves.figure)``; then every
    ``curves(row)`` (a dict with ``step`` and some of the keys) adds one point per curve.
    """

    def __init__(self, keys: tuple[str, ...], title: str = "Training", x_key: str = "step", cols: int = 3):
        self.figure = training_curves(keys, title, cols)
        self.x_key = x_key

    def __call__(self, row: dict) -> None:
        append_point(self.figure, row, self.x_key)

    def values(self, key: str) -> list[float]:
        """The points drawn so far for ``key``."""
        return [y for trace in self.figure.data if trace.name == key for y in trace.y]


def advantage_bars(rewards, advantages, group_size: int, title: str = "Rewards and advantages") -> go.Figure:
    """Bars of each completion's reward and advantage, groups separated by dotted lines.

    ``rewards`` and ``advantages``: (P*G,) in the same order (each group consecutive).
    """
    rewards, advantages = [float(r) for r in rewards], [float(a) for a in advantages]
    x = list(range(1, len(rewards) + 1))
    fig = go.Figure()
    fig.add_bar(x=x, y=rewards, name="reward r_i", marker_color="#90a4ae")
    fig.add_bar(
        x=x, y=advantages, name="advantage A_i", marker_color=["#2e7d32" if a > 0 else "#c62828" for a in advantages]
    )
    for boundary in range(group_size, len(rewards), group_size):
        fig.add_vline(x=boundary + 0.5, line_dash="dot", line_color="grey")
    fig.update_layout(
        barmode="group",
        title=title,
        xaxis_title="completion",
        yaxis_title="value",
        height=360,
        legend={"orientation": "h", "y": 1.12},
    )
    return fig


def difficulty_weights(group_size: int, eps: float = 1e-4, unbiased: bool = True) -> go.Figure:
    """How hard each group is pushed, by how many of its G binary rewards are 1.

    For each number of correct answers c = 0..G: the group's total absolute advantage
    ``sum_i |A_i|`` (the size of its contribution to the policy gradient), relative to a
    half-right group, with std scaling (GRPO) and without it (Dr. GRPO). Dividing by the
    std multiplies a group by 1/std, which is largest for nearly solved and nearly
    hopeless prompts: relative to the middle, std scaling pushes the extremes harder.
    """
    correct = list(range(group_size + 1))
    fig = go.Figure()
    for scale, name in (("group", "divide by group std (GRPO)"), ("none", "no std (Dr. GRPO)")):
        totals = []
        for c in correct:
            rewards = [1.0] * c + [0.0] * (group_size - c)
            adv, _ = group_advantages(rewards, group_size, scale=scale, eps=eps, unbiased=unbiased)
            totals.append(adv.abs().sum().item())
        middle = totals[group_size // 2]
        fig.add_scatter(x=correct, y=[t / middle for t in totals], mode="lines+markers", name=name)
    fig.update_layout(
        title=f"Push on a group of {group_size}, relative to a half-right group",
        xaxis_title="correct completions in the group",
        yaxis_title="sum of |A_i| / same for c = G/2",
        height=360,
    )
    return fig


def component_shares(table, components: tuple[str, ...], by: str = "correct") -> go.Figure:
    """Share of completions earning each reward component, split by ``by`` (e.g. correct or not).

    ``table``: a DataFrame with one row per completion, 0/1 columns ``components`` and ``by``.
    """
    fig = go.Figure()
    for value, rows in table.groupby(by):
        fig.add_bar(x=list(components), y=[rows[c].mean() for c in components], name=f"{by} = {value} ({len(rows)})")
    fig.update_layout(
        barmode="group",
        yaxis_range=[0, 1],
        yaxis_title="share of completions",
        title="Which completions earn the format components?",
        height=360,
    )
    return fig


def kl_estimator_spread(samples: dict, shift: float) -> go.Figure:
    """Box plots of k1, k2, k3 per token at one shift, with the exact KL as a line, from
    :func:`course_lib.analysis.kl_estimator_samples`."""
    names = [n for n in samples if n != "exact"]
    fig = go.Figure()
    for name in names:
        fig.add_box(y=samples[name].numpy(), name=name, boxmean=True)
    fig.add_scatter(x=names, y=[samples["exact"]] * len(names), mode="lines", name="exact KL", line={"dash": "dash"})
    means = ", ".join(f"{n} {float(samples[n].mean()):.3f}" for n in names)
    fig.update_layout(
        title=f"shift {shift:.2f}: exact KL {samples['exact']:.3f}; means {means}",
        yaxis_title="estimate per token",
        height=380,
    )
    return fig


def kl_estimators(table) -> go.Figure:
    """Mean (with +-1 std band as error bars) of k1, k2, k3 against the exact KL, from
    :func:`course_lib.analysis.kl_estimator_table`."""
    fig = go.Figure()
    exact = table.drop_duplicates("shift")
    fig.add_scatter(
        x=exact["exact_kl"], y=exact["exact_kl"], name="exact KL", mode="lines", line={"color": "black", "dash": "dash"}
    )
    for name, part in table.groupby("estimator"):
        fig.add_scatter(
            x=part["exact_kl"],
            y=part["mean"],
            name=f"{name} (mean ± std)",
            mode="markers+lines",
            error_y={"type": "data", "array": part["std"], "visible": True},
        )
    fig.update_layout(
        title="KL estimators against the exact KL(π‖π_ref)",
        xaxis_title="exact KL",
        yaxis_title="estimate per token",
        height=380,
    )
    return fig


def clip_objective(epsilon_low: float = 0.2, epsilon_high: float = 0.2, advantage: float = 1.0) -> go.Figure:
    """The clipped surrogate min(r A, clip(r, 1-eps_low, 1+eps_high) A) against the ratio r,
    for A > 0 and A < 0. Where the curve is flat the gradient is zero: that token is clipped."""
    r = np.linspace(0.0, 2.0, 401)
    fig = make_subplots(rows=1, cols=2, subplot_titles=(f"A = +{abs(advantage):g}", f"A = -{abs(advantage):g}"))
    for col, a in ((1, abs(advantage)), (2, -abs(advantage))):
        surrogate = np.minimum(r * a, np.clip(r, 1 - epsilon_low, 1 + epsilon_high) * a)
        flat = (a > 0) & (r > 1 + epsilon_high) | (a < 0) & (r < 1 - epsilon_low)
        fig.add_scatter(
            x=r,
            y=r * a,
            name="r·A (unclipped)",
            line={"dash": "dot", "color": "grey"},
            showlegend=col == 1,
            row=1,
            col=col,
        )
        fig.add_scatter(
            x=r,
            y=surrogate,
            name="min(r·A, clip(r)·A)",
            line={"color": "#1565c0", "width": 3},
            showlegend=col == 1,
            row=1,
            col=col,
        )
        fig.add_scatter(
            x=r[flat],
            y=surrogate[flat],
            name="clipped: zero gradient",
            mode="markers",
            marker={"color": "#c62828", "size": 3},
            showlegend=col == 1,
            row=1,
            col=col,
        )
        fig.add_vline(x=1.0, line_color="black", line_width=1, row=1, col=col)
    fig.update_xaxes(title_text="ratio r = π/π_old")
    fig.update_layout(title=f"The clip region (ε_low = {epsilon_low}, ε_high = {epsilon_high})", height=360)
    return fig


def token_weights(lengths: list[int], max_completion_length: int) -> go.Figure:
    """The weight each token of each completion gets in the loss, per aggregation:
    grpo 1/(B |o_i|), dapo (= bnpo on one batch) 1/sum|o_j|, dr_grpo 1/(B L_max)."""
    batch, total = len(lengths), sum(lengths)
    weights = {
        "grpo": [1 / (batch * n) for n in lengths],
        "dapo / bnpo": [1 / total] * batch,
        "dr_grpo": [1 / (batch * max_completion_length)] * batch,
    }
    fig = go.Figure()
    for name, weight in weights.items():
        fig.add_bar(x=[f"|o|={n}" for n in lengths], y=weight, name=name)
    fig.update_layout(
        barmode="group", title="Weight of one token, by completion length", yaxis_title="weight per token", height=340
    )
    return fig


def yield_per_round(named_yields: dict) -> go.Figure:
    """What the filter lets through, round by round: share of questions with >= 1 correct
    sample and share of samples correct (left), samples kept for SFT (right). ``named_yields``
    maps a run's name to the yield table of :func:`course_lib.train.rejection_sampling.expert_iteration`."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=("share of questions / samples", "samples kept for SFT"))
    for name, table in named_yields.items():
        rounds = list(table.index)
        fig.add_scatter(
            x=rounds,
            y=table["solved_share"],
            name=f"{name}: questions solved (≥1 of k)",
            mode="lines+markers",
            row=1,
            col=1,
        )
        fig.add_scatter(
            x=rounds,
            y=table["correct_share"],
            name=f"{name}: samples correct",
            mode="lines+markers",
            line={"dash": "dot"},
            row=1,
            col=1,
        )
        fig.add_bar(x=rounds, y=table["kept"], name=f"{name}: kept", row=1, col=2)
    fig.update_xaxes(title_text="round", dtick=1)
    fig.update_yaxes(range=[0, 1], row=1, col=1)
    fig.update_layout(title="Yield of rejection sampling per round", height=360, barmode="group")
    return fig


def odds_vs_probability(p_rejected: float = 0.5) -> go.Figure:
    """Why ORPO works with odds: against the chosen completion's (mean per-token) probability
    p_w, the log-probability ratio log(p_w / p_l) and the log-odds ratio
    log(odds(p_w) / odds(p_l)), odds(p) = p / (1 - p), for a fixed rejected p_l (left); and the
    ORPO term -log sigmoid(log-odds ratio) (right). The odds ratio keeps growing as p_w -> 1
    while the probability ratio saturates at log(1 / p_l)."""
    p = np.linspace(0.01, 0.99, 197)
    log_prob_ratio = np.log(p / p_rejected)
    log_odds_ratio = np.log(p / (1 - p)) - np.log(p_rejected / (1 - p_rejected))
    fig = make_subplots(
        rows=1, cols=2, subplot_titles=(f"ratios, p_l = {p_rejected:g}", "ORPO's penalty −log σ(log-odds ratio)")
    )
    fig.add_scatter(x=p, y=log_prob_ratio, name="log(p_w / p_l)", row=1, col=1)
    fig.add_scatter(x=p, y=log_odds_ratio, name="log(odds_w / odds_l)", row=1, col=1)
    fig.add_scatter(x=p, y=np.log1p(np.exp(-log_odds_ratio)), name="L_OR", row=1, col=2)
    fig.add_vline(x=p_rejected, line_dash="dot", line_color="grey")
    fig.update_xaxes(title_text="p_w (chosen, mean per-token probability)")
    fig.update_layout(title="Odds against probabilities", height=360)
    return fig


# --------------------------------------------------------------------------- the showdown (lesson 09)

# Each takes a study report (:class:`course_lib.report.StudyReport`).


def _arm_summaries(report) -> dict:
    """``{label: summary table}`` (metric -> value, ci_low, ci_high) for each arm of a study report."""
    return {r.label: pd.DataFrame({m: vars(e) for m, e in r.metrics.items()}).T for r in report.arms.values()}


def showdown_metrics(report) -> go.Figure:
    """Every metric of every arm, with its 95% interval (:func:`metrics_bar` on the report)."""
    return metrics_bar(_arm_summaries(report), title="The showdown: every arm on the same test problems")


def showdown_changes(report) -> go.Figure:
    """Each trained arm's change against the base, in points, with its paired 95% interval:
    an interval that crosses the zero line is a change the study cannot tell from noise."""
    fig = go.Figure()
    for arm, changes in report.changes.items():
        metrics = list(changes)
        points = [changes[m].points for m in metrics]
        fig.add_scatter(
            x=metrics,
            y=points,
            mode="markers",
            name=report.arms[arm].label,
            marker_size=11,
            error_y={
                "type": "data",
                "symmetric": False,
                "array": [changes[m].ci_high - p for m, p in zip(metrics, points)],
                "arrayminus": [p - changes[m].ci_low for m, p in zip(metrics, points)],
            },
        )
    fig.add_hline(y=0, line_dash="dot")
    fig.update_layout(
        scattermode="group",
        yaxis_title="change against the base (points)",
        title="What each method changed (paired intervals: same problems, same seeds)",
    )
    return fig


def showdown_budget(report) -> go.Figure:
    """Seconds per arm, stacked by phase: sampling the training pool, training, evaluating."""
    arms = list(report.arms.values())
    fig = go.Figure()
    for key, name in (
        ("sample_seconds", "sampling the pool"),
        ("train_seconds", "training"),
        ("eval_seconds", "evaluation"),
    ):
        fig.add_bar(x=[r.label for r in arms], y=[getattr(r.budget, key) for r in arms], name=name)
    fig.update_layout(
        barmode="stack",
        yaxis_title="seconds",
        title="Where the time went (SFT-RS and ORPO share one pool, sampled once)",
    )
    return fig


def showdown_forgetting(report) -> go.Figure:
    """The facts probe (the pocket model's second skill) after each arm: did maths training
    make it forget? Accuracy on the left, mean log-prob of the right answer on the right."""
    arms = [r for r in report.arms.values() if r.facts]
    fig = make_subplots(rows=1, cols=2, subplot_titles=("facts probe accuracy", "mean log-prob of the gold answer"))
    labels = [r.label for r in arms]
    fig.add_bar(x=labels, y=[r.facts.accuracy for r in arms], row=1, col=1, showlegend=False)
    fig.add_bar(x=labels, y=[r.facts.mean_gold_logprob for r in arms], row=1, col=2, showlegend=False)
    fig.add_hline(y=arms[0].facts.chance, line_dash="dot", annotation_text="chance", row=1, col=1)
    fig.update_yaxes(range=[0, 1], row=1, col=1)
    fig.update_layout(title="Forgetting: the second skill after maths training")
    return fig


def history_curves(rows: list[dict], keys: tuple[str, ...], title: str = "Training", cols: int = 3) -> go.Figure:
    """A finished run's logged rows (dicts with ``step``) as one subplot per key (the static
    twin of :class:`LiveCurves`, e.g. for a run loaded from disk)."""
    keys = tuple(k for k in keys if any(k in row for row in rows))
    if not keys:
        raise ValueError("none of the keys was logged in these rows")
    cols = min(cols, len(keys))
    n_rows = -(-len(keys) // cols)
    fig = make_subplots(rows=n_rows, cols=cols, subplot_titles=keys)
    for i, key in enumerate(keys):
        points = [(row["step"], row[key]) for row in rows if key in row]
        fig.add_scatter(
            x=[s for s, _ in points],
            y=[v for _, v in points],
            mode="lines+markers",
            name=key,
            row=i // cols + 1,
            col=i % cols + 1,
        )
    fig.update_layout(title=title, showlegend=False, height=280 * n_rows + 40)
    return fig


def memory_bar(table, title: str = "GPU memory per part", gpus_gb=(8, 16, 24, 40, 80)) -> go.Figure:
    """One stacked bar of :func:`course_lib.memory.estimate`'s parts, with common GPU sizes marked."""
    fig = go.Figure()
    for part, gb in table["GB"].drop("total").items():
        if gb > 0:
            fig.add_bar(y=["this setup"], x=[gb], name=part, orientation="h")
    for size in gpus_gb:
        fig.add_vline(x=size, line_dash="dot", annotation_text=f"{size} GB")
    fig.update_layout(
        barmode="stack",
        xaxis_title="GB on one GPU",
        title=title,
        height=260,
        xaxis_range=[0, max(float(table.loc["total", "GB"]) * 1.1, 9)],
    )
    return fig


def pass_at_k_curves(named_curves: dict, title: str = "pass@k against k") -> go.Figure:
    """pass@k (with its 95 % band) against k on a log axis, one line per model;
    ``named_curves`` maps a name to :func:`course_lib.evaluation.pass_at_k_curve`'s table."""
    fig = go.Figure()
    for name, curve in named_curves.items():
        ks = list(curve.index)
        fig.add_scatter(x=ks, y=curve["pass@k"], mode="lines+markers", name=name)
        fig.add_scatter(
            x=ks + ks[::-1],
            y=list(curve["ci_high"]) + list(curve["ci_low"])[::-1],
            fill="toself",
            opacity=0.2,
            line={"width": 0},
            showlegend=False,
            hoverinfo="skip",
        )
    fig.update_layout(xaxis={"type": "log", "title": "k (samples per problem)"}, yaxis_range=[0, 1.02], title=title)
    fig.update_layout(yaxis_title="pass@k")
    return fig


def behaviour_shares(named_tables: dict, title: str = "Which behaviour does the model choose?") -> go.Figure:
    """Stacked bars of each behaviour's share, one bar per model; the hover text gives the accuracy
    inside the behaviour. ``named_tables`` maps a name to :func:`course_lib.behaviours.result_table`."""
    fig = go.Figure()
    behaviours = list(next(iter(named_tables.values())).index)
    for behaviour in behaviours:
        fig.add_bar(
            x=list(named_tables),
            y=[table.loc[behaviour, "share"] for table in named_tables.values()],
            name=behaviour.replace("_", " "),
            customdata=[table.loc[behaviour, "accuracy"] for table in named_tables.values()],
            hovertemplate="%{y:.0%} of completions, %{customdata:.0%} of them right",
        )
    fig.update_layout(barmode="stack", yaxis={"range": [0, 1], "title": "share of completions"}, title=title)
    return fig


def sweep_curves(named_histories: dict, keys=("reward", "accuracy"), title: str = "Training curves") -> go.Figure:
    """One subplot per key, one line per run: how each run's logged metrics moved over its steps."""
    fig = make_subplots(rows=1, cols=len(keys), subplot_titles=keys)
    for i, (name, history) in enumerate(named_histories.items()):
        for j, key in enumerate(keys):
            fig.add_scatter(
                x=history["step"],
                y=history[key],
                name=name,
                legendgroup=name,
                showlegend=j == 0,
                line={"color": _PALETTE[i % len(_PALETTE)]},
                row=1,
                col=j + 1,
            )
    fig.update_layout(title=title, height=360)
    return fig


_PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")


def change_heatmaps(named_grids: dict, title: str = "Relative change ||dW|| / ||W|| per module and layer") -> go.Figure:
    """Side-by-side heatmaps (module type x layer) on one colour scale, one per run;
    ``named_grids`` maps a name to :func:`course_lib.weight_changes.layer_grid`'s table."""
    names = list(named_grids)
    top = max(float(np.nanmax(g.to_numpy())) for g in named_grids.values())
    fig = make_subplots(rows=1, cols=len(names), subplot_titles=names, shared_yaxes=True, horizontal_spacing=0.04)
    for i, name in enumerate(names):
        grid = named_grids[name]
        fig.add_heatmap(
            z=grid.to_numpy(),
            x=[f"layer {c}" for c in grid.columns],
            y=list(grid.index),
            zmin=0,
            zmax=top,
            colorscale="Viridis",
            showscale=i == len(names) - 1,
            hovertemplate="%{y}, %{x}: %{z:.4f}<extra>" + name + "</extra>",
            row=1,
            col=i + 1,
        )
    fig.update_yaxes(autorange="reversed")
    fig.update_layout(title=title, height=380)
    return fig


def module_change_bars(table, title: str = "Relative change per module type, all layers together") -> go.Figure:
    """Grouped bars: one group per module type, one bar per run (:func:`course_lib.scalpel.module_table`)."""
    fig = go.Figure()
    for i, name in enumerate(table.columns):
        fig.add_bar(x=list(table.index), y=table[name], name=name, marker_color=_PALETTE[i % len(_PALETTE)])
    fig.update_layout(barmode="group", title=title, yaxis_title="||dW|| / ||W||", height=360)
    return fig


def change_trajectories(named_trajectories: dict, title: str) -> go.Figure:
    """Relative change against the share of training done, one line per run
    (:func:`course_lib.scalpel.trajectory`)."""
    fig = go.Figure()
    for i, (name, table) in enumerate(named_trajectories.items()):
        fig.add_scatter(
            x=[0.0, *table["progress"]],
            y=[0.0, *table["rel_change"]],
            mode="lines+markers",
            name=name,
            line={"color": _PALETTE[i % len(_PALETTE)]},
        )
    fig.update_layout(title=title, xaxis_title="share of training done", yaxis_title="||dW|| / ||W||", height=340)
    return fig


def overlap_accuracy(
    curve, reference: dict | None = None, title: str = "Accuracy against SFT-GRPO overlap"
) -> go.Figure:
    """Accuracy (%) after the SFT stage and after GRPO against the overlap (%)
    (:func:`course_lib.overlap.overlap_curve`), each seed as a point; ``reference``: horizontal lines in %,
    e.g. ``{"SFT only": 60.0, "GRPO only": 90.0}``."""
    x = list(curve.index)
    fig = go.Figure()
    sft = curve["after SFT (%)"]
    fig.add_scatter(x=x, y=sft, mode="lines+markers", name="after the SFT stage", line={"dash": "dot"})
    fig.add_scatter(x=x, y=curve["after GRPO (%)"], mode="lines+markers", name="after GRPO (mean of seeds)")
    seeds = [(o, v) for o, values in zip(x, curve["each seed (%)"]) for v in values]
    fig.add_scatter(
        x=[o for o, _ in seeds], y=[v for _, v in seeds], mode="markers", name="each seed", marker={"size": 6}
    )
    for i, (name, value) in enumerate((reference or {}).items()):
        fig.add_hline(y=value, line_dash="dash", line_color=_PALETTE[(i + 3) % len(_PALETTE)], annotation_text=name)
    fig.update_layout(title=title, xaxis_title="share of GRPO's questions the SFT stage saw (%)",
                      yaxis_title="per-sample accuracy (%)", yaxis_range=[0, 100], height=380)  # fmt: skip
    return fig


def overlap_mechanism(named_mechanisms: dict, key: str = "zero_variance", title: str | None = None) -> go.Figure:
    """A GRPO-stage measure per step, for questions SFT saw (solid) and fresh ones (dotted), one colour per
    arm; ``named_mechanisms`` maps an arm's label to its ``mechanism`` rows (:mod:`course_lib.overlap`)."""
    fig = go.Figure()
    for i, (name, rows) in enumerate(named_mechanisms.items()):
        for part, dash in (("seen", "solid"), ("fresh", "dot")):
            points = [(r["step"], r[f"{part}_{key}"]) for r in rows if r[f"{part}_groups"] > 0]
            if points:
                fig.add_scatter(
                    x=[s for s, _ in points],
                    y=[v for _, v in points],
                    mode="lines+markers",
                    name=f"{name}: {'seen in SFT' if part == 'seen' else 'fresh'}",
                    line={"color": _PALETTE[i % len(_PALETTE)], "dash": dash},
                )
    label = key.replace("_", " ")
    fig.update_layout(title=title or f"GRPO stage: {label} of the groups, by question", xaxis_title="GRPO step",
                      yaxis_title=label, height=380)  # fmt: skip
    return fig


def variant_curves(
    frame, arms: list[str], x: str = "completions", y: str = "accuracy (%)", labels: dict | None = None,
    title: str | None = None,
) -> go.Figure:  # fmt: skip
    """One line per arm of a variants study (:func:`course_lib.variants.curve_frame` or
    :func:`~course_lib.variants.history_frame`), ``y`` against ``x``, each point the mean over the
    arm's seeds at one step; each seed's own points faint beside it."""
    fig = go.Figure()
    for i, arm in enumerate(arms):
        rows = frame[frame["arm"] == arm]
        if rows.empty or y not in rows:
            continue
        colour, name = _PALETTE[i % len(_PALETTE)], (labels or {}).get(arm, arm)
        columns = [c for c in dict.fromkeys([x, y]) if c != "step"]
        mean = rows.groupby("step")[columns].mean().reset_index()  # one point per step, seeds averaged
        fig.add_scatter(x=mean[x], y=mean[y], mode="lines+markers", name=name, line={"color": colour})
        if rows["seed"].nunique() > 1:
            fig.add_scatter(x=rows[x], y=rows[y], mode="markers", marker={"color": colour, "size": 4, "opacity": 0.35},
                            name=f"{name}: each seed", showlegend=False)  # fmt: skip
    fig.update_layout(title=title or f"{y} against {x}", xaxis_title=x, yaxis_title=y, height=400)
    return fig
