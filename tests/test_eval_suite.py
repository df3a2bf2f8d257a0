"""Evaluating several tasks × decoding modes from Python (what `hrpo eval` calls)."""

import json

import pytest

from hrpo.cli import main
from hrpo.eval_suite import check_resumable, evaluate_tasks, mode_dir, with_paper_results, write_summary
from hrpo.loading import load_model
from hrpo.model import HybridModel
from hrpo.rollout import RolloutConfig
from hrpo.tasks import get_task

TIMING = {"seconds", "tokens_per_second"}


def test_evaluate_tasks_from_python_writes_what_the_command_writes(tiny_dir, tmp_path, capsys):
    base, tok = load_model(str(tiny_dir), device="cpu")  # as `hrpo eval` loads it
    model = HybridModel(base, seed=0).eval()
    task = get_task("arithmetic", num_test=3)
    cfg = RolloutConfig(max_completion_length=5, max_prompt_length=2048)
    out = tmp_path / "py"
    results = evaluate_tasks(
        model,
        tok,
        {"arithmetic": task},
        cfg,
        output_dir=out,
        modes=["hybrid", "plain"],
        batch_size=2,
        progress=False,
    )
    assert [(r["task"], r["mode"]) for r in results] == [("arithmetic", "hybrid"), ("arithmetic", "plain")]
    assert results[0]["hidden_ratio"] > 0 and results[1]["hidden_ratio"] == 0
    for r in results:
        run_dir = mode_dir(out, r["task"], r["mode"])
        assert len((run_dir / "predictions.jsonl").read_text().splitlines()) == 3
        assert json.loads((run_dir / "metrics.json").read_text()) == r
    assert json.loads((out / "metrics.json").read_text())["results"] == results

    cli_out = tmp_path / "cli"
    argv = ["eval", "--task", "arithmetic", "--task-args", "{num_test: 3}", "--model", str(tiny_dir)]
    argv += ["--max-completion-length", "5", "--batch-size", "2", "--hybrid", "both", "--no-progress"]
    assert main([*argv, "--output", str(cli_out)]) == 0
    capsys.readouterr()
    by_cli = json.loads((cli_out / "metrics.json").read_text())["results"]
    assert [{k: v for k, v in r.items() if k not in TIMING} for r in by_cli] == [
        {k: v for k, v in r.items() if k not in TIMING} for r in results
    ]
    for r in results:  # the same model, process and shapes: the same completions
        by_python, by_command = (
            mode_dir(d, r["task"], r["mode"]) / "predictions.jsonl" for d in (out, cli_out)
        )
        assert by_python.read_text() == by_command.read_text()

    with pytest.raises(ValueError, match="unknown decoding modes"):
        evaluate_tasks(model, tok, {"arithmetic": task}, cfg, output_dir=out, modes=["on"])


def test_check_resumable_refuses_other_settings_and_reads_the_old_option_name(tmp_path):
    run_dir = tmp_path / "gsm8k-hybrid"
    run_dir.mkdir()
    (run_dir / "eval_config.json").write_text(json.dumps({"temperature": 0.5, "max_new_tokens": 64}))
    (run_dir / "predictions.jsonl").write_text("")
    check_resumable(run_dir, {"temperature": 0.5, "max_completion_length": 64})
    assert json.loads((run_dir / "eval_config.json").read_text()) == {
        "temperature": 0.5,
        "max_completion_length": 64,
    }
    with pytest.raises(ValueError, match=r"other settings \(max_completion_length: 64 -> 32\)"):
        check_resumable(run_dir, {"temperature": 0.5, "max_completion_length": 32})


def test_write_summary_replaces_only_the_same_task_and_mode(tmp_path):
    write_summary(tmp_path, [{"task": "a", "mode": "hybrid", "x": 1}, {"task": "a", "mode": "plain", "x": 2}])
    path = write_summary(tmp_path, [{"task": "a", "mode": "hybrid", "x": 3}], model="m", split="test")
    summary = json.loads(path.read_text())
    assert summary["model"] == "m" and [r["x"] for r in summary["results"]] == [2, 3]


def test_paper_results_beside_ours():
    entry = with_paper_results({"task": "gsm8k"}, ["my-model", "/hub/Qwen2.5-1.5B-Instruct"], "GSM8K")
    assert entry["paper"] == {"grpo": 0.711, "hrpo": 0.720}
    qa = {"task": "qa", "per_group": {"nq": {"accuracy": 0.3}, "other": {"accuracy": 0.1}}}
    with_paper_results(qa, ["Qwen/Qwen2.5-3B-Instruct"], None)
    assert "paper" not in qa and qa["per_group"]["nq"]["paper"] == {"grpo": 0.381, "hrpo": 0.378}
    assert "paper" not in qa["per_group"]["other"]
    assert "paper" not in with_paper_results({"task": "gsm8k"}, ["SmolLM2-135M-Instruct"], "GSM8K")


def test_math_and_math500_are_reported_from_one_pass(tiny_dir, tmp_path, capsys):
    from hrpo.cli.eval import _print_eval_table

    base, tok = load_model(str(tiny_dir), device="cpu")
    model = HybridModel(base, seed=0).eval()
    data = tmp_path / "math_test.jsonl"
    records = [
        {
            "problem": f"What is {i} + {i}?",
            "solution": f"\\boxed{{{2 * i}}}",
            "unique_id": f"test/algebra/{i}.json",
        }
        for i in range(4)
    ]
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    ids = tmp_path / "math500.txt"
    ids.write_text("test/algebra/1.json\ntest/algebra/3.json\n")
    # Measured like the authors (their rules and prompt, greedy, hybrid, the task's length, here
    # shortened for the tiny model), so the paper's numbers are shown, for the subset too.
    task = get_task(
        "math", data_files={"test": str(data)}, math500=str(ids), protocol="paper", system_prompt="paper"
    )
    task.eval_max_completion_length = 4
    cfg = RolloutConfig(max_completion_length=4, max_prompt_length=2048)
    common = dict(batch_size=4, progress=False, model_names=["Qwen/Qwen2.5-1.5B-Instruct"])
    out = tmp_path / "out"
    [entry] = evaluate_tasks(model, tok, {"math": task}, cfg, output_dir=out, **common)
    predictions = [
        json.loads(line) for line in (mode_dir(out, "math", "hybrid") / "predictions.jsonl").open()
    ]
    assert len(predictions) == 4  # one generation pass for both benchmarks
    assert (entry["benchmark"], entry["num_examples"], entry["paper"]) == (
        "MATH",
        4,
        {"grpo": 0.502, "hrpo": 0.518},
    )
    subset = entry["subsets"]["MATH500"]
    assert subset["num_examples"] == 2 and subset["paper"] == {"grpo": 0.524, "hrpo": 0.536}
    assert subset["accuracy"] == sum(p["correct"] for p in predictions if p["index"] in (1, 3)) / 2
    assert json.loads((out / "metrics.json").read_text())["results"] == [entry]
    _print_eval_table([entry])
    # Our protocol: not comparable, so neither the task's nor the subset's paper numbers are shown.
    ours = get_task("math", data_files={"test": str(data)}, math500=str(ids))
    [entry] = evaluate_tasks(model, tok, {"math": ours}, cfg, output_dir=tmp_path / "ours", **common)
    assert "paper" not in entry and "paper" not in entry["subsets"]["MATH500"]
    assert "hrpo protocol" in entry["paper_not_comparable"]
    assert capsys.readouterr().out.splitlines()[2].split()[:2] == ["MATH500", "2"]

    # A limit that keeps no listed problem: MATH alone, with a warning.
    with pytest.warns(UserWarning, match="none of the 1 rows evaluated is in MATH500"):
        [entry] = evaluate_tasks(
            model, tok, {"math": task}, cfg, output_dir=tmp_path / "o2", limit=1, **common
        )
    assert "subsets" not in entry and entry["benchmark"] == "MATH"
