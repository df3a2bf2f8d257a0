"""The task API (extraction, scoring, TRL reward function, registry) and the arithmetic task."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from fractions import Fraction
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import hrpo
from hrpo.tasks import (
    ArithmeticTask,
    Task,
    completion_text,
    get_task,
    list_tasks,
    numbers_match,
    parse_number,
    register_task,
)
from hrpo.tasks import numbers as numbers_module
from hrpo.tasks.arithmetic import apply_op, recompute_answer

TASK = ArithmeticTask(difficulty=2, num_train=300, num_test=50)

# --- data -----------------------------------------------------------------------------------------


def test_same_seed_same_rows_and_different_seed_different_rows():
    a = ArithmeticTask(seed=3, num_train=50, num_test=20)
    b = ArithmeticTask(seed=3, num_train=50, num_test=20)
    c = ArithmeticTask(seed=4, num_train=50, num_test=20)
    for split in ("train", "test"):
        assert a.load(split) == b.load(split)
        assert [r["question"] for r in a.load(split)] != [r["question"] for r in c.load(split)]


def test_rows_are_the_same_in_another_process():
    """Seeds are derived without Python's per-process salted ``hash()``."""
    # Register src/hrpo as a bare package so the child skips hrpo/__init__ (torch import: slow).
    code = (
        "import json, sys, types\n"
        f"pkg = types.ModuleType('hrpo'); pkg.__path__ = [{hrpo.__path__[0]!r}]; sys.modules['hrpo'] = pkg\n"
        "from hrpo.tasks.arithmetic import ArithmeticTask\n"
        "t = ArithmeticTask(difficulty=3, num_train=30, num_test=10, seed=7)\n"
        "print(json.dumps([t.load('train'), t.load('test')]))\n"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    here = ArithmeticTask(difficulty=3, num_train=30, num_test=10, seed=7)
    assert json.loads(out.stdout) == [here.load("train"), here.load("test")]


@pytest.mark.parametrize("difficulty", [1, 3])
def test_splits_are_disjoint(difficulty):
    task = ArithmeticTask(difficulty=difficulty, num_train=5000, num_test=200)
    train, test = task.load("train"), task.load("test")
    assert len(train) == 5000 and len(test) == 200
    train_questions = {r["question"] for r in train}
    assert len(train_questions) == 5000  # no duplicates within a split either
    assert not train_questions & {r["question"] for r in test}
    assert len({r["id"] for r in train + test}) == 5200


def test_test_split_does_not_depend_on_train_size():
    assert ArithmeticTask(num_train=10).load("test") == ArithmeticTask(num_train=500).load("test")


@pytest.mark.parametrize("difficulty", [1, 2, 3, 4, 5])
def test_answers_recompute_from_the_record(difficulty):
    task = ArithmeticTask(difficulty=difficulty, num_train=300, num_test=50)
    for row in task.load("train") + task.load("test"):
        value = row["start"]
        assert isinstance(value, int) and value > 0
        for step in row["ops"]:
            assert step["op"] in "+-*/"
            if step["op"] == "/":
                assert value % step["value"] == 0, row["question"]
            value = apply_op(value, step["op"], step["value"])
            assert value >= 0, row["question"]
        assert row["answer"] == str(value) == str(recompute_answer(row))
        assert row["difficulty"] == difficulty
        assert str(row["start"]) in row["question"]


def test_difficulty_sets_steps_and_number_sizes():
    largest = []
    for difficulty in range(0, 6):
        rows = ArithmeticTask(difficulty=difficulty, num_train=200, num_test=10).load("train")
        assert {len(r["ops"]) for r in rows} == {difficulty + 1}
        largest.append(max(r["start"] for r in rows))
    assert largest == sorted(largest) and largest[0] < largest[-1]


def test_difficulty_zero_is_one_addition_or_subtraction():
    rows = ArithmeticTask(difficulty=0, num_train=300, num_test=10).load("train")
    assert {s["op"] for r in rows for s in r["ops"]} == {"+", "-"}
    assert all(len(r["ops"]) == 1 and 0 <= int(r["answer"]) <= 30 for r in rows)


@pytest.mark.parametrize(
    "completion,expected",
    [("so 3 #### 4", 1.0), ("#### 4 #### 4", 0.0), ("no marker 4", 0.0), ("4 ####", 0.0), ("#### **", 0.0)],
)
def test_format_reward(completion, expected):
    fn = TASK.format_reward_function()
    assert fn.__name__ == "arithmetic_format"
    assert fn(None, [completion, [{"role": "assistant", "content": completion}]]) == [expected, expected]


def test_all_operations_occur():
    ops = {s["op"] for r in TASK.load("train") for s in r["ops"]}
    assert ops == {"+", "-", "*", "/"}


def test_steps_rarely_undo_the_previous_one():
    inverse = {"+": "-", "-": "+", "*": "/", "/": "*"}
    rows = ArithmeticTask(difficulty=3, num_train=1000, num_test=10).load("train")
    pairs = [(a, b) for r in rows for a, b in zip(r["ops"], r["ops"][1:], strict=False)]
    undo = sum((b["op"], b["value"]) == (inverse[a["op"]], a["value"]) for a, b in pairs)
    assert undo <= 10  # only where nothing else fits


def test_prompt_is_conversational_with_the_marker():
    row = TASK.load("test")[0]
    system, user = row["prompt"]
    assert system["role"] == "system" and user["role"] == "user"
    assert user["content"] == row["question"]
    assert "####" in system["content"] == TASK.system_prompt
    custom = ArithmeticTask(marker="ANSWER:", num_train=5, num_test=5)
    assert "ANSWER:" in custom.system_prompt and "####" not in custom.system_prompt
    assert custom.load("test", limit=1)[0]["prompt"][0]["content"] == custom.system_prompt


def test_custom_system_prompt_must_mention_the_marker():
    assert ArithmeticTask(system_prompt="Answer after ####.").system_prompt == "Answer after ####."
    with pytest.raises(ValueError, match="marker"):
        ArithmeticTask(system_prompt="Just answer.")


def test_load_limit_and_errors():
    full = TASK.load("train")
    assert TASK.load("train", limit=7) == full[:7]
    assert TASK.load("train", limit=0) == []
    assert TASK.load("train", limit=10**6) == full
    with pytest.raises(ValueError, match="split"):
        TASK.load("validation")
    with pytest.raises(ValueError, match="limit"):
        TASK.load("train", limit=-1)


def test_loaded_rows_are_copies():
    row = TASK.load("test", limit=1)[0]
    row["ops"].append({"op": "+", "value": 1})
    row["prompt"][1]["content"] = "changed"
    assert TASK.load("test", limit=1)[0]["prompt"][1]["content"] != "changed"
    assert len(TASK.load("test", limit=1)[0]["ops"]) == 3


@pytest.mark.parametrize(
    "kwargs", [{"difficulty": -1}, {"difficulty": 6}, {"difficulty": True}, {"num_train": -1}, {"marker": ""}]
)
def test_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        ArithmeticTask(**kwargs)


# --- extraction and scoring -----------------------------------------------------------------------

# completion, reference, extracted answer, score with strict_format, score without
CASES = [
    ("6 times 7 is 42. #### 42", "42", "42", 1.0, 1.0),
    ("#### 42.", "42", "42", 1.0, 1.0),
    ("####42", "42", "42", 1.0, 1.0),
    ("#### 1,234", "1234", "1,234", 1.0, 1.0),
    ("#### 1,234,567.", "1234567", "1,234,567", 1.0, 1.0),
    ("no marker 42", "42", None, 0.0, 0.0),
    ("#### 4 #### 42", "42", "42", 0.0, 1.0),
    ("#### 42 #### 4", "42", "4", 0.0, 0.0),
    ("** #### 42**", "42", "42", 1.0, 1.0),
    ("**Answer:** #### **42**", "42", "42", 1.0, 1.0),
    ("#### $42", "42", "42", 1.0, 1.0),
    ("#### $42$.", "42", "42", 1.0, 1.0),
    ("#### 42.0", "42", "42.0", 1.0, 1.0),
    ("#### 42 marbles", "42", "42 marbles", 1.0, 1.0),
    ("#### \n\n 42 \n", "42", "42", 1.0, 1.0),
    ("#### 42.5", "42", "42.5", 0.0, 0.0),
    ("#### 420", "42", "420", 0.0, 0.0),
    ("#### -42", "42", "-42", 0.0, 0.0),
    ("#### forty-two", "42", "forty-two", 0.0, 0.0),
    ("####", "42", "", 0.0, 0.0),
    ("", "42", None, 0.0, 0.0),
    ("# ### 42", "42", None, 0.0, 0.0),
    ("#####42", "42", "42", 1.0, 1.0),
    ("#### 42\nThe answer is 42.", "42", "42\nThe answer is 42", 1.0, 1.0),
    ("#### 42 or 43", "42", "42 or 43", 0.0, 0.0),
    ("#### 41 or 42", "42", "41 or 42", 0.0, 0.0),
    ("#### 40 + 2 = 42", "42", "40 + 2 = 42", 0.0, 0.0),
    ("#### 42 (6 times 7)", "42", "42 (6 times 7)", 0.0, 0.0),
    ("#### 4,2", "42", "4,2", 0.0, 0.0),
    ("#### 4.2e1", "42", "4.2e1", 1.0, 1.0),
    ("#### 42e999999", "42", "42e999999", 0.0, 0.0),
    ("#### - 42", "-42", "- 42", 0.0, 0.0),
    ("#### \u221242", "-42", "\u221242", 1.0, 1.0),
]


@pytest.mark.parametrize(("completion", "reference", "extracted", "strict", "lenient"), CASES)
def test_extract_and_score_table(completion, reference, extracted, strict, lenient):
    assert TASK.extract_answer(completion) == extracted
    assert TASK.score(completion, reference, strict_format=True) == strict
    assert TASK.score(completion, reference) == lenient


def test_custom_marker_is_used_for_grading():
    task = ArithmeticTask(marker="ANSWER:", num_train=1, num_test=1)
    assert task.score("so ANSWER: 42", "42", strict_format=True) == 1.0
    assert task.score("so #### 42", "42") == 0.0


# text, its value under hrpo.tasks.numbers' rules (None: no value, scores 0 against anything)
NUMBER_FORMS = [
    # integers, signs
    ("42", 42),
    ("0", 0),
    ("007", 7),
    ("-3", -3),
    ("+3", 3),
    ("\u22123", -3),  # unicode minus sign
    ("-0", 0),
    # decimals: exact values, "." is always the decimal point
    ("42.0", 42),
    ("42.000", 42),
    ("0.5", Fraction(1, 2)),
    (".5", Fraction(1, 2)),
    ("-.5", Fraction(-1, 2)),
    ("3.5", Fraction(7, 2)),
    ("1.000", 1),
    # thousands separators: groups of three, first group not starting with 0
    ("1,234", 1234),
    ("1,234,567", 1234567),
    ("-1,234.5", Fraction(-2469, 2)),
    ("1,234, which is", 1234),
    ("1,2", None),
    ("12,34", None),
    ("1,2345", None),
    ("1,00,000", None),
    ("0,5", None),
    ("0,500", None),
    ("1_000", None),
    # currency, percent, units, punctuation
    ("$42", 42),
    ("$1,250.50", Fraction(2501, 2)),
    ("-$5", -5),
    ("$-5", -5),
    ("\u20ac5", 5),
    ("-\u20ac5", -5),
    ("50%", 50),
    ("50 %", 50),
    ("5 apples", 5),
    ("5 dollars.", 5),
    ("5th", 5),
    ("42.", 42),
    ("42!", 42),
    ("**42**", 42),
    ("\\boxed{42}", 42),
    ("The answer is 42.", 42),
    # scientific notation, with bounded exponents
    ("2e3", 2000),
    ("2E3", 2000),
    ("1.5e3", 1500),
    ("1e-3", Fraction(1, 1000)),
    ("1e\u22123", Fraction(1, 1000)),
    ("1,000e3", 10**6),
    ("1e1000", 10**1000),
    ("1e1001", None),
    ("1e999999", None),
    ("1e-999999", None),
    ("1e" + "9" * 5000, None),
    ("5.e3", None),
    ("5eggs", 5),
    # simple fractions
    ("3/4", Fraction(3, 4)),
    ("-3/4", Fraction(-3, 4)),
    ("6/2", 3),
    ("1,000/4", 250),
    ("1/0", None),
    ("3/4/2020", None),
    ("1.5/3", None),
    ("3/4e2", None),
    ("5/", None),
    # one value: repeats agree, anything else is a hedge or an expression
    ("17\nThe answer is: 17", 17),
    ("17 (seventeen)", 17),
    ("0.5 (that is, 1/2)", Fraction(1, 2)),
    ("3 or 4", None),
    ("4 or 3", None),
    ("x = 7 or 8", None),
    ("2 + 3 = 5", None),
    ("5 (since 2+3=5)", None),
    ("1 1/2", None),
    ("10:30", None),
    ("2-3", None),
    ("3, 4", None),
    ("Step 2: 42", None),
    # malformed or qualified numbers make the whole answer valueless
    ("1.2.3", None),
    ("...5", None),
    ("- 3", None),
    ("--3", None),
    ("+-3", None),
    ("\u20133", None),  # en dash
    ("\uff0d3", None),  # fullwidth hyphen-minus
    (">5", None),
    ("< 5", None),
    ("\u22645", None),  # <=
    ("\u00b15", None),  # +-
    ("\u22485", None),  # approximately
    ("~5", None),
    ("~~4~~ 5", None),
    ("\u0663", None),  # Arabic-Indic 3
    ("\uff14\uff12", None),  # fullwidth 42
    ("\u0663 or 4", None),
    ("0x1F", None),
    ("5\u00b2", None),  # superscript 2: 25?
    ("5\u00bd", None),  # vulgar fraction one half
    ("5\u4e07", None),  # CJK ten thousand
    ("\u216b", None),  # Roman numeral twelve
    ("3 or \u56db", None),  # CJK four
    # scales would multiply the number: not read, so no value
    ("5k", None),
    ("5 K", None),
    ("1.2M", None),
    ("$3 million", None),
    ("3 Million dollars", None),
    ("2 dozen", None),
    ("5 thousands", None),
    ("5 kg", 5),
    ("5 km", 5),
    ("5 min", 5),
    ("5 mph", 5),
    ("5 bags", 5),
    # no number
    ("", None),
    ("forty-two", None),
    ("x" * 100, None),
    # bounds
    ("9" * numbers_module.MAX_NUMBER_CHARS, 10**numbers_module.MAX_NUMBER_CHARS - 1),
    ("9" * (numbers_module.MAX_NUMBER_CHARS + 1), None),
    ("1 " * numbers_module.MAX_NUMBERS, 1),
    ("1 " * (numbers_module.MAX_NUMBERS + 1), None),
]


@pytest.mark.parametrize(("text", "value"), NUMBER_FORMS, ids=lambda x: repr(x)[:40])
def test_parse_number(text, value):
    parsed = parse_number(text)
    assert parsed == value
    assert parsed is None or isinstance(parsed, Fraction)
    # A valueless answer matches nothing, not even itself.
    assert numbers_match(text, text) is (value is not None)


@pytest.mark.parametrize(
    ("predicted", "reference", "match"),
    [
        ("1e999999", "1", False),
        ("1e999999", "1e999999", False),
        ("2e3", "2", False),
        ("2e3", "2000", True),
        ("3/4", "0.75", True),
        ("0.33", "1/3", False),
        ("42.0", "42", True),
        ("50%", "50", True),
        ("50%", "0.5", False),
        ("$1,250.50", "1250.5", True),
        ("1,2", "12", False),
        ("1,2", "1", False),
        ("3 or 4", "3", False),
        ("3 or 4", "4", False),
        ("42", "3 or 4", False),
        ("42", "", False),
        ("", "", False),
    ],
)
def test_numbers_match(predicted, reference, match):
    assert numbers_match(predicted, reference) is match


def test_non_strings_have_no_value():
    assert parse_number(None) is None  # type: ignore[arg-type]
    assert parse_number(42) is None  # type: ignore[arg-type]
    assert numbers_match(42, "42") is False  # type: ignore[arg-type]
    assert TASK.is_correct(None, "42") is False  # type: ignore[arg-type]


GARBAGE = [
    bytes(range(256)).decode("latin-1"),
    bytes(range(256)).decode("utf-8", errors="surrogateescape"),
    "\x00\ud800\udfff####\x00",
    "#" * 10_001,
]


@pytest.mark.parametrize("garbage", GARBAGE)
def test_binary_garbage_scores_zero(garbage):
    for strict in (True, False):
        assert TASK.score(garbage, "42", strict_format=strict) == 0.0
    assert TASK.score(garbage.replace("#", "") + " #### 42", "42", strict_format=True) == 1.0


def count_token_parses():
    """A spy on the per-number parser: its call count is the parser's work beyond the linear scan."""
    return mock.patch.object(numbers_module, "_token_value", wraps=numbers_module._token_value)


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        ("x" * 1_000_000, 0.0),
        ("x" * 1_000_000 + " #### 42", 1.0),
        ("#### " + "9" * 1_000_000, 0.0),
        ("#### 42" + "$*. " * 250_000, 1.0),
        ("#### 42 " + "x" * 1_000_000, 1.0),
        ("#### " + "1," * 500_000, 0.0),
        ("#### " + ".5" * 500_000, 0.0),
        ("#### " + "." * 1_000_000 + "42", 0.0),
        ("#### " + "**" * 500_000 + "42", 1.0),
        ("#### " + "42 " * 500_000, 0.0),  # one value, but far more numbers than an answer has
        ("#### " + "-" * 1_000_000 + "42", 0.0),
        ("#### " + "~ " * 500_000 + "42", 0.0),
        ("#### " + "- " * 500_000 + "x", 0.0),
        ("#### -" + " " * 1_000_000 + "42", 0.0),
        ("#### " + "5k " * 330_000, 0.0),
        ("#### 42e" + "9" * 1_000_000, 0.0),
        ("#### 42e" + "0" * 1_000_000, 1.0),
        ("#### 42" + "\u0663" * 1_000_000, 0.0),
    ],
    ids=lambda x: repr(x)[:30],
)
def test_one_megabyte_completion_takes_bounded_work(completion, expected):
    """One linear scan, and at most MAX_NUMBERS numbers of at most MAX_NUMBER_CHARS parsed each.

    The scan's linearity holds by construction of the pattern (see hrpo.tasks.numbers): at 1 MB a
    super-linear one (~10**12 steps) would not finish. What is counted here is the rest.
    """
    with count_token_parses() as spy:
        assert TASK.score(completion, "42") == expected
        assert TASK.score(completion, "42", strict_format=True) == expected
    # Two scores, each parsing the answer and the reference.
    assert spy.call_count <= 2 * (numbers_module.MAX_NUMBERS + 1)


@settings(max_examples=300, deadline=None)
@given(st.text(), st.booleans())
def test_score_never_raises_on_any_text(text, strict):
    assert TASK.score(text, "42", strict_format=strict) in (0.0, 1.0)
    assert TASK.score(text, text, strict_format=strict) in (0.0, 1.0)


# Characters that matter to the number parser, to reach its corners more often than st.text() does.
NUMBER_ALPHABET = "#0123456789,.-+$*/eE% \n42xkM\u2212\u2013~<\u0663\u00b2"


@settings(max_examples=500, deadline=None)
@given(st.one_of(st.text(max_size=2000), st.text(alphabet=NUMBER_ALPHABET, max_size=2000)))
def test_parse_number_never_raises_and_its_work_is_bounded(text):
    """Any text: a Fraction or None, with at most MAX_NUMBERS numbers parsed (input size bounded)."""
    with count_token_parses() as spy:
        value = parse_number(text)
    assert value is None or isinstance(value, Fraction)
    assert spy.call_count <= numbers_module.MAX_NUMBERS
    if value is not None:
        # Values are bounded too: no huge integers from huge exponents.
        limit = 10 ** (numbers_module.MAX_NUMBER_CHARS + numbers_module.MAX_EXPONENT)
        assert abs(value.numerator) <= limit and value.denominator <= limit


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=NUMBER_ALPHABET, max_size=60), st.booleans())
def test_score_on_answer_like_text_agrees_with_the_rule(text, strict):
    score = TASK.score(text, "42", strict_format=strict)
    assert score in (0.0, 1.0)
    if score == 1.0:
        assert parse_number(TASK.extract_answer(text)) == 42
        assert not strict or text.count("####") == 1


@settings(max_examples=300, deadline=None)
@given(st.integers(-(10**15), 10**15), st.integers(0, 6))
def test_written_forms_of_a_value_parse_to_it(mantissa, places):
    """Decimal, grouped, signed, dressed and scientific spellings of one value all parse to it."""
    value = Fraction(mantissa, 10**places)
    sign = "-" if mantissa < 0 else ""
    digits = str(abs(mantissa)).rjust(places + 1, "0")
    whole, frac = digits[: len(digits) - places], digits[len(digits) - places :]
    point = f".{frac}" if places else ""
    forms = [
        f"{sign}{whole}{point}",
        f"{sign}{int(whole):,}{point}",
        f"{sign}${int(whole):,}{point}",
        f"\u2212{whole}{point}" if sign else f"+{whole}{point}",
        f"{sign}{whole}{point or '.'}0",  # a trailing zero
        f"**{sign}{whole}{point}**.",
        f"{sign}{whole}{point} apples",
        f"{sign}{abs(mantissa)}e-{places}",
        f"{sign}{abs(mantissa)}/{10**places}",
        f"{sign}{whole}{point}\nSo the answer is {sign}{whole}{point}.",
    ]
    for form in forms:
        assert parse_number(form) == value, form
        assert numbers_match(form, str(value) if places == 0 else f"{sign}{whole}{point}"), form


HEDGE_SEPARATORS = [" or ", ", ", " / ", " - ", "-", " + ", " = ", "\n", " (", " to ", " and ", "; ", ":"]


@settings(max_examples=300, deadline=None)
@given(
    st.integers(-1000, 1000),
    st.integers(-1000, 1000),
    st.sampled_from(HEDGE_SEPARATORS),
    st.sampled_from(["", "$", "**"]),
)
def test_two_different_values_never_score(a, b, separator, dressing):
    """A hedge or an expression scores 0 against either value, whatever the order and dressing."""
    if a == b:
        return
    text = f"#### {dressing}{a}{separator}{b}{dressing}"
    for reference in (a, b):
        assert TASK.score(text, str(reference)) == 0.0, text


# --- reward function ------------------------------------------------------------------------------


def test_reward_function_with_string_completions():
    reward = TASK.reward_function()
    assert reward.__name__ == "arithmetic_accuracy"
    prompts = [[{"role": "user", "content": "q"}]] * 4
    completions = ["a #### 42", "#### 4 #### 42", "no marker", "#### 7"]
    assert reward(prompts, completions, answer=["42", "42", "42", "7"]) == [1.0, 0.0, 0.0, 1.0]
    lenient = TASK.reward_function(strict_format=False)
    assert lenient(prompts, completions, answer=["42"] * 4) == [1.0, 1.0, 0.0, 0.0]


def test_reward_function_with_conversational_completions():
    reward = TASK.reward_function()
    parts = [{"type": "text", "text": "so "}, {"type": "text", "text": "#### 42"}]
    completions = [
        [{"role": "assistant", "content": "so #### 42"}],
        [{"role": "assistant", "content": parts}],
        [{"role": "assistant", "content": None}],
        [],
        None,
    ]
    # TRL passes every dataset column by keyword, plus extras such as completion_ids.
    rewards = reward(
        prompts=[None] * 5,
        completions=completions,
        answer=["42"] * 5,
        question=["q"] * 5,
        completion_ids=[[1]] * 5,
    )
    assert rewards == [1.0, 1.0, 0.0, 0.0, 0.0]


def test_grade_reads_each_rows_answer_like_the_reward():
    rows = [{"answer": "42"}, {"answer": 42}, {"answer": None}, {}]
    completions = ["#### 42"] * 4
    assert TASK.grade(completions, rows) == [1.0, 1.0, 0.0, 0.0]  # an int answer is graded as its str
    reward = TASK.reward_function(strict_format=False)
    assert reward(None, completions[:3], answer=[r["answer"] for r in rows[:3]]) == [1.0, 1.0, 0.0]
    # TRL passes objects that are not columns (trainer_state) and extras; neither reaches the rows.
    assert reward(None, ["#### 1"], answer=["1"], trainer_state=object(), step=3) == [1.0]


def test_completion_text():
    assert completion_text("abc") == "abc"
    assert completion_text([{"role": "assistant", "content": "abc"}]) == "abc"
    assert completion_text({"role": "assistant", "content": "abc"}) == "abc"
    assert completion_text(42) is None


def test_reward_function_errors_and_pickling():
    reward = TASK.reward_function()
    with pytest.raises(KeyError, match="answer"):
        reward(["p"], ["#### 1"], solution=["1"])
    with pytest.raises(ValueError, match="2 completions"):
        reward(["p", "p"], ["#### 1", "#### 1"], answer=["1"])
    clone = pickle.loads(pickle.dumps(reward))
    assert clone.__name__ == "arithmetic_accuracy"
    assert clone(None, ["#### 1,000"], answer=["1000"]) == [1.0]


def test_reward_on_generated_rows():
    rows = TASK.load("test", limit=10)
    completions = [f"Working it out... #### {r['answer']}" for r in rows]
    reward = TASK.reward_function()
    assert reward([r["prompt"] for r in rows], completions, answer=[r["answer"] for r in rows]) == [1.0] * 10


# --- registry -------------------------------------------------------------------------------------


@pytest.fixture
def registry(monkeypatch):
    import hrpo.tasks as tasks

    monkeypatch.setattr(tasks, "_REGISTRY", dict(tasks._REGISTRY))
    return tasks


def test_get_task_builds_with_kwargs():
    assert "arithmetic" in list_tasks()
    task = get_task("arithmetic", difficulty=4, num_train=3, num_test=2, seed=1)
    assert isinstance(task, ArithmeticTask) and isinstance(task, Task)
    assert task.difficulty == 4 and len(task.load("train")) == 3


def test_unknown_task_lists_known_ones():
    with pytest.raises(KeyError, match="arithmetic"):
        get_task("gsm9k")


def test_register_task(registry):
    registry.register_task("arith-hard", lambda **kw: ArithmeticTask(difficulty=5, **kw))
    assert "arith-hard" in registry.list_tasks()
    assert registry.get_task("arith-hard", num_train=1).difficulty == 5
    with pytest.raises(ValueError, match="already registered"):
        registry.register_task("arithmetic", ArithmeticTask)
    registry.register_task("arithmetic", lambda **kw: ArithmeticTask(difficulty=1, **kw), overwrite=True)
    assert registry.get_task("arithmetic").difficulty == 1
    registry.register_task("not-a-task", dict)
    with pytest.raises(TypeError, match="not a Task"):
        registry.get_task("not-a-task")
    with pytest.raises(TypeError):
        register_task("broken", 42)
