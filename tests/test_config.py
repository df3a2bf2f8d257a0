from pathlib import Path

import pytest

from hrpo.config import ConfigError, HRPOConfig, load_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


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
        ("loss_type: ppo\n", r"'loss_type': expected one of 'grpo', 'dr_grpo', 'dapo'"),
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


def test_shipped_recipes_load_and_build_their_tasks():
    from hrpo.tasks import get_task

    recipes = {p.stem: load_config(p) for p in sorted(CONFIGS.glob("*.yaml"))}
    # Paper (spec §4): completions per optimiser step on one GPU, and group size.
    paper = {
        "gsm8k_qwen2.5_1.5b": (32, 4),
        "math_qwen2.5_1.5b": (64, 8),
        "mmlu_arc_qwen2.5_1.5b": (64, 8),
        "qa_qwen2.5_1.5b": (64, 4),
    }
    assert set(paper) | {"quickstart"} <= set(recipes)
    for name, cfg in recipes.items():
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
