import pytest

from course_lib.rewards import extract_answer, is_correct, normalize_number


@pytest.mark.parametrize("text,expected", [
    ("so 3+4 = <<3+4=7>>7\n#### 7", "7"),
    ("#### 1,200", "1200"),
    ("#### $18.00", "18"),
    ("#### -5", "-5"),
    ("The answer is 42.", "42"),
    ("first 12 then 30 apples", "30"),          # fallback: the last number
    ("#### 7\nsome rambling 99", "7"),           # the marker wins over later numbers
    ("no numbers here", None),
    ("", None),
    (None, None),
])
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


def test_is_correct_is_numeric():
    assert is_correct("#### 18.0", "18")
    assert is_correct("#### 1,000", "1000")
    assert not is_correct("#### 17", "18")
    assert not is_correct("", "18")


def test_never_raises_on_strange_text():
    for text in ["#" * 10_000, "9" * 100_000, "٣", "<<1/0=>>", "#### .", "#### 1e999", "\x00"]:
        extract_answer(text)
        is_correct(text, "3")
    assert normalize_number("abc") is None


from hypothesis import given, settings
from hypothesis import strategies as st


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.none(), st.text(), st.text(alphabet="#$,.-0123456789 \n").map(lambda s: "#### " + s)))
def test_extract_never_raises_and_returns_a_canonical_number(text):
    answer = extract_answer(text)
    assert answer is None or normalize_number(answer) == answer
    assert is_correct(text, "7") in (True, False)


@settings(max_examples=200, deadline=None)
@given(st.integers(-10**9, 10**9), st.text(alphabet="abc xyz.\n", max_size=40))
def test_final_marker_is_always_found(n, prefix):
    assert extract_answer(f"{prefix}\n#### {n:,}") == str(n)


def test_normalize_is_exact():
    assert normalize_number("1000000.1") == "1000000.1"
    assert normalize_number("$1,200.50") == "1200.5"
    assert normalize_number("-0.0") == "0"
    assert not is_correct("#### 1000000.1", "1000000")
