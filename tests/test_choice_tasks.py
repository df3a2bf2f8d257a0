import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hrpo.tasks.base import completion_text
from hrpo.tasks.choice import (
    MMLU_STEM_SUBJECTS,
    ARCChallengeTask,
    MMLUStemTask,
    MultipleChoiceTask,
    extract_choice,
)

MMLU_RECORDS = [
    {
        "question": "What is 2 + 2?",
        "choices": ["3", "4", "5", "6"],
        "answer": 1,
        "subject": "college_mathematics",
    },
    {
        "question": "Who wrote Hamlet?",
        "choices": ["A", "B", "C", "D"],
        "answer": 0,
        "subject": "world_religions",
    },
    {
        "question": "What pulls objects to Earth?",
        "choices": ["a mass", "a force", "a charge", "a field"],
        "answer": 1,
        "subject": "conceptual_physics",
    },
]
ARC_RECORDS = [
    {
        "id": "q1",
        "question": "Which is a gas?",
        "choices": {"text": ["ice", "water", "steam", "rock"], "label": ["1", "2", "3", "4"]},
        "answerKey": "3",
    },
    {
        "id": "q2",
        "question": "Which is largest?",
        "choices": {"text": ["ant", "cat", "whale"], "label": ["A", "B", "C"]},
        "answerKey": "C",
    },
    {
        "id": "q3",
        "question": "Pick the fifth.",
        "choices": {"text": ["1", "2", "3", "4", "5"], "label": ["A", "B", "C", "D", "E"]},
        "answerKey": "E",
    },
]


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


@pytest.fixture
def mmlu(tmp_path):
    return MMLUStemTask(data_files={"test": write_jsonl(tmp_path / "mmlu.jsonl", MMLU_RECORDS)})


@pytest.fixture
def arc(tmp_path):
    return ARCChallengeTask(data_files={"test": write_jsonl(tmp_path / "arc.jsonl", ARC_RECORDS)})


def test_stem_subject_list():
    assert len(MMLU_STEM_SUBJECTS) == 19
    assert "machine_learning" in MMLU_STEM_SUBJECTS and "world_religions" not in MMLU_STEM_SUBJECTS


def test_mmlu_rows_filter_non_stem_and_keep_subject(mmlu):
    rows = mmlu.load("test")
    assert [r["answer"] for r in rows] == ["B", "B"]
    assert [r["subject"] for r in rows] == ["college_mathematics", "conceptual_physics"]
    assert [r["id"] for r in rows] == ["test-0", "test-2"]
    assert rows[0]["options"] == ["3", "4", "5", "6"]
    system, user = rows[0]["prompt"]
    assert system["role"] == "system" and "####" in system["content"] and "letter" in system["content"]
    assert user == {"role": "user", "content": "Question: What is 2 + 2?\nOptions:\nA. 3\nB. 4\nC. 5\nD. 6"}
    assert len(mmlu.load("test", limit=1)) == 1


def test_mmlu_stem_only_off_and_json(tmp_path):
    path = tmp_path / "mmlu.json"
    path.write_text(json.dumps(MMLU_RECORDS))
    rows = MMLUStemTask(data_files={"test": str(path)}, stem_only=False).load("test")
    assert [r["subject"] for r in rows] == ["college_mathematics", "world_religions", "conceptual_physics"]
    # Without a subject column (MMLU's auxiliary_train) nothing is filtered.
    no_subject = [{k: v for k, v in r.items() if k != "subject"} for r in MMLU_RECORDS]
    rows = MMLUStemTask(data_files=write_jsonl(tmp_path / "aux.jsonl", no_subject)).load("train")
    assert len(rows) == 3 and rows[0]["subject"] == ""


def test_parquet(tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    pa = pytest.importorskip("pyarrow")
    path = tmp_path / "arc.parquet"
    pq.write_table(pa.Table.from_pylist(ARC_RECORDS), path)
    assert [r["answer"] for r in ARCChallengeTask(data_files={"test": str(path)}).load("test")] == [
        "C",
        "C",
        "E",
    ]


def test_arc_rows_numeric_and_letter_labels(arc):
    rows = arc.load("test")
    assert [r["answer"] for r in rows] == ["C", "C", "E"]
    assert rows[0]["prompt"][1]["content"] == (
        "Question: Which is a gas?\nOptions:\nA. ice\nB. water\nC. steam\nD. rock"
    )
    assert (
        rows[1]["prompt"][1]["content"].endswith("C. whale") and "D." not in rows[1]["prompt"][1]["content"]
    )
    assert rows[2]["prompt"][1]["content"].endswith("E. 5")


def test_column_mapping(tmp_path):
    recs = [{"stem": "Q?", "opts": ["x", "y", "z", "w"], "gold": 3, "topic": "anatomy"}]
    cols = {"question": "stem", "choices": "opts", "answer": "gold", "subject": "topic"}
    rows = MMLUStemTask(data_files=write_jsonl(tmp_path / "m.jsonl", recs), columns=cols).load("train")
    assert rows[0]["answer"] == "D" and rows[0]["subject"] == "anatomy" and rows[0]["question"] == "Q?"
    recs = [{"q": "Q?", "c": {"text": ["x", "y", "z"], "label": ["1", "2", "3"]}, "k": "2"}]
    cols = {"question": "q", "choices": "c", "answerKey": "k"}
    rows = ARCChallengeTask(data_files=write_jsonl(tmp_path / "a.jsonl", recs), columns=cols).load("train")
    assert rows[0]["answer"] == "B"
    cols["answerKey"] = "key"
    with pytest.raises(ValueError, match=r"record 0 has no field 'key' \(mapped from 'answerKey'\)"):
        ARCChallengeTask(data_files=write_jsonl(tmp_path / "a.jsonl", recs), columns=cols).load("train")


@pytest.mark.parametrize(
    ("task_cls", "record", "match"),
    [
        (MMLUStemTask, {"question": "q", "choices": ["a", "b", "c", "d"]}, r"record 1 has no field 'answer'"),
        (
            MMLUStemTask,
            {"question": "q", "choices": ["a", "b", "c", "d"], "answer": 4},
            r"record 1: field 'answer'",
        ),
        (
            MMLUStemTask,
            {"question": "q", "choices": ["a", "b", "c", "d"], "answer": -1},
            r"record 1: field 'answer'",
        ),
        (MMLUStemTask, {"question": "q", "choices": "abcd", "answer": 0}, r"record 1: field 'choices'"),
        (MMLUStemTask, {"question": "q", "choices": ["a"], "answer": 0}, r"record 1: field 'choices'"),
        (
            ARCChallengeTask,
            {"question": "q", "choices": {"text": ["a", "b"], "label": ["1", "2"]}, "answerKey": "3"},
            r"record 1: field 'answerKey' = '3' is not one of the labels",
        ),
        (
            ARCChallengeTask,
            {"question": "q", "choices": {"text": ["a", "b"], "label": ["1"]}, "answerKey": "1"},
            r"record 1: field 'choices' has 2 texts but 1 labels",
        ),
        (
            ARCChallengeTask,
            {"question": "q", "choices": {"text": ["a", "b"]}, "answerKey": "1"},
            r"record 1: field 'choices' needs 'text' and 'label'",
        ),
        (
            ARCChallengeTask,
            {"choices": {"text": ["a", "b"], "label": ["A", "B"]}, "answerKey": "A"},
            r"record 1 has no field 'question'",
        ),
    ],
)
def test_malformed_record_names_file_row_and_field(tmp_path, task_cls, record, match):
    good = MMLU_RECORDS[0] if task_cls is MMLUStemTask else ARC_RECORDS[0]
    path = write_jsonl(tmp_path / "bad.jsonl", [good, record])
    with pytest.raises(ValueError, match=r"bad\.jsonl: " + match):
        task_cls(data_files=path).load("train")


def test_splits_and_hub_names():
    assert MMLUStemTask().hub_splits["train"] == "auxiliary_train"
    assert (MMLUStemTask.name, ARCChallengeTask.name) == ("mmlu_stem", "arc_challenge")
    with pytest.raises(ValueError, match="no split"):
        ARCChallengeTask().load("dev")


GRADER_TABLE = [
    ("B", "B", 1.0),
    ("B.", "B", 1.0),
    ("(B)", "B", 1.0),
    ("**B**", "B", 1.0),
    ("B. a force", "B", 1.0),
    ("B) a force", "B", 1.0),
    ("Answer: B", "B", 1.0),
    ("The answer is option B", "B", 1.0),
    ("\\boxed{B}", "B", 1.0),
    ("$\\boxed{\\text{B}}$", "B", 1.0),
    ("I think it is C", "C", 1.0),
    ("C, I think", "C", 1.0),
    ("(D)", "D", 1.0),
    ("A", "A", 1.0),
    ("A.", "A", 1.0),
    ("A is correct", "A", 1.0),
    ("A force, so B", "B", 1.0),
    ("D, not C", "C", 0.0),
    ("a", "A", 0.0),
    ("a force", "A", 0.0),
    ("I", "I", 0.0),  # I is not among A-D
    ("I", "A", 0.0),
    ("E", "E", 0.0),  # only 4 options
    ("E", "A", 0.0),
    ("BC", "B", 0.0),
    ("b", "B", 0.0),
    ("", "A", 0.0),
    ("B", "b", 0.0),  # reference must be a capital letter
]


@pytest.mark.parametrize(("answer", "reference", "expected"), GRADER_TABLE)
def test_grader_table(mmlu, answer, reference, expected):
    assert mmlu.score(f"reasoning about A and D #### {answer}", reference) == expected


def test_options_text_fallback_and_option_count(mmlu, arc):
    opts = ["a mass", "a force", "a charge", "a field"]
    assert mmlu.score("#### a force", "B", options=opts) == 1.0
    assert mmlu.score("#### A force.", "B", options=opts) == 1.0  # prose "A" yields to the exact option text
    assert mmlu.score("#### a force", "B") == 0.0
    assert mmlu.score("#### force", "B", options=opts) == 0.0
    # ARC has up to 5 options; a row's own option count bounds the letters.
    assert arc.score("#### E", "E") == 1.0
    assert arc.score("#### E", "E", options=["1", "2", "3", "4"]) == 0.0
    assert arc.score("#### E or D", "D", options=["1", "2", "3", "4"]) == 1.0
    assert arc.score("#### C", "C", options=["x", "y", "z"]) == 1.0
    assert mmlu.extract_choice("so #### (C)") == "C" and mmlu.extract_choice("no marker") is None


def test_extract_choice_function():
    assert extract_choice("E. or D", 4) == "D"
    assert extract_choice("E", 5) == "E"
    assert extract_choice("I think it is C", 9) == "C" and extract_choice("I", 9) == "I"
    assert (
        extract_choice("x", 0) is None
        and extract_choice(None, 4) is None
        and extract_choice("A", True) is None
    )


def test_strict_format(mmlu):
    assert mmlu.score("think #### B", "B", strict_format=True) == 1.0
    assert mmlu.score("think #### A #### B", "B", strict_format=True) == 0.0
    assert mmlu.score("think #### A #### B", "B") == 1.0  # last marker wins
    assert mmlu.score("B", "B") == 0.0
    assert mmlu.format_score("x #### B") == 1.0 and mmlu.format_score("x #### ") == 0.0


def test_reward_function_uses_options_column(mmlu):
    reward = mmlu.reward_function()
    assert reward.__name__ == "mmlu_stem_accuracy"
    completions = [[{"role": "assistant", "content": "#### a force"}], "#### B", "#### B #### B", None]
    refs = ["B", "B", "B", "B"]
    opts = [["a mass", "a force", "x", "y"]] * 4
    assert reward(None, completions, answer=refs, options=opts) == [1.0, 1.0, 0.0, 0.0]
    assert reward(None, completions, answer=refs) == [0.0, 1.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="completions"):
        reward(None, completions, answer=refs[:2], options=opts)


def test_reward_accuracy_and_eval_agree_through_grade_where_score_without_options_would_not(mmlu, arc):
    # The trainer logged accuracy as score(completion, answer): without the row's options, so it
    # disagreed with the reward. Reward, accuracy and evaluation now all go through grade(rows).
    rows = [row for row in mmlu.load("test") if row["answer"] == "B" and "a force" in row["options"]]
    rows += [{**rows[0], "prompt": "q"}, {"answer": "E", "options": ["1", "2", "3", "4"]}]
    completions = ["#### a force", [{"role": "assistant", "content": "so #### a force"}], "#### E"]
    tasks = [mmlu, mmlu, arc]
    old = [t.score(completion_text(c), r["answer"]) for t, c, r in zip(tasks, completions, rows, strict=True)]
    assert old == [0.0, 0.0, 1.0]
    assert mmlu.grade(completions[:2], rows[:2]) == [1.0, 1.0]
    assert arc.grade(completions[2:], rows[2:]) == [0.0]
    for strict in (False, True):
        reward = mmlu.reward_function(strict_format=strict)
        columns = {k: [r.get(k) for r in rows[:2]] for k in rows[0]}
        assert reward(None, completions[:2], **columns) == mmlu.grade(completions[:2], rows[:2], strict)
    with pytest.raises(ValueError, match="2 completions but 1 rows"):
        mmlu.grade(completions[:2], rows[:1])


def test_generic_task_accepts_letter_answers(tmp_path):
    recs = [
        {"question": "q", "choices": ["x", "y", "z"], "answer": "C"},
        {"question": "q", "choices": ["x", "y"], "answer": "1"},
    ]
    rows = MultipleChoiceTask(data_files=write_jsonl(tmp_path / "g.jsonl", recs)).load("train")
    assert [r["answer"] for r in rows] == ["C", "B"]


@settings(max_examples=300, deadline=None)
@given(
    completion=st.one_of(st.text(), st.text(alphabet="AaBbCcDdEeIi #*()[]{}.:,\\\n", max_size=60)),
    reference=st.one_of(st.text(max_size=3), st.sampled_from(["A", "B", "C", "D", "E"])),
    options=st.one_of(
        st.none(), st.lists(st.text(max_size=5), max_size=6), st.integers(), st.text(max_size=4)
    ),
    strict=st.booleans(),
)
def test_score_fuzz_never_raises(completion, reference, options, strict):
    for task in (MMLUStemTask(), ARCChallengeTask()):
        text = f"{completion} #### {completion}"
        assert task.score(text, reference, strict_format=strict, options=options) in (0.0, 1.0)
        assert task.score(completion, reference, strict_format=strict) in (0.0, 1.0)


def test_score_odd_inputs(mmlu):
    assert mmlu.score(None, "A") == 0.0 and mmlu.score("#### A", None) == 0.0
    assert mmlu.score(b"#### A", "A") == 0.0 and mmlu.score("#### A", "A", options=[1, 2]) == 1.0


def test_large_and_garbage_inputs_are_fast(mmlu, arc):
    """Megabyte inputs are graded correctly; linear grading takes well under a second, while a
    super-linear scan (~10**12 steps at this size) would not finish (no wall-clock bound here: the
    suite's own run time shows a regression, and speed targets live in benchmarks/)."""
    big = "#### " + "A a I " * 170_000 + "B"
    garbage = bytes(range(256)).decode("latin-1") * 4000
    assert mmlu.score(big, "B") == 1.0
    assert arc.score(big, "B", options=["x", "y", "z"]) == 1.0
    assert mmlu.score("#### " + "(" * 1_000_000, "A") == 0.0
    assert mmlu.score(garbage + "#### " + garbage, "A") in (0.0, 1.0)
    assert mmlu.score("#### " + "A force " * 125_000, "A", options=["x"] * 4) == 1.0


def test_mmlu_and_arc_training_mix_in_one_split(tmp_path):
    from hrpo.tasks import get_task

    mmlu = tmp_path / "mmlu_aux.jsonl"
    mmlu.write_text(
        json.dumps({"question": "2+2?", "choices": ["3", "4", "5", "6"], "answer": 1, "subject": ""}) + "\n"
    )
    arc = tmp_path / "arc_train.jsonl"
    arc.write_text(
        json.dumps(
            {
                "question": "Sky?",
                "choices": {"text": ["red", "blue", "green"], "label": ["1", "2", "3"]},
                "answerKey": "2",
            }
        )
        + "\n"
    )
    rows = get_task("mmlu_stem", data_files={"train": [str(mmlu), str(arc)]}).load("train")
    assert [(r["answer"], r["subject"]) for r in rows] == [("B", ""), ("B", "arc_challenge")]
    assert rows[1]["options"] == ["red", "blue", "green"]
