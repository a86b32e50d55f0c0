"""The shipped pocket world does what the course says of it: a base that holds a reliable behaviour
as a minority, a teacher that solves, a control without the behaviour, and GRPO that chooses.

The numbers are from seeded samples, so they are the same on every run on the same machine; the
tolerances say what the lessons need (pocket test set, temperature 1), not the exact figures.
"""

import pytest

from course_lib.behaviours import result_table
from course_lib.config import get_profile
from course_lib.data import pocket_math, train_problems
from course_lib.evaluation import HeldOutProbe, evaluate
from course_lib.models import POCKET_ANSWER_ONLY_DIR, POCKET_TEACHER_DIR, load_pocket_model, with_lora
from course_lib.train.grpo import GRPOLoop
from course_lib.train.recipes import grpo_recipe

PROBLEMS = pocket_math.pocket_test_set(64)


def measured(model, tokenizer, k: int = 8):
    result = evaluate(
        model, tokenizer, PROBLEMS, k=k, temperature=1.0, max_new_tokens=200, batch_size=256, progress=False
    )
    return result, result_table(result)


def test_the_base_holds_the_reliable_behaviour_as_a_minority(pocket):
    result, table = measured(*pocket)
    sbs, short = table.loc["step_by_step"], table.loc["answer_only"]
    assert 0.20 <= sbs["share"] <= 0.45, "the reliable behaviour is a minority, but not a rare one"
    assert sbs["accuracy"] >= 0.85, "step by step is reliable"
    assert short["share"] >= 0.5 and short["accuracy"] <= 0.10, "the answer alone is the habit, and unreliable"
    assert 0.20 <= result.value("per_sample_accuracy") <= 0.45
    assert result.value("pass@8") >= 0.80, "a right answer is usually among 8 samples"


def test_the_teacher_solves_and_writes_step_by_step():
    result, table = measured(*load_pocket_model(POCKET_TEACHER_DIR), k=4)
    assert result.value("per_sample_accuracy") >= 0.90
    assert table.loc["step_by_step", "share"] >= 0.98


def test_the_control_base_never_writes_step_by_step():
    result, table = measured(*load_pocket_model(POCKET_ANSWER_ONLY_DIR), k=4)
    assert table.loc["step_by_step", "share"] == 0.0
    assert result.value("per_sample_accuracy") <= 0.10


def test_a_short_seeded_grpo_run_raises_the_share_of_the_reliable_behaviour(pocket):
    profile = get_profile("pocket", fast=False)
    settings, lora = grpo_recipe(profile, steps=6)
    model, tokenizer = pocket
    policy = with_lora(model, lora)
    probe = HeldOutProbe(policy, tokenizer, PROBLEMS[:32], k=4)
    before = probe.measure()
    problems = train_problems(profile, settings.steps * settings.prompts_per_step, seed=1)
    history = GRPOLoop(policy, tokenizer, problems, settings).train(progress=False)
    after = probe.measure()
    assert after["heldout_step_by_step"] >= before["heldout_step_by_step"] + 0.15
    assert after["heldout_accuracy"] >= before["heldout_accuracy"] + 0.10
    assert history["share_step_by_step"].iloc[-1] > history["share_step_by_step"].iloc[0]


@pytest.mark.parametrize("skill", ["facts", "sorting"])
def test_the_base_keeps_the_skills_forgetting_is_measured_on(pocket, skill):
    from course_lib.data import facts, sorting
    from course_lib.evaluation import facts_probe, sorting_probe

    model, tokenizer = pocket
    if skill == "facts":
        score = facts_probe(model, tokenizer, facts.probe_set(facts.build_knowledge_base())[:60])
        assert score["accuracy"] >= 0.7 and score["accuracy"] > 3 * score["chance"]
    else:
        assert sorting_probe(model, tokenizer, sorting.probe_set(100))["accuracy"] >= 0.3


def test_data_readmes_figures_come_from_one_command(pocket):
    """``python -m course_lib.pocket.measure`` writes data/README.md's table: its figures are evaluate()'s."""
    import pandas as pd

    from course_lib.pocket.measure import checkpoint_figures, markdown

    model, tokenizer = pocket
    column = checkpoint_figures(model, tokenizer, PROBLEMS[:8], k=2)
    result = evaluate(model, tokenizer, PROBLEMS[:8], k=2, temperature=1.0, batch_size=256, progress=False)
    assert column["per_sample_accuracy"] == f"{result.estimate('per_sample_accuracy')}".replace(" [", " % [", 1)
    share = result_table(result).loc["step_by_step", "share"]
    assert column["step_by_step: share / accuracy inside (samples)"].startswith(f"{100 * share:.1f} %")
    assert column["facts probe (120 held-out phrasings)"] == "100 %"
    text = markdown(pd.DataFrame({"base": column}))
    assert text.splitlines()[0] == "| | base |" and len(text.splitlines()) == len(column) + 2
