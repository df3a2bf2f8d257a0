"""Training step: time and peak memory of HRPO optimiser steps at the paper's GSM8K settings.

One step = rollouts (``num_generations`` per prompt, up to ``max_completion_length`` tokens),
rewards, advantages, reference log-probs (LoRA: adapters off), policy log-probs in
``per_device_train_batch_size`` micro-batches, backward and an AdamW update of LoRA + gate. The
paper's GSM8K settings are the defaults (G=4, 32 completions per step, 512/512 tokens, LoRA r=32).
The first step is a warm-up; the rest are reported.

    python benchmarks/train_step.py --random-config benchmarks/configs/qwen2.5-1.5b-instruct.json
    python benchmarks/train_step.py --num-generations 8 --prompts-per-step 1 --max-completion-length 64
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import add_model_args, describe_model, environment, load_bench_model, write_result  # noqa: E402
from rollout_throughput import PROMPTS  # noqa: E402

from hrpo.config import HRPOConfig  # noqa: E402
from hrpo.trainer import HRPOTrainer  # noqa: E402


def length_reward(prompts, completions, **columns) -> list[float]:
    """Any reward with spread will do for timing: the completion's length modulo 7."""
    return [float(len(c) % 7) for c in completions]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(ap)
    ap.add_argument("--num-generations", type=int, default=4, help="G (paper GSM8K: 4)")
    ap.add_argument(
        "--prompts-per-step", type=int, default=8, help="prompts per step (paper GSM8K: 8 → 32 completions)"
    )
    ap.add_argument("--micro-batch", type=int, default=8, help="per_device_train_batch_size (completions)")
    ap.add_argument("--max-completion-length", type=int, default=512, help="paper GSM8K: 512")
    ap.add_argument("--lora-r", type=int, default=32, help="LoRA rank (paper: 32)")
    ap.add_argument("--steps", type=int, default=3, help="optimiser steps, the first one a warm-up")
    ap.add_argument("--gradient-checkpointing", action="store_true", help="recompute activations in backward")
    ap.add_argument(
        "--rollout-backend", choices=["eager", "compiled"], default="eager", help="config rollout_backend"
    )
    ap.add_argument("--sync-every", type=int, default=1, help="config sync_every (8 suits GPUs)")
    ap.add_argument("--output", default="benchmarks/results/train_step_cpu.json", help="JSON result file")
    args = ap.parse_args()

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, tok = load_bench_model(args, device)
    completions = args.num_generations * args.prompts_per_step
    if completions % args.micro_batch:
        raise SystemExit(f"--micro-batch must divide the {completions} completions per step")
    rows = [{"prompt": PROMPTS[i % len(PROMPTS)]} for i in range(args.prompts_per_step * args.steps)]
    with tempfile.TemporaryDirectory() as out:
        cfg = HRPOConfig(
            output_dir=out,
            num_generations=args.num_generations,
            per_device_train_batch_size=args.micro_batch,
            gradient_accumulation_steps=completions // args.micro_batch,
            max_prompt_length=512,
            max_completion_length=args.max_completion_length,
            lora_r=args.lora_r,
            lora_alpha=2 * args.lora_r,
            max_steps=args.steps,
            eval_limit=0,
            save_steps=0,
            gradient_checkpointing=args.gradient_checkpointing,
            rollout_backend=args.rollout_backend,
            sync_every=args.sync_every,
        )
        trainer = HRPOTrainer(
            args=cfg,
            train_dataset=rows,
            reward_funcs=[length_reward],
            model=model,
            processing_class=tok,
            progress=False,
        )
        steps = []
        for step in range(args.steps):
            _, m = trainer.train_step(step)
            steps.append(
                {
                    k: m[k]
                    for k in ("step_time", "rollout_tokens_per_s", "completion_length", "peak_memory_gb")
                }
            )
            print(json.dumps(steps[-1]), flush=True)
            # After every step: a run cut short still leaves the steps it made.
            write_result(args.output, summary(args, model, device, completions, steps))


def summary(args: argparse.Namespace, model, device: str, completions: int, steps: list[dict]) -> dict:
    """The result file's contents; the first step is a warm-up and is left out of the medians."""
    timed = steps[1:] or steps
    return {
        "benchmark": "train_step",
        "model": describe_model(args),
        **environment(device),
        "dtype": str(model.dtype),
        "num_generations": args.num_generations,
        "completions_per_step": completions,
        "micro_batch": args.micro_batch,
        "max_completion_length": args.max_completion_length,
        "lora_r": args.lora_r,
        "gradient_checkpointing": args.gradient_checkpointing,
        "rollout_backend": args.rollout_backend,
        "sync_every": args.sync_every,
        "step_time_s": statistics.median(s["step_time"] for s in timed),
        "rollout_tokens_per_s": statistics.median(s["rollout_tokens_per_s"] for s in timed),
        "peak_memory_gb": max(s["peak_memory_gb"] for s in steps),
        "steps": steps,
    }


if __name__ == "__main__":
    main()
