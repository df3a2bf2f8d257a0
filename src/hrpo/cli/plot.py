"""``hrpo plot``: PNG training curves of one run, or of several runs overlaid."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "plot",
        help="write PNG training curves of one run, or of several runs overlaid",
        description="Read RUN_DIR/metrics.jsonl and draw reward, hidden ratio, completion length, KL and "
        "the other logged metrics. With several run directories, the runs are overlaid for comparison.",
    )
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="training output directories")
    p.add_argument("--output", default=None, help="PNG file or directory (default: RUN_DIR/plots/)")
    p.add_argument("--labels", nargs="+", default=None, help="legend labels, one per run (several runs only)")
    p.add_argument("--per-metric", action="store_true", help="also write one PNG per metric (single run)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # Lazy: matplotlib would slow every other command's start.
    from hrpo.plotting import plot_run, plot_runs

    if len(args.run_dirs) == 1:
        paths = plot_run(args.run_dirs[0], args.output, per_metric=args.per_metric)
    else:
        paths = plot_runs(args.run_dirs, args.labels, args.output)
    for path in paths:
        print(path)
    return 0
