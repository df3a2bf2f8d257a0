"""The ``hrpo`` command line: one module per command, each holding its parser (``add_parser``)
next to the command (``run``), which parses, calls the library and prints."""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import sys
from collections.abc import Sequence

from hrpo import __version__
from hrpo.cli import eval as eval_command
from hrpo.cli import generate, inspect, model, plot, sweep, train
from hrpo.loading import ModelNotFoundError
from hrpo.prompts import PromptTooLongError
from hrpo.reward import RewardFunctionError

COMMANDS = (train, eval_command, generate, inspect, plot, sweep, model)
# Failures a user can fix, reported in one line (the traceback with HRPO_DEBUG=1).
EXPECTED_ERRORS = (ModelNotFoundError, PromptTooLongError, ValueError, RewardFunctionError, FileNotFoundError)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hrpo", description="Hybrid Reasoning Policy Optimization for Hugging Face causal LMs."
    )
    parser.add_argument("--version", action="version", version=f"hrpo {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


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
    except EXPECTED_ERRORS as exc:
        if _debug():
            raise
        print(f"hrpo {args.command}: {exc}", file=sys.stderr)
        return 1


def _debug() -> bool:
    return os.environ.get("HRPO_DEBUG", "") not in ("", "0")
