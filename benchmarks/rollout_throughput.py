"""Rollout throughput: (a) hrpo hybrid rollouts, (b) hrpo plain rollouts, (c) ``model.generate``
sampling, (d) a reference-implementation-style hybrid loop (``reference_loop.py``). Variants of (a):
``hybrid_static`` (static KV cache) and ``hybrid_compiled`` (``rollout_backend="compiled"``:
torch.compile'd decoding step over a static cache; its warm-up runs at full length, since that is
where it compiles, and the warm-up's duration is reported as ``hybrid_compiled_warmup_s``);
``plain_compiled`` is (b) in the compiled backend, to compare hybrid and plain backend by backend.

All four generate exactly ``--new-tokens`` tokens per sequence (EOS ignored) for the same
prompts, batch size, temperature and top-k, timed in one process, one after the other, each
after a short warm-up run (``--warmup-tokens``); the methods take turns within each of the
``--repeats`` rounds and each one's median is reported.
Results go to a JSON file, rewritten after each batch size (a run cut short keeps its rows).

    python benchmarks/rollout_throughput.py                                   # SmolLM2, CPU
    python benchmarks/rollout_throughput.py --batch-sizes 8 32 --new-tokens 512 --repeats 1
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from hrpo import HybridModel, RolloutConfig, RolloutEngine

sys.path.insert(0, str(Path(__file__).parent))
from bandwidth_floor import copy_bandwidth, floor_tokens_per_second  # noqa: E402
from common import add_model_args, describe_model, environment, load_bench_model, write_result  # noqa: E402
from reference_loop import reference_style_rollout  # noqa: E402

PROMPTS = [
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
    "How many clips did Natalia sell altogether in April and May?",
    "Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes of babysitting. How much did she earn?",
    "What is 17 times 23?",
    "Betty is saving money for a new wallet which costs $100. Betty has only half of the money she needs. "
    "Her parents decided to give her $15 for that purpose, and her grandparents twice as much as her parents. "
    "How much more money does Betty need to buy the wallet?",
]


COMPILED = ("hybrid_compiled", "plain_compiled")
"""Methods whose warm-up runs at full length: that is where they compile."""


def timed_interleaved(
    fns: dict,
    repeats: int,
    warmup_tokens: int,
    full_warmup: tuple[str, ...] = (),
    on_round: Callable[[dict[str, float], dict[str, float]], None] | None = None,
) -> tuple[dict[str, float], dict[str, float]]:
    """Median seconds per method of ``fn(None)`` (full length), after one short warm-up call each
    (a full-length one for the methods in ``full_warmup``); also the warm-up seconds.

    The methods take turns within each repeat, so a slow drift of the machine (other load,
    frequency changes) spreads over all of them instead of biasing the one measured last.
    ``on_round(medians so far, warm-ups)`` is called after each repeat.
    """
    warmup = {}
    for name, fn in fns.items():
        start = time.perf_counter()
        fn(None if name in full_warmup else warmup_tokens)
        warmup[name] = time.perf_counter() - start
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn(None)
            times[name].append(time.perf_counter() - start)
        if on_round:
            on_round({name: statistics.median(t) for name, t in times.items()}, warmup)
    return {name: statistics.median(t) for name, t in times.items()}, warmup


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(ap)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 32, 64, 128], help="batch sizes")
    ap.add_argument("--new-tokens", type=int, default=512, help="tokens generated per sequence")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per method (median reported)")
    ap.add_argument("--warmup-tokens", type=int, default=16, help="length of each method's warm-up run")
    ap.add_argument(
        "--methods",
        nargs="+",
        default=["hybrid", "hybrid_static", "hybrid_compiled", "plain", "generate", "reference"],
        help="hybrid, hybrid_static (static KV cache), hybrid_compiled (compiled step), plain, plain_compiled, "
        "generate, reference",
    )
    ap.add_argument(
        "--sync-every", type=int, default=1, help="hrpo engines' steps between host checks (8 suits GPUs)"
    )
    ap.add_argument("--temperature", type=float, default=0.5)
    ap.add_argument("--top-k", type=int, default=50)
    ap.add_argument("--output", default="benchmarks/results/rollout_throughput_cpu.json")
    args = ap.parse_args()

    device = "cuda" if torch.cuda.is_available() else "cpu"
    hf, tok = load_bench_model(args, device)
    bandwidth = copy_bandwidth(device)
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
            sync_every=args.sync_every,
        )
        engines = {
            "hybrid": RolloutEngine(model, tok, RolloutConfig(hybrid=True, **common)),
            "plain": RolloutEngine(model, tok, RolloutConfig(hybrid=False, **common)),
            "hybrid_static": RolloutEngine(
                model, tok, RolloutConfig(hybrid=True, cache_implementation="static", **common)
            ),
            "hybrid_compiled": RolloutEngine(
                model, tok, RolloutConfig(hybrid=True, rollout_backend="compiled", **common)
            ),
            "plain_compiled": RolloutEngine(
                model, tok, RolloutConfig(hybrid=False, rollout_backend="compiled", **common)
            ),
        }
        ids, mask, _ = engines["hybrid"].encode(prompts)
        ids, mask = ids.to(device), mask.to(device)

        def run(method: str, new_tokens: int | None, ids=ids, mask=mask, engines=engines) -> None:
            length = new_tokens or args.new_tokens
            if method in engines:
                engine = engines[method]
                engine.config = dataclasses.replace(engine.config, max_completion_length=length)
                engine.generate_from_ids(ids, mask, seed=0)
            elif method == "generate":
                with torch.no_grad():
                    hf.generate(
                        ids,
                        attention_mask=mask,
                        do_sample=True,
                        temperature=args.temperature,
                        top_k=args.top_k,
                        top_p=1.0,
                        max_new_tokens=length,
                        min_new_tokens=length,
                        pad_token_id=tok.pad_token_id,
                    )
            else:
                reference_style_rollout(
                    model,
                    tok,
                    ids,
                    mask,
                    max_new_tokens=length,
                    temperature=args.temperature,
                    top_k=args.top_k,
                )

        prompt_len = int(mask.sum(-1).max())
        done: list[dict] = []  # this batch size's row after each repeat

        def record(medians: dict, warmup: dict, bs=bs, prompt_len=prompt_len, engines=engines, done=done):
            """Write the row with the repeats so far: a run cut short keeps them."""
            row = make_row(args, bs, prompt_len, medians, warmup, engines, repeats_done=len(done) + 1)
            row["floor_tok_s"] = floor_tokens_per_second(model, bs, prompt_len, args.new_tokens, bandwidth)
            add_ratios(row)
            done.append(row)
            print(json.dumps(row), flush=True)
            write_result(args.output, summary(args, hf, device, bandwidth, [*rows, row]))

        fns = {m: (lambda n, m=m: run(m, n)) for m in args.methods}
        timed_interleaved(fns, args.repeats, args.warmup_tokens, COMPILED, on_round=record)
        rows.append(done[-1])


def make_row(
    args, bs: int, prompt_len: int, medians: dict, warmup: dict, engines: dict, repeats_done: int
) -> dict:
    """One batch size's throughputs (tokens/s) and the compiled methods' warm-up seconds."""
    row = {"batch_size": bs, "new_tokens": args.new_tokens, "prompt_tokens_max": prompt_len}
    for method, seconds in medians.items():
        row[f"{method}_tok_s"] = bs * args.new_tokens / seconds
    row["repeats_done"] = repeats_done
    for method in COMPILED:
        if method in warmup:
            row[f"{method}_warmup_s"] = warmup[method]
            if engines[method].compiled.failed:
                row[f"{method}_fell_back_to_eager"] = True
    return row


def add_ratios(row: dict) -> None:
    """Fractions of the bandwidth floor and the ratios between methods, from the ``*_tok_s`` keys."""
    for num in ("hybrid", "hybrid_static", "hybrid_compiled"):
        if f"{num}_tok_s" in row:
            row[f"{num}_fraction_of_floor"] = row[f"{num}_tok_s"] / row["floor_tok_s"]
    pairs = [
        (num, den)
        for num in ("hybrid", "hybrid_static", "hybrid_compiled", "plain", "plain_compiled")
        for den in ("generate", "reference")
    ]
    # Hybrid against plain decoding in the same backend: what the latent costs.
    pairs += [("hybrid", "plain"), ("hybrid_compiled", "plain_compiled")]
    for num, den in pairs:
        if f"{num}_tok_s" in row and f"{den}_tok_s" in row:
            row[f"{num}_over_{den}"] = row[f"{num}_tok_s"] / row[f"{den}_tok_s"]


def summary(args: argparse.Namespace, hf, device: str, bandwidth: float, rows: list[dict]) -> dict:
    """The result file's contents: settings, environment and the rows measured so far."""
    return {
        "benchmark": "rollout_throughput",
        "model": describe_model(args),
        "copy_bandwidth_gb_s": bandwidth / 1e9,
        "dtype": str(hf.dtype),
        **environment(device),
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "temperature": args.temperature,
        "top_k": args.top_k,
        "repeats": args.repeats,
        "warmup_tokens": args.warmup_tokens,
        "sync_every": args.sync_every,
        "rows": rows,
    }


if __name__ == "__main__":
    main()
