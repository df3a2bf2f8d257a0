"""Run directories never lose data: fresh runs refuse or overwrite old ones, one writer at a time,
and a run killed (SIGKILL) at any point resumes to the same result as an uninterrupted one."""

import fcntl
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hrpo.checkpoint import list_checkpoints
from hrpo.cli import main
from hrpo.rundir import (
    LOCK_FILE,
    RunDirectoryError,
    RunDirectoryInUse,
    hold_run_dir,
    holds_run,
    lock_run_dir,
    run_contents,
)
from hrpo.storage import atomic_remove, clean_leftovers

DRIVER = Path(__file__).with_name("rundir_driver.py")
# Timing and memory vary from run to run; everything else must be equal.
TIMING = ("step_time", "rollout_tokens_per_s", "peak_memory_gb", "tokens_per_second", "seconds")


def train_args(tiny_dir, out, *extra):
    return [
        "train",
        f"model_name_or_path={tiny_dir}",
        f"output_dir={out}",
        "max_steps=4",
        "num_generations=2",
        "per_device_train_batch_size=2",
        "gradient_accumulation_steps=1",
        "max_completion_length=6",
        "temperature=1.0",
        "learning_rate=1e-2",
        "gate_learning_rate=1e-2",
        "lambda_learning_rate=1e-1",
        "eval_limit=2",
        "eval_batch_size=2",
        "lora_r=2",
        "lora_alpha=4",
        "task_args={difficulty: 0, num_train: 20, num_test: 2}",
        "save_steps=2",
        "save_total_limit=1",
        "log_completions_steps=1",
        *[e for e in extra if not e.startswith("--")],  # KEY=VALUE overrides come before options
        "--no-plots",
        *[e for e in extra if e.startswith("--")],
    ]


def fake_run(path: Path, steps: int = 3, checkpoints=(2, 3)) -> None:
    """A finished-looking run: metrics, evaluations and complete checkpoints."""
    path.mkdir(parents=True)
    (path / "metrics.jsonl").write_text(
        "".join(json.dumps({"step": s, "loss": 0.5}) + "\n" for s in range(1, steps + 1))
    )
    for name in ("eval_before.json", "eval_after.json", "config.yaml"):
        (path / name).write_text("{}\n")
    for step in checkpoints:
        ckpt = path / "checkpoints" / f"step-{step:06d}"
        ckpt.mkdir(parents=True)
        (ckpt / "trainer_state.json").write_text(json.dumps({"step": step}))


def snapshot(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def no_model_load(monkeypatch):
    """Refusals must come before the model loads (fail fast)."""

    def fail(*args, **kwargs):
        raise AssertionError("the model was loaded before the run directory was checked")

    monkeypatch.setattr("hrpo.loading.load_model", fail)


# -- what holds a run, leftovers -----------------------------------------------------------------
def test_what_holds_a_run(tmp_path):
    assert not holds_run(tmp_path / "missing") and not holds_run(tmp_path)
    sweep_run = tmp_path / "sweep-run"
    sweep_run.mkdir()
    for name in ("sweep_config.yaml", "train.log", LOCK_FILE, "config.yaml"):
        (sweep_run / name).write_text("x")
    (sweep_run / "checkpoints").mkdir()  # empty: a kill during the first checkpoint, tidied
    assert not holds_run(sweep_run)
    for marker in ("metrics.jsonl", "samples.jsonl", "eval_before.json", "eval_after.json"):
        d = tmp_path / marker
        d.mkdir()
        (d / marker).write_text("")
        assert holds_run(d), marker
    fake_run(tmp_path / "run", steps=35, checkpoints=(10, 20, 30, 35))
    assert run_contents(tmp_path / "run") == [
        "metrics.jsonl up to step 35",
        "4 checkpoints step-000010 … step-000035",
        "eval_before.json",
        "eval_after.json",
    ]


def test_leftovers_of_killed_writes_are_resolved(tmp_path):
    ckpts = tmp_path / "checkpoints"
    for name in (
        "step-000002",
        ".step-000004.old-77_ab12cd34",
        ".step-000004.tmp-x1y2",
        ".step-000006.old-5_1",
    ):
        (ckpts / name).mkdir(parents=True)
        (ckpts / name / "trainer_state.json").write_text("{}")
    (ckpts / "step-000006").mkdir()
    (ckpts / "step-000006" / "trainer_state.json").write_text("{}")
    (ckpts / "step-final").mkdir()  # not a step number: never listed, never touched
    (ckpts / "step-final" / "trainer_state.json").write_text("{}")
    (ckpts / ".metrics.jsonl.tmp-abc").write_text("half")
    # Listing ignores every leftover, before and after cleaning.
    assert [p.name for p in list_checkpoints(ckpts)] == ["step-000002", "step-000006"]
    atomic_remove(ckpts / "step-000002")
    removed = clean_leftovers(ckpts)
    # killed between the two renames of a replacement: the complete old step-4 is put back
    assert sorted(p.name for p in ckpts.iterdir()) == ["step-000004", "step-000006", "step-final"]
    assert {p.name for p in removed} == {
        ".step-000004.tmp-x1y2",
        ".step-000006.old-5_1",
        ".metrics.jsonl.tmp-abc",
    }
    assert [p.name for p in list_checkpoints(ckpts)] == ["step-000004", "step-000006"]


# -- refusing and overwriting --------------------------------------------------------------------
def test_fresh_train_into_a_run_is_refused_before_anything(tiny_dir, tmp_path, capsys, monkeypatch):
    out = tmp_path / "quickstart"
    fake_run(out, steps=35, checkpoints=(30, 35))
    before = snapshot(out)
    no_model_load(monkeypatch)
    assert main(train_args(tiny_dir, out)) == 1
    err = capsys.readouterr().err
    assert err == (
        f"hrpo train: {out} holds a run (metrics.jsonl up to step 35; checkpoints step-000030, step-000035; "
        "eval_before.json; eval_after.json); continue it with --resume, delete it and start over with "
        "--overwrite (config key overwrite_output_dir), or choose another output_dir\n"
    )
    assert main(train_args(tiny_dir, out, "--resume", "--overwrite")) == 1
    assert "--resume continues the run in output_dir and --overwrite deletes it" in capsys.readouterr().err
    assert {k: v for k, v in snapshot(out).items() if k != LOCK_FILE} == before

    monkeypatch.undo()
    assert main(train_args(tiny_dir, out, "max_steps=1", "eval_limit=0", "--overwrite")) == 0
    assert f"hrpo train: deleted the run in {out} (metrics.jsonl up to step 35;" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == [
        LOCK_FILE,
        "checkpoints",
        "config.yaml",
        "metrics.jsonl",
        "samples.jsonl",
    ]
    assert [p.name for p in list_checkpoints(out / "checkpoints")] == ["step-000001"]


def test_python_api_refuses_too_and_overwrite_replaces_the_whole_run(tmp_path, make_model, tok):
    from hrpo.config import HRPOConfig
    from hrpo.trainer import HRPOTrainer

    out = tmp_path / "run"
    fake_run(out, steps=35, checkpoints=(30, 35))
    (out / "notes.txt").write_text("mine")
    (out / "plots").mkdir()
    (out / "plots" / "old.png").write_text("png")
    rows = [{"prompt": f"what is {i} + 1 ?", "answer": str(i + 1)} for i in range(8)]

    def trainer(**kw):
        cfg = HRPOConfig(
            output_dir=str(out),
            max_steps=2,
            num_generations=2,
            per_device_train_batch_size=2,
            gradient_accumulation_steps=1,
            max_completion_length=4,
            eval_limit=0,
            lora_r=2,
            lora_alpha=4,
            save_steps=1,
            **kw,
        )
        return HRPOTrainer(
            args=cfg,
            train_dataset=rows,
            reward_funcs=[lambda prompts, completions, **k: [float(len(c) % 2) for c in completions]],
            model=make_model("qwen2"),
            processing_class=tok,
            progress=False,
        )

    with pytest.raises(
        RunDirectoryError,
        match=r"holds a run .*train\(resume_from_checkpoint=True\).*overwrite_output_dir=True",
    ):
        trainer().train()
    assert (out / "checkpoints" / "step-000035").is_dir()

    trainer(overwrite_output_dir=True).train()
    names = sorted(p.name for p in out.iterdir())
    # The same run directory as `hrpo train` writes: the old plots were deleted, new ones drawn.
    assert names == [LOCK_FILE, "checkpoints", "config.yaml", "metrics.jsonl", "notes.txt", "plots"]
    assert not (out / "plots" / "old.png").exists() and any((out / "plots").glob("*.png"))
    assert [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    assert [p.name for p in list_checkpoints(out / "checkpoints")] == ["step-000001", "step-000002"]


def test_resuming_from_an_earlier_checkpoint_discards_what_came_after_it(tmp_path, make_model, tok):
    from hrpo.config import HRPOConfig
    from hrpo.trainer import HRPOTrainer

    out = tmp_path / "run"
    rows = [{"prompt": f"what is {i} + 1 ?", "answer": str(i + 1)} for i in range(8)]
    seen = {}

    def trainer(**kw):
        cfg = HRPOConfig(
            output_dir=str(out),
            max_steps=4,
            num_generations=2,
            per_device_train_batch_size=2,
            gradient_accumulation_steps=1,
            max_completion_length=4,
            temperature=1.0,
            learning_rate=1e-2,
            eval_limit=0,
            lora_r=2,
            lora_alpha=4,
            save_steps=1,
            save_total_limit=0,
        )
        return HRPOTrainer(
            args=cfg,
            train_dataset=rows,
            reward_funcs=[lambda prompts, completions, **k: [float(len(c) % 2) for c in completions]],
            model=make_model("qwen2"),
            processing_class=tok,
            progress=False,
            **kw,
        )

    trainer().train()
    first = strip_timing(read_jsonl(out / "metrics.jsonl"))
    (out / "eval_after.json").write_text("{}")

    def look(tr, step, metrics):  # while steps 3 and 4 are redone
        seen[step] = (
            sorted(p.name for p in list_checkpoints(out / "checkpoints")),
            (out / "eval_after.json").exists(),
        )

    trainer(callbacks=[look]).train(resume_from_checkpoint=out / "checkpoints" / "step-000002")
    assert seen[3] == (["step-000001", "step-000002"], False)
    # Same process, same shapes: the redone steps are bitwise the first ones.
    assert strip_timing(read_jsonl(out / "metrics.jsonl")) == first


def test_an_interrupted_overwrite_is_finished_by_the_next_holder(tmp_path):
    out = tmp_path / "run"
    fake_run(out)
    (out / "notes.txt").write_text("mine")
    # killed while moving the old run's entries into the trash: some moved, some not
    trash = out / ".hrpo-overwrite-moving-1_aa"
    trash.mkdir()
    (out / "metrics.jsonl").rename(trash / "metrics.jsonl")
    with lock_run_dir(out):
        assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE, "notes.txt"]
    # killed while deleting a trash whose moves were complete: a new run's files are never touched
    deleting = out / ".hrpo-overwrite-deleting-2_bb"
    deleting.mkdir()
    (deleting / "metrics.jsonl").write_text("old")
    (out / "metrics.jsonl").write_text("new")
    with lock_run_dir(out):
        assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE, "metrics.jsonl", "notes.txt"]
    assert (out / "metrics.jsonl").read_text() == "new"


def test_lock_is_reentrant_in_a_process_and_exclusive_between_holders(tmp_path):
    out = tmp_path / "run"
    with hold_run_dir(out, resume=False), hold_run_dir(out, resume=False):  # the CLI, then train()
        # Any other open file description (as another process would have) cannot take it.
        fd = os.open(out / LOCK_FILE, os.O_RDWR)
        with pytest.raises(BlockingIOError):
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.close(fd)
        holder = json.loads((out / LOCK_FILE).read_text())
        assert holder["pid"] == os.getpid() and holder["command"]
    fd = os.open(out / LOCK_FILE, os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released once the outermost hold ends
    assert (out / LOCK_FILE).read_text() == ""  # no stale record once released
    os.write(fd, json.dumps({"pid": 4242, "host": "elsewhere", "command": "hrpo eval --output run"}).encode())
    busy = f"{out} is in use by another hrpo process (pid 4242 on elsewhere: hrpo eval --output run); "
    with pytest.raises(RunDirectoryInUse, match=re.escape(busy)), lock_run_dir(out):
        pass
    os.close(fd)


# -- SIGKILL at every point, then --resume -------------------------------------------------------
def strip_timing(records):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in records]


def kinds(paths):
    """Leftover names without their random suffix: ``.step-000004.old-123_ab`` → ``.step-000004.old``."""
    return sorted(re.sub(r"\.(tmp|old|del)-\w+$", r".\1", p) for p in paths)


def read_jsonl(path: Path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def run_driver(tmp_path, watch, stages, timeout=600):
    spec, report = tmp_path / "spec.json", tmp_path / "report.json"
    for i, stage in enumerate(stages):
        stage.setdefault("log", str(tmp_path / f"stage-{i}.log"))
    spec.write_text(json.dumps({"watch": str(watch), "stages": stages}))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    done = subprocess.run(
        [sys.executable, str(DRIVER), str(spec), str(report)],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(report.read_text())


def test_sigkill_at_any_point_then_resume_gives_the_uninterrupted_run(tiny_dir, tmp_path):
    ref, out = tmp_path / "reference", tmp_path / "run"
    resume = train_args(tiny_dir, out, "--resume")
    plan = [  # (command, where it kills itself, what the directory then holds)
        (train_args(tiny_dir, out), ["eval:eval before", 1], "nothing"),
        (resume, ["log", 1], "step 1 logged, no checkpoint"),
        (resume, ["checkpoint-file", 2], "2 steps, checkpoint 2 half-written in its temporary directory"),
        (resume, ["before-prune", 1], "checkpoint 2 complete"),
        (resume, ["log", 1], "step 3 logged after checkpoint 2"),
        (resume, ["before-prune", 1], "checkpoints 2 and 4: not pruned yet"),
        (resume, ["replace-aside", 1], "checkpoint 4, re-saved, moved aside; the new one not renamed in"),
        (resume, ["remove", 1], "checkpoint 2, being pruned, renamed away"),
        (resume, ["eval:eval after", 1], "trained; evaluating"),
        (resume, None, "finished"),
    ]
    stages = [{"argv": train_args(tiny_dir, ref), "kill": None}]  # the uninterrupted run, same process setup
    stages += [{"argv": argv, "kill": kill} for argv, kill, _ in plan]
    report = run_driver(tmp_path, out, stages)
    logs = [Path(s["log"]).read_text()[-2000:] for s in stages]
    assert report[0]["code"] == 0, logs[0]
    states = report[1:]
    for i, ((_, kill, what), state) in enumerate(zip(plan, states, strict=True)):
        assert state["code"] == (-signal.SIGKILL if kill else 0), (what, logs[i + 1])
        assert state["lock_free"], what  # the dead process's lock went with it
    ckpt_files = [
        [p for p in s["paths"] if p.startswith("checkpoints/") and p.count("/") == 1] for s in states
    ]
    assert states[0]["paths"] == [LOCK_FILE]
    assert "checkpoints" not in states[1]["paths"] and "eval_before.json" in states[1]["paths"]
    assert kinds(ckpt_files[2]) == ["checkpoints/.step-000002.tmp"]
    assert ckpt_files[3] == ["checkpoints/step-000002"]
    assert ckpt_files[5] == ["checkpoints/step-000002", "checkpoints/step-000004"]
    assert kinds(ckpt_files[6]) == [
        "checkpoints/.step-000004.old",
        "checkpoints/.step-000004.tmp",
        "checkpoints/step-000002",
    ]
    assert kinds(ckpt_files[7]) == ["checkpoints/.step-000002.del", "checkpoints/step-000004"]
    assert "eval_after.json" not in states[8]["paths"]

    # Same code path, one thread, same shapes (and the CPU allocator's alignment), and resuming
    # restores the exact float32 state: the numbers are bitwise equal by construction.
    for name in ("metrics.jsonl", "samples.jsonl"):
        assert strip_timing(read_jsonl(out / name)) == strip_timing(read_jsonl(ref / name)), name
    assert [r["step"] for r in read_jsonl(out / "metrics.jsonl")] == [1, 2, 3, 4]
    for name in ("eval_before.json", "eval_after.json"):
        got, want = (json.loads((d / name).read_text()) for d in (out, ref))
        assert strip_timing([got]) == strip_timing([want]), name
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in ref.iterdir())
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-000004"]
    for weights in ("adapter_model.safetensors", "hrpo_gate.safetensors"):
        got, want = (d / "checkpoints/step-000004" / weights for d in (out, ref))
        assert got.read_bytes() == want.read_bytes(), weights


# -- a second process ----------------------------------------------------------------------------
def test_a_second_process_is_refused_at_once_until_the_first_dies(tiny_dir, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    ready = tmp_path / "ready"
    spec = tmp_path / "spec.json"
    spec.write_text(
        json.dumps(
            {
                "watch": str(out),
                "stages": [
                    {
                        "argv": train_args(tiny_dir, out, "max_steps=3", "eval_limit=0"),
                        "hang": ["log", 1, str(ready)],
                        "log": str(tmp_path / "holder.log"),
                    }
                ],
            }
        )
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    driver = subprocess.Popen(
        [sys.executable, str(DRIVER), str(spec), str(tmp_path / "report.json")], env=env
    )
    try:
        deadline = time.monotonic() + 300
        while not ready.is_file() and driver.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ready.is_file(), (tmp_path / "holder.log").read_text()[-2000:]
        holder = int(ready.read_text())
        held = snapshot(out)

        no_model_load(monkeypatch)
        busy = f"{out} is in use by another hrpo process (pid {holder}: hrpo train model_name_or_path="
        assert main(train_args(tiny_dir, out, "--resume")) == 1
        err = capsys.readouterr().err
        assert err.startswith(f"hrpo train: {busy}") and err.count("\n") == 1, err
        eval_args = [
            "eval",
            "--task",
            "arithmetic",
            "--model",
            str(tiny_dir),
            "--limit",
            "1",
            "--output",
            str(out),
        ]
        assert main(eval_args) == 1
        assert capsys.readouterr().err.startswith(f"hrpo eval: {busy}")
        assert snapshot(out) == held  # the holder's metric line is still there
    finally:
        if ready.is_file():
            os.kill(int(ready.read_text()), signal.SIGKILL)
        try:
            driver.wait(timeout=300)
        except subprocess.TimeoutExpired:
            driver.kill()
            raise
    assert json.loads((tmp_path / "report.json").read_text())[0]["code"] == -signal.SIGKILL

    monkeypatch.undo()
    assert main(train_args(tiny_dir, out, "max_steps=3", "eval_limit=0", "--resume")) == 0
    assert [r["step"] for r in read_jsonl(out / "metrics.jsonl")] == [1, 2, 3]
