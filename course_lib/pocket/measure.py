"""The shipped checkpoints' figures, as ``data/README.md`` reports them.

    python -m course_lib.pocket.measure            # base, teacher and answer-only control (about 3 min)
    python -m course_lib.pocket.measure --problems 50 --k 4     # a quick look

For each checkpoint: on the pocket test set, ``k`` samples per problem at temperature 1 (seed
0), per-sample accuracy, pass@k, maj@k and consistency@k with 95 % bootstrap intervals over
problems; the share of each behaviour and the accuracy inside it; greedy decoding; the held-out
facts and sorting probes. One table, in Markdown, with a column per checkpoint; then the base per
number of solution steps.
"""

from __future__ import annotations

import argparse

import pandas as pd

from course_lib.behaviours import by_steps, result_table
from course_lib.config import get_profile, setup_torch
from course_lib.data import facts, pocket_math, sorting
from course_lib.evaluation import evaluate, facts_probe, sorting_probe
from course_lib.models import POCKET_ANSWER_ONLY_DIR, POCKET_MODEL_DIR, POCKET_TEACHER_DIR, load_pocket_model

CHECKPOINTS = {"base": POCKET_MODEL_DIR, "teacher": POCKET_TEACHER_DIR, "answer-only control": POCKET_ANSWER_ONLY_DIR}


def checkpoint_figures(model, tokenizer, problems: list[dict], k: int = 8, seed: int = 0) -> dict[str, str]:
    """One column of the table: every figure of one checkpoint, formatted."""
    sampled = evaluate(model, tokenizer, problems, k=k, temperature=1.0, batch_size=256, seed=seed, progress=False)
    greedy = evaluate(model, tokenizer, problems, k=1, temperature=0.0, batch_size=256, progress=False)
    behaviours, greedy_behaviours = result_table(sampled), result_table(greedy)
    column = {
        name: _estimate(sampled.estimate(name))
        for name in ("per_sample_accuracy", f"pass@{k}", f"maj@{k}", f"consistency@{k}")
    }
    for name in ("step_by_step", "answer_only"):
        row = behaviours.loc[name]
        inside = "—" if row["n"] == 0 else f"{100 * row['accuracy']:.1f} %"
        column[f"{name}: share / accuracy inside (samples)"] = (
            f"{100 * row['share']:.1f} % / {inside} ({int(row['n'])})"
        )
    greedy_share = greedy_behaviours.loc["step_by_step", "share"]
    column["greedy: accuracy / share step by step"] = (
        f"{100 * greedy.value('per_sample_accuracy'):.1f} % / {100 * greedy_share:.0f} %"
    )
    facts_result = facts_probe(model, tokenizer, facts.probe_set(facts.build_knowledge_base()))
    column[f"facts probe ({facts_result['n_items']} held-out phrasings)"] = f"{100 * facts_result['accuracy']:.0f} %"
    column["sorting probe (100 held-out lists, greedy)"] = (
        f"{100 * sorting_probe(model, tokenizer, sorting.probe_set())['accuracy']:.0f} %"
    )
    return column


def world_table(problems: list[dict], k: int = 8, seed: int = 0) -> pd.DataFrame:
    """:func:`checkpoint_figures` of every shipped checkpoint, a column each."""
    columns = {}
    for name, folder in CHECKPOINTS.items():
        model, tokenizer = load_pocket_model(folder)
        columns[name] = checkpoint_figures(model, tokenizer, problems, k, seed)
    return pd.DataFrame(columns)


def markdown(table: pd.DataFrame) -> str:
    """The table as Markdown, as data/README.md holds it."""
    lines = ["| | " + " | ".join(table.columns) + " |", "|---" * (len(table.columns) + 1) + "|"]
    lines += [f"| {name} | " + " | ".join(str(v) for v in row) + " |" for name, row in table.iterrows()]
    return "\n".join(lines)


def base_by_steps(problems: list[dict], k: int = 8, seed: int = 0) -> pd.DataFrame:
    """The base per number of solution steps: accuracy, step-by-step share, accuracy inside each behaviour."""
    model, tokenizer = load_pocket_model(POCKET_MODEL_DIR)
    sampled = evaluate(model, tokenizer, problems, k=k, temperature=1.0, batch_size=256, seed=seed, progress=False)
    return (100 * by_steps(sampled, [p["n_steps"] for p in problems])).round(1)


def _estimate(estimate) -> str:
    value, interval = str(estimate).split(" ", 1)  # "39.9 [34.9, 45.1]"
    return f"{value} % {interval}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m course_lib.pocket.measure", description=__doc__.split("\n\n")[0])
    parser.add_argument("--problems", type=int, default=200, help="pocket test problems (default: all 200)")
    parser.add_argument("--k", type=int, default=8, help="samples per problem (default 8)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    setup_torch(get_profile("pocket"))
    problems = pocket_math.pocket_test_set(args.problems)
    print(markdown(world_table(problems, args.k, args.seed)))
    print("\nThe base by number of solution steps (%):\n")
    print(markdown(base_by_steps(problems, args.k, args.seed)))


if __name__ == "__main__":
    main()
