"""The memory-bandwidth floor of decoding: the fastest a decode step can be if it only has to read
the bytes it must read (all weights once, plus the KV cache so far), at the measured copy bandwidth.

    python benchmarks/bandwidth_floor.py --batch-sizes 8 32 --prompt-tokens 91 --new-tokens 512

Bandwidth is measured STREAM-copy style (``y.copy_(x)`` on a buffer much larger than the caches,
counting bytes read + written) and the best of several runs is kept. The floor for a whole
rollout sums each step's bytes (the KV cache grows by one position per step), so
``floor_tok_s = batch × new_tokens / Σ_t bytes_t × bandwidth``. ``rollout_throughput.py`` reports
measured throughput as a fraction of this floor.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from common import add_model_args, describe_model, load_bench_model


def copy_bandwidth(device: str, gigabytes: float = 1.0, repeats: int = 5) -> float:
    """Bytes per second moved by a large device-to-device copy (read + write), best of ``repeats``."""
    n = int(gigabytes * 2**30) // 4
    x = torch.ones(n, dtype=torch.float32, device=device)
    y = torch.empty_like(x)
    best = float("inf")
    for _ in range(repeats + 1):  # the first run faults the pages in
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        y.copy_(x)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return 2 * n * 4 / best


def weight_bytes(model: torch.nn.Module) -> int:
    """Bytes of all parameters (shared ones counted once): what every decode step reads."""
    return sum(p.numel() * p.element_size() for p in model.parameters())


def kv_bytes_per_position(config, batch_size: int, dtype_bytes: int) -> int:
    """Bytes of keys and values that one cached position adds for the whole batch."""
    cfg = config.get_text_config()
    heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    return 2 * cfg.num_hidden_layers * heads * head_dim * dtype_bytes * batch_size


def floor_tokens_per_second(
    model: torch.nn.Module, batch_size: int, prompt_tokens: int, new_tokens: int, bandwidth: float
) -> float:
    """Generated tokens/s if every step only read weights + KV cache at ``bandwidth`` bytes/s."""
    dtype_bytes = next(model.parameters()).element_size()
    w = weight_bytes(model)
    kv = kv_bytes_per_position(model.config, batch_size, dtype_bytes)
    total = sum(w + kv * (prompt_tokens + t) for t in range(new_tokens))
    return batch_size * new_tokens * bandwidth / total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(ap)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 32, 64, 128], help="batch sizes")
    ap.add_argument(
        "--prompt-tokens", type=int, default=91, help="prompt length (longest prompt of the benchmark)"
    )
    ap.add_argument("--new-tokens", type=int, default=512, help="tokens generated per sequence")
    ap.add_argument(
        "--output", default="benchmarks/results/bandwidth_floor_cpu.json", help="JSON result file"
    )
    args = ap.parse_args()

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, _ = load_bench_model(args, device)
    bandwidth = copy_bandwidth(device)
    rows = [
        {
            "batch_size": bs,
            "floor_tok_s": floor_tokens_per_second(model, bs, args.prompt_tokens, args.new_tokens, bandwidth),
        }
        for bs in args.batch_sizes
    ]
    result = {
        "benchmark": "bandwidth_floor",
        "model": describe_model(args),
        "device": device if device == "cpu" else torch.cuda.get_device_name(),
        "dtype": str(next(model.parameters()).dtype),
        "copy_bandwidth_gb_s": bandwidth / 1e9,
        "weight_bytes": weight_bytes(model),
        "prompt_tokens": args.prompt_tokens,
        "new_tokens": args.new_tokens,
        "rows": rows,
    }
    print(json.dumps(result, indent=2))
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
