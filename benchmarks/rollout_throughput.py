"""Rollout throughput: hrpo hybrid rollouts vs plain rollouts vs ``model.generate`` sampling.

All three generate exactly ``--new-tokens`` tokens per sequence (EOS ignored) for the same
prompts, batch size, temperature and top-k, timed in one process, one after the other, with a
warm-up run each; the median of ``--repeats`` runs is reported. Results go to a JSON file.

    python benchmarks/rollout_throughput.py                       # SmolLM2, CPU
    python benchmarks/rollout_throughput.py --batch-sizes 8 32 --new-tokens 128
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
import transformers

from hrpo import HybridModel, RolloutConfig, RolloutEngine
from hrpo.loading import load_model

PROMPTS = [
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
    "How many clips did Natalia sell altogether in April and May?",
    "Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes of babysitting. How much did she earn?",
    "What is 17 times 23?",
    "Betty is saving money for a new wallet which costs $100. Betty has only half of the money she needs. "
    "Her parents decided to give her $15 for that purpose, and her grandparents twice as much as her parents. "
    "How much more money does Betty need to buy the wallet?",
]


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--model", default=None, help="model name or path (default: embedded SmolLM2-135M-Instruct)"
    )
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[8])
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--temperature", type=float, default=0.5)
    ap.add_argument("--top-k", type=int, default=50)
    ap.add_argument("--output", default="benchmarks/results/rollout_throughput_cpu.json")
    args = ap.parse_args()

    device = "cuda" if torch.cuda.is_available() else "cpu"
    hf, tok = load_model(args.model, device=device)
    model = HybridModel(hf, seed=0)
    rows = []
    for bs in args.batch_sizes:
        prompts = [PROMPTS[i % len(PROMPTS)] for i in range(bs)]
        common = dict(
            max_completion_length=args.new_tokens,
            temperature=args.temperature,
            top_k=args.top_k,
            ignore_eos=True,
            max_prompt_length=None,
        )
        hybrid = RolloutEngine(model, tok, RolloutConfig(hybrid=True, **common))
        plain = RolloutEngine(model, tok, RolloutConfig(hybrid=False, **common))
        ids, mask, _ = hybrid.encode(prompts)
        ids, mask = ids.to(device), mask.to(device)

        def run_generate(ids=ids, mask=mask):
            with torch.no_grad():
                hf.generate(
                    ids,
                    attention_mask=mask,
                    do_sample=True,
                    temperature=args.temperature,
                    top_k=args.top_k,
                    top_p=1.0,
                    max_new_tokens=args.new_tokens,
                    min_new_tokens=args.new_tokens,
                    pad_token_id=tok.pad_token_id,
                )

        tokens = bs * args.new_tokens
        t_h = timed(lambda h=hybrid, i=ids, m=mask: h.generate_from_ids(i, m, seed=0), args.repeats)
        t_p = timed(lambda p=plain, i=ids, m=mask: p.generate_from_ids(i, m, seed=0), args.repeats)
        t_g = timed(run_generate, args.repeats)
        row = {
            "batch_size": bs,
            "new_tokens": args.new_tokens,
            "prompt_tokens_max": int(mask.sum(-1).max()),
            "hybrid_tok_s": tokens / t_h,
            "plain_tok_s": tokens / t_p,
            "generate_tok_s": tokens / t_g,
        }
        row["hybrid_over_generate"] = row["hybrid_tok_s"] / row["generate_tok_s"]
        row["plain_over_generate"] = row["plain_tok_s"] / row["generate_tok_s"]
        rows.append(row)
        print(json.dumps(row))

    result = {
        "benchmark": "rollout_throughput",
        "model": args.model or "SmolLM2-135M-Instruct (embedded)",
        "dtype": str(hf.dtype),
        "device": device if device == "cpu" else torch.cuda.get_device_name(),
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "temperature": args.temperature,
        "top_k": args.top_k,
        "repeats": args.repeats,
        "rows": rows,
    }
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
