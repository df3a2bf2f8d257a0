"""How far rollout log-probs are from the teacher-forced recomputation, per rollout backend.

The unit tests check parity in float32 on tiny models (|Δ| < 1e-4). In bf16 the decode-step
kernels (incremental, static-cache, compiled/fused) round differently from the full-sequence
forward, so the sampled policy and the trained policy differ slightly; this measures by how much
on a real architecture, so a GPU run can tell whether the compiled backend's fused kernels are
acceptable (mean and max |rollout − teacher-forced| over completion tokens).

    python benchmarks/logprob_parity.py --dtype bfloat16                     # SmolLM2, CPU
    python benchmarks/logprob_parity.py --random-config benchmarks/configs/qwen2.5-1.5b-instruct.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from hrpo import HybridModel, RolloutConfig, RolloutEngine

sys.path.insert(0, str(Path(__file__).parent))
from common import add_model_args, describe_model, environment, load_bench_model, write_result  # noqa: E402
from rollout_throughput import PROMPTS  # noqa: E402

BACKENDS = {
    "eager_dynamic": {},
    "eager_static": {"cache_implementation": "static"},
    "compiled": {"rollout_backend": "compiled"},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(ap)
    ap.add_argument("--batch-size", type=int, default=16, help="sequences per rollout")
    ap.add_argument("--new-tokens", type=int, default=128, help="tokens generated per sequence")
    ap.add_argument(
        "--backends", nargs="+", choices=list(BACKENDS), default=list(BACKENDS), help="in this order"
    )
    ap.add_argument("--output", default="benchmarks/results/logprob_parity_cpu.json", help="JSON result file")
    args = ap.parse_args()

    device = "cuda" if torch.cuda.is_available() else "cpu"
    hf, tok = load_bench_model(args, device)
    model = HybridModel(hf, seed=0)
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(args.batch_size)]
    common = dict(
        max_completion_length=args.new_tokens, temperature=0.5, ignore_eos=True, max_prompt_length=None
    )
    checker = RolloutEngine(model, tok, RolloutConfig(**common))
    rows = {}
    for name in args.backends:
        engine = RolloutEngine(model, tok, RolloutConfig(**common, **BACKENDS[name]))
        rollout = engine.generate(prompts, seed=0)
        with torch.no_grad():
            recomputed = checker.teacher_forced_logprobs(rollout)
        mask = rollout.completion_mask.bool()
        diff = (recomputed - rollout.logprobs).abs()[mask]
        rows[name] = {
            "mean_abs_diff": float(diff.mean()),
            "max_abs_diff": float(diff.max()),
            "p99_abs_diff": float(diff.quantile(0.99)),
            "tokens": int(mask.sum()),
            "fell_back_to_eager": engine.compiled.failed,
        }
        print(name, json.dumps(rows[name]), flush=True)
        result = {  # after each backend: a run cut short keeps the backends it measured
            "benchmark": "logprob_parity",
            "model": describe_model(args),
            "dtype": str(hf.dtype),
            **environment(device),
            "batch_size": args.batch_size,
            "new_tokens": args.new_tokens,
            "backends": rows,
        }
        write_result(args.output, result)


if __name__ == "__main__":
    main()
