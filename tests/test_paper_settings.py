"""Issue 15's settings: the authors' system prompt as a preset, checkpoints that carry the decoding
settings they were trained with (and the commands that use them), per-task evaluation lengths, and
the paper's numbers shown only beside a result measured like theirs."""

import argparse
import json

import pytest
from conftest import SHARED

from hrpo import HRPOConfig, HRPOTrainer
from hrpo.build import build_data
from hrpo.checkpoint import DECODING_CONFIG, read_decoding_settings
from hrpo.cli import main
from hrpo.cli.common import apply_checkpoint_settings, system_prompt
from hrpo.config import ConfigError
from hrpo.eval_suite import paper_comparability
from hrpo.model import HybridModel
from hrpo.prompts import render_prompt
from hrpo.rollout import RolloutConfig
from hrpo.tasks import get_task
from hrpo.tasks.base import PAPER_SYSTEM_PROMPT, format_instruction, system_prompt_text

GSM8K = SHARED / "data/gsm8k/train.jsonl"


def test_the_paper_prompt_is_a_preset_that_reaches_the_chat_template(tok):
    task = get_task("gsm8k", data_files={"test": str(GSM8K)}, system_prompt="paper")
    assert task.system_prompt == PAPER_SYSTEM_PROMPT
    assert PAPER_SYSTEM_PROMPT.startswith("A conversation between User and Assistant.")
    assert PAPER_SYSTEM_PROMPT.endswith("{reasoning process} #### {answer}.")
    row = task.load("test", limit=1)[0]
    assert row["prompt"][0] == {"role": "system", "content": PAPER_SYSTEM_PROMPT}
    text = render_prompt(tok, row["prompt"])
    assert PAPER_SYSTEM_PROMPT in text and row["question"] in text
    # Our instruction stays the default, by name too; other text is used as it is.
    ours = get_task("gsm8k", data_files={"test": str(GSM8K)})
    assert ours.system_prompt == system_prompt_text("hrpo", answer_format=ours.answer_format)
    assert system_prompt_text(None) == system_prompt_text("hrpo") == format_instruction()
    assert system_prompt_text("paper", marker="ANSWER:").endswith("{reasoning process} ANSWER: {answer}.")
    assert system_prompt_text("Think, then ####.") == "Think, then ####."


def test_config_keys_choose_the_prompt_and_the_grading_protocol():
    cfg = HRPOConfig(task="arithmetic", system_prompt="paper", protocol="paper", eval_limit=2)
    data = build_data(cfg)
    assert data.task.system_prompt == PAPER_SYSTEM_PROMPT and data.task.protocol == "paper"
    assert data.train_dataset[0]["prompt"][0]["content"] == PAPER_SYSTEM_PROMPT
    # The paper protocol grades the whole completion when there is no marker (spec §7).
    answer = data.eval_dataset[0]["answer"]
    assert data.task.grade([f"so it is {answer}"], [data.eval_dataset[0]]) == [1.0]
    assert build_data(HRPOConfig(task="arithmetic")).task.grade(
        [f"so it is {answer}"], [data.eval_dataset[0]]
    ) == [0.0]
    with pytest.raises(ConfigError, match="protocol"):
        HRPOConfig(protocol="authors")
    with pytest.raises(ConfigError, match="task_args sets protocol"):
        build_data(HRPOConfig(task="arithmetic", task_args={"protocol": "paper"}))


def test_every_paper_recipe_uses_the_authors_prompt_and_rules():
    from hrpo.recipes import load_config, recipes

    paper = [name for name in recipes() if name != "quickstart"]
    assert paper
    for name in paper:
        cfg = load_config(name)
        assert (cfg.system_prompt, cfg.protocol) == ("paper", "paper"), name
    assert load_config("quickstart").protocol == "hrpo"


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_dir):
    """A one-step run of a tiny model at τ 0.3, top-k 7, top-p 0.9, with the authors' prompt."""
    out = tmp_path_factory.mktemp("trained")
    args = HRPOConfig(
        output_dir=str(out / "run"),
        task="arithmetic",
        system_prompt="paper",
        temperature=0.3,
        top_k=7,
        top_p=0.9,
        max_steps=1,
        num_generations=2,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=1,
        max_completion_length=4,
        eval_limit=0,
        lora_r=2,
        lora_alpha=4,
        seed=0,
    )
    HRPOTrainer(str(tiny_dir), None, args, progress=False, plots=False).train()
    return out / "run" / "checkpoints" / "step-000001"


def test_a_checkpoint_carries_the_decoding_settings_it_was_trained_with(trained, tiny_dir):
    settings = read_decoding_settings(trained)
    assert (trained / DECODING_CONFIG).is_file()
    assert settings["temperature"] == 0.3 and settings["top_k"] == 7 and settings["top_p"] == 0.9
    assert settings["answer_marker"] == "####" and settings["hybrid"] is True
    assert settings["system_prompt"] == PAPER_SYSTEM_PROMPT  # the text, as the prompts carried it
    assert settings["hybrid_mix"] == "gated" and settings["latent_source"] == "projection"
    from transformers import AutoModelForCausalLM

    model = HybridModel.from_pretrained(trained, AutoModelForCausalLM.from_pretrained(tiny_dir))
    assert model.decoding_settings == settings


def test_an_older_training_checkpoint_reads_its_run_config(trained, tmp_path):
    import shutil

    old = tmp_path / "run" / "checkpoints" / trained.name
    shutil.copytree(trained, old)
    shutil.copy(trained.parent.parent / "config.yaml", tmp_path / "run" / "config.yaml")
    (old / DECODING_CONFIG).unlink()
    settings = read_decoding_settings(old)
    assert settings["temperature"] == 0.3 and settings["top_k"] == 7 and settings["system_prompt"] == "paper"
    loose = tmp_path / "loose"
    shutil.copytree(old, loose)
    assert read_decoding_settings(loose) is None  # saved by hand, outside a run: nothing to go by


def _args(checkpoint, **given) -> argparse.Namespace:
    values = dict(temperature=None, top_k=None, top_p=None, answer_marker=None, system_prompt=None)
    return argparse.Namespace(checkpoint=checkpoint, **{**values, **given})


def test_commands_decode_as_trained_unless_told_otherwise_with_a_warning(trained, capsys):
    args = _args(str(trained))
    stored = apply_checkpoint_settings(args)
    assert (args.temperature, args.top_k, args.top_p, args.answer_marker) == (0.3, 7, 0.9, "####")
    assert system_prompt(args, stored, None) == PAPER_SYSTEM_PROMPT
    assert capsys.readouterr().err == ""

    args = _args(str(trained), temperature=0.8, top_k=7, system_prompt="hrpo")
    stored = apply_checkpoint_settings(args)
    assert args.temperature == 0.8 and args.top_k == 7
    assert system_prompt(args, stored, None) == format_instruction()
    err = capsys.readouterr().err
    assert "--temperature 0.8 differs from the 0.3 the checkpoint was trained with; decoding with 0.8" in err
    assert "--top-k" not in err  # the same value: nothing to say
    assert "--system-prompt" in err and "the checkpoint was trained with" in err

    args = _args(None)  # no checkpoint: RolloutConfig's defaults
    assert apply_checkpoint_settings(args) == {}
    assert args.temperature == RolloutConfig().temperature and args.top_k == RolloutConfig().top_k


def test_hrpo_eval_with_a_checkpoint_uses_its_settings(trained, tiny_dir, tmp_path, capsys):
    def run(*extra) -> dict:
        out = tmp_path / f"eval{len(extra)}"
        argv = ["eval", "--task", "gsm8k", "--data", str(GSM8K), "--model", str(tiny_dir)]
        argv += ["--checkpoint", str(trained), "--limit", "1", "--max-completion-length", "3"]
        assert main([*argv, "--output", str(out), "--no-progress", *extra]) == 0
        return json.loads((out / "gsm8k-hybrid" / "eval_config.json").read_text())

    recorded = run()
    assert recorded["temperature"] == 0.3 and recorded["top_k"] == 7 and recorded["top_p"] == 0.9
    assert recorded["system_prompt"] == PAPER_SYSTEM_PROMPT and recorded["protocol"] == "hrpo"
    assert "warning" not in capsys.readouterr().err
    recorded = run("--temperature", "0.6", "--protocol", "paper")
    assert recorded["temperature"] == 0.6 and recorded["protocol"] == "paper"
    assert "--temperature 0.6 differs from the 0.3" in capsys.readouterr().err


def test_each_task_has_its_evaluation_length():
    assert get_task("math").eval_max_completion_length == 1024
    for name in ("gsm8k", "arithmetic", "mmlu_stem", "arc_challenge", "qa"):
        assert get_task(name).eval_max_completion_length == 512, name


def test_hrpo_eval_defaults_to_each_tasks_length(tiny_dir, tmp_path):
    math_file = SHARED / "data/math/math500_sample.jsonl"
    out = tmp_path / "eval"
    argv = ["eval", "--task", "gsm8k", "math", "--data", f"gsm8k={GSM8K}", "--data", f"math={math_file}"]
    argv += [
        "--model",
        str(tiny_dir),
        "--limit",
        "1",
        "--output",
        str(out),
        "--no-progress",
        "--hybrid",
        "off",
    ]
    assert main(argv) == 0
    lengths = {
        t: json.loads((out / f"{t}-plain" / "eval_config.json").read_text()) for t in ("gsm8k", "math")
    }
    assert lengths["gsm8k"]["max_completion_length"] == 512
    assert lengths["math"]["max_completion_length"] == 1024


def test_the_papers_numbers_need_a_like_for_like_measurement():
    def task(**kw):
        return get_task("gsm8k", data_files={"test": str(GSM8K)}, **kw)

    like = RolloutConfig(max_completion_length=512, hybrid=True)
    paper = task(protocol="paper", system_prompt="paper")
    assert paper_comparability(paper, like, num_samples=1) is None
    assert "hrpo protocol" in paper_comparability(task(system_prompt="paper"), like, 1)
    assert "system prompt" in paper_comparability(task(protocol="paper"), like, 1)
    assert "not greedy" in paper_comparability(paper, like, 4)
    assert "plain decoding" in paper_comparability(
        paper, RolloutConfig(max_completion_length=512, hybrid=False), 1
    )
    assert "48 new tokens, not the authors' 512" in paper_comparability(
        paper, RolloutConfig(max_completion_length=48), 1
    )


def test_hrpo_eval_shows_the_papers_numbers_only_beside_a_comparable_result(tmp_path, monkeypatch, capsys):
    """A model named like the paper's (the tiny one, saved under a Qwen2.5-1.5B name)."""
    from tiny import tiny_model, tiny_tokenizer

    tok = tiny_tokenizer()
    path = tmp_path / "Qwen2.5-1.5B-Instruct"
    tiny_model("qwen2", len(tok)).save_pretrained(path)
    tok.save_pretrained(path)
    base = ["eval", "--task", "gsm8k", "--data", str(GSM8K), "--model", str(path), "--limit", "1"]
    base += ["--batch-size", "1", "--no-progress"]

    assert main([*base, "--max-completion-length", "4", "--output", str(tmp_path / "a")]) == 0
    printed = capsys.readouterr().out
    entry = json.loads((tmp_path / "a" / "gsm8k-hybrid" / "metrics.json").read_text())
    assert "paper" not in entry and "hrpo protocol" in entry["paper_not_comparable"]
    assert "not comparable" in printed and "0.711" not in printed

    # Like the authors: their rules and prompt, greedy, hybrid, 512 tokens (the tiny model's
    # completions end early or hit the limit; either way the measurement is theirs).
    assert main([*base, "--protocol", "paper", "--output", str(tmp_path / "b")]) == 0
    printed = capsys.readouterr().out
    entry = json.loads((tmp_path / "b" / "gsm8k-hybrid" / "metrics.json").read_text())
    assert entry["paper"] == {"grpo": 0.711, "hrpo": 0.72} and entry["protocol"] == "paper"
    assert "0.711 / 0.720" in printed
