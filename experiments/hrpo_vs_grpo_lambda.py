"""Does the latent's share grow because HRPO learns it, or because of AdamW's weight decay on Λ?

    python experiments/hrpo_vs_grpo_lambda.py [runs/sweep-hrpo-vs-grpo]

Needs the issue-12 sweep's run directories with their checkpoints (steps 40 and 60). The gate is
``a = exp(−c·softplus(Λ)·r)`` with Λ < 0, and decoupled weight decay multiplies Λ by
``1 − lr_t·weight_decay`` each step, pulling it towards 0: softplus(Λ) grows, a shrinks, and the
hidden ratio mean(sqrt(1 − a²)) grows, whatever the reward says. For each HRPO run this prints:

- Λ(60)/Λ(40) measured (40: the first checkpoint from step 40 on), against the product of
  ``1 − lr_t·wd`` over the steps between (from the run's logged ``lr/lambda``): how much of Λ's
  movement weight decay alone explains;
- the hidden ratio at step 60 that weight decay alone predicts from step 1's, with the per-token
  exponent r fitted to step 1's measured ratio, against the measured one.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml
from safetensors.torch import load_file


def hidden_ratio(lam: torch.Tensor, c: float, r: float) -> float:
    """mean over dimensions of sqrt(1 − a²) for a = exp(−c·softplus(Λ)·r)."""
    return torch.sqrt(1 - torch.exp(-c * F.softplus(lam) * r) ** 2).mean().item()


def fit_r(lam: torch.Tensor, c: float, target: float) -> float:
    """The exponent r (same for every dimension) at which Λ gives the target hidden ratio."""
    lo, hi = 1e-3, 10.0
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if hidden_ratio(lam, c, mid) < target else (lo, mid)
    return (lo + hi) / 2


def _step(path: Path) -> int:
    return int(path.name.removeprefix("step-"))


def main(root: Path) -> None:
    print(
        "| run | weight decay | Λ(60)/Λ(40) measured | weight decay alone | hidden ratio step 1 | "
        "step 60, weight decay alone | step 60, measured |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for run in sorted(root.glob("hrpo-*/seed-*")):
        try:
            rows = {r["step"]: r for r in map(json.loads, (run / "metrics.jsonl").open())}
            # the first checkpoint from step 40 on (a resumed run may save at another step)
            first = min(s for s in map(_step, (run / "checkpoints").glob("step-*")) if s >= 40)
            lam = {
                s: load_file(run / f"checkpoints/step-{s:06d}/hrpo_gate.safetensors")["Lambda"]
                for s in (first, 60)
            }
            # the gate's constant c, as the checkpoint records it
            c = float(json.loads((run / "checkpoints/step-000060/hrpo_gate.json").read_text())["c"])
        except (OSError, KeyError, ValueError) as e:
            print(f"skipped {run}: {e}", file=sys.stderr)
            continue
        wd = float(yaml.safe_load((run / "config.yaml").read_text())["weight_decay"])
        decay = {t: 1 - rows[t]["lr/lambda"] * wd for t in range(1, 61)}
        measured = (lam[60].double() / lam[first].double()).mean().item()
        predicted = math.prod(decay[t] for t in range(first + 1, 61))
        lam0 = lam[first].double() / math.prod(decay[t] for t in range(1, first + 1))
        r = fit_r(lam0, c, rows[1]["hidden_ratio"])
        lam60 = lam0 * math.prod(decay.values())
        print(
            f"| {run.parent.name}/{run.name} | {wd} | {measured:.5f} | {predicted:.5f} | "
            f"{rows[1]['hidden_ratio']:.4f} | {hidden_ratio(lam60, c, r):.4f} | "
            f"{rows[60]['hidden_ratio']:.4f} |"
        )


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/sweep-hrpo-vs-grpo"))
