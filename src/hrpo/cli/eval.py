"""``hrpo eval``: evaluate a model (and a trained checkpoint) on tasks, beside the paper's numbers.

The command parses and prints; :func:`hrpo.eval_suite.evaluate_tasks` does the evaluating."""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from hrpo.cli import common
from hrpo.eval_suite import SUMMARY, evaluate_tasks, mode_dir
from hrpo.loading import resolve_model_path
from hrpo.rundir import lock_run_dir
from hrpo.tasks import get_task

# --hybrid's choices -> decoding modes
_MODES = {"on": ["hybrid"], "off": ["plain"], "both": ["hybrid", "plain"]}


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="evaluate a model (and optionally a trained checkpoint) on benchmark tasks",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Evaluate on one or more tasks: greedy by default, or --num-samples n sampled\n"
        "completions per problem (mean accuracy with a 95% interval over problems, and pass@k).\n"
        "Writes OUTPUT/metrics.json and, per task and decoding mode, OUTPUT/TASK-MODE/predictions.jsonl\n"
        "and metrics.json. Rerunning with the same --output resumes from the predictions already\n"
        "written. For Qwen2.5-1.5B/3B the paper's GRPO and HRPO numbers are shown beside ours.",
        epilog="tasks: arithmetic, gsm8k, math (MATH500 by default), mmlu_stem, arc_challenge, openbookqa, qasc, qa\n"
        "example: hrpo eval --task gsm8k --data data/gsm8k/test.jsonl --limit 50 --hybrid both",
    )
    p.add_argument(
        "--task",
        nargs="+",
        required=True,
        metavar="TASK",
        help="tasks to evaluate: registered names (below) or custom ones as package.module:ClassName",
    )
    common.add_model_args(p)
    common.add_decoding_args(
        p,
        length_help="maximum completion length in tokens (default: each task's, as the authors "
        "evaluated: 1024 for math, 512 for the others)",
    )
    p.add_argument(
        "--protocol",
        choices=["hrpo", "paper"],
        default="hrpo",
        help="grading rules: hrpo (ours, default: exact values, math-verify equivalence, a marker "
        "that must be there) or paper (the authors' extraction and matching, spec §7; with it the "
        "system prompt defaults to the authors'). The paper's numbers are shown only beside a "
        "result measured like theirs: --protocol paper, the authors' prompt, greedy, hybrid, the "
        "task's length",
    )
    p.add_argument(
        "--system-prompt",
        default=None,
        help="the tasks' system turn: a preset, 'hrpo' (our instruction) or 'paper' (the authors'), "
        "or its text (default: the one the --checkpoint was trained with, else the --protocol's)",
    )
    p.add_argument(
        "--data",
        action="append",
        default=[],
        metavar="[TASK=]PATH",
        help="local JSON/JSONL/Parquet file used as the evaluated split (repeat as TASK=PATH for "
        "several tasks); without it the task's hub data set is used, if reachable",
    )
    p.add_argument(
        "--task-args",
        default=None,
        metavar="YAML",
        help="extra task settings as a YAML mapping, e.g. '{columns: {question: q}, num_passages: 3}'",
    )
    p.add_argument("--split", default="test", help="split to evaluate (default test)")
    p.add_argument(
        "--limit", type=common.POSITIVE_INT, default=None, help="evaluate the first N problems only"
    )
    p.add_argument(
        "--batch-size", type=common.POSITIVE_INT, default=16, help="problems decoded together (default 16)"
    )
    p.add_argument(
        "--num-samples",
        type=common.POSITIVE_INT,
        default=1,
        help="completions per problem: 1 = greedy (default); more = sampled at --temperature",
    )
    p.add_argument(
        "--pass-k",
        type=common.POSITIVE_INT,
        nargs="+",
        default=None,
        help="k values for pass@k with --num-samples > 1 (default 1, 2, 4, ... n)",
    )
    p.add_argument(
        "--hybrid",
        choices=["on", "off", "both"],
        default=None,
        help="hybrid latent decoding (on), plain token decoding (off), or both one after the other "
        "(default: as the --checkpoint was trained, else on)",
    )
    p.add_argument(
        "--max-prompt-length",
        type=common.POSITIVE_INT,
        default=2048,
        help="prompts longer than this many tokens are an error (default 2048)",
    )
    p.add_argument(
        "--benchmark",
        default=None,
        help="the paper's benchmark to compare with when it cannot be told from the task "
        "(e.g. MATH for the full MATH test set; default: gsm8k→GSM8K, math→MATH500, ...)",
    )
    p.add_argument("--output", default=None, help="output directory (default runs/eval/MODEL)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.pass_k and max(args.pass_k) > args.num_samples:
        raise ValueError(f"--pass-k {max(args.pass_k)}: k must be <= --num-samples ({args.num_samples})")
    task_args = yaml.safe_load(args.task_args) if args.task_args else {}
    if not isinstance(task_args, dict):
        raise ValueError(f"--task-args must be a YAML mapping, got {args.task_args!r}")
    data = _data_files(args.data, args.task)
    twice = sorted({"marker", "system_prompt", "protocol"} & set(task_args))
    if twice:
        raise ValueError(
            f"--task-args sets {', '.join(twice)}: use --answer-marker, --system-prompt, --protocol"
        )
    trained = common.apply_checkpoint_settings(args)
    # The decoding mode the checkpoint was trained with, unless told otherwise ("both" includes it).
    trained_mode = {} if trained.get("hybrid") is None else {"hybrid": "on" if trained["hybrid"] else "off"}
    mode = (
        args.hybrid
        if args.hybrid == "both"
        else common.trained_value("hybrid", args.hybrid, trained_mode, "on")
    )
    system_prompt = common.system_prompt(args, trained, "paper" if args.protocol == "paper" else None)
    tasks, lengths = {}, {}
    for name in args.task:
        kwargs = {"marker": args.answer_marker, "protocol": args.protocol, **task_args}
        if system_prompt is not None:
            kwargs["system_prompt"] = system_prompt
        if name in data:
            kwargs["data_files"] = {args.split: data[name]}
        tasks[name] = get_task(name, **kwargs)  # bad names and settings fail before the model loads
        lengths[name] = args.max_completion_length or tasks[name].eval_max_completion_length
    args.max_completion_length = args.max_completion_length or lengths[args.task[0]]

    model_name = args.model or "SmolLM2-135M-Instruct"
    out = Path(args.output or Path("runs") / "eval" / Path(model_name.rstrip("/")).name)
    # One process at a time appends predictions there; taken before the model loads (fail fast).
    args.held.enter_context(lock_run_dir(out, command=args.command_line))
    model, tok = common.load_hybrid(args)
    model_path = str(resolve_model_path(args.model))
    results = evaluate_tasks(
        model,
        tok,
        tasks,
        common.rollout_config(args, max_prompt_length=args.max_prompt_length),
        output_dir=out,
        modes=_MODES[mode],
        lengths=lengths,
        split=args.split,
        limit=args.limit,
        num_samples=args.num_samples,
        batch_size=args.batch_size,
        seed=args.seed,
        pass_ks=args.pass_k,
        model_id=model_path,
        model_names=(model_name, model_path),
        checkpoint=args.checkpoint,
        benchmark=args.benchmark,
        task_settings={name: {"task_args": task_args, "data": data.get(name)} for name in tasks},
        progress=not args.no_progress,
    )
    _print_eval_table(results)
    written = [f"{mode_dir(out, r['task'], r['mode']).name}/predictions.jsonl" for r in results]
    print(f"\nwrote {out / SUMMARY} and {', '.join(written)} under {out}")
    return 0


def _data_files(entries: list[str], tasks: list[str]) -> dict[str, str]:
    """``--data`` values (``PATH`` or ``TASK=PATH``) by task name."""
    files: dict[str, str] = {}
    for entry in entries:
        name, sep, path = entry.partition("=")
        if sep and name in tasks:
            files[name] = path
        elif len(tasks) == 1:
            files[tasks[0]] = entry
        else:
            raise ValueError(
                f"--data {entry!r}: with several tasks write TASK=PATH (tasks: {', '.join(tasks)})"
            )
    return files


def _fmt_acc(m: dict) -> str:
    low, high = m["accuracy_ci95"]
    return f"{m['accuracy']:.3f} [{low:.2f}, {high:.2f}]"


def _print_eval_table(results: list[dict]) -> None:
    header = f"{'task':<14}{'mode':<8}{'n':>5}  {'accuracy [95% CI]':<22}{'length':>7}{'hidden':>8}{'tok/s':>7}{'time':>7}"
    print(header + "   paper GRPO / HRPO")
    not_comparable = {}
    for r in results:
        paper = r.get("paper")
        paper_text = f"   {paper['grpo']:.3f} / {paper['hrpo']:.3f}" if paper else ""
        if r.get("paper_not_comparable"):
            paper_text = "   not comparable (below)"
            not_comparable[f"{r['task']} ({r['mode']})"] = r["paper_not_comparable"]
        tps = f"{r['tokens_per_second']:.0f}" if r.get("tokens_per_second") else "-"
        print(
            f"{r['task']:<14}{r['mode']:<8}{r['num_examples']:>5}  {_fmt_acc(r):<22}"
            f"{r['completion_length']:>7.0f}{r['hidden_ratio']:>8.3f}{tps:>7}{r['seconds']:>6.0f}s{paper_text}"
        )
        for k in [k for k in r if k.startswith("pass@")]:
            print(f"{'':<29}{k}: {r[k]:.3f}")
        for group, gm in {**r.get("per_group", {}), **r.get("subsets", {})}.items():
            gp = gm.get("paper")
            gp_text = f"   {gp['grpo']:.3f} / {gp['hrpo']:.3f}" if gp else ""
            print(f"{'':<2}{group[:20]:<20}{gm['num_examples']:>5}  {gm['accuracy']:.3f}{gp_text}")
    for what, why in not_comparable.items():
        print(f"{what}: the paper's numbers are not shown: {why}")
