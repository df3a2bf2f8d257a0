"""The task API (extraction, scoring, TRL reward function, registry) and the arithmetic task."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import time

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
    parse_integer,
    register_task,
)
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


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("42", 42),
        ("1,234", 1234),
        ("1,234, which is", 1234),
        ("42.0", 42),
        ("42.000", 42),
        ("3.5", None),
        (".5", None),
        ("12,34", 12),
        ("x = 7 or 8", 7),
        ("-3", -3),
        ("none", None),
        ("9" * 5000, None),
    ],
)
def test_parse_integer(text, value):
    assert parse_integer(text) == value


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


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        ("x" * 1_000_000, 0.0),
        ("x" * 1_000_000 + " #### 42", 1.0),
        ("#### " + "9" * 1_000_000, 0.0),
        ("#### 42" + "$*. " * 250_000, 1.0),
        ("#### " + "1," * 500_000, 0.0),
        ("#### " + ".5" * 500_000, 0.0),
        ("#### " + "**" * 500_000 + "42", 1.0),
    ],
)
def test_one_megabyte_completion_is_fast(completion, expected):
    start = time.perf_counter()
    assert TASK.score(completion, "42") == expected
    assert TASK.score(completion, "42", strict_format=True) == expected
    assert time.perf_counter() - start < 2.0


@settings(max_examples=300, deadline=None)
@given(st.text(), st.booleans())
def test_score_never_raises_on_any_text(text, strict):
    assert TASK.score(text, "42", strict_format=strict) in (0.0, 1.0)
    assert TASK.score(text, text, strict_format=strict) in (0.0, 1.0)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="#0123456789,.-$* \n42x", max_size=60), st.booleans())
def test_score_on_answer_like_text_agrees_with_the_rule(text, strict):
    score = TASK.score(text, "42", strict_format=strict)
    assert score in (0.0, 1.0)
    if score == 1.0:
        assert parse_integer(TASK.extract_answer(text)) == 42
        assert not strict or text.count("####") == 1


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
