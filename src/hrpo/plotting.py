"""Training curves from ``metrics.jsonl``: one run (``plot_run``) or several overlaid (``plot_runs``).

Figures are drawn on an explicit Agg canvas rather than through pyplot, so plotting never opens a
window, needs no display and leaves the caller's matplotlib backend alone.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from hrpo.metrics import read_metrics
from hrpo.rundir import METRICS_FILE, PLOTS

GRID_FILE = "training_curves.png"
COMPARISON_FILE = "comparison.png"
_LINESTYLES = ("-", "--", ":", "-.")


@dataclass(frozen=True)
class Panel:
    """One subplot: the exact ``keys`` plus every key starting with ``prefix`` (and ending with
    ``suffix``, when given)."""

    name: str
    title: str
    keys: tuple[str, ...] = ()
    prefix: str | None = None
    suffix: str | None = None
    band: tuple[str, str] | None = None  # (mean key, std key) drawn as mean ± std
    logy: bool = False
    smooth: bool = True  # False for schedules (learning rates): exact values, nothing to average

    def present(self, available: Sequence[str]) -> list[str]:
        """The panel's keys found in ``available``, exact keys first, then prefixed ones sorted."""
        found = [k for k in self.keys if k in available]
        if self.prefix is not None:
            found += sorted(
                k
                for k in available
                if k.startswith(self.prefix) and k.endswith(self.suffix or "") and k not in found
            )
        return found


PANELS: tuple[Panel, ...] = (
    Panel("reward", "Reward", ("reward",), band=("reward", "reward_std")),
    Panel("rewards", "Reward by function (mean)", prefix="rewards/", suffix="/mean"),
    Panel("rewards_std", "Reward by function (std)", prefix="rewards/", suffix="/std"),
    Panel("frac_reward_zero_std", "Share of groups with tied rewards", ("frac_reward_zero_std",)),
    Panel("accuracy", "Accuracy", ("accuracy",)),
    Panel("loss", "Loss", ("loss",)),
    Panel("kl", "KL to reference", ("kl",)),
    Panel("completion_length", "Completion length (tokens)", ("completion_length",)),
    Panel("latent_ratios", "Latent mixing ratios", ("hidden_ratio", "embeds_ratio")),
    Panel(
        "latent",
        "Gate and latent (thinking positions)",
        ("input_gate", "latent_norm_ratio", "latent_input_ratio"),
    ),
    Panel("entropy", "Policy entropy (nats/token)", ("entropy",)),
    Panel("thinking_fraction", "Share of thinking tokens", ("thinking_fraction",)),
    Panel("learning_rate", "Learning rate", ("learning_rate",), prefix="lr/", logy=True, smooth=False),
    Panel("grad_norm", "Gradient norm", ("grad_norm",)),
    Panel("rollout_tokens_per_s", "Rollout throughput (tokens/s)", ("rollout_tokens_per_s",)),
    Panel("step_time", "Step time (s)", ("step_time",)),
)


def moving_average(values: np.ndarray, window: int) -> np.ndarray:
    """Centred mean over ``window`` points (fewer near the ends), same length as ``values``.

    Centred rather than trailing so the smoothed curve does not lag the raw points.
    """
    values = np.asarray(values, dtype=float)
    if window <= 1 or values.size == 0:
        return values.copy()
    csum = np.concatenate(([0.0], np.cumsum(values)))
    idx = np.arange(values.size)
    lo = np.maximum(idx - window // 2, 0)
    hi = np.minimum(idx + (window - window // 2), values.size)
    return (csum[hi] - csum[lo]) / (hi - lo)


def _window(n: int) -> int:
    # ~10% of the run, capped so long runs still show trends within a few hundred steps.
    return min(50, n // 10)


def _series(records: list[dict[str, Any]], key: str) -> tuple[np.ndarray, np.ndarray]:
    """Finite (step, value) pairs of ``key`` sorted by step; a repeated step keeps its last value."""
    by_step: dict[int, float] = {}
    for record in records:
        step, value = record.get("step"), record.get(key)
        if isinstance(step, (int, float)) and isinstance(value, (int, float)) and math.isfinite(value):
            by_step[int(step)] = float(value)
    steps = sorted(by_step)
    return np.array(steps, dtype=float), np.array([by_step[s] for s in steps], dtype=float)


def _numeric_keys(records: list[dict[str, Any]]) -> list[str]:
    """Keys (in first-seen order, minus ``step``) with at least one finite number."""
    keys: dict[str, None] = {}
    for record in records:
        for key, value in record.items():
            if (
                key != "step"
                and key not in keys
                and isinstance(value, (int, float))
                and not isinstance(value, bool)
                and math.isfinite(value)
            ):
                keys[key] = None
    return list(keys)


def _panels_for(available: Sequence[str]) -> list[Panel]:
    """Known panels with data, then one panel per remaining metric so nothing logged is hidden."""
    panels = [p for p in PANELS if p.present(available)]
    covered = {k for p in panels for k in p.present(available)}
    covered |= {p.band[1] for p in panels if p.band is not None}
    for key in available:
        if key not in covered:
            panels.append(Panel(key.replace("/", "_"), key, (key,)))
    return panels


def _draw(
    ax: Axes, x: np.ndarray, y: np.ndarray, color: str, label: str | None, linestyle: str, smooth: bool
) -> None:
    """Faint raw points plus a moving average when there are enough points to smooth."""
    window = _window(len(x)) if smooth else 1
    if window >= 3:
        ax.plot(x, y, color=color, alpha=0.25, linewidth=0.8, linestyle=linestyle)
        ax.plot(x, moving_average(y, window), color=color, linewidth=1.6, linestyle=linestyle, label=label)
    else:
        marker = "o" if len(x) <= 20 else None
        ax.plot(
            x, y, color=color, linewidth=1.4, linestyle=linestyle, marker=marker, markersize=3, label=label
        )


def _draw_band(
    ax: Axes, records: list[dict[str, Any]], band: tuple[str, str], color: str, label: str | None
) -> None:
    x, mean = _series(records, band[0])
    sx, std = _series(records, band[1])
    if not sx.size:
        return
    std_by_step = dict(zip(sx.tolist(), std.tolist(), strict=True))
    keep = np.array([s in std_by_step for s in x.tolist()], dtype=bool)
    if not keep.any():
        return
    x, mean = x[keep], mean[keep]
    sd = np.array([std_by_step[s] for s in x.tolist()])
    window = _window(len(x))
    if window >= 3:  # a band around noisy raw values is unreadable; follow the smoothed curve
        mean, sd = moving_average(mean, window), moving_average(sd, window)
    ax.fill_between(x, mean - sd, mean + sd, color=color, alpha=0.15, linewidth=0, label=label)


def _draw_panel(ax: Axes, panel: Panel, runs: list[tuple[str, list[dict[str, Any]]]]) -> None:
    """Draw ``panel`` for every run: colour per run, line style per key."""
    multi_run = len(runs) > 1
    drawn: set[str] = set()
    for i, (label, records) in enumerate(runs):
        color = f"C{i % 10}"
        keys = panel.present(_numeric_keys(records))
        drawn.update(keys)
        if panel.band is not None and panel.band[0] in keys:
            _draw_band(ax, records, panel.band, color, None if multi_run else f"± {panel.band[1]}")
        for j, key in enumerate(keys):
            x, y = _series(records, key)
            if multi_run:
                name = label if len(keys) == 1 else f"{label}: {key}"
            else:
                # Single run: colour per key, so several keys stay tellable apart.
                color, name = f"C{j % 10}", key
            style = _LINESTYLES[j % len(_LINESTYLES)] if multi_run else "-"
            _draw(ax, x, y, color, name, style, panel.smooth)
    title = panel.title
    if panel.prefix is not None and len(drawn) == 1:  # no legend names a lone prefixed key
        title += f" ({next(iter(drawn))})"
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("step", fontsize=8)
    ax.tick_params(labelsize=8)
    ax.grid(True, alpha=0.3)
    if panel.logy and all(line.get_ydata().min() > 0 for line in ax.get_lines() if len(line.get_ydata())):
        ax.set_yscale("log")
    if len(ax.get_legend_handles_labels()[1]) > 1:  # a lone curve is named by the title already
        ax.legend(fontsize=7, loc="best")


def _save(fig: Figure, path: Path) -> Path:
    """Write ``fig`` as PNG via a temp file, so a reader never sees a half-written image."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.tmp-", suffix=".png", dir=path.parent)
    os.close(fd)
    try:
        fig.savefig(tmp, format="png", dpi=100)
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would make plots unreadable to other users
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _grid(panels: list[Panel], runs: list[tuple[str, list[dict[str, Any]]]], title: str) -> Figure:
    ncols = min(3, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig = Figure(figsize=(5 * ncols, 3.4 * nrows + 0.4), layout="constrained")
    FigureCanvasAgg(fig)
    for i, panel in enumerate(panels):
        _draw_panel(fig.add_subplot(nrows, ncols, i + 1), panel, runs)
    fig.suptitle(title)
    return fig


def _load(run_dir: str | Path) -> list[dict[str, Any]]:
    records = read_metrics(run_dir)
    if not _numeric_keys(records):
        raise ValueError(f"{Path(run_dir) / METRICS_FILE} has no metric values to plot yet")
    return records


def plot_run(run_dir: str | Path, output: str | Path | None = None, per_metric: bool = False) -> list[Path]:
    """Plot ``run_dir/metrics.jsonl``; return the written PNG paths (the grid figure first).

    ``output`` is a directory (default ``run_dir/plots``) that receives ``training_curves.png``
    and, with ``per_metric``, one ``<metric>.png`` per panel; a ``.png`` path names the grid
    figure itself (per-metric files then go beside it). Metrics the run did not log are skipped.
    """
    run_dir = Path(run_dir)
    records = _load(run_dir)
    if output is None:
        out_dir, grid_path = run_dir / PLOTS, run_dir / PLOTS / GRID_FILE
    elif Path(output).suffix.lower() == ".png":
        grid_path = Path(output)
        out_dir = grid_path.parent
    else:
        out_dir = Path(output)
        grid_path = out_dir / GRID_FILE

    runs = [(run_dir.name, records)]
    panels = _panels_for(_numeric_keys(records))
    written = [_save(_grid(panels, runs, f"{run_dir.name} — training curves"), grid_path)]
    if per_metric:
        for panel in panels:
            fig = Figure(figsize=(6, 4), layout="constrained")
            FigureCanvasAgg(fig)
            _draw_panel(fig.add_subplot(), panel, runs)
            written.append(_save(fig, out_dir / f"{panel.name}.png"))
    return written


def plot_runs(
    run_dirs: Sequence[str | Path],
    labels: Sequence[str] | None = None,
    output: str | Path | None = None,
) -> list[Path]:
    """Overlay several runs (e.g. HRPO vs GRPO) per metric in one grid figure; return ``[path]``.

    ``labels`` default to the run directory names. ``output`` is a ``.png`` path or a directory
    (receiving ``comparison.png``); by default the runs' common parent directory.
    """
    dirs = [Path(d) for d in run_dirs]
    if not dirs:
        raise ValueError("plot_runs needs at least one run directory")
    if labels is None:
        labels = [d.name for d in dirs]
        if len(set(labels)) < len(labels):  # same leaf names (a/run, b/run): show more of the path
            labels = [str(d) for d in dirs]
    elif len(labels) != len(dirs):
        raise ValueError(f"got {len(labels)} labels for {len(dirs)} runs")

    runs = [(str(label), _load(d)) for label, d in zip(labels, dirs, strict=True)]
    if output is None:
        output = Path(os.path.commonpath([d.absolute() for d in dirs])) / COMPARISON_FILE
    output = Path(output)
    if output.suffix.lower() != ".png":
        output = output / COMPARISON_FILE

    available = list(dict.fromkeys(k for _, records in runs for k in _numeric_keys(records)))
    fig = _grid(_panels_for(available), runs, " vs ".join(label for label, _ in runs))
    return [_save(fig, output)]
