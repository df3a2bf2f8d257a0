"""Per-step training metrics: a crash-safe ``metrics.jsonl`` plus optional TensorBoard/W&B/Trackio.

The JSONL file is the source of truth (``hrpo plot`` reads it); the dashboards are mirrors.
Each line is flushed as it is logged, so a killed run keeps every line logged before the kill; a
resumed run first drops (atomically) the lines after its checkpoint, so its file ends up equal to
an uninterrupted run's. Whether a fresh run may start in a directory at all is decided before the
logger opens it (:mod:`hrpo.rundir`: a directory holding a run is refused or overwritten).
"""

from __future__ import annotations

import importlib
import json
import math
import os
import resource
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, TextIO

import torch

from hrpo.loss import truncated_rows
from hrpo.marker import find_markers
from hrpo.reward import reward_metrics
from hrpo.rundir import METRICS_FILE, SAMPLES_FILE, WANDB_ID_FILE
from hrpo.storage import atomic_write_text, read_jsonl

if TYPE_CHECKING:  # types only: the trainer imports this module
    from accelerate import Accelerator

    from hrpo.batch import Rollout, StepBatch, UpdateStats
    from hrpo.config import HRPOConfig
    from hrpo.rollout import RolloutConfig

KNOWN_BACKENDS = ("tensorboard", "wandb", "trackio", "none")
INSTALL_HINTS = {
    "tensorboard": "pip install 'hrpo[tensorboard]'",
    "wandb": "pip install 'hrpo[wandb]'",
    "trackio": "pip install trackio",
}


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _to_float(key: str, value: Any) -> float:
    try:
        return float(value)  # also accepts 0-d tensors and numpy scalars
    except (TypeError, ValueError) as exc:
        raise TypeError(f"metric {key!r} must be a number, got {type(value).__name__}: {value!r}") from exc


def _jsonable(value: Any) -> Any:
    """Recursively make ``value`` strict-JSON safe: non-finite floats become null, odd types str."""
    if isinstance(value, float):
        return _finite_or_none(value)
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:
        return _jsonable(value.item())  # tensor / numpy scalar
    if hasattr(value, "tolist"):
        return _jsonable(value.tolist())
    return str(value)


def _dumps(record: Mapping[str, Any]) -> str:
    # allow_nan=False turns any NaN that slipped through into an error instead of invalid JSON.
    return json.dumps(_jsonable(record), ensure_ascii=False, allow_nan=False)


def peak_memory_gb() -> float:
    """This step's peak GPU memory allocated (GiB) on CUDA; the process's peak RSS on CPU."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB


def parse_report_to(report_to: list[str] | tuple[str, ...] | str | None) -> list[str]:
    """Normalise ``report_to`` (None, ``"none"``, ``"a,b"`` or a list) to a list of backend names."""
    if report_to is None:
        return []
    names = report_to.split(",") if isinstance(report_to, str) else list(report_to)
    names = [str(n).strip().lower() for n in names if str(n).strip()]
    unknown = [n for n in names if n not in KNOWN_BACKENDS]
    if unknown:
        raise ValueError(f"unknown report_to backend(s) {unknown}; known: {', '.join(KNOWN_BACKENDS)}")
    if "none" in names and len(names) > 1:
        raise ValueError(f"report_to 'none' cannot be combined with other backends: {names}")
    return list(dict.fromkeys(n for n in names if n != "none"))


def _import_backend(name: str, module: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(
            f"report_to={name!r} needs the {name} package, which is not installed: {INSTALL_HINTS[name]}"
        ) from exc


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """Records of ``run_dir/metrics.jsonl`` (or of the given ``.jsonl`` file); null values stay None."""
    path = Path(run_dir)
    if path.is_dir() or path.suffix != ".jsonl":
        path = path / METRICS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no metrics file at {path}")
    return read_jsonl(path)


def _truncate_after(path: Path, step: int) -> None:
    """Atomically drop the records of ``path`` logged after ``step`` (and any corrupt tail)."""
    if path.exists():
        kept = [r for r in read_jsonl(path) if isinstance(r.get("step"), int) and r["step"] <= step]
        atomic_write_text(path, "".join(_dumps(r) + "\n" for r in kept))


class MetricsLogger:
    """Writes per-step metrics of one run to ``run_dir/metrics.jsonl`` and the chosen dashboards.

    A fresh run (``resume_step=None``) starts the files anew; a resumed run keeps the lines up to
    ``resume_step`` so its files end up equal to an uninterrupted run's. Only the main process
    writes; on the others every method is a no-op.
    """

    def __init__(
        self,
        run_dir: str | Path,
        report_to: list[str] | str | None = None,
        config: dict | None = None,
        resume_step: int | None = None,
        is_main_process: bool = True,
        run_name: str | None = None,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.run_name = run_name or self.run_dir.name  # the dashboards' name of the run
        self.backends = parse_report_to(report_to)  # validated on every rank: a typo fails everywhere
        self.resume_step = resume_step
        self.is_main_process = is_main_process
        self.metrics_path = self.run_dir / METRICS_FILE
        self.samples_path = self.run_dir / SAMPLES_FILE
        self._metrics_fh: TextIO | None = None
        self._samples_fh: TextIO | None = None
        self._tb_writer: Any = None
        self._wandb: Any = None
        self._wandb_run: Any = None
        self._trackio: Any = None
        self._closed = False
        if not is_main_process:
            return

        # Import every backend before touching any file, so a missing package fails fast and clean.
        modules = {
            name: _import_backend(name, module)
            for name, module in (
                ("tensorboard", "torch.utils.tensorboard"),
                ("wandb", "wandb"),
                ("trackio", "trackio"),
            )
            if name in self.backends
        }

        self.run_dir.mkdir(parents=True, exist_ok=True)
        if resume_step is None:
            # A fresh run must not inherit an earlier run's lines. (The trainer has already refused
            # or overwritten a directory holding a run, see hrpo.rundir.)
            self.samples_path.unlink(missing_ok=True)
            self._metrics_fh = self.metrics_path.open("w", encoding="utf-8")
        else:
            _truncate_after(self.metrics_path, resume_step)
            _truncate_after(self.samples_path, resume_step)
            self._metrics_fh = self.metrics_path.open("a", encoding="utf-8")

        try:
            self._start_backends(modules, config or {})
        except BaseException:
            self.close()
            raise

    def _start_backends(self, modules: dict[str, Any], config: dict) -> None:
        if "tensorboard" in modules:
            # purge_step makes TensorBoard hide the events a crashed run wrote after the checkpoint.
            purge = None if self.resume_step is None else self.resume_step + 1
            self._tb_writer = modules["tensorboard"].SummaryWriter(
                log_dir=str(self.run_dir / "tensorboard"), purge_step=purge
            )
            if config:
                text = json.dumps(_jsonable(config), indent=2)
                self._tb_writer.add_text("config", f"```\n{text}\n```", 0)
        if "wandb" in modules:
            self._wandb = modules["wandb"]
            id_file = self.run_dir / WANDB_ID_FILE
            if self.resume_step is not None and id_file.exists():
                run_id = id_file.read_text().strip()
            else:
                run_id = uuid.uuid4().hex[:8]
                atomic_write_text(id_file, run_id + "\n")
            self._wandb_run = self._wandb.init(
                project=os.environ.get("WANDB_PROJECT", "hrpo"),
                name=self.run_name,
                id=run_id,
                resume="allow",
                dir=str(self.run_dir),
                config=_jsonable(config),
            )
        if "trackio" in modules:
            self._trackio = modules["trackio"]
            self._trackio.init(
                project=os.environ.get("TRACKIO_PROJECT", "hrpo"),
                name=self.run_name,
                config=_jsonable(config),
                resume="never" if self.resume_step is None else "allow",
            )

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError("MetricsLogger is closed")

    def log(self, step: int, metrics: Mapping[str, Any]) -> None:
        """Append one ``{"step": step, **metrics}`` line (non-finite values as null) and mirror it."""
        self._check_open()
        if not self.is_main_process:
            return
        if "step" in metrics:
            raise ValueError("'step' is passed as its own argument, not inside metrics")
        values = {key: _to_float(key, value) for key, value in metrics.items()}
        step = int(step)
        assert self._metrics_fh is not None
        record = {"step": step, **{k: _finite_or_none(v) for k, v in values.items()}}
        self._metrics_fh.write(_dumps(record) + "\n")
        self._metrics_fh.flush()  # a killed run keeps every line logged before the kill

        if self._tb_writer is not None:
            for key, value in values.items():
                self._tb_writer.add_scalar(key, value, step)
            self._tb_writer.flush()
        if self._wandb is not None:
            self._wandb.log(values, step=step)
        if self._trackio is not None:
            self._trackio.log(values, step=step)

    def log_samples(self, step: int, rows: Iterable[Mapping[str, Any]]) -> None:
        """Append ``{"step": step, **row}`` lines (prompt, completion, reward…) to ``samples.jsonl``."""
        self._check_open()
        if not self.is_main_process:
            return
        if self._samples_fh is None:
            # Opened lazily: runs that never log samples get no empty samples file.
            self._samples_fh = self.samples_path.open("a", encoding="utf-8")
        step = int(step)
        self._samples_fh.writelines(_dumps({"step": step, **row}) + "\n" for row in rows)
        self._samples_fh.flush()

    def close(self) -> None:
        """Flush and close the files and dashboards; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        for fh in (self._metrics_fh, self._samples_fh):
            if fh is not None:
                fh.close()
        if self._tb_writer is not None:
            self._tb_writer.close()
        if self._wandb_run is not None:
            self._wandb_run.finish()
        if self._trackio is not None:
            self._trackio.finish()

    def __enter__(self) -> MetricsLogger:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def step_metrics(
    batch: StepBatch,
    stats: UpdateStats,
    *,
    config: HRPOConfig,
    accelerator: Accelerator,
    task: Any | None,
    rollout_config: RolloutConfig,
    loss_mask: torch.Tensor,
    eos_ids: torch.Tensor,
    param_groups: list[dict[str, Any]],
) -> dict[str, float]:
    """One training step's metrics, averaged over every process's completions or tokens:
    rewards (:func:`hrpo.reward.reward_metrics`), accuracy, the loss pass's KL, clipping and
    entropy, lengths and markers, what the hybrid mechanism did, learning rates and speed."""
    cfg, acc, ro = config, accelerator, batch.rollout

    def total(x: torch.Tensor | float) -> float:
        return float(acc.gather(torch.as_tensor(x, dtype=torch.float32).reshape(1).to(acc.device)).sum())

    def mean(x: torch.Tensor) -> float:
        return float(acc.gather(x.float().to(acc.device).reshape(-1)).mean())

    tokens = total(ro.completion_mask.sum())
    metrics: dict[str, float] = {
        "loss": total(stats.loss) / max(stats.updates, 1),  # mean over the step's updates
        **reward_metrics(
            batch.all_rewards,
            {name: acc.gather(v.to(acc.device)) for name, v in batch.reward_parts.items()},
            cfg.num_generations,
        ),
    }
    if task is not None:
        correct = task.grade(ro.completion_texts, batch.rows)
        metrics["accuracy"] = mean(torch.tensor(correct))
    # From the loss pass, over the tokens the loss sees (all of them unless truncated
    # completions are masked), averaged over the num_iterations passes.
    loss_tokens = total(loss_mask.sum()) or 1.0
    metrics["kl"] = total(stats.kl) / cfg.num_iterations / loss_tokens
    metrics["clip_ratio"] = total(stats.clipped) / (cfg.num_iterations * loss_tokens)
    # TRL's: ratio below 1 − ε with A < 0, above 1 + ε_high with A > 0, and either (the
    # region where clipping zeroes the gradient), per token or per sequence (GSPO).
    clip_count = total(stats.clip_count) or 1.0
    metrics["clip_ratio/low_mean"] = total(stats.clip_low) / clip_count
    metrics["clip_ratio/high_mean"] = total(stats.clip_high) / clip_count
    metrics["clip_ratio/region_mean"] = total(stats.clip_region) / clip_count
    # TRL's extremes over processes of each process's own share (one process: the mean).
    local_count = max(float(stats.clip_count), 1.0)
    metrics["clip_ratio/low_min"] = float(acc.gather(_scalar(stats.clip_low / local_count, acc)).min())
    metrics["clip_ratio/high_max"] = float(acc.gather(_scalar(stats.clip_high / local_count, acc)).max())
    metrics["completion_length"] = mean(ro.completion_lengths)
    # TRL's names: lengths over every process's completions, and the fraction truncated (no EOS).
    lengths = acc.gather(ro.completion_lengths.float().to(acc.device).reshape(-1))
    metrics["completions/mean_length"] = float(lengths.mean())
    metrics["completions/min_length"] = float(lengths.min())
    metrics["completions/max_length"] = float(lengths.max())
    truncated = acc.gather(
        truncated_rows(ro.completion_ids, ro.completion_mask, eos_ids).float().to(acc.device)
    )
    metrics["completions/clipped_ratio"] = float(truncated.mean())
    # TRL's lengths of the completions that ended (an EOS before the limit); 0 when none did.
    ended = lengths[~truncated.bool().reshape(-1)]
    metrics["completions/mean_terminated_length"] = float(ended.mean()) if len(ended) else 0.0
    metrics["completions/min_terminated_length"] = float(ended.min()) if len(ended) else 0.0
    metrics["completions/max_terminated_length"] = float(ended.max()) if len(ended) else 0.0
    # The strict reward is 0 with two answer markers; headings are occurrences the rule skipped.
    rcfg = rollout_config
    found = [find_markers(c, rcfg.answer_marker, rcfg.ignore_marker_headings) for c in ro.completion_texts]
    metrics["multiple_markers"] = mean(torch.tensor([len(f.answers) > 1 for f in found]))
    metrics["heading_markers"] = mean(torch.tensor([len(f.headings) > 0 for f in found]))
    metrics.update(mechanism_metrics(ro, total, tokens))
    # The policy's entropy at the loss temperature over the loss tokens, from the loss pass
    # (TRL's "entropy"); the rollout's, at τ over every completion token, for comparison.
    metrics["entropy"] = total(stats.entropy) / cfg.num_iterations / loss_tokens
    if ro.entropy is not None:
        metrics["rollout_entropy"] = total((ro.entropy * ro.completion_mask).sum()) / tokens
    for group in param_groups:
        metrics[f"lr/{group['name']}"] = group["lr"]
    metrics["grad_norm"] = stats.grad_norm
    metrics["rollout_tokens_per_s"] = tokens / max(batch.rollout_seconds, 1e-9) / acc.num_processes
    metrics["step_time"] = time.perf_counter() - batch.started
    metrics["peak_memory_gb"] = peak_memory_gb()
    return metrics


def _scalar(x: torch.Tensor | float, acc: Any) -> torch.Tensor:
    return torch.as_tensor(x, dtype=torch.float32).reshape(1).to(acc.device)


def mechanism_metrics(ro: Rollout, total: Callable[[Any], float], tokens: float) -> dict[str, float]:
    """What the hybrid mechanism did (spec §2) over every process's thinking positions: their
    share of the tokens, a, sqrt(1 − a²), i, and how large the latent and its contribution to the
    fed input are relative to the token embedding. ``total`` sums a value over processes."""
    think = ro.thinking_mask.float()
    n_think = total(think.sum())

    def think_mean(x: torch.Tensor | None, default: float) -> float:
        return default if x is None or not n_think else total((x * think).sum()) / n_think

    return {
        "thinking_fraction": n_think / tokens,
        "embeds_ratio": think_mean(ro.embeds_ratio, 1.0),
        "hidden_ratio": think_mean(ro.hidden_ratio, 0.0),
        "input_gate": think_mean(ro.input_gate, 0.0),
        "latent_norm_ratio": think_mean(ro.latent_norm_ratio, 0.0),
        "latent_input_ratio": think_mean(ro.latent_input_ratio, 0.0),
    }
