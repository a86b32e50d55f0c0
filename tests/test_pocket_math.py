import operator
import re

import pytest

from course_lib.data import pocket_math
from course_lib.data.gsm8k import solution_steps
from course_lib.rewards import extract_answer

OPS = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.floordiv}
CALC = re.compile(r"<<(\d+)([+\-*/])(\d+)=(\d+)>>(\d+)")


def check_arithmetic(problem: dict) -> None:
    calls = CALC.findall(problem["solution"])
    assert len(calls) == problem["n_steps"] == len(solution_steps(problem["solution"]))
    for a, op, b, c, shown in calls:
        a, b, c = int(a), int(b), int(c)
        if op == "/":
            assert a % b == 0, f"inexact division {a}/{b}"
        assert OPS[op](a, b) == c == int(shown)
        assert c > 0
    assert problem["solution"].endswith(f"#### {problem['answer']}")
    assert extract_answer(problem["solution"]) == problem["answer"]


def test_solutions_are_correct_and_in_gsm8k_format():
    for p in pocket_math.generate(2000, "train", seed=3, max_steps=6):
        check_arithmetic(p)


def test_same_seed_same_problems_other_seed_other_problems():
    a = pocket_math.generate(50, "train", seed=1)
    assert a == pocket_math.generate(50, "train", seed=1)
    assert a != pocket_math.generate(50, "train", seed=2)


def test_train_and_test_are_disjoint():
    train = {p["question"] for p in pocket_math.generate(5000, "train", seed=0)}
    test = pocket_math.generate(1000, "test", seed=0)
    assert not train & {p["question"] for p in test}
    assert all(pocket_math.split_of(p["question"]) == "test" for p in test)
    assert all(pocket_math.split_of(q) == "train" for q in train)


@pytest.mark.parametrize("lo,hi", [(1, 1), (2, 3), (5, 5)])
def test_difficulty_knob_controls_steps(lo, hi):
    problems = pocket_math.generate(300, "test", seed=0, min_steps=lo, max_steps=hi)
    steps = {p["n_steps"] for p in problems}
    assert steps == set(range(lo, hi + 1))


def test_templates_names_and_objects_vary():
    problems = pocket_math.generate(500, "train", seed=0)
    assert len({p["question"].split()[0] for p in problems}) >= 15  # names
    assert len({p["question"].split("?")[0].split()[-4] for p in problems}) >= 3
    first_lines = {re.sub(r"\d+", "N", p["solution"].split("\n")[0]) for p in problems}
    assert len(first_lines) >= 30  # solution templates


def test_numbers_stay_in_range():
    for p in pocket_math.generate(1000, "train", seed=5, max_steps=5, max_value=200):
        numbers = [int(x) for x in re.findall(r"\d+", p["solution"])]
        assert max(numbers) <= 200


def test_bad_arguments():
    with pytest.raises(ValueError, match="split"):
        next(pocket_math.iter_problems("dev"))
    with pytest.raises(ValueError, match="min_steps"):
        next(pocket_math.iter_problems("train", min_steps=3, max_steps=2))


def test_pocket_test_set_is_fixed():
    assert pocket_math.pocket_test_set(20) == pocket_math.pocket_test_set(20)
    assert len({p["question"] for p in pocket_math.pocket_test_set(200)}) == 200
