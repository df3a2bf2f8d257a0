"""``hrpo sweep``: train several configurations × seeds, then one table with plots."""

from __future__ import annotations

import argparse
import sys

from hrpo.cli import common
from hrpo.rundir import lock_run_dir
from hrpo.sweep import load_sweep, run_sweep, summarize, train_command


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sweep",
        help="train several configurations × seeds and summarise them in one table with plots",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run every (variant, seed) of a sweep file as its own `hrpo train` process, then "
        "write OUTPUT/results.json, results.md (held-out accuracy before/after, mean ± std over seeds) "
        "and comparison plots. Running the same command again skips finished runs and resumes "
        "interrupted ones.",
        epilog="sweep file (YAML):\n"
        "  name: arithmetic-ablations\n"
        "  base_config: quickstart                   # a recipe name, or a path relative to the sweep file\n"
        "  output_dir: runs/sweep-arithmetic\n"
        "  common: {max_steps: 20}                   # config keys shared by every run\n"
        "  seeds: [0, 1, 2]\n"
        "  variants:                                 # name -> config keys of that variant\n"
        "    grpo: {hybrid: false}\n"
        "    hrpo: {}\n"
        "  tail_steps: 5                             # steps averaged for final training metrics\n"
        "example: hrpo sweep experiments/arithmetic_ablations.yaml --jobs 2 --threads 1",
    )
    p.add_argument("sweep_file", metavar="SWEEP.yaml", help="the sweep file")
    p.add_argument("--output", default=None, help="output directory (default: the file's output_dir)")
    p.add_argument("--jobs", type=common.POSITIVE_INT, default=1, help="runs at a time (default 1)")
    p.add_argument(
        "--threads",
        type=common.POSITIVE_INT,
        default=None,
        help="CPU threads per run (OMP_NUM_THREADS; default: torch's choice)",
    )
    p.add_argument(
        "--variants",
        type=_names,
        default=None,
        metavar="A,B",
        help="run only these variants (comma-separated; default: all); the table still covers every "
        "finished run, so a long sweep can be run in parts",
    )
    p.add_argument(
        "--seeds",
        type=_int_list,
        default=None,
        metavar="0,1",
        help="run only these seeds of the file (comma-separated; default: all)",
    )
    p.add_argument("--summarize-only", action="store_true", help="only rebuild the table and plots")
    p.add_argument("--dry-run", action="store_true", help="print each run's command and exit")
    p.set_defaults(func=run)


def _names(text: str) -> list[str]:
    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"expected comma-separated names, got {text!r}")
    return names


def _int_list(text: str) -> list[int]:
    try:
        return [int(t) for t in _names(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def run(args: argparse.Namespace) -> int:
    sweep = load_sweep(args.sweep_file, args.output)
    selected = sweep.select(args.variants, args.seeds)
    if args.dry_run:
        for variant, seed in selected:
            print(f"{variant} seed {seed}: {' '.join(train_command(sweep, variant, seed))}")
        return 0
    # One sweep at a time per output directory (each run also locks its own directory).
    args.held.enter_context(lock_run_dir(sweep.output_dir, command=args.command_line))
    failed = []
    if not args.summarize_only:
        results = run_sweep(sweep, jobs=args.jobs, threads=args.threads, runs=selected)
        failed = [(v, s) for v, s, code in results if code]
    summary = summarize(sweep)
    print((sweep.output_dir / "results.md").read_text(), end="")
    for path in [sweep.output_dir / "results.json", *summary.get("plots", [])]:
        print(f"wrote:   {path}")
    if failed:
        print(
            f"hrpo sweep: {len(failed)} runs failed: {failed}; run the command again to retry them",
            file=sys.stderr,
        )
        return 1
    return 0
