import json

import pytest
from conftest import SHARED

from hrpo.tasks import get_task

TRAIN = SHARED / "data/gsm8k/train.jsonl"


def test_loads_real_gsm8k_rows():
    task = get_task("gsm8k", data_files={"train": str(TRAIN)})
    rows = task.load("train", limit=50)
    assert len(rows) == 50
    assert rows[0]["answer"] == "72"  # Natalia's clips: 48 + 24
    assert rows[0]["prompt"][0]["role"] == "system" and "####" in rows[0]["prompt"][0]["content"]
    assert all(r["answer"].lstrip("-").isdigit() for r in rows)
    assert task.score("48 + 24 = 72 #### 72", rows[0]["answer"]) == 1.0
    assert task.score("#### 1,000", "1000") == 1.0
    assert task.score("so 72 #### 72 #### 72", "72", strict_format=True) == 0.0


def test_malformed_record_names_file_and_row(tmp_path):
    f = tmp_path / "bad.jsonl"
    f.write_text(
        json.dumps({"question": "q", "answer": "a #### 3"}) + "\n" + json.dumps({"question": "q"}) + "\n"
    )
    with pytest.raises(ValueError, match=r"bad\.jsonl: record 1 has no field 'answer'"):
        get_task("gsm8k", data_files=str(f)).load("train")
    f.write_text("{not json\n")
    with pytest.raises(ValueError, match=r"bad\.jsonl:1: not valid JSON"):
        get_task("gsm8k", data_files=str(f)).load("train")


def test_missing_split_or_file(tmp_path):
    task = get_task("gsm8k", data_files={"train": str(tmp_path / "none.jsonl")})
    with pytest.raises(ValueError, match="no data file for split 'test'"):
        task.load("test")
    with pytest.raises(FileNotFoundError, match="none.jsonl"):
        task.load("train")


def test_column_mapping(tmp_path):
    f = tmp_path / "renamed.json"
    f.write_text(json.dumps([{"q": "What is 2 + 2?", "sol": "2 + 2 = 4 #### 4"}]))
    rows = get_task("gsm8k", data_files=str(f), columns={"question": "q", "answer": "sol"}).load("train")
    assert rows[0]["answer"] == "4" and rows[0]["question"] == "What is 2 + 2?"
    with pytest.raises(
        ValueError, match=r"record 0 has no field 'question' \(mapped from 'question'\)|no field 'qq'"
    ):
        get_task("gsm8k", data_files=str(f), columns={"question": "qq"}).load("train")


def test_several_files_make_one_split(tmp_path):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.json"
    a.write_text(json.dumps({"question": "one?", "answer": "#### 1"}) + "\n")
    b.write_text(
        json.dumps([{"question": "two?", "answer": "#### 2"}, {"question": "three?", "answer": "#### 3"}])
    )
    rows = get_task("gsm8k", data_files={"train": [str(a), str(b)]}).load("train")
    assert [r["answer"] for r in rows] == ["1", "2", "3"]


# --- grading: numbers as values (hrpo.tasks.numbers) ------------------------------------------------

# completion, reference, score (the same with and without strict_format: one marker each)
GRADES = [
    # integers and signs
    ("48 + 24 = 72 #### 72", "72", 1.0),
    ("#### 72", "27", 0.0),
    ("#### -3", "-3", 1.0),
    ("#### 3", "-3", 0.0),
    ("#### -3", "3", 0.0),
    ("#### +3", "3", 1.0),
    ("#### \u22123", "-3", 1.0),  # unicode minus
    ("#### \u20133", "3", 0.0),  # an en dash is neither minus nor nothing
    ("#### - 3", "3", 0.0),  # minus or list bullet: ambiguous
    # decimals: exact values
    ("#### 0.5", "0.5", 1.0),
    ("#### .5", "0.5", 1.0),
    ("#### 42.0", "42", 1.0),
    ("#### 42.00", "42", 1.0),
    ("#### 42.01", "42", 0.0),
    ("#### 0.33", "1/3", 0.0),
    # thousands separators and currency
    ("#### 1,000", "1000", 1.0),
    ("#### 1,000", "1,000", 1.0),
    ("#### $1,250.50", "1250.5", 1.0),
    ("#### $18", "18", 1.0),
    ("#### $18.", "18", 1.0),
    ("#### 1,2", "12", 0.0),  # not a thousands separator: never 12
    ("#### 1,2", "1", 0.0),
    ("#### 1,2", "2", 0.0),
    ("#### 12,34", "12", 0.0),
    ("#### 1.000", "1000", 0.0),  # "." is always the decimal point
    # percent: a unit like any other (references are bare numbers)
    ("#### 50%", "50", 1.0),
    ("#### 50 %", "50", 1.0),
    ("#### 50%", "0.5", 0.0),
    # scientific notation: a value, with bounded exponents
    ("#### 1e999999", "1", 0.0),
    ("#### 1e999999", "1e999999", 0.0),
    ("#### 2e3", "2", 0.0),
    ("#### 2e3", "2000", 1.0),
    ("#### 2.5E1", "25", 1.0),
    # simple fractions: their value
    ("#### 3/4", "0.75", 1.0),
    ("#### 3/4", "3", 0.0),
    ("#### 3/4", "4", 0.0),
    ("#### 12/4", "3", 1.0),
    ("#### 1/0", "1", 0.0),
    # units and words around the one number
    ("#### 5 apples", "5", 1.0),
    ("#### 5 dollars.", "5", 1.0),
    ("#### **5**", "5", 1.0),
    ("#### The answer is 5.", "5", 1.0),
    ("#### five", "5", 0.0),
    # a second number: repeats of the value are fine, anything else scores 0 against every value
    ("#### 17\nThe answer is: 17", "17", 1.0),
    ("#### 17\n\n**Final answer: 17**", "17", 1.0),
    ("#### 5 (since 2+3=5)", "5", 0.0),
    ("#### 3 or 4", "3", 0.0),
    ("#### 3 or 4", "4", 0.0),
    ("#### 2 + 3 = 5", "5", 0.0),
    ("#### 2 + 3 = 5", "2", 0.0),
    ("#### 1 1/2", "1.5", 0.0),
    ("#### 10:30", "10", 0.0),
    ("#### 72 (48 in April, 24 in May)", "72", 0.0),
    # scales and numerals that are not ASCII digits would change the value: no value
    ("#### 5k", "5", 0.0),
    ("#### 5k", "5000", 0.0),
    ("#### $1.2 million", "1.2", 0.0),
    ("#### 5 kg", "5", 1.0),
    ("#### 5\u00b2", "5", 0.0),
    ("#### 5\u00bd", "5", 0.0),
    ("#### 5\u4e07", "5", 0.0),
    # qualified numbers are not exact answers
    ("#### >5", "5", 0.0),
    ("#### ~5", "5", 0.0),
    ("#### \u22485", "5", 0.0),
    ("#### ~~4~~ 5", "5", 0.0),
    ("#### \u00b15", "5", 0.0),
]


@pytest.mark.parametrize(("completion", "reference", "expected"), GRADES, ids=lambda x: repr(x)[:40])
def test_grade_table(completion, reference, expected):
    task = get_task("gsm8k")
    assert task.score(completion, reference) == expected
    assert task.score(completion, reference, strict_format=True) == expected
    assert task.score("Some reasoning with 7 and 9.\n" + completion, reference) == expected


def test_reward_function_grades_values():
    reward = get_task("gsm8k").reward_function()
    completions = ["#### 2e3", "#### 2000.0", "#### 1e999999", "#### 2,000", "#### 1999 or 2000"]
    assert reward(None, completions, answer=["2000"] * 5) == [1.0, 1.0, 0.0, 1.0, 0.0]
    assert reward(None, ["#### 2e3"], answer=["2"]) == [0.0]


def test_every_real_reference_parses_and_grades(tmp_path):
    """Each of the 7473 training references: its own value scores 1, a neighbour or a hedge 0."""
    rows = get_task("gsm8k", data_files={"train": str(TRAIN)}).load("train")
    assert len(rows) == 7473
    task = get_task("gsm8k")
    for row in rows:
        ref = row["answer"]
        n = int(ref)
        assert task.score(f"#### {n:,}", ref, strict_format=True) == 1.0, ref
        assert task.score(f"#### ${n}.00", ref, strict_format=True) == 1.0, ref
        assert task.score(f"#### {n + 1}", ref) == 0.0, ref
        assert task.score(f"#### {n} or {n + 1}", ref) == 0.0, ref
        assert task.score(f"#### {n}e1", ref) == (1.0 if n == 0 else 0.0), ref


@pytest.mark.parametrize(
    ("answer", "reference"),
    [
        ("48 + 24 = 72\n#### 72", "72"),
        ("#### 1,000", "1000"),
        ("#### 0.5", "0.5"),
        ("#### -3", "-3"),
        ("72", "72"),  # a bare final answer, no worked solution
    ],
)
def test_reference_forms_are_read(tmp_path, answer, reference):
    f = tmp_path / "refs.jsonl"
    f.write_text(json.dumps({"question": "q", "answer": answer}) + "\n")
    task = get_task("gsm8k", data_files=str(f))
    row = task.load("train")[0]
    assert row["answer"] == reference
    assert task.score(answer.rsplit("####", 1)[-1] + " #### " + reference, row["answer"]) == 1.0


@pytest.mark.parametrize(
    "answer",
    ["#### 1,2", "#### 3 or 4", "#### 1e999999", "#### ", "#### many", "48 + 24 = 72 so 72 in all"],
)
def test_reference_that_is_not_one_number_is_refused(tmp_path, answer):
    f = tmp_path / "refs.jsonl"
    good = json.dumps({"question": "q", "answer": "#### 1"})
    f.write_text(good + "\n" + json.dumps({"question": "q", "answer": answer}) + "\n")
    with pytest.raises(ValueError, match=r"refs\.jsonl: record 1: the final answer .* is not one number"):
        get_task("gsm8k", data_files=str(f)).load("train")
