"""Plotly figures used by the lessons. Each function returns a figure; nothing is shown."""

from __future__ import annotations

import plotly.graph_objects as go
from plotly.subplots import make_subplots


def length_histograms(named_records: dict[str, list[dict]], field: str = "question") -> go.Figure:
    """Overlaid histograms of word counts of ``field``, one trace per data set (normalised)."""
    fig = go.Figure()
    for name, records in named_records.items():
        fig.add_histogram(x=[len(r[field].split()) for r in records], name=name,
                          histnorm="probability", opacity=0.6, nbinsx=40)
    fig.update_layout(barmode="overlay", xaxis_title=f"words in {field}", yaxis_title="share",
                      title=f"How long is a {field}?")
    return fig


def steps_bar(named_steps: dict[str, list[int]]) -> go.Figure:
    """Share of problems by number of solution steps, one bar group per data set."""
    fig = go.Figure()
    for name, steps in named_steps.items():
        counts = {s: steps.count(s) / len(steps) for s in sorted(set(steps))}
        fig.add_bar(x=list(counts), y=list(counts.values()), name=name)
    fig.update_layout(xaxis_title="solution steps", yaxis_title="share", barmode="group",
                      title="How many steps does a solution take?")
    return fig


def metrics_bar(named_summaries: dict, title: str = "Evaluation") -> go.Figure:
    """Bars of each metric with 95% interval whiskers; one colour per model.

    ``named_summaries`` maps a model name to ``EvalResult.summary`` (metric -> value,
    ci_low, ci_high).
    """
    fig = go.Figure()
    for name, table in named_summaries.items():
        fig.add_bar(x=list(table.index), y=table["value"], name=name,
                    error_y={"type": "data", "symmetric": False,
                             "array": table["ci_high"] - table["value"],
                             "arrayminus": table["value"] - table["ci_low"]})
    fig.update_layout(barmode="group", yaxis_range=[0, 1], yaxis_title="share of problems",
                      title=title)
    return fig


def accuracy_by_steps(per_problem, steps: list[int], metric: str = "per_sample_accuracy") -> go.Figure:
    """Mean of a per-problem metric grouped by the problem's number of steps."""
    frame = per_problem.assign(steps=steps).groupby("steps")[metric].mean()
    fig = go.Figure(go.Bar(x=list(frame.index), y=list(frame.values)))
    fig.update_layout(xaxis_title="solution steps", yaxis_title=metric, yaxis_range=[0, 1],
                      title=f"{metric} falls with the number of steps")
    return fig


def training_curves(keys: tuple[str, ...] = ("loss",), title: str = "Training") -> go.FigureWidget:
    """An empty live figure with one subplot per logged key; fill it with :func:`append_point`."""
    fig = go.FigureWidget(make_subplots(rows=1, cols=len(keys), subplot_titles=keys))
    for i, key in enumerate(keys, start=1):
        fig.add_scatter(x=[], y=[], mode="lines+markers" if key != "loss" else "lines",
                        name=key, row=1, col=i)
    fig.update_layout(title=title, showlegend=False, height=320)
    return fig


def append_point(fig: go.FigureWidget, row: dict, x_key: str = "step") -> None:
    """Append one logged row to the live curves (keys missing from the row are skipped)."""
    with fig.batch_update():
        for trace in fig.data:
            if trace.name in row:
                trace.x = tuple(trace.x) + (row[x_key],)
                trace.y = tuple(trace.y) + (row[trace.name],)
