"""Numeric command-line options are range-checked by argparse: a bad value is a usage error
(exit status 2) naming the option, before any task, data or model is loaded."""

import json

import pytest

import hrpo.cli.common
from hrpo.cli import build_parser, main
from hrpo.config import FIELD_RANGES


@pytest.fixture
def no_model_loads(monkeypatch):
    """Fail the test if a command gets as far as loading a model."""

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(hrpo.cli.common, "load_hybrid", refuse)
    monkeypatch.setattr("hrpo.loading.load_model", refuse)


EVAL = ["eval", "--task", "arithmetic"]
# (command line, option named in the error, fragment of the message)
BAD_ARGS = [
    (EVAL + ["--top-k", "-5"], "--top-k", r"must be >= 0 \(got -5\); 0 keeps all tokens"),
    (EVAL + ["--temperature", "0"], "--temperature", r"must be > 0 \(got 0.0\)"),
    (EVAL + ["--temperature", "nan"], "--temperature", r"must be a finite number > 0 \(got nan\)"),
    (EVAL + ["--temperature", "inf"], "--temperature", r"must be a finite number > 0 \(got inf\)"),
    (EVAL + ["--top-p", "0"], "--top-p", r"must be in \(0, 1\] \(got 0.0\)"),
    (EVAL + ["--top-p", "1.5"], "--top-p", r"must be in \(0, 1\]"),
    (EVAL + ["--max-completion-length", "0"], "--max-completion-length", r"must be >= 1 \(got 0\)"),
    (EVAL + ["--batch-size", "0"], "--batch-size", r"must be >= 1"),
    (EVAL + ["--num-samples", "0"], "--num-samples", r"must be >= 1"),
    (EVAL + ["--limit", "0"], "--limit", r"must be >= 1"),
    (EVAL + ["--limit", "-1"], "--limit", r"must be >= 1 \(got -1\)"),
    (EVAL + ["--pass-k", "2", "0"], "--pass-k", r"must be >= 1 \(got 0\)"),
    (EVAL + ["--max-prompt-length", "0"], "--max-prompt-length", r"must be >= 1"),
    (EVAL + ["--seed", "-1"], "--seed", r"must be in \[0, 9223372036854775807\] \(got -1\)"),
    (EVAL + ["--batch-size", "2.5"], "--batch-size", r"expected an integer, got '2.5'"),
    (["generate", "--num-generations", "0", "hi"], "--num-generations", r"must be >= 1"),
    (["generate", "--top-k", "abc", "hi"], "--top-k", r"expected an integer, got 'abc'"),
    (["generate", "--temperature", "hot", "hi"], "--temperature", r"expected a number, got 'hot'"),
    (["inspect", "hi", "--top", "0"], "--top", r"must be >= 1 \(got 0\)"),
    (["inspect", "hi", "--max-new-tokens", "-3"], "--max-new-tokens", r"must be >= 1 \(got -3\)"),
    (["sweep", "s.yaml", "--jobs", "0"], "--jobs", r"must be >= 1"),
    (["sweep", "s.yaml", "--threads", "0"], "--threads", r"must be >= 1"),
]


@pytest.mark.parametrize("argv,option,message", BAD_ARGS, ids=[" ".join(a[0][1:]) for a in BAD_ARGS])
def test_bad_numbers_are_usage_errors_naming_the_option(argv, option, message, capsys, no_model_loads):
    import re

    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1 and re.search(rf"hrpo {argv[0]}: error: argument {option}: {message}", errors[0])


def test_edge_values_parse_to_numbers():
    args = build_parser().parse_args(
        EVAL
        + ["--top-k", "0", "--top-p", "1", "--temperature", "1e-3", "--limit", "1", "--seed", "0"]
        + ["--num-samples", "1", "--batch-size", "1", "--pass-k", "1", "--max-completion-length", "1"]
    )
    assert (args.top_k, args.top_p, args.temperature, args.limit, args.seed) == (0, 1.0, 1e-3, 1, 0)
    assert isinstance(args.top_p, float) and args.pass_k == [1] and args.max_completion_length == 1


@pytest.mark.parametrize("command", [EVAL, ["generate"], ["inspect", "hi"]])
def test_max_new_tokens_is_a_deprecated_hidden_alias(command, capsys):
    parser = build_parser()
    # eval: None until the tasks are known (each task's own length)
    assert parser.parse_args(command).max_completion_length == {"eval": None, "generate": 256}.get(
        command[0], 128
    )
    assert parser.parse_args([*command, "--max-new-tokens", "7"]).max_completion_length == 7
    assert "--max-new-tokens is deprecated; use --max-completion-length" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parser.parse_args([command[0], "--help"])
    text = capsys.readouterr().out
    assert "--max-completion-length" in text and "--max-new-tokens" not in text


def test_decoding_defaults_are_the_rollout_config_defaults():
    """`hrpo generate/eval/inspect` build their RolloutConfig from options whose defaults are the
    dataclass's own."""
    import dataclasses

    from hrpo.cli.common import apply_checkpoint_settings
    from hrpo.rollout import RolloutConfig

    defaults = {f.name: f.default for f in dataclasses.fields(RolloutConfig)}
    args = build_parser().parse_args(["generate"])
    # Unset (None) until resolved: without a checkpoint, the dataclass's own defaults.
    assert (args.temperature, args.top_k, args.top_p, args.answer_marker) == (None, None, None, None)
    assert apply_checkpoint_settings(args) == {}
    for name in ("temperature", "top_k", "top_p", "answer_marker"):
        assert getattr(args, name) == defaults[name], name


def test_cli_and_config_agree_on_shared_ranges():
    """The decoding options and the config keys of the same name accept the same values."""
    from argparse import ArgumentTypeError

    parser = build_parser()._subparsers._group_actions[0].choices["eval"]
    types = {a.dest: a.type for a in parser._actions}
    for key, kind, values in [
        ("temperature", float, ["0", "-1", "1e-9", "2", "nan", "-inf"]),
        ("top_p", float, ["0", "0.5", "1", "1.01", "nan"]),
        ("top_k", int, ["-1", "0", "1", "50"]),
        ("seed", int, ["-1", "0", str(2**63 - 1), str(2**63)]),
    ]:
        for text in values:
            try:
                types[key](text)
                accepted = True
            except ArgumentTypeError:
                accepted = False
            assert accepted == (kind(text) in FIELD_RANGES[key]), (key, text)


def test_pass_k_above_num_samples_fails_before_loading(capsys, no_model_loads):
    assert main(EVAL + ["--num-samples", "4", "--pass-k", "1", "8"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == "hrpo eval: --pass-k 8: k must be <= --num-samples (4)"


def test_train_override_out_of_range_is_one_clear_line(tmp_path, capsys, no_model_loads):
    assert main(["train", "top_k=-5", f"output_dir={tmp_path / 'run'}"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == "hrpo train: config key 'top_k': must be >= 0 or null (got -5)"
    assert not (tmp_path / "run").exists()


def test_train_help_states_every_numeric_range(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    for key, allowed in FIELD_RANGES.items():
        assert f"  {key} = " in text and f"(allowed: {allowed})" in text, key


def test_top_k_zero_keeps_the_whole_vocabulary(tiny_dir, tok, capsys):
    """`--top-k 0` decodes exactly like a k at least the vocabulary's size (both: no restriction)."""

    def run(k: int) -> list[dict]:
        argv = ["generate", "--model", str(tiny_dir), "--json", "--max-new-tokens", "5", "--seed", "3"]
        assert main([*argv, "--num-generations", "3", "--top-k", str(k), "1 + 2 ="]) == 0
        return [json.loads(line) for line in capsys.readouterr().out.splitlines()]

    everything = run(0)
    assert everything == run(len(tok) + 10)
    assert len(everything) == 3
