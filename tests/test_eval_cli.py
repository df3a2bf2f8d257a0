"""`hrpo eval`, `hrpo generate` streaming and `hrpo inspect` from the command line."""

import json

import pytest
from conftest import SHARED

from hrpo.cli import main


@pytest.fixture
def arith_file(tmp_path):
    path = tmp_path / "arith.jsonl"
    rows = [
        {"question": f"What is {i} + {i}?", "answer": f"{i} + {i} = {2 * i}\n#### {2 * i}"} for i in range(5)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _eval(tiny_dir, arith_file, out, *extra):
    return main(
        [
            "eval",
            "--task",
            "gsm8k",
            "--model",
            str(tiny_dir),
            "--data",
            str(arith_file),
            "--max-completion-length",
            "5",
            "--batch-size",
            "2",
            "--output",
            str(out),
            "--no-progress",
            *extra,
        ]
    )


def test_eval_writes_metrics_and_predictions_and_resumes(tiny_dir, arith_file, tmp_path, capsys):
    out = tmp_path / "eval"
    assert _eval(tiny_dir, arith_file, out, "--limit", "3", "--hybrid", "both") == 0
    printed = capsys.readouterr().out
    assert "gsm8k         hybrid      3" in printed and "gsm8k         plain       3" in printed
    summary = json.loads((out / "metrics.json").read_text())
    assert [(r["task"], r["mode"]) for r in summary["results"]] == [("gsm8k", "hybrid"), ("gsm8k", "plain")]
    hybrid, plain = summary["results"]
    assert hybrid["hidden_ratio"] > 0 and plain["hidden_ratio"] == 0 and hybrid["num_examples"] == 3
    preds = [json.loads(x) for x in (out / "gsm8k-hybrid" / "predictions.jsonl").read_text().splitlines()]
    assert [p["index"] for p in preds] == [0, 1, 2] and preds[1]["reference"] == "2"
    assert set(preds[0]) >= {"prompt", "completion", "answer", "reference", "correct", "hidden_ratio"}

    # A larger --limit continues where the first run stopped.
    assert _eval(tiny_dir, arith_file, out, "--limit", "5") == 0
    again = [json.loads(x) for x in (out / "gsm8k-hybrid" / "predictions.jsonl").read_text().splitlines()]
    assert again[:3] == preds and [p["index"] for p in again] == [0, 1, 2, 3, 4]
    summary = json.loads((out / "metrics.json").read_text())
    assert {(r["mode"], r["num_examples"]) for r in summary["results"]} == {("hybrid", 5), ("plain", 3)}


def test_eval_refuses_to_mix_settings(tiny_dir, arith_file, tmp_path, capsys):
    out = tmp_path / "eval"
    assert _eval(tiny_dir, arith_file, out, "--limit", "2") == 0
    assert _eval(tiny_dir, arith_file, out, "--limit", "2", "--temperature", "0.9") == 1
    err = capsys.readouterr().err
    assert "other settings (temperature: 0.5 -> 0.9)" in err


def test_eval_sampling_reports_pass_at_k(tiny_dir, arith_file, tmp_path, capsys):
    out = tmp_path / "eval"
    assert _eval(tiny_dir, arith_file, out, "--limit", "2", "--num-samples", "4", "--seed", "1") == 0
    r = json.loads((out / "gsm8k-hybrid" / "metrics.json").read_text())
    assert r["num_samples"] == 4 and {"pass@1", "pass@2", "pass@4"} <= set(r)
    assert len((out / "gsm8k-hybrid" / "predictions.jsonl").read_text().splitlines()) == 8
    low, high = r["accuracy_ci95"]
    assert low <= r["accuracy"] <= high


def test_eval_bad_data_names_the_record(tiny_dir, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q", "answer": "#### 3"}\n{"question": "q2"}\n')
    assert _eval(tiny_dir, bad, tmp_path / "o") == 1
    err = capsys.readouterr().err
    assert "bad.jsonl" in err and "record 1" in err and "answer" in err


def test_generate_streams_the_same_text_as_json(tiny_dir, tmp_path, capsys):
    args = ["generate", "--model", str(tiny_dir), "--greedy", "--max-completion-length", "7"]
    assert main([*args, "--json", "what is 1 + 2 ?"]) == 0
    expected = json.loads(capsys.readouterr().out)["completion"]
    assert main([*args, "what is 1 + 2 ?"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "=== [0] what is 1 + 2 ?"
    streamed = "\n".join(out[1:-1])
    assert streamed == expected and out[-1].startswith("--- ")

    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"prompt": [{"role": "user", "content": "what is 1 + 2 ?"}]}) + "\n")
    assert main([*args, "--json", "--file", str(prompts)]) == 0
    assert json.loads(capsys.readouterr().out)["completion"] == expected


def test_inspect_json_and_png(tiny_dir, tmp_path, capsys):
    png = tmp_path / "heat.png"
    args = ["inspect", "--model", str(tiny_dir), "--max-completion-length", "6", "--top", "2", "--json"]
    assert main([*args, "--png", str(png), "what is 1 + 2 ?"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert len(report["tokens"]) >= 1 and png.is_file()
    assert all(len(t["nearest"]) == 2 for t in report["tokens"] if t["thinking"])


@pytest.mark.slow
def test_eval_real_model_on_gsm8k_and_math500(tmp_path, capsys):
    """The embedded SmolLM2 on 3 real GSM8K and 3 real MATH500 problems, greedy."""
    out = tmp_path / "eval"
    code = main(
        [
            "eval",
            "--task",
            "gsm8k",
            "math",
            "--data",
            f"gsm8k={SHARED / 'data/gsm8k/train.jsonl'}",
            "--data",
            f"math={SHARED / 'data/math/math500_sample.jsonl'}",
            "--limit",
            "3",
            "--max-completion-length",
            "48",
            "--batch-size",
            "3",
            "--output",
            str(out),
            "--no-progress",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    summary = json.loads((out / "metrics.json").read_text())
    assert [r["task"] for r in summary["results"]] == ["gsm8k", "math"]
    for r in summary["results"]:
        assert r["num_examples"] == 3 and r["benchmark"] in ("GSM8K", "MATH500")
        assert 0 < r["completion_length"] <= 48 and 0 < r["hidden_ratio"] < 1 and r["tokens_per_second"] > 0
        preds = [
            json.loads(x)
            for x in (out / f"{r['task']}-hybrid" / "predictions.jsonl").read_text().splitlines()
        ]
        assert len(preds) == 3 and all(p["completion"] for p in preds)
        assert sum(p["correct"] for p in preds) / 3 == pytest.approx(r["accuracy"])
    gsm = [json.loads(x) for x in (out / "gsm8k-hybrid" / "predictions.jsonl").read_text().splitlines()]
    assert [p["reference"] for p in gsm] == ["72", "10", "5"]  # the first three GSM8K train answers
    math_preds = [json.loads(x) for x in (out / "math-hybrid" / "predictions.jsonl").read_text().splitlines()]
    assert all(p["reference"] for p in math_preds)
    assert "gsm8k" in printed and "math" in printed


def test_custom_task_by_import_path(tiny_dir, tmp_path, monkeypatch, capsys):
    """A user's task module, not registered anywhere, evaluated from the command line."""
    (tmp_path / "my_tasks.py").write_text(
        "from hrpo.tasks import Task\n"
        "class Echo(Task):\n"
        "    name = 'echo'\n"
        "    def __init__(self, n=3, **kw):\n"
        "        super().__init__(**kw)\n"
        "        self.n = n\n"
        "    def _load(self, split, limit):\n"
        "        rows = [{'prompt': self.make_prompt(f'say {i}'), 'answer': str(i)} for i in range(self.n)]\n"
        "        return rows[:limit]\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    args = ["eval", "--model", str(tiny_dir), "--max-completion-length", "3", "--no-progress"]
    assert (
        main([*args, "--task", "my_tasks:Echo", "--task-args", "{n: 2}", "--output", str(tmp_path / "o")])
        == 0
    )
    assert json.loads((tmp_path / "o" / "metrics.json").read_text())["results"][0]["num_examples"] == 2
    assert main([*args, "--task", "my_tasks:Nope", "--output", str(tmp_path / "o2")]) == 1
    assert "my_tasks has no callable 'Nope'" in capsys.readouterr().err
    assert main([*args, "--task", "gsm9k", "--output", str(tmp_path / "o3")]) == 1
    assert "unknown task 'gsm9k'; known tasks: arc_challenge, arithmetic" in capsys.readouterr().err
