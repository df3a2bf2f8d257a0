"""Model loading shared by the benchmarks: a real checkpoint, or a real architecture with random
weights (``--random-config``), which is what speed needs and what a machine without the weights
can still run. Random-weight models use the embedded SmolLM2 tokenizer: its ids are valid in any
larger vocabulary, and ids it does not know decode to nothing."""

from __future__ import annotations

import argparse
import json
import os

import torch
import yaml


def add_model_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument(
        "--model", default=None, help="model name or path (default: embedded SmolLM2-135M-Instruct)"
    )
    ap.add_argument(
        "--random-config",
        default=None,
        help="a config.json (e.g. benchmarks/configs/qwen2.5-1.5b-instruct.json): that architecture, random weights",
    )
    ap.add_argument(
        "--override",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="change config fields of --random-config, e.g. num_hidden_layers=2 for a quick check",
    )
    ap.add_argument(
        "--dtype", default=None, help="float32, bfloat16 or float16 (default: float32 on CPU, bf16 on GPU)"
    )
    ap.add_argument(
        "--tokenizer",
        default=None,
        help="tokenizer directory for --random-config (default: the embedded SmolLM2 tokenizer)",
    )


def load_bench_model(args: argparse.Namespace, device: str):
    """``(model, tokenizer)`` from ``--model`` or ``--random-config``, on ``device``, eval mode."""
    from hrpo.loading import load_model, load_tokenizer

    default = "bfloat16" if device.startswith("cuda") else "float32"
    dtype = getattr(torch, args.dtype or default)
    if not args.random_config:
        return load_model(args.model, dtype=dtype, device=device)
    from transformers import AutoConfig, AutoModelForCausalLM

    with open(args.random_config, encoding="utf-8") as f:
        fields = json.load(f)
    for item in args.override:
        key, _, value = item.partition("=")
        fields[key] = yaml.safe_load(value)
    fields.pop("architectures", None)
    fields.pop("torch_dtype", None)
    config = AutoConfig.for_model(fields.pop("model_type"), **fields)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype).to(device).eval()
    if args.tokenizer:  # saved by `make bench-tokenizer`: left padding and pad token already set
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    else:
        tokenizer = load_tokenizer(None)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def describe_model(args: argparse.Namespace) -> str:
    if args.random_config:
        extra = f" with {', '.join(args.override)}" if args.override else ""
        return f"{args.random_config} (random weights){extra}"
    return args.model or "SmolLM2-135M-Instruct (embedded)"


def environment(device: str) -> dict:
    """Where a result was measured: device name and library versions."""
    import transformers

    env = {
        "device": device if device == "cpu" else torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }
    if device.startswith("cuda"):  # the headroom of a peak-memory figure
        env["device_memory_gb"] = torch.cuda.get_device_properties(device).total_memory / 2**30
    return env


def write_result(path: str, result: dict) -> None:
    """Write a benchmark's JSON result file (creating its directory) and say where. Written to a
    temporary file and renamed, so a run killed while writing leaves the previous complete file."""
    from pathlib import Path

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp, out)
    print(f"wrote {out}")
