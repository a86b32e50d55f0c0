"""course_lib.behaviours: naming a completion's behaviour, shares, and the selection/skill split."""

import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from course_lib.behaviours import BEHAVIOURS, behaviour, behaviour_table, result_table, selection_and_skill, shares
from course_lib.data import pocket_math
from course_lib.evaluation import EvalResult, score_problems, summarize

STEP = "She buys 4 more, so she has 23+4 = <<23+4=27>>27 apples.\n#### 27"


def test_the_two_ways_the_corpus_writes_a_solution_are_told_apart():
    problem = pocket_math.generate(1, "train", seed=3, min_steps=3, max_steps=3)[0]
    assert behaviour(pocket_math.written_as(problem, "step_by_step")) == "step_by_step"
    assert behaviour(pocket_math.written_as(problem, "answer_only")) == "answer_only"
    assert behaviour(STEP) == "step_by_step" and behaviour("#### 27") == "answer_only"
    assert behaviour("  #### 27  ") == "answer_only"


def test_what_is_neither_is_other():
    assert behaviour("She has 27 apples.") == "other"  # no marker
    assert behaviour("I think so.\n#### 27") == "other"  # words but no calculation before the marker
    assert behaviour([{"role": "assistant", "content": STEP}]) == "step_by_step"  # chat messages


@given(st.one_of(st.text(max_size=300), st.none(), st.integers(), st.lists(st.text(max_size=20), max_size=3)))
def test_any_output_gets_a_name_and_nothing_raises(text):
    assert behaviour(text) in BEHAVIOURS


def test_table_shares_and_accuracy_per_behaviour():
    texts = ["#### 1", "#### 2", STEP, STEP, "nothing"]
    table = behaviour_table(texts, [False, True, True, True, False])
    assert table.loc["answer_only", "share"] == pytest.approx(0.4)
    assert table.loc["answer_only", "accuracy"] == pytest.approx(0.5)
    assert table.loc["step_by_step", "accuracy"] == 1.0 and table.loc["other", "n"] == 1
    assert table["share"].sum() == pytest.approx(1.0)
    assert shares(texts) == {"answer_only": 0.4, "step_by_step": 0.4, "other": 0.2}
    assert pd.isna(behaviour_table(["#### 1"], [True]).loc["step_by_step", "accuracy"])  # absent: no accuracy
    with pytest.raises(ValueError, match="verdicts"):
        behaviour_table(texts, [True])


def result_of(problems, completions) -> EvalResult:
    per_problem = score_problems(problems, completions, k=len(completions[0]))
    return EvalResult(summarize(per_problem, len(completions[0])), per_problem, completions, len(completions[0]))


def test_selection_and_skill_add_up_to_the_change_and_tell_the_two_apart():
    problems = [{"question": f"q{i}", "answer": "27"} for i in range(4)]
    right, wrong = STEP, "#### 5"
    before = result_of(problems, [[right, wrong, wrong, wrong]] * 4)  # 25 % step by step, all right
    chose = result_of(problems, [[right, right, right, wrong]] * 4)  # more step by step, still all right
    split = selection_and_skill(before, chose)
    assert split["total"] == pytest.approx(50.0) and split["skill"] == pytest.approx(0.0)
    assert split["selection"] == pytest.approx(50.0)
    learned = result_of(problems, [[right, wrong, wrong, "#### 27"]] * 4)  # same shares, the short one now right
    split = selection_and_skill(before, learned)
    assert split["selection"] == pytest.approx(0.0) and split["skill"] == pytest.approx(25.0)
    assert result_table(learned).loc["answer_only", "accuracy"] == pytest.approx(1 / 3)
    abandoned = result_of(problems, [[right] * 7 + ["#### 27"]] * 4)  # the short one now rare, and right
    split = selection_and_skill(before, abandoned)
    assert split["total"] == pytest.approx(75.0) and split["skill"] == pytest.approx(12.5)  # weighed by its new share


def test_the_length_table_counts_long_completions_per_behaviour():
    from course_lib.behaviours import length_table

    texts = ["#### 5", "#### 7", "3+4 = 7\n#### 7", "2*3 = 6\n6+1 = 7\n#### 7"]
    table = length_table(texts, [3, 3, 120, 150], threshold=112)
    assert table.loc["answer_only", "share"] == 0.5 and table.loc["answer_only", "share over 112 tokens"] == 0
    assert table.loc["step_by_step", "mean tokens"] == 135 and table.loc["step_by_step", "share over 112 tokens"] == 1
    assert table.loc["other", "share"] == 0
