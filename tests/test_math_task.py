import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hrpo.tasks.math import MathTask, answers_match, last_boxed, read_problem_list, reference_answer

SAMPLE = Path(__file__).resolve().parents[1].parent / "shared/data/math/math500_sample.jsonl"


@contextmanager
def math_verify_calls() -> Iterator[list[tuple[str, str]]]:
    """Records ``(function, repr of its first argument)`` for each call of math-verify's ``parse`` and
    ``verify``: the work whose cost is unbounded, so hostile answers must not reach it."""
    import math_verify

    calls: list[tuple[str, str]] = []

    def spy(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            calls.append((name, repr(args[0]) if args else ""))
            return fn(*args, **kwargs)

        return wrapper

    with (
        mock.patch.object(math_verify, "parse", spy("parse", math_verify.parse)),
        mock.patch.object(math_verify, "verify", spy("verify", math_verify.verify)),
    ):
        yield calls


@pytest.fixture(scope="module")
def task() -> MathTask:
    return MathTask(data_files={"test": str(SAMPLE)})


@pytest.fixture(scope="module")
def rows(task):
    return task.load("test")


def test_loads_real_rows_with_boxed_references(task, rows):
    assert len(rows) == 100
    answers = [r["answer"] for r in rows[:12]]
    assert answers == [
        "\\left( 3, \\frac{\\pi}{2} \\right)",
        "p - q",
        "\\frac{14}{3}",
        "9",
        "\\text{Evelyn}",
        "42",  # the box precedes an [asy] figure
        "27",
        "90^\\circ",
        "3\\sqrt{13}",
        "4",
        "2220",
        "\\frac{3}{56}",
    ]
    first = rows[0]
    assert first["prompt"][0]["role"] == "system" and "####" in first["prompt"][0]["content"]
    assert first["prompt"][1]["content"] == first["question"] and "polar" in first["question"]
    assert "\\boxed" in first["solution"] and first["id"] == "test-0"
    assert all(r["answer"] for r in rows)
    # Every reference grades itself correct, bare or boxed.
    assert all(task.score(f"work #### {r['answer']}", r["answer"]) == 1.0 for r in rows)
    assert all(task.score(f"#### $\\boxed{{{r['answer']}}}$.", r["answer"]) == 1.0 for r in rows)


def test_real_rows_accept_equivalent_forms(task, rows):
    assert task.score("#### (3, \\pi/2)", rows[0]["answer"]) == 1.0
    assert task.score("#### \\dfrac{14}{3}", rows[2]["answer"]) == 1.0
    assert task.score("#### 14/3", rows[2]["answer"]) == 1.0
    assert task.score("#### Evelyn", rows[4]["answer"]) == 1.0
    assert task.score("#### \\sqrt{117}", rows[8]["answer"]) == 1.0
    assert task.score("#### 3", rows[8]["answer"]) == 0.0
    assert task.score("#### q - p", rows[1]["answer"]) == 0.0


CORRECT = [
    ("1000", "1,000"),
    ("1,000", "1000"),
    ("\\frac{1}{2}", "1/2"),
    ("\\frac{1}{2}", "0.5"),
    ("\\frac{1}{2}", "\\dfrac{1}{2}"),
    ("\\frac{1}{2}", "\\tfrac12"),
    ("(1,2)", "(1, 2)"),
    ("50\\%", "50"),
    ("50", "50\\%"),
    ("90^\\circ", "90"),
    ("42", "42 inches"),
    ("42", "42\\text{ inches}"),
    ("\\text{Evelyn}", "Evelyn"),
    ("\\text{(C)}", "C"),
    ("p - q", "p-q"),
    ("x^2+1", "1+x^2"),
    ("\\{1,2\\}", "\\{2,1\\}"),
    ("5", "x = 5"),
    ("9", "9.0"),
    ("3\\sqrt{13}", "\\sqrt{117}"),
]

WRONG = [
    ("\\frac{1}{2}", "2"),  # the reference code collapsed \frac{1}{2} to its last number
    ("2", "\\frac{1}{2}"),
    ("1000", "1"),
    ("1,000", "1"),
    ("(1,2)", "(2,1)"),
    ("(1,2)", "[1,2)"),
    ("3\\sqrt{13}", "3"),  # bare LaTeX parses as its leading number: we parse the boxed form
    ("3", "3\\sqrt{13}"),
    ("p - q", "q - p"),
    ("\\text{Evelyn}", "Bob"),
    ("9", "8"),
    ("\\frac{14}{3}", "4.67"),
    ("5", ""),
]


@pytest.mark.parametrize(("reference", "predicted"), CORRECT)
def test_equivalent_answers_are_correct(task, reference, predicted):
    assert task.is_correct(predicted, reference)
    assert task.score(f"so #### {predicted}", reference) == 1.0


@pytest.mark.parametrize(("reference", "predicted"), WRONG)
def test_different_answers_are_wrong(task, reference, predicted):
    assert not task.is_correct(predicted, reference)
    assert task.score(f"so #### {predicted}", reference) == 0.0


def test_strict_format_needs_exactly_one_marker(task):
    assert task.score("x #### \\frac{1}{2}", "\\frac{1}{2}", strict_format=True) == 1.0
    assert task.score("#### 3 #### \\frac{1}{2}", "\\frac{1}{2}", strict_format=True) == 0.0
    assert task.score("#### 3 #### \\frac{1}{2}", "\\frac{1}{2}") == 1.0  # last marker wins
    assert task.score("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}") == 0.0  # no marker, no answer


@pytest.mark.parametrize(
    ("text", "content"),
    [
        ("so $\\boxed{\\frac{1}{2}}$.", "\\frac{1}{2}"),
        ("\\boxed{a} then \\boxed{b}", "b"),
        ("\\boxed{\\boxed{5}}", "5"),
        ("\\boxed{\\{1, 2\\}}", "\\{1, 2\\}"),  # escaped braces do not close the box
        ("\\fbox{7} is it", "7"),
        ("\\boxed 5$.", "5"),
        ("\\boxed{5", "5"),  # unclosed (truncated): the rest of the text
        ("\\boxed{x} and \\boxed{\\frac{1}{2", "\\frac{1}{2"),
        ("\\boxed{}", ""),
        ("no box here", None),
        ("\\boxedx{3}", None),
    ],
)
def test_last_boxed(text, content):
    assert last_boxed(text) == content


def test_reference_answer_falls_back_to_whole_text():
    assert reference_answer("  \\frac{1}{2} \n") == "\\frac{1}{2}"
    assert reference_answer("So it is $\\boxed{12}$. The answer is: 12") == "12"


def test_boxed_prediction_after_marker(task):
    assert task.extract_answer("#### $\\boxed{\\frac{1}{2}}$.") == "\\frac{1}{2}"
    assert task.score("#### the answer is \\boxed{1/2}", "\\frac{1}{2}") == 1.0


def _write(path: Path, records: list) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def test_column_fallback_and_mapping(tmp_path):
    f = _write(tmp_path / "math.jsonl", [{"problem": "p?", "solution": "so \\boxed{\\frac{1}{2}}"}])
    [row] = MathTask(data_files=f).load("train")
    assert (row["question"], row["answer"]) == ("p?", "\\frac{1}{2}")
    # answer wins over solution when both are present (MATH-500's layout).
    f = _write(tmp_path / "both.jsonl", [{"problem": "p?", "solution": "long \\boxed{2}", "answer": "2"}])
    [row] = MathTask(data_files=f).load("train")
    assert row["answer"] == "2" and row["solution"] == "2"
    f = _write(tmp_path / "mapped.jsonl", [{"q": "p?", "final": "7", "answer": "9"}])
    [row] = MathTask(data_files=f, columns={"question": "q", "answer": "final"}).load("train")
    assert (row["question"], row["answer"]) == ("p?", "7")


def test_malformed_records_name_file_row_and_field(tmp_path):
    f = _write(tmp_path / "bad.jsonl", [{"question": "q", "answer": "1"}, {"question": "q"}])
    with pytest.raises(ValueError, match=r"bad\.jsonl: record 1 has no field 'answer' or 'solution'"):
        MathTask(data_files=f).load("train")
    with pytest.raises(ValueError, match=r"bad\.jsonl: record 0 has no field 'sol' \(mapped from 'answer'\)"):
        MathTask(data_files=f, columns={"answer": "sol"}).load("train")
    f = _write(
        tmp_path / "empty.jsonl", [{"question": "q", "answer": "1"}, {"question": "q", "answer": "\\boxed{}"}]
    )
    with pytest.raises(ValueError, match=r"empty\.jsonl: record 1: empty reference"):
        MathTask(data_files=f).load("train")
    with pytest.raises(ValueError, match="no hub dataset"):
        MathTask().load("train")


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=300), st.text(max_size=60))
def test_score_never_raises(completion, reference):
    task = MathTask()
    for text in (completion, f"#### {completion}", f"#### \\boxed{{{completion}"):
        assert task.score(text, reference) in (0.0, 1.0)
        assert task.score(text, reference, strict_format=True) in (0.0, 1.0)


@pytest.mark.parametrize(
    "answer",
    [
        "x" * 1_000_000,
        "{" * 100_000,
        "\\boxed{" * 100_000,
        bytes(range(256)).decode("latin-1") * 4000,
        "9^{9^{9^{9}}}",
        "(10^{10})!",
        # Under the length cap but deep: math-verify's parser is slow on nesting and can lose its timeout.
        "{" * 999,
        "(" * 499 + ")" * 499,
        "x^" * 400,
        "\\sqrt{" * 300 + "2" + "}" * 300,
    ],
)
def test_bounded_time_on_hostile_answers(task, answer):
    """Refused by linear checks before math-verify (whose cost and timeout are not bounded)."""
    with math_verify_calls() as calls:
        assert task.score(f"#### {answer}", "5") == 0.0
    assert calls == []


def test_off_main_thread_is_safe_and_bounded():
    results: list[tuple[bool, ...]] = []

    def grade() -> None:
        results.append(
            (
                answers_match("0.5", "\\frac{1}{2}"),
                answers_match("9^{9^{9^{9}}}", "5"),
                answers_match("(10^{10})!", "5"),
                answers_match("10^{1000000}", "5"),
            )
        )

    # Off the main thread math-verify has no timeout: the hostile forms must not reach it at all.
    with math_verify_calls() as calls:
        worker = threading.Thread(target=grade, daemon=True)
        worker.start()
        worker.join(timeout=60)  # far above normal (milliseconds): only a hang trips it
    assert results == [(True, False, False, False)]
    assert calls and not any("^" in arg for _, arg in calls)


def test_non_strings_are_wrong(task):
    assert task.is_correct(None, "1") is False  # type: ignore[arg-type]
    assert task.score(5, "5") == 0.0  # type: ignore[arg-type]


def test_unbounded_forms_are_refused_on_the_main_thread_too():
    """math-verify's SIGALRM timeout can be lost (seen inside a gc callback), so forms that can make
    sympy compute without bound are refused outright unless they match exactly."""
    from hrpo.tasks.math import answers_match

    with math_verify_calls() as calls:
        assert not answers_match("x^" * 400, "5")
        assert not answers_match("5!", "120")  # a known cost: factorials only match exactly
        assert answers_match("x^{y^z}", "x^{y^z}")
    assert calls == []


# Made-up MATH-format records; ids as in MATH-500 (`test/<subject>/<n>.json`).
MATH_RECORDS = [
    {"problem": f"Problem {i}: what is {i} + {i}?", "solution": f"so \\boxed{{{2 * i}}}", "unique_id": uid}
    for i, uid in enumerate(["test/algebra/1.json", "test/algebra/2.json", None, "test/geometry/7.json"])
]


def test_problem_lists_by_id_or_problem_text(tmp_path):
    (tmp_path / "ids.txt").write_text("test/algebra/2.json\n\n  test/geometry/7.json \n")
    assert read_problem_list(tmp_path / "ids.txt") == (
        frozenset({"test/algebra/2.json", "test/geometry/7.json"}),
        frozenset(),
    )
    (tmp_path / "ids.json").write_text(json.dumps(["test/algebra/1.json"]))
    assert read_problem_list(tmp_path / "ids.json")[0] == {"test/algebra/1.json"}
    # MATH-500's own layout: unique_id and problem, both used.
    f = _write(tmp_path / "m500.jsonl", [{"problem": " Problem 2: what is 2 + 2? ", "unique_id": "x/1.json"}])
    assert read_problem_list(f) == (frozenset({"x/1.json"}), frozenset({"Problem 2: what is 2 + 2?"}))
    f = _write(tmp_path / "bad.jsonl", [{"problem": "p"}, {"answer": "1"}])
    with pytest.raises(ValueError, match=r"bad\.jsonl: entry 1 is neither a unique_id nor a record"):
        read_problem_list(f)
    (tmp_path / "empty.json").write_text("[]")
    with pytest.raises(ValueError, match="lists no problems"):
        read_problem_list(tmp_path / "empty.json")
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        read_problem_list(tmp_path / "missing.txt")


def test_math500_subset_of_a_full_math_file(tmp_path):
    data = _write(tmp_path / "math_test.jsonl", [{k: v for k, v in r.items() if v} for r in MATH_RECORDS])
    plain = MathTask(data_files={"test": data})
    rows = plain.load("test")
    assert [r.get("unique_id") for r in rows] == [r["unique_id"] for r in MATH_RECORDS]
    assert plain.subsets(rows) == {} and plain.benchmark is None
    (tmp_path / "ids.txt").write_text("test/algebra/2.json\ntest/geometry/7.json\ntest/other/9.json\n")
    task = MathTask(data_files={"test": data}, math500=str(tmp_path / "ids.txt"))
    assert task.benchmark == "MATH" and task.subsets(rows) == {"MATH500": [1, 3]}
    # By problem text, which is how the authors matched (a MATH file needs no id column then).
    m500 = _write(tmp_path / "m500.jsonl", [{"problem": MATH_RECORDS[2]["problem"], "answer": "4"}])
    no_ids = [{k: v for k, v in r.items() if k != "unique_id"} for r in rows]
    assert MathTask(data_files={"test": data}, math500=m500).subsets(no_ids) == {"MATH500": [2]}
    with pytest.raises(ValueError, match="math500 needs data_files"):
        MathTask(math500=m500)
    # The id column can be mapped, and a mapped column must be there.
    renamed = [{("path" if k == "unique_id" else k): v for k, v in r.items() if v} for r in MATH_RECORDS]
    data = _write(tmp_path / "renamed.jsonl", renamed)
    with pytest.raises(
        ValueError, match=r"renamed\.jsonl: record 2 has no field 'path' \(mapped from 'unique_id'\)"
    ):
        MathTask(data_files={"test": data}, columns={"unique_id": "path"}).load("test")
    rows = MathTask(data_files={"test": data}, columns={"unique_id": "path"}).load("test", limit=2)
    assert rows[1]["unique_id"] == "test/algebra/2.json"
