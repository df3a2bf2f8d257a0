"""Evaluating a model on several tasks × decoding modes into one output directory (``hrpo eval``).

The directory holds, per task and mode, ``TASK-MODE/predictions.jsonl`` (appended as batches
finish, see :func:`hrpo.evaluation.evaluate`), ``eval_config.json`` (the settings those
predictions were made with) and ``metrics.json``; and ``metrics.json`` at the top, merging the
latest result of every (task, mode) ever evaluated there. Evaluating into the same directory again
resumes from the predictions already written, and refuses settings that differ from theirs.
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from transformers import PreTrainedTokenizerBase

from hrpo.evaluation import evaluate, summarize_subset
from hrpo.model import HybridModel
from hrpo.paper import benchmark_name, paper_accuracies
from hrpo.rollout import RolloutConfig
from hrpo.rundir import lock_run_dir
from hrpo.storage import atomic_write_text
from hrpo.tasks import Task
from hrpo.tasks.base import PAPER_SYSTEM_PROMPT

MODES = ("hybrid", "plain")
"""Decoding modes: hybrid latent decoding, or plain token decoding (``RolloutConfig.hybrid``)."""
SUMMARY = "metrics.json"
SETTINGS = "eval_config.json"
PREDICTIONS = "predictions.jsonl"
# Settings files written before --max-new-tokens took the config key's name hold the old one.
_RENAMED_SETTINGS = {"max_new_tokens": "max_completion_length"}
# Settings recorded since: what older files meant (None: unknown, not compared).
_ADDED_SETTINGS: dict[str, Any] = {"protocol": "hrpo", "system_prompt": None}


def mode_dir(output_dir: str | Path, task: str, mode: str) -> Path:
    """``OUTPUT/TASK-MODE``, a custom task's ``module:Class`` made a file name."""
    slug = re.sub(r"[^\w.-]+", "_", task)
    return Path(output_dir) / f"{slug}-{mode}"


def check_resumable(run_dir: str | Path, settings: Mapping[str, Any]) -> None:
    """Refuse to mix predictions made with other settings into ``run_dir``; then record
    ``settings`` there (creating the directory)."""
    run_dir = Path(run_dir)
    config_file = run_dir / SETTINGS
    if config_file.is_file():
        old = {_RENAMED_SETTINGS.get(k, k): v for k, v in json.loads(config_file.read_text()).items()}
        for key, meant in _ADDED_SETTINGS.items():
            old.setdefault(key, meant if meant is not None else settings.get(key))
        changed = {k: (old.get(k), v) for k, v in settings.items() if old.get(k) != v}
        if changed and (run_dir / PREDICTIONS).is_file():
            what = "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changed.items())
            raise ValueError(
                f"{run_dir} holds predictions made with other settings ({what}); "
                "use another --output or delete that directory"
            )
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(config_file, json.dumps(dict(settings), indent=2) + "\n")


def write_summary(
    output_dir: str | Path,
    results: Sequence[Mapping[str, Any]],
    *,
    model: str | None = None,
    checkpoint: str | None = None,
    split: str = "test",
) -> Path:
    """Merge ``results`` into ``OUTPUT/metrics.json``: they replace the entries of the same
    (task, mode) and follow the others. Returns the file's path."""
    summary_file = Path(output_dir) / SUMMARY
    previous = json.loads(summary_file.read_text()).get("results", []) if summary_file.is_file() else []
    new = {(r["task"], r["mode"]) for r in results}
    keep = [r for r in previous if (r["task"], r["mode"]) not in new]
    summary = {"model": model, "checkpoint": checkpoint, "split": split, "results": keep + list(results)}
    atomic_write_text(summary_file, json.dumps(summary, indent=2) + "\n")
    return summary_file


def with_paper_results(
    entry: dict[str, Any], models: Sequence[str | None], benchmark: str | None
) -> dict[str, Any]:
    """``entry`` (a task's metrics) with the paper's GRPO and HRPO accuracies beside ours, where
    the paper reports ``benchmark`` for one of ``models`` (names or paths of the evaluated model);
    for QA, per source data set (``per_group``) too."""
    paper = paper_accuracies(models, benchmark)
    if paper:
        entry["paper"] = paper
    if entry.get("task") == "qa":
        for group, metrics in entry.get("per_group", {}).items():
            found = paper_accuracies(models, benchmark_name("qa", group))
            if found:
                metrics["paper"] = found
    return entry


def paper_comparability(task: Task, cfg: RolloutConfig, num_samples: int) -> str | None:
    """Why a result of ``task`` decoded with ``cfg`` is not measured as the paper's numbers were
    (spec §7: the authors' grading rules and prompt, greedy, hybrid decoding, the task's length),
    or None when it is."""
    problems = []
    if getattr(task, "protocol", "hrpo") != "paper":
        problems.append("graded with the hrpo protocol (use --protocol paper)")
    if getattr(task, "system_prompt", None) != PAPER_SYSTEM_PROMPT:
        problems.append("not with the authors' system prompt (--system-prompt paper)")
    if num_samples != 1:
        problems.append(f"{num_samples} samples per problem, not greedy")
    if not cfg.hybrid:
        problems.append("plain decoding, not hybrid")
    paper_length = getattr(task, "eval_max_completion_length", 512)
    if cfg.max_completion_length != paper_length:
        problems.append(f"{cfg.max_completion_length} new tokens, not the authors' {paper_length}")
    return "; ".join(problems) or None


def _group_paper(entry: dict[str, Any]) -> bool:
    """Drop the paper's numbers of ``entry``'s groups and subsets; whether there were any."""
    parts = [*entry.get("per_group", {}).values(), *entry.get("subsets", {}).values()]
    found = [m.pop("paper") for m in parts if "paper" in m]
    return bool(found)


def task_subsets(name: str, task: Task, rows: Sequence[Mapping[str, Any]]) -> dict[str, list[int]]:
    """The named subsets of ``rows`` that ``task`` reports too (:meth:`Task.subsets`); one that no
    row is in (e.g. with a small ``limit``) is left out with a warning."""
    subsets = {}
    for subset, indices in task.subsets(list(rows)).items():
        if indices:
            subsets[subset] = list(indices)
        else:
            message = f"task {name}: none of the {len(rows)} rows evaluated is in {subset}; not reported"
            warnings.warn(message, stacklevel=2)
    return subsets


def subset_results(
    predictions: list[dict[str, Any]],
    subsets: Mapping[str, Sequence[int]],
    models: Sequence[str | None],
    *,
    num_samples: int,
    pass_ks: Sequence[int] | None = None,
) -> dict[str, dict[str, Any]]:
    """Metrics of each subset (named by its benchmark, e.g. MATH500) from the predictions of all
    the rows, with the paper's numbers where it reports that benchmark for one of ``models``."""
    results = {}
    for subset, indices in subsets.items():
        metrics = summarize_subset(predictions, indices, num_samples, pass_ks)
        paper = paper_accuracies(models, subset)
        if paper:
            metrics["paper"] = paper
        results[subset] = metrics
    return results


def _recorded_settings(
    name: str,
    cfg: RolloutConfig,
    *,
    extra: Mapping[str, Any],
    model_id: str | None,
    checkpoint: str | None,
    split: str,
    num_samples: int,
    seed: int | None,
    protocol: str,
    system_prompt: str | None,
) -> dict[str, Any]:
    """What a (task, mode)'s predictions depend on, in the order ``eval_config.json`` lists it."""
    return {
        "model": model_id,
        "checkpoint": checkpoint,
        "task": name,
        **extra,
        "split": split,
        "num_samples": num_samples,
        "temperature": cfg.temperature,
        "top_k": cfg.top_k or 0,  # "all tokens" as the command line writes it
        "top_p": cfg.top_p,
        "max_completion_length": cfg.max_completion_length,
        "answer_marker": cfg.answer_marker,
        "ignore_marker_headings": cfg.ignore_marker_headings,
        "hybrid": cfg.hybrid,
        "seed": seed,
        "protocol": protocol,
        "system_prompt": system_prompt,
    }


def evaluate_tasks(
    model: HybridModel,
    tokenizer: PreTrainedTokenizerBase,
    tasks: Mapping[str, Task],
    rollout_config: RolloutConfig,
    *,
    output_dir: str | Path,
    modes: Sequence[str] = ("hybrid",),
    split: str = "test",
    limit: int | None = None,
    num_samples: int = 1,
    batch_size: int = 16,
    seed: int | None = None,
    pass_ks: Sequence[int] | None = None,
    model_id: str | None = None,
    model_names: Sequence[str | None] = (),
    checkpoint: str | None = None,
    benchmark: str | None = None,
    task_settings: Mapping[str, Mapping[str, Any]] | None = None,
    lengths: Mapping[str, int] | None = None,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Evaluate ``model`` on each task (by name) in each of ``modes`` (:data:`MODES`) into
    ``output_dir`` (layout and resuming: module docstring). Returns one entry per (task, mode),
    as written to ``TASK-MODE/metrics.json``: ``task``, ``mode``, ``benchmark``, the metrics of
    :func:`hrpo.evaluation.evaluate`, ``seconds``, ``paper`` where the paper has the number, and
    ``subsets`` (per subset the task names, e.g. MATH500 within MATH: its metrics from the same
    predictions, with ``paper``) where the task has any (:meth:`Task.subsets`).

    ``rollout_config`` holds the decoding settings (each mode sets ``hybrid``, each task its
    marker rule); ``seed`` None samples with seed 0. ``model_id`` (e.g. the model's directory) and
    ``checkpoint`` are recorded; the paper's numbers are looked up for ``model_names`` (default:
    ``model_id``) on ``benchmark`` (default: ``task.benchmark``, else by the task's name,
    :func:`hrpo.paper.benchmark_name`).
    ``task_settings`` adds per-task settings to those recorded with the predictions (e.g. where
    the task's data came from), so that a rerun with others is refused. ``lengths`` sets a task's
    ``max_completion_length`` (default: ``rollout_config``'s). The paper's numbers are added only
    where the result is measured as theirs were (:func:`paper_comparability`); otherwise the entry
    says why not (``paper_not_comparable``). Each entry records its grading ``protocol``.
    """
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        raise ValueError(f"unknown decoding modes {unknown}; modes: {', '.join(MODES)}")
    names = model_names or (model_id,)
    recorded = {"model_id": model_id, "checkpoint": checkpoint, "split": split, "num_samples": num_samples}
    decoding = {"num_samples": num_samples, "batch_size": batch_size, "seed": seed or 0, "pass_ks": pass_ks}
    results = []
    with lock_run_dir(output_dir):  # one writer per directory (re-entrant: `hrpo eval` holds it too)
        for name, task in tasks.items():
            rows = task.load(split, limit=limit)
            if not rows:
                raise ValueError(f"task {name}: split {split!r} has no rows")
            headings = bool(getattr(task, "ignore_marker_headings", False))
            subsets = task_subsets(name, task, rows)
            for mode in modes:
                cfg = dataclasses.replace(
                    rollout_config,
                    hybrid=mode == "hybrid",
                    ignore_marker_headings=headings,
                    max_completion_length=(lengths or {}).get(name, rollout_config.max_completion_length),
                )
                run_dir = mode_dir(output_dir, name, mode)
                extra = (task_settings or {}).get(name, {})
                protocol = getattr(task, "protocol", "hrpo")
                prompt = getattr(task, "system_prompt", None)
                check_resumable(
                    run_dir,
                    _recorded_settings(
                        name, cfg, extra=extra, seed=seed, protocol=protocol, system_prompt=prompt, **recorded
                    ),
                )
                start = time.perf_counter()
                metrics = evaluate(
                    model,
                    tokenizer,
                    task,
                    rows,
                    cfg,
                    predictions_path=run_dir / PREDICTIONS,
                    progress=progress,
                    desc=f"{name} ({mode})",
                    **decoding,
                )
                predictions = metrics.pop("predictions")
                metrics["seconds"] = time.perf_counter() - start
                task_benchmark = benchmark or task.benchmark or benchmark_name(name)
                entry = {
                    "task": name,
                    "mode": mode,
                    "benchmark": task_benchmark,
                    "protocol": protocol,
                    **metrics,
                }
                with_paper_results(entry, names, task_benchmark)
                if subsets:
                    entry["subsets"] = subset_results(
                        predictions, subsets, names, num_samples=num_samples, pass_ks=pass_ks
                    )
                why_not = paper_comparability(task, cfg, num_samples)
                if why_not:
                    had_paper = entry.pop("paper", None) is not None
                    if _group_paper(entry) or had_paper:
                        entry["paper_not_comparable"] = why_not
                atomic_write_text(run_dir / SUMMARY, json.dumps(entry, indent=2) + "\n")
                results.append(entry)
        write_summary(output_dir, results, model=model_id, checkpoint=checkpoint, split=split)
    return results
