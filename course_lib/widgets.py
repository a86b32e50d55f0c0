"""ipywidgets for the lessons. The logic lives in plain functions that tests call
without a browser; the widgets only wire sliders and buttons to them."""

from __future__ import annotations

import html

from course_lib.prompts import format_prompt
from course_lib.rewards import extract_answer, is_correct


def render_samples(problem: dict, texts: list[str]) -> str:
    """HTML for one problem and its sampled completions, each marked right or wrong."""
    parts = [f"<p><b>Question.</b> {html.escape(problem['question'])}<br>"
             f"<b>Gold answer:</b> {html.escape(str(problem['answer']))}</p>"]
    n_right = 0
    for i, text in enumerate(texts, start=1):
        right = is_correct(text, problem["answer"])
        n_right += right
        mark = "&#10004;" if right else "&#10008;"
        colour = "#2e7d32" if right else "#c62828"
        parts.append(f"<div style='border-left:4px solid {colour};padding-left:8px;margin:6px 0'>"
                     f"<b style='color:{colour}'>{mark} sample {i}</b> "
                     f"(extracted: {html.escape(str(extract_answer(text)))})"
                     f"<pre style='white-space:pre-wrap;margin:2px 0'>{html.escape(text)}</pre></div>")
    parts.insert(1, f"<p><b>{n_right} of {len(texts)}</b> samples are correct.</p>")
    return "".join(parts)


def sample_explorer(model, tokenizer, problems: list[dict], max_new_tokens: int = 200,
                    system_prompt: str | None = None):
    """Pick a problem, a temperature and a number of samples; press the button to sample."""
    import ipywidgets as w

    from course_lib.sampling import sample

    index = w.IntSlider(0, 0, len(problems) - 1, description="problem")
    temperature = w.FloatSlider(1.0, min=0.0, max=2.0, step=0.1, description="temperature")
    n = w.IntSlider(4, 1, 16, description="samples")
    seed = w.IntText(0, description="seed")
    button = w.Button(description="Sample", button_style="primary")
    out = w.HTML()

    def run(_=None):
        problem = problems[index.value]
        prompt = format_prompt(tokenizer, problem["question"], system_prompt)
        result = sample(model, tokenizer, [prompt], n=n.value, temperature=temperature.value,
                        max_new_tokens=max_new_tokens, seed=seed.value)
        out.value = render_samples(problem, result.texts)

    button.on_click(run)
    run()
    return w.VBox([w.HBox([index, temperature]), w.HBox([n, seed, button]), out])
