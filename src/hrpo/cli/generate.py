"""``hrpo generate``: complete prompts with hybrid (or plain) decoding, streamed or as JSON lines."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from transformers import PreTrainedTokenizerBase

from hrpo.cli import common
from hrpo.rollout import Rollout, RolloutEngine
from hrpo.tasks.data import read_records


def add_parser(sub: argparse._SubParsersAction) -> None:
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
    common.add_model_args(p)
    common.add_decoding_args(p, max_completion_length=256)
    p.add_argument("--greedy", action="store_true", help="argmax decoding instead of sampling")
    p.add_argument(
        "--hybrid",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="hybrid latent decoding, or plain token decoding with --no-hybrid "
        "(default: as the --checkpoint was trained, else hybrid)",
    )
    p.add_argument(
        "--num-generations", type=common.POSITIVE_INT, default=1, help="completions per prompt (default 1)"
    )
    p.add_argument(
        "--system-prompt",
        default=None,
        help="system turn prepended to each prompt: its text, or a preset, 'hrpo' (our instruction) or "
        "'paper' (the authors'); default: the one the --checkpoint was trained with, else none",
    )
    p.add_argument("--raw", action="store_true", help="feed prompts verbatim, without the chat template")
    common.add_marker_headings_arg(p)
    p.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object per completion (batched, not streamed) instead of streamed text",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    prompts = _read_prompts(args)
    if not prompts:
        print("hrpo generate: no prompts given (arguments, --file or stdin)", file=sys.stderr)
        return 2
    trained = common.apply_checkpoint_settings(args)
    hybrid = common.trained_value("hybrid", args.hybrid, trained, True)
    system_prompt = common.system_prompt(args, trained, None)
    model, tok = common.load_hybrid(args)
    cfg = common.rollout_config(
        args,
        num_generations=args.num_generations,
        max_prompt_length=None,
        do_sample=not args.greedy,
        hybrid=hybrid,
        ignore_marker_headings=args.ignore_marker_headings,
        system_prompt=system_prompt,
        chat_template=not args.raw,
    )
    engine = RolloutEngine(model, tok, cfg)
    start = time.perf_counter()
    if args.json:
        tokens = _print_json(engine, prompts, args.seed)
    else:
        tokens = _stream(engine, tok, prompts, args.num_generations, args.seed)
    seconds = time.perf_counter() - start
    print(f"{tokens} tokens in {seconds:.1f} s ({tokens / seconds:.1f} tokens/s)", file=sys.stderr)
    return 0


def _print_json(engine: RolloutEngine, prompts: list, seed: int | None) -> int:
    """Machine output: one batch, one JSON line per completion. Returns the tokens generated."""
    ro = engine.generate(prompts, seed=seed)
    for i, text in enumerate(ro.completion_texts):
        print(json.dumps(_completion_record(prompts[int(ro.group_ids[i])], text, ro, i), ensure_ascii=False))
    return int(ro.completion_lengths.sum())


def _stream(
    engine: RolloutEngine, tok: PreTrainedTokenizerBase, prompts: list, n: int, seed: int | None
) -> int:
    """For people: each completion streamed as it is decoded. Returns the tokens generated."""
    tokens, k = 0, 0
    for prompt in prompts:
        for _ in range(n):
            shown = prompt if isinstance(prompt, str) else json.dumps(prompt, ensure_ascii=False)
            print(f"=== [{k}] {shown}", flush=True)
            ro = engine.generate(
                [prompt], num_generations=1, seed=None if seed is None else seed + k, on_step=_Streamer(tok)
            )
            rec = _completion_record(prompt, ro.completion_texts[0], ro, 0)
            tokens += rec["completion_tokens"]
            print(
                f"\n--- {rec['completion_tokens']} tokens, {rec['thinking_tokens']} thinking, "
                f"hidden ratio {rec['hidden_ratio']:.3f}",
                flush=True,
            )
            k += 1
    return tokens


def _read_prompts(args: argparse.Namespace) -> list:
    if args.file:
        path = Path(args.file)
        if path.suffix == ".jsonl":
            records = read_records(path)
            for i, rec in enumerate(records):
                if not isinstance(rec, dict) or "prompt" not in rec:
                    raise ValueError(f"{path}: record {i} has no 'prompt' field")
            return [rec["prompt"] for rec in records]
        return [line.rstrip("\n") for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return list(args.prompts) or [line.rstrip("\n") for line in sys.stdin if line.strip()]


class _Streamer:
    """Prints one sequence's text as its tokens arrive (holding back incomplete UTF-8)."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
        self.tokenizer, self.ids, self.printed = tokenizer, [], 0

    def __call__(self, tokens, running) -> None:
        if bool(running[0]):
            self.ids.append(int(tokens[0]))
            text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
            if not text.endswith("\ufffd"):
                print(text[self.printed :], end="", flush=True)
                self.printed = len(text)


def _completion_record(prompt, text: str, ro: Rollout, i: int) -> dict:
    think = ro.thinking_mask[i]
    return {
        "prompt": prompt,
        "completion": text,
        "completion_tokens": int(ro.completion_lengths[i]),
        "thinking_tokens": int(think.sum()),
        "embeds_ratio": float(ro.embeds_ratio[i][think].mean()) if think.any() else 1.0,
        "hidden_ratio": float(ro.hidden_ratio[i][think].mean()) if think.any() else 0.0,
    }
