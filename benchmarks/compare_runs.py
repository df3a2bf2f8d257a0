"""Compare a few training runs of the same config step by step: under FSDP2, under DDP and on a
single process, hrpo must train alike (``gpu_suite.sh`` stage 3). The first file is the reference.

    python benchmarks/compare_runs.py fsdp_metrics.jsonl ddp_metrics.jsonl single_metrics.jsonl \\
        --output fsdp_vs_ddp.json

Per run: steps, median step time (first step left out: warm-up), peak memory. Per other run: the
largest |difference| from the reference over the common steps of each training metric. In bf16
on a GPU the runs are not bit-equal (sharded and unsharded reductions round differently), so
these are figures to read, not a pass/fail check.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

COMPARED = ("loss", "reward", "accuracy", "completion_length", "grad_norm", "kl", "hidden_ratio", "entropy")


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def run_name(path: Path) -> str:
    return path.name.removesuffix(".jsonl").removesuffix("_metrics")


def compare(paths: list[Path]) -> dict:
    """Timing per run and each run's largest per-step differences from the first one."""
    runs = {run_name(p): read_jsonl(p) for p in paths}
    out: dict = {"reference": run_name(paths[0]), "runs": {}, "max_abs_diff": {}}
    for name, steps in runs.items():
        timed = steps[1:] or steps
        out["runs"][name] = {
            "steps": len(steps),
            "step_time_s": statistics.median(s["step_time"] for s in timed) if steps else None,
            "peak_memory_gb": max((s.get("peak_memory_gb", 0.0) for s in steps), default=None),
        }
    ref = {s["step"]: s for s in runs[out["reference"]]}
    for name, steps in list(runs.items())[1:]:
        diffs: dict[str, float] = {}
        for step in steps:
            other = ref.get(step["step"])
            for key in COMPARED if other else ():
                if key in step and key in other:
                    diffs[key] = max(diffs.get(key, 0.0), abs(step[key] - other[key]))
        out["max_abs_diff"][name] = diffs
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("metrics", type=Path, nargs="+", help="metrics.jsonl files; the first is the reference")
    ap.add_argument("--output", type=Path, required=True, help="JSON result file")
    args = ap.parse_args()
    result = compare([p for p in args.metrics if p.is_file()] or args.metrics)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
