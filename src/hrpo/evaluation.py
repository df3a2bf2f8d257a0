"""Greedy held-out evaluation of a (hybrid) model on a task's rows."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from hrpo.model import HybridModel
from hrpo.rollout import RolloutConfig, RolloutEngine


@torch.no_grad()
def evaluate(
    model: HybridModel,
    tokenizer: PreTrainedTokenizerBase,
    task: Any,
    rows: list[dict[str, Any]],
    rollout_config: RolloutConfig,
    *,
    batch_size: int = 50,
    progress: bool = True,
    desc: str = "eval",
) -> dict[str, Any]:
    """Accuracy of greedy completions (answer after the last marker; no format rule).

    Returns ``accuracy``, ``completion_length`` (mean tokens), ``hidden_ratio`` and the
    per-row ``predictions`` (prompt, completion, answer, reference, correct).
    """
    cfg = dataclasses.replace(rollout_config, do_sample=False, num_generations=1)
    engine = RolloutEngine(model, tokenizer, cfg)
    predictions: list[dict[str, Any]] = []
    lengths, hidden, thinking = 0, 0.0, 0
    bar = tqdm(total=len(rows), desc=desc, disable=not progress, leave=False)
    for start in range(0, len(rows), batch_size):
        batch = rows[start : start + batch_size]
        ro = engine.generate([r["prompt"] for r in batch])
        lengths += int(ro.completion_lengths.sum())
        hidden += float((ro.hidden_ratio * ro.thinking_mask).sum())
        thinking += int(ro.thinking_mask.sum())
        for row, text in zip(batch, ro.completion_texts, strict=True):
            predictions.append(
                {
                    "prompt": row["prompt"],
                    "completion": text,
                    "answer": task.extract_answer(text),
                    "reference": row["answer"],
                    "correct": bool(task.score(text, row["answer"])),
                }
            )
        bar.update(len(batch))
    bar.close()
    n = max(len(predictions), 1)
    return {
        "accuracy": sum(p["correct"] for p in predictions) / n,
        "completion_length": lengths / n,
        "hidden_ratio": hidden / thinking if thinking else 0.0,
        "num_examples": len(predictions),
        "predictions": predictions,
    }
