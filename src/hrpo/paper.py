"""The paper's published accuracies (HRPO_SPEC §5: greedy, GRPO and HRPO), for side-by-side tables."""

from __future__ import annotations

from collections.abc import Sequence

STEM = ("GSM8K", "MATH", "MATH500", "MMLU-ST", "ARC-C")
KNOWLEDGE = ("NQ", "TriviaQA", "HotpotQA", "2Wiki", "Bamboogle")

# (model, benchmark) -> (GRPO, HRPO). HRPO entries are the per-benchmark best over the paper's
# r_min sweep, as published.
PAPER_RESULTS: dict[tuple[str, str], tuple[float, float]] = {}
for _model, _grpo, _hrpo in (
    ("Qwen2.5-1.5B", (0.711, 0.502, 0.524, 0.562, 0.737), (0.720, 0.518, 0.536, 0.569, 0.742)),
    ("Qwen2.5-3B", (0.834, 0.602, 0.604, 0.601, 0.814), (0.845, 0.613, 0.630, 0.590, 0.820)),
):
    PAPER_RESULTS.update({(_model, b): (g, h) for b, g, h in zip(STEM, _grpo, _hrpo, strict=True)})
for _model, _grpo, _hrpo in (
    ("Qwen2.5-1.5B", (0.293, 0.480, 0.202, 0.213, 0.120), (0.364, 0.553, 0.273, 0.276, 0.216)),
    ("Qwen2.5-3B", (0.381, 0.570, 0.308, 0.303, 0.272), (0.378, 0.593, 0.316, 0.318, 0.296)),
):
    PAPER_RESULTS.update({(_model, b): (g, h) for b, g, h in zip(KNOWLEDGE, _grpo, _hrpo, strict=True)})

# Our task name -> the paper's benchmark name. `math` evaluates MATH500 unless told otherwise
# (`--benchmark MATH`, or a `math500` list: the full MATH file, with MATH500 as a subset).
TASK_BENCHMARKS = {"gsm8k": "GSM8K", "math": "MATH500", "mmlu_stem": "MMLU-ST", "arc_challenge": "ARC-C"}
# QA rows carry the source data set in a `dataset` column.
QA_BENCHMARKS = {
    "nq": "NQ",
    "triviaqa": "TriviaQA",
    "hotpotqa": "HotpotQA",
    "2wikimultihopqa": "2Wiki",
    "2wiki": "2Wiki",
    "bamboogle": "Bamboogle",
}


def paper_model(name: str | None) -> str | None:
    """The paper's model matching a model name or path (e.g. ``Qwen/Qwen2.5-1.5B-Instruct``)."""
    key = (name or "").lower().replace("_", "-")
    for model in ("Qwen2.5-1.5B", "Qwen2.5-3B"):
        if model.lower() in key:
            return model
    return None


def benchmark_name(task: str, group: str | None = None) -> str | None:
    """The paper's benchmark for our task (and, for QA, the row's source data set)."""
    if task == "qa":
        return QA_BENCHMARKS.get((group or "").lower().replace("_", ""))
    return TASK_BENCHMARKS.get(task)


def paper_result(model: str | None, benchmark: str | None) -> tuple[float, float] | None:
    """(GRPO, HRPO) accuracy published for this model and benchmark, or None."""
    m = paper_model(model)
    if m is None or benchmark is None:
        return None
    return PAPER_RESULTS.get((m, benchmark))


def paper_accuracies(models: Sequence[str | None], benchmark: str | None) -> dict[str, float] | None:
    """``{"grpo": ..., "hrpo": ...}`` published for the first of ``models`` (names or paths of one
    model, e.g. the name given and the directory it resolved to) that the paper reports, or None."""
    for model in models:
        found = paper_result(model, benchmark)
        if found:
            return {"grpo": found[0], "hrpo": found[1]}
    return None
