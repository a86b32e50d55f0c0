import builtins
import json
import re
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from course_lib import rewards
from course_lib.rewards import (
    TRELIS_SHAPED_REWARD,
    RewardConfig,
    canonical,
    completion_text,
    correctness_reward,
    extract_answer,
    format_components,
    format_reward,
    gold_answer,
    is_correct,
    make_correctness_reward,
    make_length_reward,
    make_reward,
    normalize_number,
    overlong_penalty,
    reward_breakdown,
    trl_reward_funcs,
)

GOOD = "Tom has 3+4=<<3+4=7>>7 apples.\nHe doubles them: 7*2=<<7*2=14>>14.\n#### 14"


# ----------------------------------------------------------------- extraction
@pytest.mark.parametrize(
    "text,expected",
    [
        ("so 3+4 = <<3+4=7>>7\n#### 7", "7"),
        ("#### 1,200", "1200"),
        ("#### $18.00", "18"),
        ("#### $1,000.00.", "1000"),  # trailing punctuation
        ("#### 18 dollars", "18"),  # units
        ("#### -5", "-5"),
        ("#### −5", "-5"),  # Unicode minus
        ("#### +5", "5"),
        ("#### .5", "0.5"),
        ("#### 3/4", "0.75"),  # fractions, exact
        ("#### 1/3", "1/3"),
        ("#### 3/0", None),
        ("#### ３", "3"),  # full-width digit
        ("#### ٣٤", "34"),  # Arabic-Indic digits
        ("7 apples\n#### x", None),  # a marked answer is not replaced by a guess
        ("####\n\n 5", "5"),
        ("#### 7\nsome rambling 99", "7"),  # the marker wins over later numbers
        ("#### 5\n#### 6", "6"),  # the last marker wins
        ("The answer is $\\boxed{\\frac{3}{4}}$.", "0.75"),
        ("so \\boxed{-\\dfrac{1}{2}}", "-0.5"),
        ("\\boxed{1{,}000}", "1000"),
        ("\\boxed{5 \\text{ apples}}", "5"),
        ("\\boxed{\\$18.00}", "18"),
        ("\\boxed{25\\%}", "25"),
        ("\\boxed{x+1} after 5", None),  # boxed but not a number
        ("\\boxed{9^{9^{9^{9}}}}", None),  # never handed to sympy
        ("The answer is 42.", "42"),
        ("The answer is: **12** apples", "12"),
        ("Answer: -3", "-3"),
        ("first 12 then 30 apples", "30"),  # fallback: the last number
        ("5-3=2", "2"),
        ("no numbers here", None),
        ("#### " + "9" * 60, None),  # longer than MAX_DIGITS
        ("", None),
        (None, None),
    ],
)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


# A table of completions a model might write, each with the verdict it deserves.
TRICKY = [
    ("#### 18", "18", True),
    ("#### 18.00", "18", True),
    ("#### $18", "18", True),
    ("The total is 18 dollars.\n#### 18 dollars.", "18", True),
    ("#### 1,000", "1000", True),
    ("#### 1000", "1,000", True),  # gold with a comma
    ("#### 0.75", "3/4", True),
    ("#### 0.333", "1/3", False),  # exact, not approximate
    ("#### 17", "18", False),
    ("#### 18\n#### 17", "18", False),  # hedging: the last answer counts
    ("I think 18.\n#### 17", "18", False),
    ("18 is wrong, so the answer is 20", "20", True),
    ("The answer is \\boxed{18}.", "18", True),
    ("$\\boxed{\\frac{36}{2}}$", "18", True),
    ("#### 18", "Natalia sold 48/2 = <<48/2=24>>24 clips.\n#### 18", True),  # gold as a solution
    ("", "18", False),
    ("#### -18", "18", False),
    ("#### 180", "18", False),
]


@pytest.mark.parametrize("text,gold,verdict", TRICKY)
def test_tricky_completions(text, gold, verdict):
    assert is_correct(text, gold) is verdict


def test_gold_answer_accepts_numbers_strings_and_solutions():
    assert gold_answer(72) == gold_answer("72") == gold_answer("#### 72") == "72"
    assert gold_answer("1,000") == "1000"
    assert gold_answer(None) is None


def test_every_gsm8k_solution_gives_its_gold_answer(gsm8k_dir):
    """Read the raw JSONL (not our loader) and check the ``####`` answer of every row."""
    rows = 0
    for split in ("train", "test"):
        for line in (gsm8k_dir / f"{split}.jsonl").read_text().splitlines():
            solution = json.loads(line)["answer"]
            gold = solution.rsplit("####", 1)[1].strip().replace(",", "")
            assert extract_answer(solution) == gold, solution
            rows += 1
    assert rows == 7473 + 1319


def test_model_text_never_reaches_eval(monkeypatch):
    """math-verify's LaTeX lexer hands sympy only number tokens; record every eval/exec to prove it."""
    extract_answer("\\boxed{\\frac{1}{2}}")  # import math-verify and sympy first
    calls = []
    real_eval, real_exec = builtins.eval, builtins.exec

    def recording(real, kind):
        def call(code, *args, **kwargs):
            calls.append((kind, code))
            return real(code, *args, **kwargs)

        return call

    monkeypatch.setattr(builtins, "eval", recording(real_eval, "eval"))
    monkeypatch.setattr(builtins, "exec", recording(real_exec, "exec"))
    assert extract_answer("\\boxed{\\frac{3}{8}}") == "0.375"
    for payload in ("__import__('os').system('echo hi')", "\\text{__import__}(1)", "exit()"):
        assert extract_answer(f"\\boxed{{{payload}}}") is None
    monkeypatch.undo()
    assert calls, "the LaTeX path was not exercised"
    for kind, code in calls:
        assert (kind, code) == ("exec", "from sympy import *") or re.fullmatch(
            r"(Integer|Float) \('?[0-9.]+'? \)", code
        ), (kind, code)


def test_normalize_is_exact():
    assert normalize_number("1000000.1") == "1000000.1"
    assert normalize_number("$1,200.50") == "1200.5"
    assert normalize_number("-0.0") == "0"
    assert normalize_number("abc") is None
    assert normalize_number("12 apples") is None  # one number, nothing else
    assert not is_correct("#### 1000000.1", "1000000")


@settings(max_examples=500, deadline=None)
@given(st.fractions(max_denominator=10**6).filter(lambda f: abs(f.numerator) < 10**30))
def test_canonical_round_trips(value):
    text = canonical(value)
    assert Fraction(text) == value
    assert normalize_number(text) == text


# ----------------------------------------------------------------- format
def test_format_components_of_a_good_completion():
    assert format_components(GOOD) == dict.fromkeys(rewards.FORMAT_COMPONENTS, 1.0)


@pytest.mark.parametrize(
    "text,expected",
    [
        ("#### 14", (0, 0, 1, 1)),  # no reasoning
        ("3+4=7 so 14\n#### 14 apples", (0, 1, 1, 0)),  # units after the answer
        ("work\n#### 14\nmore text", (0, 1, 1, 0)),  # text after the answer line
        ("work\n#### 14\n#### 15", (0, 1, 0, 1)),  # two answers
        ("work\nThe answer is 14.", (0, 0, 0, 0)),  # no marker
        ("one line of work\n#### 14", (1, 1, 1, 1)),
        ("## Step 1\n3+4=7\n#### 7", (1, 1, 1, 1)),  # a Markdown heading is reasoning, not a marker
        ("#### 5 #### 6", (0, 0, 0, 1)),  # markers alone are not reasoning
    ],
)
def test_format_components_table(text, expected):
    assert tuple(format_components(text).values()) == expected


def test_without_dotall_multiline_reasoning_earns_no_layout_credit():
    buggy = format_components(GOOD, dotall=False)
    assert buggy["strict_format"] == buggy["soft_format"] == 0.0
    assert format_components("one line of work\n#### 14", dotall=False)["strict_format"] == 1.0


def test_format_credit_needs_a_correct_answer_by_default():
    assert reward_breakdown(GOOD, "15", RewardConfig(format_weight=1.0))["format"] == 0.0
    assert reward_breakdown(GOOD, "14", RewardConfig(format_weight=1.0))["format"] == 2.0


def test_reward_hacking_a_formatted_wrong_answer():
    """Under a reward of Trelis's shape a perfectly formatted wrong answer ties a correct bare one."""
    hack = "a\n#### 13"
    honest = "7 twice is 14, 14 apples"
    assert reward_breakdown(hack, "14", TRELIS_SHAPED_REWARD)["total"] == 2.0
    assert reward_breakdown(honest, "14", TRELIS_SHAPED_REWARD)["total"] == 2.0
    defended = RewardConfig(correctness_weight=2.0, format_weight=1.0)
    assert reward_breakdown(hack, "14", defended)["total"] == 0.0
    assert reward_breakdown(honest, "14", defended)["total"] == 2.0


# ----------------------------------------------------------------- length
def test_overlong_penalty():
    assert overlong_penalty(100, max_length=200, buffer=50) == 0.0
    assert overlong_penalty(175, max_length=200, buffer=50) == -0.5
    assert overlong_penalty(200, max_length=200, buffer=50) == -1.0
    assert overlong_penalty(201, max_length=200, buffer=50) == -1.0


def test_length_reward_counts_tokens_when_given():
    reward = make_length_reward(max_length=10, buffer=5)
    assert reward(["x" * 3, "x" * 7, "x" * 20]) == [0.0, -0.4, -1.0]
    assert reward(["x" * 100], completion_ids=[[1, 2, 3]]) == [0.0]


def test_config_rejects_a_buffer_larger_than_the_limit():
    with pytest.raises(ValueError, match="length_buffer"):
        RewardConfig(max_length=10, length_buffer=20)


# ----------------------------------------------------------------- TRL signature
def test_plain_and_conversational_completions_score_the_same():
    plain = [GOOD, "#### 3"]
    chat = [[{"role": "assistant", "content": text}] for text in plain]
    parts = [[{"role": "assistant", "content": [{"type": "text", "text": text}]}] for text in plain]
    for completions in (plain, chat, parts):
        assert correctness_reward(completions, answer=["14", "14"]) == [1.0, 0.0]
    assert make_correctness_reward(2.0)(plain, answer=["14", "14"]) == [2.0, 0.0]
    assert format_reward(plain, answer=["14", "3"]) == [2.0, 1.0]


def test_trl_reward_funcs_add_up_to_make_reward():
    config = RewardConfig(
        correctness_weight=2.0,
        format_weight=1.0,
        length_weight=0.5,
        format_needs_correct=False,
        max_length=40,
        length_buffer=20,
    )
    completions = [GOOD, "#### 13", "no answer " * 5, "a\n#### 14\n#### 14"]
    answers = ["14"] * 4
    funcs, weights = trl_reward_funcs(config)
    assert [f.__name__ for f in funcs] == ["correctness_reward", "format_reward", "length_reward"]
    separate = [
        sum(w * f(completions, answer=answers)[i] for f, w in zip(funcs, weights)) for i in range(len(completions))
    ]
    assert separate == pytest.approx(make_reward(config)(completions, answer=answers))


def test_trl_reward_funcs_cover_brevity_and_the_random_coin():
    config = RewardConfig(
        correctness_weight=2.0, brevity_weight=1.5, random_weight=0.5, max_length=40, length_buffer=20
    )
    completions = [GOOD, "#### 14", "#### 13", "x" * 35]
    answers = ["14"] * 4
    funcs, weights = trl_reward_funcs(config)
    assert [f.__name__ for f in funcs] == ["correctness_reward", "brevity_reward", "random_reward"]
    separate = [
        sum(w * f(completions, answer=answers)[i] for f, w in zip(funcs, weights)) for i in range(len(completions))
    ]
    assert separate == pytest.approx(make_reward(config)(completions, answer=answers))


def test_brevity_pays_short_answers_and_only_correct_ones_unless_told_otherwise():
    short, long = "#### 14", "a" * 39 + "\n#### 14"
    gated = RewardConfig(correctness_weight=0.0, brevity_weight=1.0, max_length=40, length_buffer=20)
    assert reward_breakdown(short, "14", gated)["brevity"] == 1.0  # within max_length - buffer
    assert reward_breakdown(long, "14", gated)["brevity"] == 0.0  # past max_length: nothing
    assert reward_breakdown("x" * 30, "14", gated, length=30)["brevity"] == 0.0  # wrong: not paid
    assert reward_breakdown("#### 14", "14", gated, length=30)["brevity"] == pytest.approx(0.5)  # half-way down
    ungated = RewardConfig(correctness_weight=0.0, brevity_weight=2.0, format_needs_correct=False)
    assert reward_breakdown("#### 13", "14", ungated)["total"] == 2.0  # paid to a wrong answer


def test_the_random_coin_ignores_the_answer_and_is_fair():
    config = RewardConfig(correctness_weight=0.0, random_weight=1.0, random_seed=3)
    texts = [f"#### {i}" for i in range(2000)]
    paid = [reward_breakdown(t, "7", config)["total"] for t in texts]
    assert set(paid) == {0.0, 1.0} and 0.45 < sum(paid) / len(paid) < 0.55
    assert paid == [reward_breakdown(t, "7", config)["total"] for t in texts]  # same text, same seed, same coin
    assert [reward_breakdown(t, "0", config)["total"] for t in texts] == paid  # the gold answer plays no part
    other_seed = RewardConfig(correctness_weight=0.0, random_weight=1.0, random_seed=4)
    assert [reward_breakdown(t, "7", other_seed)["total"] for t in texts] != paid


def test_a_missing_answer_column_is_a_clear_error():
    with pytest.raises(TypeError, match="'answer' column"):
        correctness_reward(["#### 3"])
    with pytest.raises(ValueError, match="2 completions but 1"):
        correctness_reward(["#### 3", "#### 4"], answer=["3"])


# ----------------------------------------------------------------- never raises
junk_text = st.one_of(
    st.text(),
    st.text(alphabet=st.characters(categories=["Nd", "No", "Pd", "Sm"]), max_size=50),  # Unicode digits
    st.text(alphabet="#$,.-/0123456789 \n\\{}boxed^%", max_size=200),
    st.builds(lambda s, n: s * n, st.text(min_size=1, max_size=20), st.integers(1, 60_000)),  # up to MBs
    st.text(alphabet="0123456789#\n ", max_size=30).map(lambda s: "\\boxed{" + s),
)
junk_completion = st.one_of(
    st.none(),
    st.integers(),
    junk_text,
    junk_text.map(lambda t: [{"role": "assistant", "content": t}]),
    st.lists(
        st.dictionaries(
            st.sampled_from(["role", "content", "text"]), st.one_of(st.none(), junk_text, st.integers()), max_size=3
        ),
        max_size=3,
    ),
)


@settings(max_examples=600, deadline=None)
@given(junk_completion, st.one_of(st.none(), junk_text, st.integers()))
def test_no_reward_function_raises_on_any_completion(completion, gold):
    config = RewardConfig(correctness_weight=2.0, format_weight=1.0, length_weight=1.0, format_needs_correct=False)
    answer = extract_answer(completion_text(completion))
    assert answer is None or normalize_number(answer) == answer
    assert is_correct(completion, gold) in (True, False)
    row = reward_breakdown(completion, gold, config)
    assert -1.0 <= row["total"] <= 4.0
    for reward in (correctness_reward, format_reward, make_length_reward(), make_reward(TRELIS_SHAPED_REWARD)):
        values = reward([completion, None], answer=[gold, gold], completion_ids=[None, [1]])
        assert len(values) == 2 and all(isinstance(v, float) for v in values)


@settings(max_examples=300, deadline=None)
@given(st.integers(-(10**9), 10**9), st.text(alphabet="abc xyz.\n", max_size=40))
def test_final_marker_is_always_found(n, prefix):
    assert extract_answer(f"{prefix}\n#### {n:,}") == str(n)
    assert is_correct(f"{prefix}\n#### {n}", f"{n:,}")


# ----------------------------------------------------------------- inside TRL's GRPOTrainer
@pytest.mark.parametrize("conversational", [False, True])
def test_rewards_run_inside_trl_grpo_trainer(grpo_trainer, pocket, conversational):
    """TRL calls our functions with its own arguments; its weighted total equals make_reward's."""
    from conftest import trl_scored_batch

    from course_lib.data import pocket_math

    _, tokenizer = pocket
    problems = [p for p in pocket_math.pocket_test_set(20) if p["n_steps"] <= 2][:3]  # short: they finish
    rows = [
        {
            "prompt": [{"role": "user", "content": p["question"]}]
            if conversational
            else tokenizer.apply_chat_template(
                [{"role": "user", "content": p["question"]}], tokenize=False, add_generation_prompt=True
            ),
            "answer": p["answer"],
        }
        for p in problems
    ]
    config = RewardConfig(
        correctness_weight=2.0,
        format_weight=1.0,
        length_weight=0.5,
        format_needs_correct=False,
        max_length=60,
        length_buffer=30,
    )
    funcs, weights = trl_reward_funcs(config)
    seen = []

    def spy(completions, **kwargs):  # records what TRL passes, scores nothing
        seen.append((completions, kwargs))
        return [0.0] * len(completions)

    trainer = grpo_trainer(
        rows, funcs + [spy], 4, reward_weights=weights + [0.0], max_completion_length=80, temperature=1.0
    )
    out = trl_scored_batch(trainer, 4)
    completions, kwargs = seen[-1]
    assert isinstance(completions[0], list) == conversational
    texts = [completion_text(c) for c in completions]
    ours = make_reward(config)(completions, answer=kwargs["answer"], completion_ids=kwargs["completion_ids"])
    mode = "train" if trainer.model.training else "eval"
    assert trainer._metrics[mode]["reward"][-1] == pytest.approx(sum(ours) / len(ours), abs=1e-6)
    assert any(t.strip() for t in texts) and len(out["advantages"]) == 12
    assert len(set(ours)) > 1, "the check needs completions with different rewards"
