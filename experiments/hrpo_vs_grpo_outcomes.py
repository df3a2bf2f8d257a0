"""What the issue-12 runs' held-out answers look like after training (EXPERIMENTS.md).

    python experiments/hrpo_vs_grpo_outcomes.py [experiments/results/hrpo_vs_grpo/runs]

Each of a run's 100 greedy held-out completions (``eval_after.json``) goes in one class: correct;
no marker; a wrong answer that restates one of the question's numbers (the shortcut that copies
an operand instead of computing); a wrong answer that is another number (usually the wrong
operation); anything else after the marker. Prints a markdown table, one row per run.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

NUMBER = re.compile(r"-?\d+")
CLASSES = ("correct", "restated number", "other number", "no number", "no marker")


def outcome(pred: dict) -> str:
    """The class of one prediction (see the module docstring)."""
    if pred["correct"]:
        return "correct"
    if pred["answer"] is None:
        return "no marker"
    first = NUMBER.search(pred["answer"])
    if first is None:
        return "no number"
    question = pred["prompt"][-1]["content"]
    return "restated number" if first.group() in NUMBER.findall(question) else "other number"


def main(root: Path) -> None:
    print("| variant | seed | " + " | ".join(CLASSES) + " | mean length |")
    print("| --- | --- | " + " | ".join("---" for _ in CLASSES) + " | --- |")
    for run in sorted(root.glob("*/seed-*")):
        path = run / "eval_after.json"
        if not path.exists():
            continue
        preds = json.loads(path.read_text())["predictions"]
        counts = dict.fromkeys(CLASSES, 0)
        for p in preds:
            counts[outcome(p)] += 1
        length = sum(p["completion_tokens"] for p in preds) / len(preds)
        cells = " | ".join(str(counts[c]) for c in CLASSES)
        print(f"| {run.parent.name} | {run.name.removeprefix('seed-')} | {cells} | {length:.0f} |")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "experiments/results/hrpo_vs_grpo/runs"))
