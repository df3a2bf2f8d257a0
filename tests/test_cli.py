import dataclasses
import json

import pytest

from hrpo.cli import build_parser, main
from hrpo.config import HRPOConfig


@pytest.mark.parametrize("command", ["train", "eval", "generate", "inspect", "plot", "sweep", "model"])
def test_every_option_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    sub = build_parser()._subparsers._group_actions[0].choices[command]
    for action in sub._actions:
        assert action.help, f"{command}: {action.dest} has no help"
    if command == "train":
        for f in dataclasses.fields(HRPOConfig):
            assert f"  {f.name} = " in text, f.name


def test_generate_json(tiny_dir, capsys):
    assert (
        main(
            [
                "generate",
                "--model",
                str(tiny_dir),
                "--greedy",
                "--json",
                "--max-completion-length",
                "6",
                "--num-generations",
                "2",
                "what is 1 + 2 ?",
                "so we get",
            ]
        )
        == 0
    )
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(lines) == 4 and lines[0]["prompt"] == "what is 1 + 2 ?" and lines[2]["prompt"] == "so we get"
    assert all(0 < r["completion_tokens"] <= 6 and 0 <= r["hidden_ratio"] < 1 for r in lines)


def test_train_then_plot_end_to_end(tiny_dir, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(
        [
            "train",
            f"model_name_or_path={tiny_dir}",
            f"output_dir={out}",
            "max_steps=2",
            "num_generations=2",
            "per_device_train_batch_size=2",
            "gradient_accumulation_steps=1",
            "max_completion_length=6",
            "eval_limit=4",
            "eval_batch_size=4",
            "lora_r=2",
            "lora_alpha=4",
            "task_args={difficulty: 0, num_train: 20, num_test: 4}",
            "save_steps=1",
        ]
    )
    assert code == 0
    text = capsys.readouterr().out
    assert "before: accuracy" in text and "after: accuracy" in text and "plot:" in text
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2
    assert (out / "plots/training_curves.png").stat().st_size > 10_000
    assert json.loads((out / "eval_after.json").read_text())["num_examples"] == 4
    assert (
        main(["plot", str(out), str(out), "--labels", "a", "b", "--output", str(tmp_path / "cmp.png")]) == 0
    )
    assert (tmp_path / "cmp.png").is_file()


def test_bad_config_is_one_clear_line(tmp_path, capsys):
    f = tmp_path / "c.yaml"
    f.write_text("lerning_rate: 1e-4\n")
    assert main(["train", "--config", str(f)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "unknown config key 'lerning_rate'" in err and "learning_rate" in err


def test_missing_model_is_one_clear_line(tmp_path, capsys):
    assert main(["generate", "--model", str(tmp_path / "nope"), "hi"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and str(tmp_path / "nope") in err


def test_ctrl_c_saves_a_checkpoint_and_resume_finishes(tiny_dir, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "run"
    args = [
        sys.executable,
        "-m",
        "hrpo.cli",
        "train",
        f"model_name_or_path={tiny_dir}",
        f"output_dir={out}",
        "max_steps=40",
        "num_generations=2",
        "per_device_train_batch_size=2",
        "gradient_accumulation_steps=1",
        "max_completion_length=8",
        "eval_limit=0",
        "lora_r=2",
        "lora_alpha=4",
        "save_steps=0",
        "task_args={difficulty: 0, num_train: 50, num_test: 2}",
        "--no-plots",
    ]
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "HF_HUB_OFFLINE": "1"}
    # Restore Ctrl-C in the child: a shell's background job (nohup, `&`) starts with SIGINT ignored.
    proc = subprocess.Popen(
        args,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    metrics = out / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if metrics.is_file() and metrics.read_text().count("\n") >= 2:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 130, stderr[-2000:]
    assert "checkpoint saved to" in stdout
    # The hint puts the overrides before --resume (after it, the first would be read as CHECKPOINT).
    hint = stdout.rstrip().splitlines()[-1]
    assert hint.startswith("resume with: hrpo train model_name_or_path=") and hint.endswith(" --resume")
    saved = sorted((out / "checkpoints").iterdir())
    assert len(saved) == 1 and (saved[0] / "trainer_state.json").is_file()
    step = int(saved[0].name.split("-")[1])
    assert 2 <= step < 40 and metrics.read_text().count("\n") == step

    done = subprocess.run([*args, "--resume"], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert [json.loads(line)["step"] for line in metrics.read_text().splitlines()] == list(range(1, 41))
