"""ipywidgets for the lessons. The logic lives in plain functions that tests call
without a browser; the widgets only wire sliders and buttons to them."""

from __future__ import annotations

import html
from collections.abc import Sequence

import ipywidgets as w
import plotly.graph_objects as go
import torch

from course_lib import memory, weight_changes
from course_lib.advantages import group_advantages
from course_lib.analysis import kl_estimator_samples, paired_table
from course_lib.evaluation import paired_difference
from course_lib.losses import orpo_loss
from course_lib.plots import (
    advantage_bars,
    change_heatmaps,
    change_trajectories,
    clip_objective,
    kl_estimator_spread,
    live_figure,
    memory_bar,
    odds_vs_probability,
    token_weights,
    variant_curves,
)
from course_lib.prompts import format_prompt
from course_lib.rewards import (
    EXAMPLE_COMPLETIONS,
    FORMAT_COMPONENTS,
    TRELIS_SHAPED_REWARD,
    RewardConfig,
    answer_matches,
    extract_answer,
    reward_breakdown,
)
from course_lib.sampling import sample
from course_lib.train.rejection_sampling import SampledPool, pool_yield, sft_records
from course_lib.variants import VARIANTS, arms_of, curve_frame, history_frame


def render_samples(problem: dict, texts: list[str]) -> str:
    """HTML for one problem and its sampled completions, each marked right or wrong."""
    parts = [
        f"<p><b>Question.</b> {html.escape(problem['question'])}<br>"
        f"<b>Gold answer:</b> {html.escape(str(problem['answer']))}</p>"
    ]
    n_right = 0
    for i, text in enumerate(texts, start=1):
        extracted = extract_answer(text)
        right = answer_matches(extracted, problem["answer"])
        n_right += right
        mark = "&#10004;" if right else "&#10008;"
        colour = "#2e7d32" if right else "#c62828"
        parts.append(
            f"<div style='border-left:4px solid {colour};padding-left:8px;margin:6px 0'>"
            f"<b style='color:{colour}'>{mark} sample {i}</b> "
            f"(extracted: {html.escape(str(extracted))})"
            f"<pre style='white-space:pre-wrap;margin:2px 0'>{html.escape(text)}</pre></div>"
        )
    parts.insert(1, f"<p><b>{n_right} of {len(texts)}</b> samples are correct.</p>")
    return "".join(parts)


def sample_explorer(
    model, tokenizer, problems: list[dict], max_new_tokens: int = 200, system_prompt: str | None = None
):
    """Pick a problem, a temperature and a number of samples; press the button to sample."""
    index = w.IntSlider(0, 0, len(problems) - 1, description="problem")
    temperature = w.FloatSlider(1.0, min=0.0, max=2.0, step=0.1, description="temperature")
    n = w.IntSlider(4, 1, 16, description="samples")
    seed = w.IntText(0, description="seed")
    button = w.Button(description="Sample", button_style="primary")
    out = w.HTML()

    def run(_=None):
        problem = problems[index.value]
        prompt = format_prompt(tokenizer, problem["question"], system_prompt)
        result = sample(
            model,
            tokenizer,
            [prompt],
            n=n.value,
            temperature=temperature.value,
            max_new_tokens=max_new_tokens,
            seed=seed.value,
        )
        out.value = render_samples(problem, result.texts)

    button.on_click(run)
    run()
    return w.VBox([w.HBox([index, temperature]), w.HBox([n, seed, button]), out])


# --------------------------------------------------------------------------- rewards
def reward_view(text: str, answer: str, config: RewardConfig = RewardConfig()) -> str:
    """HTML table of every reward component of one completion under ``config``."""
    row = reward_breakdown(text, answer, config)
    lines = [
        ("extracted answer", html.escape(str(row["extracted"]))),
        ("gold answer", html.escape(str(answer))),
        ("correct", "yes" if row["correct"] else "no"),
    ]
    lines += [
        (f"format: {name}", f"{row[name]:.0f}" + ("" if row["format_paid"] else " (not paid: wrong answer)"))
        for name in FORMAT_COMPONENTS
    ]
    lines += [(f"<b>{term}</b>", f"{row[term]:+.3f}") for term in ("correctness", "format", "length")]
    lines.append(("<b>total reward</b>", f"<b>{row['total']:+.3f}</b>"))
    cells = "".join(f"<tr><td style='padding:2px 12px 2px 0'>{k}</td><td>{v}</td></tr>" for k, v in lines)
    return f"<table>{cells}</table>"


def reward_explorer(examples: dict[str, tuple[str, str]] | None = None):
    """Pick or type a completion and a gold answer; see the extracted answer and every reward term.

    Toggles: Trelis Research's weights (correctness 2, format 4 x 0.5) or the course's (correctness
    only), format credit only for correct answers, and re.DOTALL in the format patterns.
    """
    examples = examples or EXAMPLE_COMPLETIONS
    pick = w.Dropdown(options=list(examples), description="example")
    text = w.Textarea(layout=w.Layout(width="95%", height="120px"), description="completion")
    gold = w.Text(description="gold answer")
    weights = w.ToggleButtons(
        options=[("Trelis-shaped (2 + 4 x 0.5)", TRELIS_SHAPED_REWARD), ("correctness only", RewardConfig())],
        description="weights",
    )
    needs_correct = w.Checkbox(True, description="format credit only for correct answers")
    dotall = w.Checkbox(True, description="re.DOTALL in the format patterns")
    out = w.HTML()

    def load(_=None):
        text.value, gold.value = examples[pick.value]

    def show(_=None):
        config = RewardConfig(
            weights.value.correctness_weight,
            weights.value.format_weight,
            format_needs_correct=needs_correct.value,
            dotall=dotall.value,
        )
        out.value = reward_view(text.value, gold.value, config)

    pick.observe(load, "value")
    for control in (text, gold, weights, needs_correct, dotall):
        control.observe(show, "value")
    load()
    show()
    return w.VBox([pick, text, gold, weights, w.HBox([needs_correct, dotall]), out])


# --------------------------------------------------------------------------- advantages
#: The other group in the advantage explorer's batch (it matters only for batch scaling), by G.
_REST_OF_BATCH = {
    "none": lambda g: [],
    "an all-wrong group": lambda g: [0.0] * g,
    "an all-right group": lambda g: [1.0] * g,
    "a half-right group": lambda g: [1.0, 0.0] * (g // 2) + [1.0] * (g % 2),
}
REST_OF_BATCH = tuple(_REST_OF_BATCH)


def rest_of_batch(kind: str, group_size: int) -> list[float]:
    """The rewards of the other group in the batch, ``kind`` one of ``REST_OF_BATCH``."""
    if kind not in _REST_OF_BATCH:
        raise ValueError(f"unknown rest of batch {kind!r}; choose from {list(REST_OF_BATCH)}")
    return _REST_OF_BATCH[kind](group_size)


def advantage_view(
    rewards: Sequence[float], scale: str = "group", unbiased: bool = True, eps: float = 1e-4, rest: str = "none"
) -> go.Figure:
    """The advantage explorer's figure for one group of ``rewards`` (G = its length).

    ``rest`` adds a second group to the batch (see :func:`rest_of_batch`); with
    ``scale="batch"`` it changes the std that the first group is divided by.
    """
    group_size = len(rewards)
    batch = list(rewards) + rest_of_batch(rest, group_size)
    adv, zero = group_advantages(batch, group_size, scale=scale, eps=eps, unbiased=unbiased)
    title = f"G = {group_size}, scale = {scale}, {'unbiased' if unbiased else 'population'} std, eps = {eps:g}"
    if zero[0]:
        title += " | all rewards equal: zero advantage, no gradient"
    return advantage_bars(batch, adv, group_size, title=title)


def advantage_explorer(max_group_size: int = 16):
    """Sliders for a group's rewards and for G; toggles for scaling, std and eps; live bars."""
    start = [1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0]
    sliders = [
        w.FloatSlider(
            start[i] if i < len(start) else 0.0,
            min=0.0,
            max=4.0,
            step=0.5,
            description=f"r{i + 1}",
            continuous_update=False,
            layout=w.Layout(width="260px"),
        )
        for i in range(max_group_size)
    ]
    size = w.IntSlider(8, min=2, max=max_group_size, description="G", continuous_update=False)
    scale = w.ToggleButtons(options=["group", "batch", "none"], description="scale")
    unbiased = w.Checkbox(True, description="unbiased std (torch.std)")
    eps = w.FloatLogSlider(1e-4, base=10, min=-6, max=0, description="eps", continuous_update=False)
    rest = w.Dropdown(options=REST_OF_BATCH, description="rest of batch")

    def current() -> go.Figure:
        return advantage_view(
            [s.value for s in sliders[: size.value]], scale.value, unbiased.value, eps.value, rest.value
        )

    figure = live_figure(current())

    def redraw(_=None):
        for i, slider in enumerate(sliders):
            slider.layout.display = "" if i < size.value else "none"
        new = current()
        with figure.batch_update():
            for trace, fresh in zip(figure.data, new.data):
                trace.x, trace.y, trace.marker.color = fresh.x, fresh.y, fresh.marker.color
            figure.layout.shapes = new.layout.shapes
            figure.layout.title = new.layout.title

    for control in (*sliders, size, scale, unbiased, eps, rest):
        control.observe(redraw, "value")
    redraw()
    grid = w.GridBox(sliders, layout=w.Layout(grid_template_columns="repeat(4, 270px)"))
    return w.VBox([w.HBox([size, rest]), scale, w.HBox([unbiased, eps]), grid, figure])


def clip_explorer():
    """Sliders for eps_low and eps_high (clip-higher) over the clipped-surrogate plot."""
    low = w.FloatSlider(0.2, min=0.0, max=0.5, step=0.01, description="ε_low", continuous_update=False)
    high = w.FloatSlider(0.2, min=0.0, max=0.5, step=0.01, description="ε_high", continuous_update=False)
    figure = live_figure(clip_objective(low.value, high.value))

    def redraw(_=None):
        new = clip_objective(low.value, high.value)
        with figure.batch_update():
            for trace, fresh in zip(figure.data, new.data):
                trace.x, trace.y = fresh.x, fresh.y
            figure.layout.title = new.layout.title

    for control in (low, high):
        control.observe(redraw, "value")
    return w.VBox([w.HBox([low, high]), figure])


def kl_explorer():
    """A slider for how far pi_ref is from pi: each estimator's per-token values (k1, k2, k3) against
    the exact KL. k1 is unbiased but often negative; k2 is biased; k3 is unbiased and never negative."""
    shift = w.FloatSlider(0.5, min=0.0, max=3.0, step=0.1, description="shift", continuous_update=False)
    figure = live_figure(kl_estimator_spread(kl_estimator_samples(shift.value), shift.value))

    def redraw(_=None):
        new = kl_estimator_spread(kl_estimator_samples(shift.value), shift.value)
        with figure.batch_update():
            for trace, fresh in zip(figure.data, new.data):
                trace.y = fresh.y
            figure.layout.title = new.layout.title

    shift.observe(redraw, "value")
    return w.VBox([shift, figure])


def yield_view(pool: SampledPool, k: int, dedup: bool, cap: int | None) -> str:
    """What the rejection-sampling filter keeps of ``pool``'s first ``k`` samples per question, as HTML."""
    smaller = pool.first(k)
    records = sft_records(smaller, dedup=dedup, max_per_question=cap)
    y = pool_yield(smaller, records)
    rows = [
        ("samples drawn", y["samples"]),
        ("correct", f"{y['correct']} ({y['correct_share']:.0%})"),
        ("questions solved (the only ones that give rows)", f"{y['solved']} of {y['questions']}"),
        ("distinct correct completions", y["distinct"]),
        ("rows kept for SFT", y["kept"]),
    ]
    body = "".join(f"<tr><td>{html.escape(name)}</td><td><b>{value}</b></td></tr>" for name, value in rows)
    return f"<table>{body}</table>"


def yield_explorer(pool: SampledPool):
    """Sliders for k (samples per question), dedup and the cap per question over a sampled pool:
    how many SFT rows the filter keeps (lesson 07)."""
    k = w.IntSlider(pool.k, min=1, max=pool.k, description="k", continuous_update=False)
    dedup = w.Checkbox(True, description="drop duplicates")
    cap = w.IntSlider(0, min=0, max=pool.k, description="cap (0: none)", continuous_update=False)
    out = w.HTML()

    def show(_=None):
        out.value = yield_view(pool, k.value, dedup.value, cap.value or None)

    for control in (k, dedup, cap):
        control.observe(show, "value")
    show()
    return w.VBox([w.HBox([k, dedup, cap]), out])


def aggregation_explorer(max_completion_length: int = 160):
    """Sliders for the lengths of two completions with the same advantage: the weight of one of
    their tokens under each loss_type, and the total push each completion gets (weight x length)."""
    short = w.IntSlider(10, min=1, max=max_completion_length, description="|o_1|", continuous_update=False)
    long = w.IntSlider(50, min=1, max=max_completion_length, description="|o_2|", continuous_update=False)
    figure = live_figure(token_weights([short.value, long.value], max_completion_length))
    out = w.HTML()

    def redraw(_=None):
        lengths = [short.value, long.value]
        new = token_weights(lengths, max_completion_length)
        with figure.batch_update():
            for trace, fresh in zip(figure.data, new.data):
                trace.x, trace.y = fresh.x, fresh.y
        rows = "".join(
            f"<tr><td>{html.escape(t.name)}</td>"
            + "".join(f"<td>{weight * n:.3f}</td>" for weight, n in zip(t.y, lengths))
            + f"<td><b>{(t.y[1] * lengths[1]) / (t.y[0] * lengths[0]):.2f}</b></td></tr>"
            for t in new.data
        )
        out.value = (
            "<table><tr><th>loss_type</th><th>total push on o_1</th><th>on o_2</th><th>o_2 / o_1</th></tr>"
            f"{rows}</table>"
        )

    for control in (short, long):
        control.observe(redraw, "value")
    redraw()
    return w.VBox([w.HBox([short, long]), figure, out])


def orpo_pair_view(p_chosen: float, p_rejected: float, beta: float = 0.1) -> dict[str, float]:
    """ORPO's odds-ratio term for one pair whose completions have mean per-token probabilities
    ``p_chosen`` and ``p_rejected``, computed by :func:`course_lib.losses.orpo_loss` itself (SFT
    term off), with its gradient with respect to each mean log-probability (descent direction:
    minus it)."""
    if not (0 < p_chosen < 1 and 0 < p_rejected < 1):
        raise ValueError(f"probabilities must lie strictly between 0 and 1 (got {p_chosen}, {p_rejected})")
    chosen = torch.tensor(
        [[float(torch.log(torch.tensor(p_chosen, dtype=torch.float64)))]], dtype=torch.float64, requires_grad=True
    )
    rejected = torch.tensor(
        [[float(torch.log(torch.tensor(p_rejected, dtype=torch.float64)))]], dtype=torch.float64, requires_grad=True
    )
    ones = torch.ones(1, 1, dtype=torch.float64)
    out = orpo_loss(chosen, ones, rejected, ones, beta=beta, nll_mask=torch.zeros(1, 1, dtype=torch.float64))
    out.loss.backward()
    return {
        "odds_chosen": p_chosen / (1 - p_chosen),
        "odds_rejected": p_rejected / (1 - p_rejected),
        "log_odds_ratio": out.metrics["log_odds_chosen"],
        "or_loss": float(out.per_pair_loss.detach()),
        "beta_times_or_loss": float(out.loss.detach()),
        "grad_logp_chosen": float(chosen.grad),
        "grad_logp_rejected": float(rejected.grad),
    }


def odds_explorer():
    """Sliders for p_chosen, p_rejected and beta: the odds-against-probabilities plot and the
    ORPO term of that one pair, with the push it gives each completion."""
    p_w = w.FloatSlider(0.6, min=0.01, max=0.99, step=0.01, description="p_chosen", continuous_update=False)
    p_l = w.FloatSlider(0.5, min=0.01, max=0.99, step=0.01, description="p_rejected", continuous_update=False)
    beta = w.FloatSlider(0.1, min=0.0, max=1.0, step=0.05, description="β (λ)", continuous_update=False)
    figure = live_figure(odds_vs_probability(p_l.value))
    readout = w.HTML()

    def redraw(_=None):
        new = odds_vs_probability(p_l.value)
        with figure.batch_update():
            for trace, fresh in zip(figure.data, new.data):
                trace.x, trace.y = fresh.x, fresh.y
            figure.layout.shapes, figure.layout.annotations = new.layout.shapes, new.layout.annotations
        v = orpo_pair_view(p_w.value, p_l.value, beta.value)
        readout.value = (
            f"odds {v['odds_chosen']:.2f} vs {v['odds_rejected']:.2f} · log-odds ratio "
            f"{v['log_odds_ratio']:+.3f} · L_OR {v['or_loss']:.3f} · β·L_OR {v['beta_times_or_loss']:.4f} · "
            f"descent raises log p_chosen by {-v['grad_logp_chosen']:.4f}·lr and lowers log p_rejected "
            f"by {v['grad_logp_rejected']:.4f}·lr"
        )

    for control in (p_w, p_l, beta):
        control.observe(redraw, "value")
    redraw()
    return w.VBox([w.HBox([p_w, p_l, beta]), readout, figure])


def paired_comparison(report):
    """Pick two arms of a study report (:class:`course_lib.report.StudyReport`) and a metric: the
    problem-by-problem table (:func:`course_lib.analysis.paired_table`) and the paired change."""
    arms = [(r.label, arm) for arm, r in report.arms.items()]
    metrics = report.metric_names
    a = w.Dropdown(options=arms, value=arms[-1][1], description="arm")
    b = w.Dropdown(options=arms, value=arms[0][1], description="against")
    metric = w.Dropdown(options=metrics, value=metrics[2] if len(metrics) > 2 else metrics[0], description="metric")
    out = w.HTML()

    def redraw(_=None):
        per = {arm: report.arms[arm].per_problem[metric.value] for arm in (a.value, b.value)}
        change = paired_difference(per[a.value], per[b.value])
        table = paired_table(report, a.value, b.value, metric.value)
        out.value = (
            table.to_html() + f"<p>{metric.value}: {change} points (paired 95% interval) "
            f"over {len(per[a.value])} problems</p>"
        )

    for control in (a, b, metric):
        control.observe(redraw, "value")
    redraw()
    return w.VBox([w.HBox([a, b, metric]), out])


def memory_planner():
    """Controls for :func:`course_lib.memory.estimate`: model, precision, LoRA rank (0: full
    fine-tuning), ZeRO stage, offloading, GPUs, batch, sequence length, GRPO completions and
    checkpointing; the table of parts and a stacked bar redraw on every change."""
    model = w.Dropdown(options=list(memory.MODELS), value="Qwen2.5-1.5B", description="model")
    precision = w.Dropdown(options=["bf16", "fp32"], description="precision")
    rank = w.Dropdown(options=[0, 8, 16, 32, 64], value=16, description="LoRA rank")
    zero = w.Dropdown(options=[0, 1, 2, 3], value=0, description="ZeRO stage")
    gpus = w.IntSlider(1, min=1, max=16, description="GPUs")
    batch = w.IntSlider(1, min=1, max=32, description="micro-batch")
    seq = w.Dropdown(options=[256, 512, 1024, 2048, 4096], value=1024, description="seq length")
    completions = w.IntSlider(0, min=0, max=64, description="GRPO P×G")
    checkpointing = w.Checkbox(True, description="gradient checkpointing")
    offload_opt = w.Checkbox(False, description="offload optimizer")
    offload_par = w.Checkbox(False, description="offload weights")
    reference = w.Checkbox(False, description="reference model")
    readout = w.HTML()
    figure = live_figure()

    def redraw(_=None):
        try:
            setup = memory.TrainingSetup(
                precision=precision.value,
                lora_rank=rank.value or None,
                zero_stage=zero.value,
                offload_optimizer=offload_opt.value,
                offload_params=offload_par.value,
                n_gpus=gpus.value,
                micro_batch=batch.value,
                seq_len=seq.value,
                gradient_checkpointing=checkpointing.value,
                grpo_completions=completions.value,
                reference_model=reference.value,
            )
        except ValueError as e:
            readout.value = f"<b>not a valid setup:</b> {html.escape(str(e))}"
            return
        table = memory.estimate(memory.MODELS[model.value], setup)
        readout.value = table.round(3).T.to_html()
        fresh = memory_bar(table, title=f"{model.value}: {float(table.loc['total', 'GB']):.1f} GB per GPU")
        with figure.batch_update():
            figure.data = []
            figure.add_traces(fresh.data)
            figure.layout = fresh.layout

    controls = (
        model,
        precision,
        rank,
        zero,
        gpus,
        batch,
        seq,
        completions,
        checkpointing,
        offload_opt,
        offload_par,
        reference,
    )
    for control in controls:
        control.observe(redraw, "value")
    redraw()
    return w.VBox([w.HBox(controls[:6]), w.HBox(controls[6:]), readout, figure])


def weight_change_view(records: Sequence, module: str, layer: int | None, share: float):
    """The two figures of :func:`weight_change_explorer`: each run's (module x layer) heatmap at the
    weight-change record nearest to ``share`` of its training (0 < share <= 1; runs take different
    numbers of steps, so a checkpoint is a share of each run's own training), and the chosen module's
    relative change over training. ``records``: study arms with ``label`` and ``change_table()``
    (:class:`course_lib.scalpel.ScalpelArm`)."""
    grids, lines = {}, {}
    for record in records:
        table = record.change_table()
        steps = sorted(int(s) for s in table["step"].unique())
        step = min(steps, key=lambda s: abs(s / steps[-1] - share))
        grids[f"{record.label} (step {step} of {steps[-1]})"] = weight_changes.layer_grid(table[table["step"] == step])
        lines[record.label] = weight_changes.trajectory(table, module, layer)
    where = "all layers" if layer is None else f"layer {layer}"
    return change_heatmaps(grids), change_trajectories(lines, f"{module}, {where}: relative change over training")


def weight_change_explorer(records: Sequence):
    """Pick a module type, a layer and a share of training done: the heatmaps of every run at that
    point of its own training and the chosen module's relative change over training, one line per run."""
    records = [r for r in records if r.changes]
    layers = sorted(int(x) for x in records[0].change_table()["layer"].dropna().unique())
    module = w.Dropdown(options=list(weight_changes.MODULE_TYPES), value="q", description="module")
    layer = w.Dropdown(options=[("all layers", None), *((f"layer {i}", i) for i in layers)], description="layer")
    share = w.SelectionSlider(
        options=[("25 %", 0.25), ("50 %", 0.5), ("75 %", 0.75), ("100 %", 1.0)],
        value=1.0,
        description="training done",
        continuous_update=False,
    )
    heatmaps, lines = (live_figure(f) for f in weight_change_view(records, "q", None, 1.0))

    def redraw(_=None):
        per_layer = module.value in weight_changes.LAYER_TYPES
        layer.disabled = not per_layer
        fresh = weight_change_view(records, module.value, layer.value if per_layer else None, share.value)
        for figure, new in zip((heatmaps, lines), fresh):
            with figure.batch_update():
                figure.data = []
                figure.add_traces(new.data)
                figure.layout = new.layout

    for control in (module, layer, share):
        control.observe(redraw, "value")
    return w.VBox([w.HBox([module, layer, share]), heatmaps, lines])


#: What the variants explorer can draw: (label, frame, x column, y column); "checkpoints" is the
#: held-out evaluation (:func:`course_lib.variants.curve_frame`), "steps" the run's own log.
VARIANT_VIEWS = {
    "held-out accuracy vs completions": ("checkpoints", "completions", "accuracy (%)"),
    "held-out accuracy vs training seconds": ("checkpoints", "train seconds", "accuracy (%)"),
    "step-by-step share vs completions": ("checkpoints", "completions", "step by step (%)"),
    "completion length vs step": ("steps", "step", "completion_length"),
    "entropy vs step": ("steps", "step", "entropy"),
    "flat groups vs step": ("steps", "step", "frac_zero_std"),
    "training reward vs step": ("steps", "step", "reward"),
}


def variants_view(runs: dict, family: str, view: str) -> go.Figure:
    """One family of a variants study (its arms and the arms they are compared to) in one view."""
    arms = [a for a in arms_of(runs) if VARIANTS[a].family == family]
    shown = list(dict.fromkeys([VARIANTS[a].compare_to for a in arms] + arms))  # the reference arm first
    kind, x, y = VARIANT_VIEWS[view]
    frame = curve_frame(runs) if kind == "checkpoints" else history_frame(runs)
    labels = {a: VARIANTS[a].label for a in shown}
    return variant_curves(frame, shown, x, y, labels, title=f"{family}: {view}")


def variants_explorer(runs: dict):
    """Pick a family of variants (reward scaling, loss aggregation, ...) and a view: held-out accuracy
    against completions or seconds, or a training metric against the step, each arm beside the arm it
    changes one thing of (seeds averaged, each seed faint)."""
    families = list(dict.fromkeys(VARIANTS[a].family for a in arms_of(runs) if VARIANTS[a].family != "baseline"))
    family = w.Dropdown(options=families, value=families[0], description="variant")
    view = w.Dropdown(options=list(VARIANT_VIEWS), value=next(iter(VARIANT_VIEWS)), description="show",
                      layout=w.Layout(width="420px"))  # fmt: skip
    figure = live_figure(variants_view(runs, family.value, view.value))

    def redraw(_=None):
        fresh = variants_view(runs, family.value, view.value)
        with figure.batch_update():
            figure.data = []
            figure.add_traces(fresh.data)
            figure.layout = fresh.layout

    for control in (family, view):
        control.observe(redraw, "value")
    return w.VBox([w.HBox([family, view]), figure])
