"""Evaluation of a (hybrid) model on a task: accuracy, intervals, pass@k, resumable predictions.

Each problem gets ``num_samples`` completions: one greedy completion when ``num_samples`` is 1,
otherwise samples at the rollout temperature. A completion is graded by the task's one grading
path, :meth:`Task.grade <hrpo.tasks.base.Task.grade>` (without the training-only format rule), so
row columns such as multiple-choice options or several gold answers are used as in training. Predictions are appended to a JSON-lines file as each batch
finishes; a rerun with the same file skips what is already there.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from hrpo.batch import Rollout
from hrpo.marker import find_markers
from hrpo.model import HybridModel
from hrpo.rollout import RolloutConfig, RolloutEngine
from hrpo.storage import read_jsonl

# Row columns that name a group for per-group accuracy (MMLU subjects, QA source data sets).
GROUP_COLUMNS = ("subject", "dataset")


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from ``n`` samples of which ``c`` are correct (Chen et al., 2021)."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    # 1 - C(n-c, k) / C(n, k), as a product to stay exact for large n.
    return 1.0 - math.prod((n - c - i) / (n - i) for i in range(k))


def accuracy_interval(per_problem: Sequence[float]) -> tuple[float, float, float]:
    """Mean of per-problem scores and its 95% interval ``(mean, low, high)``.

    Problems are the sampling unit: with several samples per problem, each problem contributes
    the mean of its samples, so correlated samples of one problem do not narrow the interval.
    All-0/1 scores (one sample per problem) get the Wilson score interval, which stays inside
    [0, 1] and is not empty at 0% or 100%; fractional scores get the normal interval.
    """
    n = len(per_problem)
    if n == 0:
        return 0.0, 0.0, 0.0
    mean = sum(per_problem) / n
    z = 1.959964
    if all(x in (0.0, 1.0) for x in per_problem):
        centre = (mean + z * z / (2 * n)) / (1 + z * z / n)
        half = z * math.sqrt(mean * (1 - mean) / n + z * z / (4 * n * n)) / (1 + z * z / n)
        return mean, max(0.0, centre - half), min(1.0, centre + half)
    if n == 1:
        return mean, mean, mean
    half = z * math.sqrt(sum((x - mean) ** 2 for x in per_problem) / (n - 1) / n)
    return mean, max(0.0, mean - half), min(1.0, mean + half)


def default_ks(num_samples: int) -> list[int]:
    """1, 2, 4, ... up to ``num_samples``, plus ``num_samples`` itself."""
    ks, k = [], 1
    while k < num_samples:
        ks.append(k)
        k *= 2
    return [*ks, num_samples]


def _group(row: dict[str, Any]) -> str | None:
    for col in GROUP_COLUMNS:
        if isinstance(row.get(col), str) and row[col]:
            return row[col]
    return None


def _read_predictions(path: Path, num_samples: int) -> dict[tuple[int, int], dict[str, Any]]:
    """Predictions already written to ``path``, keyed by (problem index, sample index); a half
    last line left by an interruption is cut (:func:`hrpo.storage.read_jsonl`)."""
    done: dict[tuple[int, int], dict[str, Any]] = {}
    if not path.is_file():
        return done
    for lineno, rec in enumerate(read_jsonl(path, repair=True, what="prediction record"), 1):
        try:
            key = (int(rec["index"]), int(rec["sample"]))
        except (ValueError, KeyError, TypeError):
            raise ValueError(f"{path}: record {lineno} is not a prediction record; delete the file") from None
        if key[1] < num_samples:
            done[key] = rec
    return done


def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value)
        return value
    except TypeError:
        return str(value)


def _records(
    task: Any, rows: list[dict[str, Any]], idx: list[int], ro: Rollout, num_samples: int, cfg: RolloutConfig
) -> list[dict[str, Any]]:
    """One prediction record per completion of ``ro``, the rollout of problems ``idx`` of ``rows``:
    the completion, its extracted answer and grade, and what its decoding did."""
    scores = task.grade(
        ro.completion_texts, [rows[idx[g]] for g in ro.group_ids.tolist()], strict_format=False
    )
    records = []
    for j, text in enumerate(ro.completion_texts):
        problem = idx[int(ro.group_ids[j])]
        think = ro.thinking_mask[j]
        markers = find_markers(text, cfg.answer_marker, cfg.ignore_marker_headings)
        rec = {
            "index": problem,
            "sample": j % num_samples,
            "id": _jsonable(rows[problem].get("id", problem)),
            "prompt": _jsonable(rows[problem]["prompt"]),
            "completion": text,
            "answer": task.extract_answer(text),
            "reference": _jsonable(rows[problem].get("answer")),
            "correct": bool(scores[j] >= 1.0),
            "completion_tokens": int(ro.completion_lengths[j]),
            "thinking_tokens": int(think.sum()),
            "hidden_ratio": float(ro.hidden_ratio[j][think].mean()) if think.any() else 0.0,
            "answer_markers": len(markers.answers),
            "heading_markers": len(markers.headings),
        }
        group = _group(rows[problem])
        if group is not None:
            rec["group"] = group
        records.append(rec)
    return records


@torch.no_grad()
def evaluate(
    model: HybridModel,
    tokenizer: PreTrainedTokenizerBase,
    task: Any,
    rows: list[dict[str, Any]],
    rollout_config: RolloutConfig,
    *,
    num_samples: int = 1,
    batch_size: int = 50,
    seed: int = 0,
    pass_ks: Sequence[int] | None = None,
    predictions_path: str | Path | None = None,
    progress: bool = True,
    desc: str = "eval",
) -> dict[str, Any]:
    """Evaluate ``model`` on ``rows`` of ``task``.

    ``num_samples`` = 1 decodes greedily; more samples at ``rollout_config.temperature``. With
    ``predictions_path``, each completion is appended there as a JSON line (problem index,
    sample index, prompt, completion, extracted answer, reference, correct) and completions
    already in the file are not generated again.

    Returns ``accuracy`` (mean over problems of the fraction of correct samples) with
    ``accuracy_ci95`` (its 95% interval ``[low, high]``, see :func:`accuracy_interval`), ``pass@k`` for several k when sampling, per-group accuracy
    (``per_group``, from a ``subject``/``dataset`` column), mean ``completion_length``,
    ``hidden_ratio`` (mean 1−a over thinking positions), ``tokens_per_second``,
    ``multiple_markers`` (fraction of completions with two or more answer markers, which the
    training reward scores 0) and ``heading_markers`` (fraction with a marker read as a heading),
    and the ``predictions`` themselves.

    The rollout ends thinking by the task's marker rule (``task.ignore_marker_headings``, whatever
    ``rollout_config`` says), so that it agrees with the grader.
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    greedy = num_samples == 1
    headings = bool(getattr(task, "ignore_marker_headings", rollout_config.ignore_marker_headings))
    cfg = dataclasses.replace(
        rollout_config, do_sample=not greedy, num_generations=num_samples, ignore_marker_headings=headings
    )
    engine = RolloutEngine(model, tokenizer, cfg)
    path = Path(predictions_path) if predictions_path is not None else None
    done = _read_predictions(path, num_samples) if path is not None else {}
    todo = [i for i in range(len(rows)) if any((i, s) not in done for s in range(num_samples))]

    gen_tokens, gen_seconds = 0, 0.0
    hidden_sum, thinking = 0.0, 0
    bar = tqdm(total=len(rows), initial=len(rows) - len(todo), desc=desc, disable=not progress)
    out = path.open("a", encoding="utf-8") if path is not None else None
    try:
        for start in range(0, len(todo), batch_size):
            idx = todo[start : start + batch_size]
            batch = [rows[i] for i in idx]
            t0 = time.perf_counter()
            # Seeded by the batch's first problem, so a resumed eval samples what the first would have.
            ro = engine.generate([r["prompt"] for r in batch], seed=seed + idx[0])
            gen_seconds += time.perf_counter() - t0
            gen_tokens += int(ro.completion_lengths.sum())
            hidden_sum += float((ro.hidden_ratio * ro.thinking_mask).sum())
            thinking += int(ro.thinking_mask.sum())
            for rec in _records(task, rows, idx, ro, num_samples, cfg):
                done[(rec["index"], rec["sample"])] = rec
                if out is not None:
                    out.write(json.dumps(rec, ensure_ascii=False) + "\n")
            if out is not None:
                out.flush()
            bar.update(len(idx))
    finally:
        bar.close()
        if out is not None:
            out.close()
    result = summarize(
        [done[(i, s)] for i in range(len(rows)) for s in range(num_samples)], num_samples, pass_ks
    )
    result["tokens_per_second"] = gen_tokens / gen_seconds if gen_seconds else None
    if thinking:  # this run's hidden ratio weighted by tokens; summarize() used per-completion means
        result["hidden_ratio"] = hidden_sum / thinking
    result["decoding"] = "greedy" if greedy else f"sampled (n={num_samples}, T={cfg.temperature})"
    result["hybrid"] = cfg.hybrid
    return result


def summarize(
    predictions: list[dict[str, Any]], num_samples: int, pass_ks: Sequence[int] | None = None
) -> dict[str, Any]:
    """Metrics from prediction records (as written by :func:`evaluate`), ordered by problem."""
    by_problem: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for p in predictions:
        by_problem[p["index"]].append(p)
    per_problem = {i: sum(p["correct"] for p in ps) / len(ps) for i, ps in by_problem.items()}
    accuracy, low, high = accuracy_interval(list(per_problem.values()))
    result: dict[str, Any] = {
        "num_examples": len(by_problem),
        "num_samples": num_samples,
        "accuracy": accuracy,
        "accuracy_ci95": [low, high],
    }
    if num_samples > 1:
        for k in pass_ks or default_ks(num_samples):
            if 1 <= k <= num_samples:
                result[f"pass@{k}"] = sum(
                    pass_at_k(len(ps), sum(p["correct"] for p in ps), k) for ps in by_problem.values()
                ) / max(len(by_problem), 1)
    groups: dict[str, list[float]] = defaultdict(list)
    for i, ps in by_problem.items():
        if "group" in ps[0]:
            groups[ps[0]["group"]].append(per_problem[i])
    if groups:
        result["per_group"] = {
            g: {"accuracy": sum(v) / len(v), "num_examples": len(v)} for g, v in sorted(groups.items())
        }
    n = max(len(predictions), 1)
    result["completion_length"] = sum(p["completion_tokens"] for p in predictions) / n
    thinking = [p for p in predictions if p["thinking_tokens"]]
    result["hidden_ratio"] = (
        sum(p["hidden_ratio"] * p["thinking_tokens"] for p in thinking)
        / sum(p["thinking_tokens"] for p in thinking)
        if thinking
        else 0.0
    )
    counted = [p for p in predictions if "answer_markers" in p]  # files written before the count lack it
    if counted:
        result["multiple_markers"] = sum(p["answer_markers"] > 1 for p in counted) / len(counted)
        result["heading_markers"] = sum(p.get("heading_markers", 0) > 0 for p in counted) / len(counted)
    result["predictions"] = predictions
    return result


def summarize_subset(
    predictions: list[dict[str, Any]],
    indices: Sequence[int],
    num_samples: int,
    pass_ks: Sequence[int] | None = None,
) -> dict[str, Any]:
    """:func:`summarize` of the problems ``indices`` alone, from the predictions of a larger set
    (MATH500 within MATH: one generation pass, both benchmarks), without the records."""
    keep = set(indices)
    result = summarize([p for p in predictions if p["index"] in keep], num_samples, pass_ks)
    del result["predictions"]
    return result
