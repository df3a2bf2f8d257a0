"""``hrpo inspect``: where, token by token, a completion reasons in latent space."""

from __future__ import annotations

import argparse
import json
import sys

from hrpo.cli import common
from hrpo.inspection import format_table, inspect_prompt, plot_heatmap
from hrpo.tasks.base import system_prompt_text


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "inspect",
        help="show, token by token, where and how much a completion reasons in latent space",
        description="Generate one completion (greedy unless --sample) and print, for every token: whether "
        "it was a thinking position, a (the gate's weight on the token embedding, averaged over "
        "dimensions; 1 = pure token), the hidden ratio sqrt(1-a^2), and the vocabulary tokens whose "
        "embeddings are closest (cosine) to the latent vector mixed in at that position.",
    )
    p.add_argument("prompt", help="the prompt (a user turn in the chat template unless --raw)")
    common.add_model_args(p)
    common.add_decoding_args(p, max_completion_length=128)
    p.add_argument("--sample", action="store_true", help="sample at --temperature instead of greedy decoding")
    p.add_argument(
        "--top",
        type=common.POSITIVE_INT,
        default=5,
        help="nearest vocabulary tokens shown per latent (default 5)",
    )
    p.add_argument(
        "--system-prompt",
        default=None,
        help="system turn: its text, or a preset, 'hrpo' or 'paper' (default: the one the --checkpoint "
        "was trained with, else 'hrpo', our marker instruction)",
    )
    p.add_argument("--raw", action="store_true", help="feed the prompt verbatim, without the chat template")
    common.add_marker_headings_arg(p)
    p.add_argument("--json", action="store_true", help="print the report as JSON instead of a table")
    p.add_argument("--png", default=None, metavar="PATH", help="also draw the tokens as a heatmap PNG")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    trained = common.apply_checkpoint_settings(args)
    system_prompt = common.system_prompt(args, trained, system_prompt_text("hrpo", args.answer_marker))
    model, tok = common.load_hybrid(args)
    cfg = common.rollout_config(
        args,
        max_prompt_length=None,
        do_sample=args.sample,
        ignore_marker_headings=args.ignore_marker_headings,
        system_prompt=system_prompt,
        chat_template=not args.raw,
    )
    report = inspect_prompt(model, tok, args.prompt, cfg, top=args.top, seed=args.seed)
    if args.json:
        print(json.dumps(report, ensure_ascii=False, indent=1))
    else:
        print(report["completion"])
        print()
        print(format_table(report))
    if args.png:
        print(f"heatmap: {plot_heatmap(report, args.png)}", file=sys.stderr)
    return 0
