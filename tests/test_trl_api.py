"""TRL's GRPO API on hrpo: ``from hrpo import HRPOConfig, HRPOTrainer`` in place of TRL's, the
trainer's arguments in TRL's order, TRL's config field names, and refused TRL fields."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from peft import LoraConfig, PeftModel, get_peft_model

from hrpo import HRPOConfig, HRPOTrainer
from hrpo.config import ConfigError
from hrpo.recipes import load_config
from hrpo.trl_compat import UNSUPPORTED

SYSTEM = {"role": "system", "content": "Answer after ####."}


def length(completions, **kwargs):
    return [len(c) / 10 for c in completions]


def small_args(tmp_path, **kw) -> HRPOConfig:
    """A TRL-style config: TRL's field names, plus the sizes a tiny CPU run needs."""
    base = dict(
        output_dir=str(tmp_path / "run"),
        learning_rate=1e-3,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=2,
        num_generations=2,
        max_completion_length=6,
        max_steps=2,
        logging_steps=1,
        save_steps=0,
        seed=0,
        eval_limit=0,  # HRPO fields
        lora_r=2,
        lora_alpha=4,
    )
    return HRPOConfig(**{**base, **kw})


def test_trl_quickstart_shape_trains_by_changing_the_import(tmp_path, tiny_dir):
    """TRL's documented GRPO quickstart shape: a datasets.Dataset with a conversational prompt
    column and an extra column, two reward functions, the model as a path string."""
    datasets = pytest.importorskip("datasets")
    dataset = datasets.Dataset.from_list(
        [
            {"prompt": [SYSTEM, {"role": "user", "content": f"what is {i} + 1 ?"}], "answer": str(i + 1)}
            for i in range(8)
        ]
    )

    def reward_len(completions, **kwargs):
        return [-abs(6 - len(completion[0]["content"])) / 6 for completion in completions]

    def reward_answer(completions, answer, **kwargs):
        return [
            float(a in completion[0]["content"]) for completion, a in zip(completions, answer, strict=True)
        ]

    trainer = HRPOTrainer(
        model=str(tiny_dir),
        reward_funcs=[reward_len, reward_answer],
        args=small_args(tmp_path, log_completions=True, log_completions_steps=1, run_name="quick"),
        train_dataset=dataset,
        progress=False,
        plots=False,
    )
    assert trainer.config.model_name_or_path == str(tiny_dir) and trainer.tokenizer is not None
    trainer.train()

    lines = [json.loads(x) for x in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == [1, 2]
    trl_names = {
        "loss",
        "reward",
        "reward_std",
        "frac_reward_zero_std",
        "rewards/reward_len/mean",
        "rewards/reward_len/std",
        "rewards/reward_answer/mean",
        "rewards/reward_answer/std",
        "completions/mean_length",
        "completions/min_length",
        "completions/max_length",
        "completions/clipped_ratio",
        "clip_ratio/low_mean",
        "clip_ratio/high_mean",
        "clip_ratio/region_mean",
        "clip_ratio/low_min",
        "clip_ratio/high_max",
        "completions/mean_terminated_length",
        "completions/min_terminated_length",
        "completions/max_terminated_length",
        "entropy",
        "kl",
        "grad_norm",
        "completion_length",
        "hidden_ratio",
        "thinking_fraction",
    }
    for m in lines:
        assert trl_names <= set(m), trl_names - set(m)
        assert m["completions/min_length"] <= m["completions/mean_length"] <= m["completions/max_length"] <= 6
        assert m["completions/mean_length"] == pytest.approx(m["completion_length"])
        assert 0.0 <= m["completions/clipped_ratio"] <= 1.0
    assert (tmp_path / "run/samples.jsonl").is_file()


def test_positional_arguments_follow_trl_and_args_default_to_model_name_hrpo(tiny_dir, tok, monkeypatch):
    monkeypatch.chdir(tiny_dir.parent)
    rows = [{"prompt": "1 + 1 ="}] * 4
    trainer = HRPOTrainer(str(tiny_dir), lambda completions, **k: [1.0] * len(completions), None, rows)
    assert trainer.config.output_dir == f"{tiny_dir.name}-HRPO"
    assert trainer.config.model_name_or_path == str(tiny_dir)


@pytest.mark.parametrize("key", ["use_vllm", "vllm_mode", "use_liger_loss", "use_liger_kernel", "deepspeed"])
def test_unsupported_trl_fields_are_errors_naming_the_field(key):
    with pytest.raises(ConfigError, match=rf"TRL's config key '{key}' = True is not supported by hrpo: .*"):
        HRPOConfig(**{key: True})
    with pytest.raises(ConfigError, match=rf"'{key}' = True is not supported.*\(in the command line\)"):
        load_config(None, [f"{key}=true"])


def test_every_unsupported_trl_field_is_refused_in_yaml_with_its_reason(tmp_path):
    for key, why in UNSUPPORTED.items():
        path = tmp_path / "c.yaml"
        path.write_text(f"{key}: 7\n")  # no refused field accepts 7
        with pytest.raises(ConfigError) as info:
            load_config(path)
        assert f"'{key}' = 7" in str(info.value) and why in str(info.value)
        with pytest.raises(ConfigError, match=key):
            HRPOConfig(**{key: 7})


TRL_DEFAULTS_HRPO_FOLLOWS = {
    "use_vllm": False,
    "shuffle_dataset": True,
    "delta": None,
    "top_entropy_quantile": 1.0,
    "remove_unused_columns": False,
    "use_liger_kernel": False,
    "repetition_penalty": 1,
    "use_peft": True,
    "vllm_importance_sampling_correction": False,
    "eval_strategy": "no",
}


def test_a_refused_trl_field_set_to_what_hrpo_does_anyway_is_accepted_and_dropped(tmp_path):
    cfg = HRPOConfig(**TRL_DEFAULTS_HRPO_FOLLOWS, seed=3)
    assert cfg.seed == 3 and "use_vllm" not in cfg.to_dict()
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({**TRL_DEFAULTS_HRPO_FOLLOWS, "seed": 3}))
    assert load_config(path).seed == 3
    assert load_config(None, ["use_vllm=false", "shuffle_dataset=true"]).seed == HRPOConfig().seed
    # The other value asks for something hrpo does not do: refused, value and file named.
    for key, value in (("shuffle_dataset", False), ("use_peft", False), ("repetition_penalty", 1.1)):
        path.write_text(yaml.safe_dump({key: value}))
        with pytest.raises(ConfigError, match=rf"'{key}' = {value!r} is not supported.*\(in {path}\)"):
            load_config(path)
    with pytest.raises(ConfigError, match="'use_vllm' = True"):
        load_config(None, ["use_vllm=true"])


def test_trl_boolean_scale_rewards_and_adam_epsilon():
    assert HRPOConfig(scale_rewards=True).scale_rewards == "group"
    assert HRPOConfig(scale_rewards=False).scale_rewards == "none"
    with pytest.raises(ConfigError, match="adam_epsilon"):
        HRPOConfig(adam_epsilon=0.0)


def test_trl_fields_with_trl_meaning():
    assert HRPOConfig(report_to="wandb").report_to == ["wandb"]
    with pytest.raises(ConfigError, match="'bf16', 'fp16'"):
        HRPOConfig(bf16=True, fp16=True)
    with pytest.raises(ConfigError, match="set one of them"):
        HRPOConfig(generation_batch_size=16, steps_per_generation=4)


def test_generation_batch_size_sets_steps_per_generation(tmp_path, make_model, tok):
    args = small_args(tmp_path, generation_batch_size=8)  # 8 completions / (2 per micro-batch × 1 process)
    rows = [{"prompt": f"{i} + 1 ="} for i in range(8)]
    trainer = HRPOTrainer(make_model("qwen2"), length, args, rows, processing_class=tok, progress=False)
    assert trainer.config.steps_per_generation == 4 and trainer.config.generation_batch_size is None
    assert trainer.prompts_per_process == 4  # 8 completions of G = 2
    with pytest.raises(ConfigError, match="'generation_batch_size': 6 must be a multiple of"):
        HRPOTrainer(make_model("qwen2"), length, small_args(tmp_path, generation_batch_size=6), rows, tok)


def test_peft_config_replaces_the_lora_fields(tmp_path, make_model, tok):
    rows = [{"prompt": f"{i} + 1 ="} for i in range(4)]
    lora = LoraConfig(r=3, lora_alpha=6, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    args = small_args(tmp_path, use_lora=False, beta=0.01)
    trainer = HRPOTrainer(make_model("qwen2"), length, args, rows, processing_class=tok, peft_config=lora)
    lm = trainer.model.language_model
    assert isinstance(lm, PeftModel) and lm.peft_config["default"].r == 3
    targets = {n.split(".lora_A")[0].rsplit(".", 1)[-1] for n, _ in lm.named_parameters() if "lora_A" in n}
    assert targets == {"q_proj", "v_proj"}
    # The adapters come from peft_config: the KL reference is the model with them off, no copy.
    assert trainer.config.use_lora and trainer.ref_model is None
    _, metrics = trainer.train_step(0)
    assert metrics["kl"] >= 0.0


def test_a_peft_model_is_trained_as_it_is(tmp_path, make_model, tok):
    rows = [{"prompt": f"{i} + 1 ="} for i in range(4)]
    lora = LoraConfig(r=5, lora_alpha=10, target_modules=["k_proj"], task_type="CAUSAL_LM")
    peft_model = get_peft_model(make_model("qwen2"), lora)
    trainer = HRPOTrainer(peft_model, length, small_args(tmp_path), rows, processing_class=tok)
    assert trainer.model.language_model is peft_model
    assert trainer.model.language_model.peft_config["default"].r == 5


def test_callbacks_must_be_functions(tmp_path, make_model, tok):
    class TrainerCallbackLike:
        def on_log(self, *args, **kwargs): ...

    with pytest.raises(TypeError, match="TrainerCallback objects are not supported"):
        HRPOTrainer(
            make_model("qwen2"),
            length,
            small_args(tmp_path),
            [{"prompt": "x"}],
            processing_class=tok,
            callbacks=[TrainerCallbackLike()],
        )


def test_disable_dropout_zeroes_every_dropout_and_adam_epsilon_reaches_adamw(tmp_path, make_model, tok):
    rows = [{"prompt": f"{i} + 1 ="} for i in range(4)]

    def dropouts(trainer) -> list[float]:
        return [m.p for m in trainer.model.modules() if isinstance(m, torch.nn.Dropout)]

    kept = HRPOTrainer(
        make_model("qwen2"), length, small_args(tmp_path, lora_dropout=0.1), rows, processing_class=tok
    )
    assert dropouts(kept) and set(dropouts(kept)) == {0.1}  # the adapters' dropout
    args = small_args(tmp_path, lora_dropout=0.1, disable_dropout=True, adam_epsilon=1e-6)
    off = HRPOTrainer(make_model("qwen2"), length, args, rows, processing_class=tok)
    assert dropouts(off) and set(dropouts(off)) == {0.0}
    assert {g["eps"] for g in off.optimizer.param_groups} == {1e-6}
