"""Sweeps: several training configurations × seeds, run one by one, summarised in one table.

A sweep file (YAML) names a base config, settings shared by every run, the variants compared and
the seeds::

    name: arithmetic-ablations
    base_config: quickstart               # a recipe name, or a path relative to the sweep file (optional)
    output_dir: runs/sweep-arithmetic
    common: {max_steps: 20}
    seeds: [0, 1, 2]
    variants:
      grpo: {hybrid: false}
      hrpo-r0.99: {r_min: 0.99}

Each run is an ordinary ``hrpo train`` in its own process (``OUTPUT/<variant>/seed-<s>``, with
its merged ``sweep_config.yaml`` and ``train.log``), so a crash or an out-of-memory kill loses one
run, not the sweep. Finished runs (those with ``eval_after.json``) are skipped and interrupted
ones are resumed (``hrpo train --resume``: from their last checkpoint, or from step 0 if they were
stopped before their first), so running the same command again continues a sweep. A sweep holds
its output directory's lock while it runs (:mod:`hrpo.rundir`), so a second sweep into the same
directory stops at once, and each run's ``hrpo train`` holds its own run directory's.
:func:`summarize` reads what the runs wrote and produces ``results.json``, ``results.md`` and
comparison plots (mean ± std over seeds).
"""

from __future__ import annotations

import functools
import itertools
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hrpo.config import ConfigError, HRPOConfig
from hrpo.metrics import read_metrics
from hrpo.recipes import config_path, load_config, read_yaml_mapping
from hrpo.rundir import EVAL_AFTER, EVAL_BEFORE, finished, holds_run, lock_run_dir, read_eval
from hrpo.storage import atomic_file, atomic_write_text

RESULTS_JSON = "results.json"
RESULTS_MD = "results.md"
CURVES_PNG = "curves.png"
ACCURACY_PNG = "heldout_accuracy.png"
# Training metrics averaged over each run's last steps for the table (per-step values of a few
# dozen completions are too noisy to read one step).
TAIL_METRICS = (
    "reward",
    "accuracy",
    "hidden_ratio",
    "completion_length",
    "entropy",
    "thinking_fraction",
    "input_gate",
    "latent_input_ratio",
)
CURVE_METRICS = (
    ("reward", "Training reward"),
    ("accuracy", "Training accuracy"),
    ("hidden_ratio", "Hidden ratio"),
    ("completion_length", "Completion length (tokens)"),
)
MECHANISM_PNG = "mechanism.png"
# What the hybrid mechanism does per step (see HRPOTrainer's metrics).
MECHANISM_METRICS = (
    ("embeds_ratio", "Embeds ratio: mean a"),
    ("input_gate", "Input gate: mean i"),
    ("latent_norm_ratio", "Latent norm ‖h‖ / ‖ê‖"),
    ("latent_input_ratio", "Latent's share of the input ‖e − a⊙ê‖ / ‖ê‖"),
    ("entropy", "Policy entropy (nats per token)"),
    ("thinking_fraction", "Share of thinking tokens"),
)


@dataclass
class Sweep:
    """A parsed sweep file (see the module docstring)."""

    name: str
    output_dir: Path
    variants: dict[str, dict[str, Any]]
    seeds: list[int]
    base_config: Path | None = None
    common: dict[str, Any] = field(default_factory=dict)
    tail_steps: int = 5
    """Steps averaged for the table's final training metrics."""

    def run_dir(self, variant: str, seed: int) -> Path:
        return self.output_dir / variant / f"seed-{seed}"

    def config_for(self, variant: str, seed: int) -> HRPOConfig:
        """The merged config of one run: base file, then ``common``, the variant, seed and output."""
        values = dict(self.common) | dict(self.variants[variant])
        values |= {"seed": seed, "output_dir": str(self.run_dir(variant, seed))}
        try:
            return load_config(self.base_config, [f"{k}={json.dumps(v)}" for k, v in values.items()])
        except ConfigError as exc:
            raise ConfigError(f"sweep {self.name!r}, variant {variant!r}: {exc}") from exc

    def runs(self) -> list[tuple[str, int]]:
        """Seed-major order: a sweep cut short still has every variant at its first seeds."""
        return [(v, s) for s in self.seeds for v in self.variants]

    def select(
        self, variants: list[str] | None = None, seeds: list[int] | None = None
    ) -> list[tuple[str, int]]:
        """:meth:`runs` restricted to some variants and/or seeds (None: all); unknown names are an error."""
        for name, wanted, known in (("variant", variants, list(self.variants)), ("seed", seeds, self.seeds)):
            unknown = [w for w in wanted or [] if w not in known]
            if unknown:
                raise ConfigError(f"sweep {self.name!r}: unknown {name}s {unknown} (the file has {known})")
        return [
            (v, s)
            for v, s in self.runs()
            if (variants is None or v in variants) and (seeds is None or s in seeds)
        ]


def load_sweep(path: str | Path, output_dir: str | Path | None = None) -> Sweep:
    """Read and check a sweep file; every run's config is validated before anything runs."""
    path = Path(path)
    raw = read_yaml_mapping(path, "sweep")
    known = {"name", "base_config", "output_dir", "common", "seeds", "variants", "tail_steps"}
    if set(raw) - known:
        raise ConfigError(f"{path}: unknown sweep keys {sorted(set(raw) - known)} (known: {sorted(known)})")
    variants = raw.get("variants")
    if not isinstance(variants, dict) or not variants:
        raise ConfigError(f"{path}: 'variants' must map names to config overrides")
    for name, overrides in variants.items():
        if not isinstance(overrides, dict | None) or "/" in str(name):
            raise ConfigError(f"{path}: variant {name!r} must be a name (no '/') mapping to config overrides")
    seeds = raw.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) for s in seeds):
        raise ConfigError(f"{path}: 'seeds' must be a non-empty list of integers")
    common = raw.get("common") or {}
    for key in ("seed", "output_dir"):
        if key in common or any(key in (v or {}) for v in variants.values()):
            raise ConfigError(f"{path}: {key!r} is set by the sweep itself, not per run")
    base = raw.get("base_config")
    try:
        base_config = config_path(str(base), relative_to=path.parent) if base else None
    except ConfigError as exc:
        raise ConfigError(f"{path}: base_config: {exc}") from exc
    sweep = Sweep(
        name=str(raw.get("name", path.stem)),
        output_dir=Path(output_dir or raw.get("output_dir") or f"runs/sweep-{path.stem}"),
        variants={str(k): dict(v or {}) for k, v in variants.items()},
        seeds=seeds,
        base_config=base_config,
        common=dict(common),
        tail_steps=int(raw.get("tail_steps", 5)),
    )
    for variant, seed in sweep.runs():
        sweep.config_for(variant, seed)
    return sweep


# -- running -------------------------------------------------------------------------------------
def is_finished(run_dir: Path) -> bool:
    return finished(run_dir)


def _ends_line(path: Path) -> bool:
    """Whether ``path`` is empty or ends with a newline."""
    with path.open("rb") as fh:
        if fh.seek(0, os.SEEK_END) == 0:
            return True
        fh.seek(-1, os.SEEK_END)
        return fh.read(1) == b"\n"


def train_command(sweep: Sweep, variant: str, seed: int) -> list[str]:
    """The ``hrpo train`` command of one run (its merged config is written next to it); with
    ``--resume`` once the run has written anything, checkpoint or not."""
    run_dir = sweep.run_dir(variant, seed)
    cmd = [sys.executable, "-m", "hrpo.cli", "train", "--config", str(run_dir / "sweep_config.yaml")]
    return cmd + (["--resume"] if holds_run(run_dir) else [])


def run_sweep(
    sweep: Sweep,
    *,
    jobs: int = 1,
    threads: int | None = None,
    log: Callable[[str], None] | None = None,
    runs: list[tuple[str, int]] | None = None,
) -> list[tuple[str, int, int]]:
    """Run every unfinished run, ``jobs`` at a time; return ``(variant, seed, exit code)`` of those run.

    ``runs`` limits this call to some ``(variant, seed)`` pairs (see :meth:`Sweep.select`), so a
    long sweep can be run in parts; the summary always covers every finished run.

    ``threads`` sets each run's intra-op threads (``OMP_NUM_THREADS``); on a small CPU, two jobs
    of one thread each use the cores better than one job of two for a small model. Holds the
    output directory's lock meanwhile (:class:`hrpo.rundir.RunDirectoryInUse` if another sweep does).
    """
    with lock_run_dir(sweep.output_dir):
        return _run_sweep(sweep, jobs=jobs, threads=threads, log=log, runs=runs)


def _run_sweep(
    sweep: Sweep,
    *,
    jobs: int,
    threads: int | None,
    log: Callable[[str], None] | None,
    runs: list[tuple[str, int]] | None,
) -> list[tuple[str, int, int]]:
    log = log or functools.partial(print, flush=True)  # flushed: a sweep's log is usually a file
    runs = sweep.runs() if runs is None else runs
    pending = [(v, s) for v, s in runs if not is_finished(sweep.run_dir(v, s))]
    done = len(runs) - len(pending)
    log(f"sweep {sweep.name}: {len(pending)} runs to do, {done} already finished, in {sweep.output_dir}")
    env = dict(os.environ)
    if threads is not None:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    env.setdefault("TQDM_MININTERVAL", "30")  # progress lines in train.log, not a flood of them

    def one(item: tuple[str, int]) -> tuple[str, int, int]:
        variant, seed = item
        run_dir = sweep.run_dir(variant, seed)
        run_dir.mkdir(parents=True, exist_ok=True)
        with atomic_file(run_dir / "sweep_config.yaml") as tmp:
            sweep.config_for(variant, seed).save(tmp)
        cmd = train_command(sweep, variant, seed)
        start = time.perf_counter()
        log_file = run_dir / "train.log"
        with log_file.open("a", encoding="utf-8") as fh:
            # A killed run's last output (a progress bar) may lack its newline.
            fh.write(f"{'' if _ends_line(log_file) else chr(10)}$ {' '.join(cmd)}\n")
            fh.flush()
            code = subprocess.call(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env)
        minutes = (time.perf_counter() - start) / 60
        status = (
            "done" if code == 0 and is_finished(run_dir) else f"FAILED (exit {code}, see {run_dir}/train.log)"
        )
        log(f"  {variant} seed {seed}: {status} in {minutes:.1f} min")
        return variant, seed, code

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        return list(pool.map(one, pending))


# -- summarising ---------------------------------------------------------------------------------
def _mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value); NaN for none."""
    if not values:
        return math.nan, math.nan
    arr = np.asarray(values, dtype=float)
    return float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else 0.0


def permutation_p_value(a: list[float], b: list[float]) -> float:
    """Exact two-sided permutation test of a difference in means between two small samples.

    Every way of splitting the pooled values into groups of ``len(a)`` and ``len(b)`` is tried;
    the p-value is the share of splits whose |mean difference| is at least the observed one.
    It cannot go below :func:`smallest_p_value` (0.1 with 3 runs against 3): a few seeds can
    show a large effect, not always a significant one.
    """
    if not a or not b:
        return math.nan
    pooled = list(a) + list(b)
    observed = abs(float(np.mean(a)) - float(np.mean(b)))
    hits = total = 0
    for idx in itertools.combinations(range(len(pooled)), len(a)):
        chosen = set(idx)
        x = [pooled[i] for i in idx]
        y = [v for i, v in enumerate(pooled) if i not in chosen]
        hits += abs(float(np.mean(x)) - float(np.mean(y))) >= observed - 1e-12
        total += 1
    return hits / total


def smallest_p_value(n_a: int, n_b: int) -> float:
    """The smallest p-value :func:`permutation_p_value` can return for samples of these sizes.

    With distinct values only the most extreme split reaches the largest |mean difference|; with
    equal sizes its mirror image (the groups swapped) does too. So 2/C(n_a+n_b, n_a) for equal
    sizes (3 vs 3: 0.1, 4 vs 4: 0.029), 1/C(n_a+n_b, n_a) otherwise; NaN if a sample is empty.
    """
    if n_a < 1 or n_b < 1:
        return math.nan
    return min(1.0, (2 if n_a == n_b else 1) / math.comb(n_a + n_b, n_a))


def _run_record(sweep: Sweep, variant: str, seed: int) -> dict[str, Any] | None:
    run_dir = sweep.run_dir(variant, seed)
    if not is_finished(run_dir):
        return None
    before = read_eval(run_dir, EVAL_BEFORE)
    after = read_eval(run_dir, EVAL_AFTER)
    records = read_metrics(run_dir)
    tail = records[-sweep.tail_steps :]
    final = {}
    for key in TAIL_METRICS:
        vals = [r[key] for r in tail if isinstance(r.get(key), int | float)]
        final[key] = float(np.mean(vals)) if vals else None
    return {
        "variant": variant,
        "seed": seed,
        "run_dir": str(run_dir),
        "steps": len(records),
        "accuracy_before": before["accuracy"] if before else None,
        "accuracy_after": after["accuracy"],
        "eval_examples": after["num_examples"],
        "eval_hidden_ratio_after": after.get("hidden_ratio"),
        "eval_length_after": after.get("completion_length"),
        "final": final,
        "train_minutes": sum(r.get("step_time") or 0.0 for r in records) / 60,
    }


def summarize(sweep: Sweep, *, plots: bool = True) -> dict[str, Any]:
    """Aggregate the finished runs into ``results.json``, ``results.md`` and plots; return the summary."""
    with lock_run_dir(sweep.output_dir):
        return _summarize(sweep, plots=plots)


def _summarize(sweep: Sweep, *, plots: bool) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    for variant in sweep.variants:
        runs = [r for s in sweep.seeds if (r := _run_record(sweep, variant, s)) is not None]
        row: dict[str, Any] = {"variant": variant, "overrides": sweep.variants[variant], "runs": runs}
        for key in ("accuracy_before", "accuracy_after"):
            vals = [r[key] for r in runs if r[key] is not None]
            row[key] = dict(zip(("mean", "std"), _mean_std(vals), strict=True)) | {"n": len(vals)}
        gains = [r["accuracy_after"] - r["accuracy_before"] for r in runs if r["accuracy_before"] is not None]
        row["gain"] = dict(zip(("mean", "std"), _mean_std(gains), strict=True))
        for key in TAIL_METRICS:
            vals = [r["final"][key] for r in runs if r["final"][key] is not None]
            row[f"final_{key}"] = dict(zip(("mean", "std"), _mean_std(vals), strict=True))
        rows.append(row)
    baseline = rows[0]
    base_after = [r["accuracy_after"] for r in baseline["runs"]]
    for row in rows[1:]:
        after = [r["accuracy_after"] for r in row["runs"]]
        row["p_vs_baseline"] = permutation_p_value(after, base_after)
        row["smallest_p"] = smallest_p_value(len(after), len(base_after))
    summary = {
        "name": sweep.name,
        "seeds": sweep.seeds,
        "common": sweep.common,
        "base_config": str(sweep.base_config) if sweep.base_config else None,
        "tail_steps": sweep.tail_steps,
        "baseline": baseline["variant"],
        "variants": rows,
    }
    out = sweep.output_dir
    atomic_write_text(out / RESULTS_JSON, json.dumps(summary, indent=2) + "\n")
    atomic_write_text(out / RESULTS_MD, markdown_table(summary))
    if plots and any(row["runs"] for row in rows):
        summary["plots"] = [str(p) for p in plot_sweep(sweep, rows)]
    return summary


def _pm(stat: dict[str, float], digits: int = 3) -> str:
    if stat is None or math.isnan(stat.get("mean", math.nan)):
        return "–"
    return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"


def _p(value: float | None) -> str:
    return "–" if value is None or math.isnan(value) else f"{value:.2f}"


def markdown_table(summary: dict[str, Any]) -> str:
    """The results table: held-out accuracy before/after (mean ± std over seeds) and final training metrics."""
    tail, base = summary["tail_steps"], summary["baseline"]
    lines = [
        f"| variant | overrides | runs | held-out acc. before | held-out acc. after | gain | p (after vs {base}) | "
        f"reward (last {tail}) | train acc. (last {tail}) | hidden ratio (last {tail}) | length (last {tail}) | "
        "after, per seed |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in summary["variants"]:
        overrides = ", ".join(f"{k}={v}" for k, v in row["overrides"].items()) or "–"
        per_seed = " / ".join(f"{r['accuracy_after']:.2f}" for r in row["runs"]) or "–"
        lines.append(
            f"| {row['variant']} | {overrides} | {len(row['runs'])} | {_pm(row['accuracy_before'])} | "
            f"{_pm(row['accuracy_after'])} | {_pm(row['gain'])} | {_p(row.get('p_vs_baseline'))} | "
            f"{_pm(row['final_reward'])} | {_pm(row['final_accuracy'])} | "
            f"{_pm(row['final_hidden_ratio'])} | {_pm(row['final_completion_length'], 1)} | {per_seed} |"
        )
    floors = sorted(
        {
            (len(row["runs"]), len(summary["variants"][0]["runs"]), row["smallest_p"])
            for row in summary["variants"][1:]
            if not math.isnan(row.get("smallest_p", math.nan))
        }
    )
    floor = "; ".join(
        f"with {a} seed{'s' if a != 1 else ''} against {b}, p cannot go below {p:.3f}" for a, b, p in floors
    )
    note = (
        f"\nMean ± sample std over seeds. p: exact two-sided permutation test of the after-training "
        f"accuracies against {base}'s" + (f" ({floor})" if floor else "") + ".\n"
    )
    return "\n".join(lines) + "\n" + note


def _curve(run_dirs: list[Path], key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Steps, mean and std over runs of ``key``, on the steps every run logged."""
    series = []
    for d in run_dirs:
        points = {r["step"]: r[key] for r in read_metrics(d) if isinstance(r.get(key), int | float)}
        series.append(points)
    steps = sorted(set.intersection(*(set(s) for s in series))) if series else []
    values = np.array([[s[k] for k in steps] for s in series], dtype=float)
    if not steps:
        return np.array([]), np.array([]), np.array([])
    return np.array(steps), values.mean(0), values.std(0, ddof=1) if len(series) > 1 else values.std(0)


def plot_sweep(sweep: Sweep, rows: list[dict[str, Any]]) -> list[Path]:
    """Curves (mean ± std over seeds, smoothed) per variant, and a bar chart of held-out accuracy."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from hrpo.plotting import _save

    written = [
        _plot_curves(sweep, rows, CURVE_METRICS, 2, sweep.output_dir / CURVES_PNG),
        _plot_curves(sweep, rows, MECHANISM_METRICS, 3, sweep.output_dir / MECHANISM_PNG),
    ]

    fig = Figure(figsize=(1.6 * len(rows) + 3, 4), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    x = np.arange(len(rows))
    for k, (key, label) in enumerate((("accuracy_before", "before"), ("accuracy_after", "after"))):
        means = [row[key]["mean"] for row in rows]
        stds = [row[key]["std"] for row in rows]
        ax.bar(x + (k - 0.5) * 0.38, means, 0.38, yerr=stds, capsize=4, label=label, color=f"C{k}")
        for j, row in enumerate(rows):  # the seeds themselves, so n=3 is not hidden behind a bar
            vals = [r[key] for r in row["runs"] if r[key] is not None]
            ax.scatter([x[j] + (k - 0.5) * 0.38] * len(vals), vals, color="black", s=8, zorder=3)
    ax.set_xticks(x, [row["variant"] for row in rows], fontsize=8)
    ax.set_ylabel("held-out accuracy (greedy)")
    ax.set_ylim(0, 1)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"{sweep.name}: held-out accuracy before and after training (mean ± std, dots: seeds)")
    written.append(_save(fig, sweep.output_dir / ACCURACY_PNG))
    return written


def _plot_curves(
    sweep: Sweep, rows: list[dict[str, Any]], metrics: tuple[tuple[str, str], ...], columns: int, path: Path
) -> Path:
    """One panel per metric: each variant's mean ± std over seeds, smoothed."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from hrpo.plotting import _save, _window, moving_average

    n_rows = -(-len(metrics) // columns)
    fig = Figure(figsize=(5.5 * columns, 3.7 * n_rows), layout="constrained")
    FigureCanvasAgg(fig)
    for i, (key, title) in enumerate(metrics):
        ax = fig.add_subplot(n_rows, columns, i + 1)
        for j, row in enumerate(rows):
            dirs = [Path(r["run_dir"]) for r in row["runs"]]
            if not dirs:
                continue
            x, mean, std = _curve(dirs, key)
            if not len(x):
                continue
            # Steps of a few completions are noisy; average over 5 even on short runs.
            w = max(_window(len(x)), 5 if len(x) >= 15 else 1)
            if w >= 3:
                mean, std = moving_average(mean, w), moving_average(std, w)
            color = f"C{j % 10}"
            ax.plot(x, mean, color=color, linewidth=1.6, label=f"{row['variant']} (n={len(dirs)})")
            ax.fill_between(x, mean - std, mean + std, color=color, alpha=0.15, linewidth=0)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step", fontsize=8)
        ax.grid(True, alpha=0.3)
        ax.tick_params(labelsize=8)
        if i == 0 and ax.get_legend_handles_labels()[1]:
            ax.legend(fontsize=7, loc="best")
    fig.suptitle(f"{sweep.name}: mean ± std over seeds (moving average)")
    return _save(fig, path)
