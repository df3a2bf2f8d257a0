"""``hrpo train``: train with HRPO (or GRPO), evaluating before and after, then plot the run."""

from __future__ import annotations

import argparse
import shlex
import time
from pathlib import Path

from hrpo.build import check_data_sources
from hrpo.checkpoint import TRAINER_STATE, latest_checkpoint
from hrpo.distributed import end_process_group
from hrpo.recipes import describe_fields, load_config, recipes
from hrpo.rundir import CHECKPOINTS, hold_run_dir, launched_main_process
from hrpo.trainer import HRPOTrainer, TrainingInterrupted


def add_parser(sub: argparse._SubParsersAction) -> None:
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
    p.add_argument(
        "--config",
        default=None,
        help="YAML config file or packaged recipe name (a file that exists wins; recipes: "
        + ", ".join(recipes())
        + ")",
    )
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
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    if args.overwrite:
        if args.resume:
            raise ValueError("--resume continues the run in output_dir and --overwrite deletes it: give one")
        cfg.overwrite_output_dir = True
    if isinstance(args.resume, str) and not (Path(args.resume) / TRAINER_STATE).is_file():
        raise FileNotFoundError(
            f"--resume {args.resume}: not an hrpo training checkpoint ({TRAINER_STATE} missing)"
        )
    # A reward path or dataset that cannot load fails now, before output_dir is touched.
    check_data_sources(cfg)
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
        if args.resume is True and latest_checkpoint(out / CHECKPOINTS) is None:
            print(f"hrpo train: no checkpoint in {out / CHECKPOINTS}; starting from step 0", flush=True)
    start = time.perf_counter()
    trainer = HRPOTrainer(args=cfg, plots=not args.no_plots)
    try:
        summary = trainer.train(resume_from_checkpoint=args.resume)
    except TrainingInterrupted as stop:
        if trainer.accelerator.is_main_process:
            saved = f"checkpoint saved to {stop.checkpoint}" if stop.checkpoint else "no step to save"
            print(f"hrpo train: interrupted after step {stop.step}; {saved}")
            # KEY=VALUE overrides before --resume, which would take the first one as its CHECKPOINT.
            again = ["hrpo", "train", *(["--config", args.config] if args.config else []), *args.overrides]
            print(f"resume with: {shlex.join([*again, '--resume'])}")
        return 130
    end_process_group()  # every process is here; what follows is the main process's own printing
    if not trainer.accelerator.is_main_process:
        return 0
    minutes = (time.perf_counter() - start) / 60
    print(f"hrpo train: {trainer.step} steps in {minutes:.1f} min ({'HRPO' if cfg.hybrid else 'GRPO'})")
    _print_eval("before", summary["eval_before"])
    _print_eval("after", summary["eval_after"])
    print(f"run:     {out.resolve()}  (metrics.jsonl, samples.jsonl, config.yaml, checkpoints/)")
    for path in summary["plots"]:
        print(f"plot:    {path}")
    return 0


def _print_eval(label: str, result: dict | None) -> None:
    if result is not None:
        print(
            f"{label:>7}: accuracy {result['accuracy']:.3f} on {result['num_examples']} held-out problems "
            f"(mean length {result['completion_length']:.0f} tokens, hidden ratio {result['hidden_ratio']:.3f})"
        )
