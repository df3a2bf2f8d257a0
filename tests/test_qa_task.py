import json
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hrpo.tasks.qa import QATask, exact_match, f1, format_passage, gold_answers, normalize_answer

PASSAGES_DICT = [
    {"id": "1", "contents": '"The Beatles"\nThe Beatles were an English rock band formed in Liverpool.'},
    {"title": "Liverpool", "text": "Liverpool is a city in England."},
    {"contents": '"Abbey Road"\nAbbey Road is a 1969 album.'},
    {"contents": '"Extra"\nNot shown with the default three passages.'},
]
PASSAGES_STR = ["Paris is the capital of France.", '"France"\nFrance is a country in Europe.']


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


@pytest.fixture
def qa_file(tmp_path):
    return write_jsonl(
        tmp_path / "test.jsonl",
        [
            {"question": "Which band recorded Abbey Road?", "golden_answers": ["The Beatles", "Beatles"]},
            {"question": "capital of France?", "golden_answers": "Paris", "passages": PASSAGES_STR},
            {
                "question": "Where were the Beatles formed?",
                "golden_answers": ["Liverpool"],
                "retrieval": PASSAGES_DICT,
            },
        ],
    )


def user_turn(row):
    assert row["prompt"][0]["role"] == "system" and "####" in row["prompt"][0]["content"]
    return row["prompt"][1]["content"]


def test_rows_and_references(qa_file):
    rows = QATask({"test": qa_file}, dataset="nq").load("test")
    assert len(rows) == 3
    assert rows[0]["golden_answers"] == ["The Beatles", "Beatles"]
    assert json.loads(rows[0]["answer"]) == ["The Beatles", "Beatles"]
    # A single string answer becomes a one-element list.
    assert rows[1]["golden_answers"] == ["Paris"] and rows[1]["answer"] == '["Paris"]'
    assert [r["dataset"] for r in rows] == ["nq"] * 3
    assert [r["id"] for r in rows] == ["test-0", "test-1", "test-2"]
    assert QATask({"test": qa_file}).load("test", limit=1)[0]["dataset"] == "qa"
    assert "short phrase" in rows[0]["prompt"][0]["content"]


def test_prompts_with_0_1_3_passages(qa_file):
    rows3 = QATask({"test": qa_file}).load("test")
    assert user_turn(rows3[0]) == "Question: Which band recorded Abbey Road?"  # no passage column
    assert user_turn(rows3[1]) == (
        "Doc 1: Paris is the capital of France.\n"
        "Doc 2 (Title: France) France is a country in Europe.\n\n"
        "Question: capital of France?"
    )
    assert user_turn(rows3[2]) == (
        "Doc 1 (Title: The Beatles) The Beatles were an English rock band formed in Liverpool.\n"
        "Doc 2 (Title: Liverpool) Liverpool is a city in England.\n"
        "Doc 3 (Title: Abbey Road) Abbey Road is a 1969 album.\n\n"
        "Question: Where were the Beatles formed?"
    )
    rows1 = QATask({"test": qa_file}, num_passages=1).load("test")
    assert user_turn(rows1[2]) == (
        "Doc 1 (Title: The Beatles) The Beatles were an English rock band formed in Liverpool.\n\n"
        "Question: Where were the Beatles formed?"
    )
    rows0 = QATask({"test": qa_file}, num_passages=0).load("test")
    assert [user_turn(r) for r in rows0] == [f"Question: {r['question']}" for r in rows0]


def test_format_passage_shapes():
    assert (
        format_passage(2, {"title": "T", "contents": '"T"\nbody  text\nmore'})
        == "Doc 2 (Title: T) body text more"
    )
    assert format_passage(1, "plain text") == "Doc 1: plain text"
    assert format_passage(1, {"text": "t"}) == "Doc 1: t"


@pytest.mark.parametrize("bad", [-1, True, 1.5, "3"])
def test_bad_options(bad):
    with pytest.raises(ValueError, match="num_passages"):
        QATask(num_passages=bad)
    with pytest.raises(ValueError, match="dataset"):
        QATask(dataset="")


def test_column_mapping(tmp_path):
    f = write_jsonl(
        tmp_path / "renamed.jsonl",
        [{"q": "Who?", "answers": ["Ada Lovelace"], "ctxs": [{"title": "Ada", "text": "Ada wrote notes."}]}],
    )
    task = QATask(f, {"question": "q", "golden_answers": "answers", "passages": "ctxs"})
    row = task.load("train")[0]
    assert row["golden_answers"] == ["Ada Lovelace"]
    assert user_turn(row) == "Doc 1 (Title: Ada) Ada wrote notes.\n\nQuestion: Who?"
    with pytest.raises(ValueError, match=r"record 0 has no field 'golden_answers'"):
        QATask(f, {"question": "q"}).load("train")


def test_malformed_records_name_row_and_field(tmp_path):
    good = {"question": "q", "golden_answers": ["a"]}
    f = write_jsonl(tmp_path / "bad.jsonl", [good, {"question": "q"}])
    with pytest.raises(ValueError, match=r"bad\.jsonl: record 1 has no field 'golden_answers'"):
        QATask(f).load("train")
    write_jsonl(tmp_path / "bad.jsonl", [good, good, {**good, "passages": "just one string"}])
    with pytest.raises(ValueError, match=r"bad\.jsonl: record 2: field 'passages' must be a list"):
        QATask(f).load("train")
    write_jsonl(tmp_path / "bad.jsonl", [{**good, "passages": [{"title": "no body"}]}])
    with pytest.raises(ValueError, match=r"record 0: field 'passages' passage 0"):
        QATask(f).load("train")
    for golds in ([], [""], [None], {"a": 1}):
        write_jsonl(tmp_path / "bad.jsonl", [{"question": "q", "golden_answers": golds}])
        with pytest.raises(ValueError, match=r"record 0: field 'golden_answers'"):
            QATask(f).load("train")
    with pytest.raises(ValueError, match="no data file for split 'test'"):
        QATask(f).load("test")
    with pytest.raises(ValueError, match="pass data_files"):
        QATask().load("test")


def test_normalize_answer():
    assert normalize_answer("  The  Beatles! ") == "beatles"
    assert normalize_answer("A Tale of Two Cities.") == "tale of two cities"
    assert normalize_answer("theatre") == "theatre"  # articles only as whole words
    assert normalize_answer("U.S.A.") == "usa"


GOLDS = ["The Beatles", "Beatles", "John, Paul, George and Ringo"]


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        ("It was them. #### The Beatles", 1.0),
        ("#### beatles", 1.0),
        ("#### THE BEATLES.", 1.0),
        ("#### **the beatles**", 1.0),
        ("#### Beatles!", 1.0),
        ("#### john paul george and ringo", 1.0),
        ("#### The Beatles\nBecause they recorded it in 1969.", 1.0),
        ("####\n  Beatles  \nmore text", 1.0),
        ("#### wrong #### beatles", 1.0),  # the last marker counts
        ("#### beatles #### wrong", 0.0),
        ("#### The Rolling Stones", 0.0),
        ("#### The Beatles were a band", 0.0),
        ("#### ", 0.0),
        ("####", 0.0),
        ("The Beatles", 0.0),  # no marker
        ("#### Beat les", 0.0),
    ],
)
def test_grader_table(completion, expected):
    task = QATask()
    assert task.score(completion, json.dumps(GOLDS)) == expected
    assert task.score(completion, GOLDS) == expected  # a list reference works the same


def test_reference_forms():
    task = QATask()
    assert task.score("#### Paris", "Paris") == 1.0  # a plain string reference
    assert task.score("#### Paris", ("London", "Paris")) == 1.0
    assert task.score("#### Paris", []) == 0.0
    assert task.score("#### Paris", None) == 0.0
    assert task.score("#### Paris", [None, 3]) == 0.0
    assert task.score("#### [1, 2]", "[1, 2]") == 0.0  # a JSON list of non-strings has no golds
    assert task.score("#### [1", "[1") == 1.0  # not JSON: the string is the answer
    assert gold_answers('["a", "b"]') == ["a", "b"] and gold_answers("a") == ["a"]
    assert task.is_correct("the paris", '["Paris"]') and not task.is_correct("", '["Paris"]')


def test_f1_by_hand():
    assert f1("Paris", ["Paris"]) == 1.0
    # pred {new, york, city}, gold {new, york}: P = 2/3, R = 1, F1 = 0.8
    assert f1("New York City", ["New York"]) == pytest.approx(0.8)
    # pred {beatles, band}, gold {beatles}: P = 1/2, R = 1, F1 = 2/3; the best gold wins
    assert f1("The Beatles band", ["Rolling Stones", "Beatles"]) == pytest.approx(2 / 3)
    # a repeated token matches once per gold occurrence: pred x x y, gold x z: P = 1/3, R = 1/2
    assert f1("x x y", ["x z"]) == pytest.approx(0.4)
    assert f1("Rome", ["Paris"]) == 0.0
    assert f1("", ["Paris"]) == 0.0 and f1(None, ["Paris"]) == 0.0 and f1("Paris", []) == 0.0
    assert f1("Paris", '["Paris", "x"]') == 1.0
    assert exact_match("the PARIS", ["Paris"]) == 1.0 and exact_match("Paris city", ["Paris"]) == 0.0
    task = QATask()
    assert task.f1_score("so #### New York City\nbye", '["New York"]') == pytest.approx(0.8)
    assert task.f1_score("#### a #### New York", ["New York"], strict_format=True) == 0.0


def test_strict_format():
    task = QATask()
    assert task.score("#### Paris", ["Paris"], strict_format=True) == 1.0
    assert task.score("#### Rome #### Paris", ["Paris"], strict_format=True) == 0.0
    assert task.score("#### Rome #### Paris", ["Paris"]) == 1.0
    assert task.score("Paris", ["Paris"], strict_format=True) == 0.0
    assert task.format_score("#### Paris") == 1.0 and task.format_score("#### ") == 0.0
    custom = QATask(marker="Answer:")
    assert custom.score("reasoning Answer: Paris", ["Paris"], strict_format=True) == 1.0


def test_reward_function_with_list_golds(qa_file):
    task = QATask({"test": qa_file})
    rows = task.load("test")
    reward = task.reward_function()
    assert reward.__name__ == "qa_accuracy"
    completions = [
        [{"role": "assistant", "content": "Abbey Road was by #### the beatles"}],
        "#### Lyon",
        "#### Liverpool #### Liverpool",  # two markers: 0 with the strict training reward
    ]
    answers = [r["answer"] for r in rows]
    assert reward(None, completions, answer=answers) == [1.0, 0.0, 0.0]
    # A datasets column of lists (golden_answers) passes through intact, not as a repr string.
    golds = [r["golden_answers"] for r in rows]
    assert reward(None, completions, answer=golds) == [1.0, 0.0, 0.0]
    assert task.reward_function(strict_format=False)(None, completions, answer=golds) == [1.0, 0.0, 1.0]
    assert reward(None, [None, "#### Paris"], answer=[["Paris"], None]) == [0.0, 0.0]
    with pytest.raises(KeyError, match="answer"):
        reward(None, completions, golden_answers=golds)
    with pytest.raises(ValueError, match="3 completions but 1 answers"):
        reward(None, completions, answer=golds[:1])
    # grade reads the rows' own answer column (JSON strings or lists alike), as the reward does.
    assert task.grade(completions, rows, strict_format=True) == [1.0, 0.0, 0.0]
    assert task.grade(completions, [{**r, "answer": r["golden_answers"]} for r in rows]) == [1.0, 0.0, 1.0]


@settings(max_examples=200, deadline=None)
@given(
    st.text(),
    st.one_of(st.text(), st.lists(st.text(), max_size=4), st.none(), st.integers()),
    st.booleans(),
)
def test_score_never_raises(completion, reference, strict):
    task = QATask()
    for text in (completion, "#### " + completion, completion + " ####" + completion):
        assert task.score(text, reference, strict_format=strict) in (0.0, 1.0)
        assert 0.0 <= task.f1_score(text, reference) <= 1.0


def test_huge_and_garbage_inputs_are_fast():
    """Megabyte inputs are graded without error; linear grading takes well under a second each,
    while a super-linear scan (~10**12 steps at this size) would not finish (no wall-clock bound
    here: speed targets live in benchmarks/)."""
    task = QATask()
    rng = random.Random(0)
    garbage = bytes(rng.randrange(256) for _ in range(1 << 20)).decode("latin-1")
    cases = [
        "#### " + "the a an " * 120_000,
        "#### " + "x" * (1 << 20),
        "####" * 300_000,
        "#### " + "\n" * (1 << 20),
        "#### " + "!.,;" * 300_000 + " Paris",
        garbage,
        "#### " + garbage,
    ]
    golds = json.dumps(["Paris", "x" * 2000])
    for text in cases:
        assert task.score(text, golds) in (0.0, 1.0)
        assert task.score(text, golds, strict_format=True) in (0.0, 1.0)
        assert 0.0 <= task.f1_score(text, golds) <= 1.0
