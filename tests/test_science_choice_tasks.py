"""OpenBookQA and QASC: the AI2 multiple-choice layouts the authors evaluate with ARC-Challenge."""

import json

import pytest

from hrpo.tasks import OpenBookQATask, QASCTask, get_task, list_tasks

# Made-up records in the hub layouts (allenai/openbookqa `main`, allenai/qasc).
OBQA_RECORDS = [
    {
        "id": "7-1",
        "question_stem": "Which melts in the sun?",
        "choices": {"text": ["a rock", "ice", "sand", "iron"], "label": ["A", "B", "C", "D"]},
        "answerKey": "B",
    },
    {
        "id": "7-2",
        "question_stem": "Plants need",
        "choices": {"text": ["light", "noise", "plastic", "glass"], "label": ["A", "B", "C", "D"]},
        "answerKey": "A",
    },
]
QASC_OPTIONS = ["wind", "rain", "stone", "sand", "heat", "cold", "dust", "salt"]
QASC_RECORDS = [
    {
        "id": "3E7",
        "question": "What do clouds make?",
        "choices": {"text": QASC_OPTIONS, "label": list("ABCDEFGH")},
        "answerKey": "B",
        "fact1": "clouds make rain",
        "fact2": "rain is water",
        "combinedfact": "clouds make water",
        "formatted_question": "What do clouds make? (A) wind (B) rain ...",
    },
    {
        "id": "3E8",
        "question": "What is hot?",
        "choices": {"text": QASC_OPTIONS, "label": list("ABCDEFGH")},
        "answerKey": "E",
        "fact1": "f1",
        "fact2": "f2",
        "combinedfact": "cf",
        "formatted_question": "What is hot? ...",
    },
]


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def test_registered_with_the_hub_sources_the_authors_use():
    assert {"openbookqa", "qasc"} <= set(list_tasks())
    assert (OpenBookQATask.hub_id, OpenBookQATask.hub_config) == ("allenai/openbookqa", "main")
    assert (QASCTask.hub_id, QASCTask.hub_config) == ("allenai/qasc", None)
    # QASC's public test split has no keys: `test` reads the hub's validation split, as the authors do.
    assert QASCTask.hub_splits == {"test": "validation"} and OpenBookQATask.hub_splits == {}
    assert (OpenBookQATask.max_options, QASCTask.max_options) == (4, 8)


def test_openbookqa_rows_read_question_stem(tmp_path):
    task = get_task("openbookqa", data_files={"test": write_jsonl(tmp_path / "obqa.jsonl", OBQA_RECORDS)})
    rows = task.load("test")
    assert [r["answer"] for r in rows] == ["B", "A"]
    assert rows[0]["question"] == "Which melts in the sun?" and rows[0]["options"][1] == "ice"
    assert rows[0]["prompt"][1]["content"] == (
        "Question: Which melts in the sun?\nOptions:\nA. a rock\nB. ice\nC. sand\nD. iron"
    )
    assert rows[1]["id"] == "test-1" and len(task.load("test", limit=1)) == 1
    # A file with `question` instead of `question_stem` is read too.
    plain = [{k if k != "question_stem" else "question": v for k, v in r.items()} for r in OBQA_RECORDS]
    rows = OpenBookQATask(data_files=write_jsonl(tmp_path / "plain.jsonl", plain)).load("train")
    assert rows[1]["question"] == "Plants need"


def test_qasc_rows_have_eight_options_and_ignore_the_facts(tmp_path):
    path = tmp_path / "qasc.json"
    path.write_text(json.dumps(QASC_RECORDS))
    rows = QASCTask(data_files={"validation": str(path)}).load("validation")
    assert [r["answer"] for r in rows] == ["B", "E"]
    assert rows[0]["options"] == QASC_OPTIONS and rows[0]["question"] == "What do clouds make?"
    assert "H. salt" in rows[0]["prompt"][1]["content"]
    assert "clouds make rain" not in rows[0]["prompt"][1]["content"]
    assert not {"fact1", "combinedfact", "formatted_question"} & set(rows[0])


def test_parquet(tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    pa = pytest.importorskip("pyarrow")
    path = tmp_path / "qasc.parquet"
    pq.write_table(pa.Table.from_pylist(QASC_RECORDS), path)
    assert [r["answer"] for r in QASCTask(data_files=str(path)).load("train")] == ["B", "E"]


def test_column_mapping(tmp_path):
    recs = [
        {"stem": "Q?", "opts": {"text": ["x", "y", "z", "w"], "label": ["1", "2", "3", "4"]}, "gold": "4"}
    ]
    cols = {"question_stem": "stem", "choices": "opts", "answerKey": "gold"}
    rows = OpenBookQATask(data_files=write_jsonl(tmp_path / "o.jsonl", recs), columns=cols).load("train")
    assert (rows[0]["question"], rows[0]["answer"]) == ("Q?", "D")
    recs = [{"q": "Q?", "c": ["x", "y", "z"], "k": "C"}]  # a plain list of options is labelled A, B, C
    cols = {"question": "q", "choices": "c", "answerKey": "k"}
    rows = QASCTask(data_files=write_jsonl(tmp_path / "q.jsonl", recs), columns=cols).load("train")
    assert rows[0]["answer"] == "C"
    with pytest.raises(ValueError, match=r"record 0 has no field 'stem' \(mapped from 'question_stem'\)"):
        OpenBookQATask(
            data_files=write_jsonl(tmp_path / "q.jsonl", recs), columns={"question_stem": "stem"}
        ).load("train")


@pytest.mark.parametrize(
    ("task_cls", "record", "match"),
    [
        (
            OpenBookQATask,
            {"choices": {"text": ["a", "b"], "label": ["A", "B"]}, "answerKey": "A"},
            r"record 1 has no field 'question_stem'",
        ),
        (
            OpenBookQATask,
            {"question_stem": "q", "choices": {"text": ["a", "b"], "label": ["A", "B"]}, "answerKey": "C"},
            r"record 1: field 'answerKey' = 'C' is not one of the labels",
        ),
        (
            OpenBookQATask,
            {"question_stem": "q", "choices": {"text": ["a", "b"], "label": ["A"]}, "answerKey": "A"},
            r"record 1: field 'choices' has 2 texts but 1 labels",
        ),
        (
            QASCTask,
            {"question": "q", "choices": {"text": ["a", "b"], "label": ["A", "B"]}, "answerKey": ""},
            r"record 1: field 'answerKey' is empty \(QASC's public test split has no answer keys",
        ),
        (
            QASCTask,
            {"question": "q", "choices": "ab", "answerKey": "A"},
            r"record 1: field 'choices' must be",
        ),
        (
            QASCTask,
            {"question": "q", "choices": {"text": ["a", "b"], "label": ["A", "B"]}},
            r"record 1 has no field 'answerKey'",
        ),
    ],
)
def test_malformed_record_names_file_row_and_field(tmp_path, task_cls, record, match):
    good = OBQA_RECORDS[0] if task_cls is OpenBookQATask else QASC_RECORDS[0]
    path = write_jsonl(tmp_path / "bad.jsonl", [good, record])
    with pytest.raises(ValueError, match=r"bad\.jsonl: " + match):
        task_cls(data_files={"test": path}).load("test")


def test_grading_through_grade_under_both_protocols(tmp_path):
    path = write_jsonl(tmp_path / "qasc.jsonl", QASC_RECORDS)
    completions = [
        "Clouds hold water. #### B",  # right
        "It is heat #### heat",  # the option's text: ours reads it as E; the authors' rule does not
        "I think so #### G",  # wrong letter
        "no marker, B",
    ]
    rows = QASCTask(data_files={"test": path}).load("test")
    rows = [rows[0], rows[1], rows[1], rows[0]]
    ours = QASCTask(data_files={"test": path}).grade(completions, rows)
    paper = QASCTask(data_files={"test": path}, protocol="paper").grade(completions, rows)
    assert ours == [1.0, 1.0, 0.0, 0.0]
    # The authors' rule reads the whole text when there is no marker, and an option's text is no letter.
    assert paper == [1.0, 0.0, 0.0, 1.0]
    # Letters past the question's options are never right; H is QASC's eighth option.
    assert QASCTask().grade(["#### H"], [{"answer": "H", "options": QASC_OPTIONS}]) == [1.0]
    obqa = OpenBookQATask(data_files={"test": write_jsonl(tmp_path / "o.jsonl", OBQA_RECORDS)})
    rows = obqa.load("test")
    assert obqa.grade(["#### B", "#### B"], rows) == [1.0, 0.0]
    assert obqa.grade(["a #### b #### B", "x"], rows, strict_format=True) == [0.0, 0.0]
