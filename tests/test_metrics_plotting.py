"""MetricsLogger (metrics.jsonl, samples.jsonl, resume, dashboards) and the training-curve plots."""

from __future__ import annotations

import json
import math
import random
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from hrpo.metrics import KNOWN_BACKENDS, MetricsLogger, parse_report_to, read_metrics
from hrpo.plotting import moving_average, plot_run, plot_runs

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _strict_lines(path: Path) -> list[dict[str, Any]]:
    """Parse every line as strict JSON (NaN/Infinity tokens are rejected)."""

    def reject(token: str) -> None:
        raise ValueError(f"non-standard JSON token {token}")

    return [json.loads(line, parse_constant=reject) for line in path.read_text().splitlines()]


def _metrics(step: int, rng: random.Random) -> dict[str, float]:
    """One step of realistic trainer metrics."""
    acc = min(1.0, max(0.0, 0.1 + step / 80 + rng.gauss(0, 0.1)))
    return {
        "loss": rng.gauss(0, 0.05),
        "reward": acc + 0.2,
        "reward_std": 0.2 + 0.1 * rng.random(),
        "frac_reward_zero_std": 0.25 * rng.random(),
        "rewards/arithmetic_accuracy/mean": acc,
        "rewards/arithmetic_accuracy/std": 0.3 + 0.1 * rng.random(),
        "kl": step * 1e-4 + abs(rng.gauss(0, 1e-3)),
        "completion_length": 120 - step * 0.3 + rng.gauss(0, 8),
        "embeds_ratio": 0.9 - step * 0.002,
        "hidden_ratio": 0.1 + step * 0.002,
        "learning_rate": 1e-5 * min(1.0, step / 10),
        "grad_norm": abs(rng.gauss(1.0, 0.3)),
    }


def _write_run(run_dir: Path, steps: int = 60, seed: int = 0) -> Path:
    """A synthetic metrics.jsonl as the trainer writes it."""
    rng = random.Random(seed)
    run_dir.mkdir(parents=True, exist_ok=True)
    with (run_dir / "metrics.jsonl").open("w") as fh:
        for step in range(1, steps + 1):
            fh.write(json.dumps({"step": step, **_metrics(step, rng)}) + "\n")
    return run_dir


def _assert_png(path: Path) -> None:
    assert path.is_file() and path.stat().st_size > 1000
    assert path.read_bytes()[:8] == PNG_MAGIC


# --- MetricsLogger ------------------------------------------------------------------------------


def test_log_writes_strict_jsonl_with_nan_as_null(tmp_path: Path) -> None:
    with MetricsLogger(tmp_path) as logger:
        logger.log(1, {"loss": 0.5, "reward": float("nan"), "kl": float("inf")})
        logger.log(2, {"loss": torch.tensor(0.25), "accuracy": np.float32(0.5), "reward": 1})
        # Flushed per line: readable before close, as after a kill.
        assert len(_strict_lines(tmp_path / "metrics.jsonl")) == 2
    rows = _strict_lines(tmp_path / "metrics.jsonl")
    assert rows == [
        {"step": 1, "loss": 0.5, "reward": None, "kl": None},
        {"step": 2, "loss": 0.25, "accuracy": 0.5, "reward": 1.0},
    ]
    assert all(next(iter(row)) == "step" for row in rows)
    assert read_metrics(tmp_path) == rows
    assert read_metrics(tmp_path / "metrics.jsonl") == rows


def test_log_rejects_bad_metrics(tmp_path: Path) -> None:
    with MetricsLogger(tmp_path) as logger:
        with pytest.raises(TypeError, match="'note'"):
            logger.log(1, {"note": "hello"})
        with pytest.raises(ValueError, match="step"):
            logger.log(1, {"step": 3.0})
    with pytest.raises(ValueError, match="closed"):
        logger.log(2, {"loss": 1.0})
    logger.close()  # idempotent


def test_resume_drops_later_steps_and_matches_uninterrupted_run(tmp_path: Path) -> None:
    rng = random.Random(0)
    per_step = {s: _metrics(s, rng) for s in range(1, 11)}

    with MetricsLogger(tmp_path / "straight") as logger:
        for step in range(1, 11):
            logger.log(step, per_step[step])
            logger.log_samples(step, [{"prompt": "1+1=", "completion": "2", "reward": 1.0}])

    resumed = tmp_path / "resumed"
    with MetricsLogger(resumed) as logger:  # checkpoint at 5, then "killed" after step 7
        for step in range(1, 8):
            logger.log(step, per_step[step])
            logger.log_samples(step, [{"prompt": "1+1=", "completion": "2", "reward": 1.0}])
    with (resumed / "metrics.jsonl").open("a") as fh:
        fh.write('{"step": 8, "loss": 0.')  # the half line a kill mid-write leaves
    with pytest.warns(RuntimeWarning, match="line 8"), MetricsLogger(resumed, resume_step=5) as logger:
        assert [r["step"] for r in read_metrics(resumed)] == [1, 2, 3, 4, 5]
        for step in range(6, 11):
            logger.log(step, per_step[step])
            logger.log_samples(step, [{"prompt": "1+1=", "completion": "2", "reward": 1.0}])

    for name in ("metrics.jsonl", "samples.jsonl"):
        assert (resumed / name).read_bytes() == (tmp_path / "straight" / name).read_bytes()
    assert not list(resumed.glob(".*tmp*"))


def test_fresh_run_starts_files_anew(tmp_path: Path) -> None:
    with MetricsLogger(tmp_path) as logger:
        logger.log(1, {"loss": 1.0})
        logger.log_samples(1, [{"prompt": "p", "completion": "c"}])
    with MetricsLogger(tmp_path) as logger:
        logger.log(1, {"loss": 2.0})
    assert read_metrics(tmp_path) == [{"step": 1, "loss": 2.0}]
    assert not (tmp_path / "samples.jsonl").exists()


def test_samples_file(tmp_path: Path) -> None:
    rows = [
        {"prompt": "What is 2+3?", "completion": "<answer>5</answer>", "reward": 1.0, "hidden_ratio": 0.2},
        {"prompt": "What is 2+3?", "completion": "6", "reward": float("nan"), "extra": torch.tensor([1, 2])},
    ]
    with MetricsLogger(tmp_path) as logger:
        assert not (tmp_path / "samples.jsonl").exists()  # only created when samples are logged
        logger.log_samples(4, rows)
        logger.log_samples(8, rows[:1])
    lines = _strict_lines(tmp_path / "samples.jsonl")
    assert [line["step"] for line in lines] == [4, 4, 8]
    assert lines[0] == {"step": 4, **rows[0]}
    assert lines[1]["reward"] is None and lines[1]["extra"] == [1, 2]


def test_non_main_process_writes_nothing(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    with MetricsLogger(run_dir, report_to="tensorboard", is_main_process=False) as logger:
        logger.log(1, {"loss": 1.0})
        logger.log_samples(1, [{"prompt": "p"}])
    assert not run_dir.exists()


def test_report_to_validation() -> None:
    assert parse_report_to(None) == []
    assert parse_report_to("none") == []
    assert parse_report_to(["none"]) == []
    assert parse_report_to("tensorboard, WandB") == ["tensorboard", "wandb"]
    with pytest.raises(ValueError) as err:
        parse_report_to(["tensorboard", "mlflow"])
    for name in KNOWN_BACKENDS:
        assert name in str(err.value)
    assert "mlflow" in str(err.value)
    with pytest.raises(ValueError, match="none"):
        parse_report_to(["none", "wandb"])


def test_unknown_backend_fails_on_every_rank(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="known: tensorboard, wandb, trackio, none"):
        MetricsLogger(tmp_path / "run", report_to="comet", is_main_process=False)


@pytest.mark.parametrize(
    ("backend", "module", "hint"),
    [
        ("tensorboard", "torch.utils.tensorboard", "pip install 'hrpo[tensorboard]'"),
        ("wandb", "wandb", "pip install 'hrpo[wandb]'"),
        ("trackio", "trackio", "pip install trackio"),
    ],
)
def test_missing_backend_raises_import_error_at_construction(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, backend: str, module: str, hint: str
) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # makes the import fail even where it is installed
    with pytest.raises(ImportError) as err:
        MetricsLogger(tmp_path / "run", report_to=[backend])
    assert hint in str(err.value)
    assert not (tmp_path / "run").exists()  # nothing is written before the backends are checked


class _Recorder:
    """Stands in for SummaryWriter / wandb / trackio and records every call."""

    def __init__(self, calls: list[tuple[str, Any]], prefix: str) -> None:
        self.calls, self.prefix = calls, prefix

    def __getattr__(self, name: str) -> Any:
        def record(*args: Any, **kwargs: Any) -> _Recorder:
            self.calls.append((f"{self.prefix}.{name}", (args, kwargs)))
            return self

        return record


def test_backends_receive_every_step(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, Any]] = []
    tb = types.ModuleType("torch.utils.tensorboard")
    tb.SummaryWriter = lambda **kw: (calls.append(("tb.SummaryWriter", ((), kw))), _Recorder(calls, "tb"))[1]
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", tb)
    monkeypatch.setitem(sys.modules, "wandb", _Recorder(calls, "wandb"))
    monkeypatch.setitem(sys.modules, "trackio", _Recorder(calls, "trackio"))

    config = {"model": "tiny", "lr": 1e-5}
    with MetricsLogger(tmp_path, report_to=["tensorboard", "wandb", "trackio"], config=config) as logger:
        logger.log(3, {"loss": 0.5, "kl": float("nan")})
    names = [name for name, _ in calls]
    assert names.index("tb.SummaryWriter") < names.index("wandb.init") < names.index("trackio.init")
    assert ("tb.add_scalar", (("loss", 0.5, 3), {})) in calls
    assert ("wandb.log", (({"loss": 0.5, "kl": pytest.approx(math.nan, nan_ok=True)},), {"step": 3})) in calls
    wandb_init = dict(calls)["wandb.init"][1]
    assert wandb_init["config"] == config
    assert wandb_init["id"] == (tmp_path / "wandb_run_id").read_text().strip()
    assert {"tb.close", "wandb.finish", "trackio.finish"} <= set(names)

    # A resumed run continues the same W&B run and purges TensorBoard events after the checkpoint.
    calls.clear()
    with MetricsLogger(tmp_path, report_to="tensorboard,wandb", resume_step=2):
        pass
    assert dict(calls)["tb.SummaryWriter"][1]["purge_step"] == 3
    assert dict(calls)["wandb.init"][1]["id"] == wandb_init["id"]


# --- plotting -----------------------------------------------------------------------------------


def test_moving_average() -> None:
    np.testing.assert_allclose(moving_average(np.array([1.0, 2.0, 3.0, 4.0]), 1), [1, 2, 3, 4])
    np.testing.assert_allclose(moving_average(np.array([0.0, 3.0, 6.0, 9.0]), 3), [1.5, 3, 6, 7.5])
    assert moving_average(np.array([]), 5).size == 0


def test_plot_run_writes_pngs(tmp_path: Path) -> None:
    run_dir = _write_run(tmp_path / "hrpo")
    paths = plot_run(run_dir, per_metric=True)
    assert paths[0] == run_dir / "plots" / "training_curves.png"
    names = {p.name for p in paths[1:]}
    assert {"reward.png", "rewards.png", "kl.png", "completion_length.png", "latent_ratios.png"} <= names
    assert {"rewards_std.png", "frac_reward_zero_std.png"} <= names
    assert not any(n.startswith("rewards_arithmetic") for n in names)  # both in the per-function panels
    assert {"loss.png", "learning_rate.png", "grad_norm.png"} <= names
    assert "accuracy.png" not in names  # not logged by this run: skipped
    for path in paths:
        _assert_png(path)
    assert all(p.parent == run_dir / "plots" for p in paths)


def test_plot_run_output_file_or_directory(tmp_path: Path) -> None:
    run_dir = _write_run(tmp_path / "run", steps=5)
    assert plot_run(run_dir, tmp_path / "figs" / "curves.png") == [tmp_path / "figs" / "curves.png"]
    assert plot_run(run_dir, tmp_path / "out") == [tmp_path / "out" / "training_curves.png"]
    _assert_png(tmp_path / "out" / "training_curves.png")


def test_plot_run_skips_missing_metrics(tmp_path: Path) -> None:
    (tmp_path / "metrics.jsonl").write_text(
        "\n".join(json.dumps({"step": s, "reward": s / 10, "kl": None}) for s in range(1, 4)) + "\n"
    )
    paths = plot_run(tmp_path, per_metric=True)
    assert [p.name for p in paths] == ["training_curves.png", "reward.png"]  # kl is all-null


def test_plot_run_without_metrics_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "metrics.jsonl")):
        plot_run(tmp_path)
    (tmp_path / "metrics.jsonl").write_text("")
    with pytest.raises(ValueError, match="no metric values"):
        plot_run(tmp_path)


def test_plot_run_reads_up_to_corrupt_last_line(tmp_path: Path) -> None:
    run_dir = _write_run(tmp_path / "run", steps=30)
    with (run_dir / "metrics.jsonl").open("a") as fh:
        fh.write('{"step": 31, "loss": 0.1, "rew')
    with pytest.warns(RuntimeWarning, match=r"line 31 is corrupt"):
        assert len(read_metrics(run_dir)) == 30
    with pytest.warns(RuntimeWarning, match=r"line 31"):
        [path] = plot_run(run_dir)
    _assert_png(path)


def test_plot_runs_overlays_two_runs(tmp_path: Path) -> None:
    hrpo = _write_run(tmp_path / "hrpo", steps=60, seed=1)
    grpo = _write_run(tmp_path / "grpo", steps=40, seed=2)
    [path] = plot_runs([hrpo, grpo], labels=["HRPO", "GRPO"], output=tmp_path / "cmp.png")
    assert path == tmp_path / "cmp.png"
    _assert_png(path)
    assert plot_runs([hrpo, grpo]) == [tmp_path / "comparison.png"]  # default: the common parent
    with pytest.raises(ValueError, match="2 labels for 1 runs"):
        plot_runs([hrpo], labels=["a", "b"])
