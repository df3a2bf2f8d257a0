import pytest

from hrpo.config import ConfigError, HRPOConfig
from hrpo.recipes import load_config, recipe_path, recipes


def test_yaml_with_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("learning_rate: 1e-5\nnum_generations: 8\nlora_target_modules: [q_proj, v_proj]\n")
    cfg = load_config(f, ["beta=0", "hybrid=false", "temperature=0.7"])
    assert (
        cfg.learning_rate == 1e-5
        and cfg.num_generations == 8
        and cfg.lora_target_modules == ["q_proj", "v_proj"]
    )
    assert cfg.beta == 0.0 and isinstance(cfg.beta, float) and cfg.hybrid is False and cfg.temperature == 0.7


def test_saved_config_loads_back(tmp_path):
    cfg = HRPOConfig(learning_rate=3e-4, task_args={"difficulty": 3}, report_to=["tensorboard"])
    cfg.save(tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml") == cfg


@pytest.mark.parametrize(
    "text,message",
    [
        (
            "lerning_rate: 1e-5\n",
            r"unknown config key 'lerning_rate' in .*c\.yaml \(did you mean 'learning_rate'\?\)",
        ),
        ("learning_rate: fast\n", r"'learning_rate': expected float, got 'fast'"),
        ("loss_type: ppo\n", r"'loss_type': expected one of 'grpo', 'dr_grpo', 'dapo', 'bnpo', got 'ppo'"),
        (
            "importance_sampling_level: seq\n",
            r"'importance_sampling_level': expected one of 'token', 'sequence', got 'seq'",
        ),
        ("mask_truncated_completions: 2\n", r"'mask_truncated_completions': expected bool"),
        (
            "gradient_accumulation_steps: 4\nsteps_per_generation: 6\n",
            r"'steps_per_generation': must be null or a multiple of gradient_accumulation_steps=4 \(got 6\)"
            r".*num_iterations",
        ),
        ("num_generations: 4.5\n", r"'num_generations': expected int"),
        ("hybrid: maybe\n", r"'hybrid': expected bool"),
        ("- a\n- b\n", r"must hold a mapping"),
        ("r_min: 0.999\nr_max: 0.99\n", r"r_min <= r_max"),
        ("report_to: [tensorbord]\n", r"unknown sink 'tensorbord'"),
    ],
)
def test_malformed_config_names_the_key(tmp_path, text, message):
    f = tmp_path / "c.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(f)


def test_malformed_override():
    with pytest.raises(ConfigError, match="not of the form key=value"):
        load_config(None, ["beta"])
    with pytest.raises(ConfigError, match="unknown config key 'btea' in the command line"):
        load_config(None, ["btea=0.1"])


def test_config_takes_a_recipe_name_or_a_path_and_an_existing_path_wins(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    packaged = load_config("quickstart")
    assert packaged == load_config(recipe_path("quickstart")) == load_config("quickstart.yaml")
    assert packaged.task == "arithmetic" and packaged.output_dir == "runs/quickstart"
    assert recipe_path("accelerate/ddp").name == "ddp.yaml"
    (tmp_path / "quickstart").write_text("learning_rate: 0.5\n")
    assert load_config("quickstart").learning_rate == 0.5  # the file here, not the recipe
    with pytest.raises(ConfigError, match="configs/quickstart.yaml does not exist.*recipes: .*quickstart"):
        load_config("configs/quickstart.yaml")
    for name in ("nope", "", ".", "../quickstart", "/etc/hostname", "accelerate"):
        with pytest.raises(ConfigError, match="no recipe"):
            recipe_path(name)


def test_shipped_recipes_load_and_build_their_tasks():
    from hrpo.tasks import get_task

    loaded = {name: load_config(name) for name in recipes()}
    # Paper (spec §4): completions per optimiser step on one GPU, and group size.
    paper = {
        "gsm8k_qwen2.5_1.5b": (32, 4),
        "math_qwen2.5_1.5b": (64, 8),
        "mmlu_arc_qwen2.5_1.5b": (64, 8),
        "qa_qwen2.5_1.5b": (64, 4),
        "gsm8k_llama3.2_1b": (32, 4),  # the authors' scripts: the same settings for Llama-3.2
        "gsm8k_llama3.2_3b": (32, 4),
    }
    assert set(paper) | {"quickstart"} <= set(loaded)
    for name, cfg in loaded.items():
        get_task(cfg.task, **{"marker": cfg.answer_marker, **cfg.task_args})
        if name in paper:
            assert (cfg.completions_per_step(), cfg.num_generations) == paper[name]
            assert (cfg.learning_rate, cfg.gate_learning_rate, cfg.lambda_learning_rate) == (5e-6, 1e-4, 1e-3)
            assert (cfg.beta, cfg.lora_r, cfg.lora_alpha, cfg.max_grad_norm, cfg.temperature) == (
                0.005,
                32,
                64,
                0.1,
                0.5,
            )


def test_llama_recipes_name_the_models_and_valid_lora_targets():
    from tiny import tiny_model

    llama = {name: load_config(name) for name in ("gsm8k_llama3.2_1b", "gsm8k_llama3.2_3b")}
    assert [cfg.model_name_or_path for cfg in llama.values()] == [
        "meta-llama/Llama-3.2-1B-Instruct",
        "meta-llama/Llama-3.2-3B-Instruct",
    ]
    modules = {name.rsplit(".", 1)[-1] for name, _ in tiny_model("llama", 64).named_modules()}
    for cfg in llama.values():
        assert set(cfg.lora_target_modules) <= modules and len(cfg.lora_target_modules) == 7


# ---- numeric ranges -------------------------------------------------------------------------------
# (key, bad value as written in YAML, fragment of the allowed range in the message)
BAD_VALUES = [
    ("eval_limit", "-1", ">= 0"),
    ("eval_batch_size", "0", ">= 1"),
    ("num_generations", "1", ">= 2"),
    ("max_prompt_length", "0", ">= 1"),
    ("max_completion_length", "0", ">= 1"),
    ("temperature", "0", "> 0"),
    ("temperature", "-0.5", "> 0"),
    ("temperature", ".nan", "a finite number > 0"),
    ("temperature", ".inf", "a finite number > 0"),
    ("temperature", "nan", "a finite number > 0"),  # the string 'nan', read as a float
    ("top_k", "-5", ">= 0 or null"),
    ("top_p", "0", r"in \(0, 1\]"),
    ("top_p", "1.5", r"in \(0, 1\]"),
    ("top_p", ".nan", r"a finite number in \(0, 1\]"),
    ("rollout_batch_size", "0", ">= 1 or null"),
    ("generation_batch_size", "0", ">= 1 or null"),
    ("sync_every", "0", ">= 1"),
    ("r_min", "0", r"in \(0, 1\)"),
    ("r_max", "1", r"in \(0, 1\)"),
    ("r_max", ".nan", r"a finite number in \(0, 1\)"),
    ("beta", "-0.1", ">= 0"),
    ("beta", ".inf", "a finite number >= 0"),
    ("epsilon", "0", r"in \(0, 1\)"),
    ("epsilon", "1", r"in \(0, 1\)"),
    ("epsilon_high", "0", "> 0 or null"),
    ("epsilon_high", "-.inf", "a finite number > 0 or null"),
    ("num_iterations", "0", ">= 1"),
    ("steps_per_generation", "0", ">= 1 or null"),
    ("loss_temperature", "0", "> 0 or null"),
    ("loss_temperature", "-1.0", "> 0 or null"),
    ("loss_temperature", ".nan", "a finite number > 0 or null"),
    ("reward_weights", "[]", "null or a non-empty list"),
    ("reward_weights", "[1, .nan]", "a finite number"),
    ("reward_weights", "[.inf]", "a finite number"),
    ("format_reward_weight", "-1", ">= 0"),
    ("format_reward_weight", ".nan", "a finite number >= 0"),
    ("lora_r", "0", ">= 1"),
    ("lora_alpha", "0", ">= 1"),
    ("lora_dropout", "1", r"in \[0, 1\)"),
    ("lora_dropout", "-0.1", r"in \[0, 1\)"),
    ("learning_rate", "-1e-5", ">= 0"),
    ("learning_rate", ".nan", "a finite number >= 0"),
    ("gate_learning_rate", "-1", ">= 0"),
    ("lambda_learning_rate", ".inf", "a finite number >= 0"),
    ("weight_decay", "-0.1", ">= 0"),
    ("adam_beta1", "1", r"in \[0, 1\)"),
    ("adam_beta1", "-0.1", r"in \[0, 1\)"),
    ("adam_beta2", "1.0", r"in \[0, 1\)"),
    ("adam_epsilon", "0", "> 0"),
    ("warmup_ratio", "1.5", r"in \[0, 1\]"),
    ("warmup_ratio", "-0.1", r"in \[0, 1\]"),
    ("max_grad_norm", "0", "> 0"),
    ("max_grad_norm", ".inf", "a finite number > 0"),
    ("per_device_train_batch_size", "0", ">= 1"),
    ("gradient_accumulation_steps", "0", ">= 1"),
    ("max_steps", "0", "-1 or >= 1"),
    ("max_steps", "-2", "-1 or >= 1"),
    ("num_train_epochs", "0", "> 0"),
    ("num_train_epochs", ".nan", "a finite number > 0"),
    ("logit_chunk_size", "0", ">= 1"),
    ("seed", "-1", r"in \[0, 9223372036854775807\]"),
    ("seed", str(2**63), r"in \[0, 9223372036854775807\]"),
    ("save_steps", "-1", ">= 0"),
    ("save_total_limit", "-1", ">= 0"),
    ("logging_steps", "0", ">= 1"),
    ("log_completions_steps", "-1", ">= 0"),
]


def numeric_fields() -> set[str]:
    """Config keys holding numbers: int or float, optional or not, or lists of them."""
    import dataclasses
    import typing

    hints = typing.get_type_hints(HRPOConfig)

    def numeric(tp) -> bool:
        if tp in (int, float):
            return True
        return any(numeric(t) for t in typing.get_args(tp) if t is not type(None))

    return {f.name for f in dataclasses.fields(HRPOConfig) if numeric(hints[f.name])}


def test_every_numeric_key_has_a_range_and_a_bad_value_test():
    from hrpo.config import FIELD_RANGES

    assert numeric_fields() == set(FIELD_RANGES) | {"reward_weights"}
    assert numeric_fields() == {key for key, _, _ in BAD_VALUES}


@pytest.mark.parametrize("key,value,allowed", BAD_VALUES, ids=[f"{k}={v}" for k, v, _ in BAD_VALUES])
def test_out_of_range_values_are_refused_naming_the_key(tmp_path, key, value, allowed):
    with pytest.raises(ConfigError, match=rf"^config key '{key}'(, item \d)?: must be {allowed}"):
        load_config(None, [f"{key}={value}"])
    f = tmp_path / "c.yaml"
    f.write_text(f"{key}: {value}\n")
    with pytest.raises(ConfigError, match=rf"config key '{key}'.*\(got "):
        load_config(f)


def test_range_message_shows_the_value_and_why():
    with pytest.raises(ConfigError) as info:
        HRPOConfig(loss_temperature=0)
    assert str(info.value) == "config key 'loss_temperature': must be > 0 or null (got 0.0)"
    with pytest.raises(ConfigError, match=r"\(got 1\); advantages compare the completions of a group$"):
        HRPOConfig(num_generations=1)
    with pytest.raises(
        ConfigError, match=r"^config key 'reward_weights', item 1: must be a finite number \(got nan\)$"
    ):
        HRPOConfig(reward_weights=[1.0, float("nan")])


@pytest.mark.parametrize(
    "overrides",
    [
        ["beta=0"],
        ["top_k=null"],
        ["top_k=0"],
        ["top_k=100000"],
        ["epsilon_high=null"],
        ["epsilon_high=0.28"],
        ["epsilon_high=5"],
        ["loss_temperature=null"],
        ["loss_temperature=1"],
        ["max_steps=-1"],
        ["max_steps=1"],
        ["save_steps=0", "save_total_limit=0", "log_completions_steps=0", "eval_limit=0"],
        ["learning_rate=0", "gate_learning_rate=0", "lambda_learning_rate=0", "weight_decay=0"],
        ["warmup_ratio=0", "adam_beta1=0", "adam_beta2=0", "lora_dropout=0"],
        ["warmup_ratio=1", "top_p=1"],
        ["r_min=0.5", "r_max=0.5"],
        ["seed=0"],
        [f"seed={2**63 - 1}"],
        ["rollout_batch_size=null"],
        ["rollout_batch_size=1"],
        ["steps_per_generation=null"],
        ["gradient_accumulation_steps=3", "steps_per_generation=3"],
        ["gradient_accumulation_steps=3", "steps_per_generation=12"],
        ["reward_weights=[-1, 0.5]", "format_reward_weight=0"],
        ["num_train_epochs=0.25"],
        ["num_generations=2", "lora_r=1", "lora_alpha=1", "logit_chunk_size=1", "logging_steps=1"],
    ],
)
def test_edge_values_are_accepted(overrides):
    cfg = load_config(None, overrides)
    assert cfg == load_config(None, overrides) and cfg.to_dict() == HRPOConfig(**cfg.to_dict()).to_dict()


def test_top_k_zero_and_null_both_mean_the_full_vocabulary():
    from hrpo.rollout import RolloutConfig

    for cfg in (load_config(None, ["top_k=0"]), load_config(None, ["top_k=null"])):
        assert RolloutConfig(top_k=cfg.top_k).top_k is None
    assert RolloutConfig(top_k=7).top_k == 7


def test_range_text():
    from hrpo.config import Range

    assert str(Range(1, special=(-1,))) == "-1 or >= 1"
    assert str(Range(0, low_open=True, special=(None,))) == "> 0 or null"
    assert str(Range(0, 1, high_open=True)) == "in [0, 1)"
    assert str(Range(0, 1, low_open=True)) == "in (0, 1]"
    assert str(Range(high=5)) == "<= 5"
    assert str(Range()) == "a finite number"
    assert str(Range(1e-3)) == ">= 0.001"


def test_range_membership():
    import numpy as np

    from hrpo.config import Range

    unit = Range(0, 1, high_open=True)
    assert 0 in unit and 0.999 in unit and np.float32(0.5) in unit
    assert 1 not in unit and -1e-9 not in unit and float("nan") not in unit and None not in unit
    assert True not in Range(0) and "1" not in Range(0)
    assert np.int64(3) in Range(1) and float("inf") not in Range(0) and float("-inf") not in Range()
    assert (
        None in Range(1, special=(None,))
        and -1 in Range(1, special=(-1,))
        and -2 not in Range(1, special=(-1,))
    )


# (keyword, bad value, fragment) for RolloutConfig, which the CLI and the Python API build directly
ROLLOUT_BAD = [
    ("num_generations", 0, ">= 1"),
    ("max_prompt_length", 0, ">= 1 or null"),
    ("max_completion_length", 0, ">= 1"),
    ("temperature", 0.0, "> 0"),
    ("temperature", float("nan"), "a finite number > 0"),
    ("temperature", float("inf"), "a finite number > 0"),
    ("top_k", -5, ">= 0 or null"),
    ("top_k", 2.5, "an integer"),
    ("top_p", 0.0, r"in \(0, 1\]"),
    ("top_p", 1.5, r"in \(0, 1\]"),
    ("top_p", float("nan"), r"a finite number in \(0, 1\]"),
    ("sync_every", 0, ">= 1"),
    ("sync_every", 1.0, "an integer"),
]


@pytest.mark.parametrize("key,value,allowed", ROLLOUT_BAD, ids=[f"{k}={v}" for k, v, _ in ROLLOUT_BAD])
def test_rollout_config_ranges(key, value, allowed):
    from hrpo.rollout import RolloutConfig

    with pytest.raises(ValueError, match=rf"^RolloutConfig\.{key}: must be {allowed}"):
        RolloutConfig(**{key: value})


def test_rollout_config_edge_values():
    from hrpo.rollout import RolloutConfig

    cfg = RolloutConfig(num_generations=1, max_prompt_length=None, top_k=None, top_p=1.0, temperature=1e-3)
    assert cfg.max_prompt_length is None and cfg.top_k is None
    assert RolloutConfig(max_prompt_length=1, max_completion_length=1, sync_every=1, top_k=1).top_k == 1


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"hidden_size": 0}, "hidden_size must be an integer >= 1"),
        ({"hidden_size": 8.0}, "hidden_size must be an integer >= 1"),
        ({"r_min": float("nan")}, "0 < r_min <= r_max < 1"),
        ({"r_max": float("inf")}, "0 < r_min <= r_max < 1"),
        ({"c": 0.0}, "c must be a finite number > 0"),
        ({"c": float("nan")}, "c must be a finite number > 0"),
        ({"c": float("inf")}, "c must be a finite number > 0"),
    ],
)
def test_gate_arguments_are_checked(kwargs, message):
    from hrpo.gate import HybridGate

    with pytest.raises(ValueError, match=message):
        HybridGate(**{"hidden_size": 8, **kwargs})


def test_reward_weights_must_match_the_reward_functions_before_any_model_loads(tmp_path):
    from hrpo.trainer import HRPOTrainer

    def correct(prompts, completions, **_):
        return [1.0] * len(completions)

    cfg = HRPOConfig(
        model_name_or_path=str(tmp_path / "no-such-model"),  # reached only if the check were missing
        reward_weights=[1.0, 0.5],
        num_generations=2,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=1,
        output_dir=str(tmp_path / "run"),
    )
    with pytest.raises(ValueError, match=r"'reward_weights': 2 weights for 1 reward functions \['correct'\]"):
        HRPOTrainer(args=cfg, train_dataset=[{"prompt": "1 + 1 ="}], reward_funcs=[correct], progress=False)
    assert not (tmp_path / "run").exists()
