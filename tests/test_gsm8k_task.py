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
