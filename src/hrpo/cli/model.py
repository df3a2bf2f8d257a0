"""``hrpo model``: resolve a model (converting the embedded default on first use), print its facts."""

from __future__ import annotations

import argparse

from hrpo.cli import common
from hrpo.loading import load_model, resolve_model_path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "model",
        help="resolve a model (converting the embedded default on first use) and print its facts",
        description="Resolve a model name to a local checkpoint and print its architecture, size and "
        "special tokens. With no --model, prepares the embedded SmolLM2-135M-Instruct.",
    )
    common.add_model_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    path = resolve_model_path(args.model)
    model, tok = load_model(args.model, dtype=args.dtype, device=common.device(args.device))
    n = sum(p.numel() for p in model.parameters())
    print(f"path:       {path}")
    print(f"arch:       {type(model).__name__} ({model.config.model_type}), {n / 1e6:.1f}M parameters")
    print(f"dtype:      {model.dtype}")
    print(f"eos / pad:  {tok.eos_token!r} ({tok.eos_token_id}) / {tok.pad_token!r} ({tok.pad_token_id})")
    print(f"chat:       {'yes' if tok.chat_template else 'no'}")
    return 0
