"""The ``optim`` setting: torch's AdamW by default, bitsandbytes' 8-bit / paged AdamW on request.

bitsandbytes is not installed in CI and needs CUDA, so its optimisers are checked here through a
stand-in module; the real ones wait for a GPU run."""

import sys
import types
import typing

import pytest
import torch

from hrpo import build
from hrpo.config import ConfigError, HRPOConfig
from hrpo.recipes import load_config
from hrpo.trainer import HRPOTrainer
from hrpo.trl_compat import SAME_AS_HRPO, UNSUPPORTED

VALUES = ["adamw_torch", "adamw_torch_fused", "adamw_8bit", "paged_adamw_8bit", "paged_adamw_32bit"]
ROWS = [{"prompt": f"what is {i} + 1 ?", "answer": str(i + 1)} for i in range(4)]


def config(**kw):
    return HRPOConfig(output_dir="unused", lora_r=4, lora_alpha=8, eval_limit=0, **kw)


@pytest.fixture
def policy(make_model, tok):
    model, _ = build.build_model(config(), torch.device("cpu"), make_model("qwen2"), tok)
    return model


def test_default_and_values():
    assert HRPOConfig().optim == "adamw_torch"
    assert list(typing.get_args(typing.get_type_hints(HRPOConfig)["optim"])) == VALUES
    for value in VALUES:
        assert HRPOConfig(optim=value).optim == value
    assert "optim" not in UNSUPPORTED and "optim" not in SAME_AS_HRPO


def test_unknown_value_names_the_allowed_ones():
    with pytest.raises(ConfigError, match="'optim'") as info:
        HRPOConfig(optim="sgd")
    assert all(repr(v) in str(info.value) for v in VALUES)


def test_yaml_and_override_reach_the_field(tmp_path):
    assert load_config(None, ["optim=paged_adamw_8bit"]).optim == "paged_adamw_8bit"
    path = tmp_path / "c.yaml"
    path.write_text("optim: adamw_8bit\n")
    assert load_config(path).optim == "adamw_8bit"
    assert load_config(path, ["optim=adamw_torch"]).optim == "adamw_torch"


def test_adamw_torch_is_the_same_optimizer_as_before(policy):
    cfg = config()
    opt = build.build_optimizer(cfg, policy)
    assert type(opt) is torch.optim.AdamW and not opt.defaults["fused"]
    expected = build.parameter_groups(cfg, policy)
    assert [g["name"] for g in opt.param_groups] == ["lora", "gate", "lambda"]
    for group, want in zip(opt.param_groups, expected, strict=True):
        assert group["lr"] == want["lr"] and group["params"] == want["params"]
        assert group["betas"] == (cfg.adam_beta1, cfg.adam_beta2)
        assert group["eps"] == cfg.adam_epsilon and group["weight_decay"] == cfg.weight_decay


def test_adamw_torch_fused_steps_on_cpu(policy):
    opt = build.build_optimizer(config(optim="adamw_torch_fused"), policy)
    assert type(opt) is torch.optim.AdamW and opt.defaults["fused"]
    before = policy.gate.Lambda.detach().clone()
    policy.gate.Lambda.grad = torch.ones_like(policy.gate.Lambda)
    opt.step()
    assert not torch.equal(policy.gate.Lambda, before)


@pytest.mark.parametrize(
    "optim, cls",
    [
        ("adamw_8bit", "AdamW8bit"),
        ("paged_adamw_8bit", "PagedAdamW8bit"),
        ("paged_adamw_32bit", "PagedAdamW32bit"),
    ],
)
def test_bitsandbytes_optimizers_get_the_same_groups_and_hyperparameters(optim, cls, policy, monkeypatch):
    calls = []

    def record(groups, **kwargs):
        calls.append((groups, kwargs))
        return "optimizer"

    fake = types.ModuleType("bitsandbytes")
    fake.optim = types.SimpleNamespace(**{cls: record})
    monkeypatch.setitem(sys.modules, "bitsandbytes", fake)
    cfg = config(optim=optim, adam_epsilon=1e-6)
    build.check_optimizer(cfg, torch.device("cuda"))
    assert build.build_optimizer(cfg, policy) == "optimizer"
    (groups, kwargs), expected = calls[0], build.parameter_groups(cfg, policy)
    assert [(g["name"], g["lr"], g["params"]) for g in groups] == [
        (g["name"], g["lr"], g["params"]) for g in expected
    ]
    assert kwargs == {"betas": (0.9, 0.99), "eps": 1e-6, "weight_decay": 0.1}


@pytest.mark.parametrize("optim", ["adamw_8bit", "paged_adamw_8bit", "paged_adamw_32bit"])
def test_without_bitsandbytes_the_error_says_how_to_install_it(optim, policy, monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # import bitsandbytes raises ImportError
    cfg = config(optim=optim)
    with pytest.raises(ConfigError, match=rf"'optim': {optim} needs bitsandbytes: pip install bitsandbytes"):
        build.check_optimizer(cfg, torch.device("cuda"))
    with pytest.raises(ConfigError, match="pip install bitsandbytes"):
        build.build_optimizer(cfg, policy)


@pytest.mark.parametrize("optim", ["adamw_torch", "adamw_torch_fused"])
def test_torch_optimizers_need_neither_cuda_nor_bitsandbytes(optim, monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)
    build.check_optimizer(config(optim=optim), torch.device("cpu"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a CPU-only machine")
def test_an_8bit_optimizer_on_cpu_is_refused_before_the_model_loads(monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("data or model loaded before the optimiser check")

    monkeypatch.setattr(build, "build_data", never)
    monkeypatch.setattr(build, "build_model", never)
    with pytest.raises(ConfigError, match=r"paged_adamw_8bit runs on CUDA only .* use optim=adamw_torch"):
        HRPOTrainer(
            "no/such/model",
            lambda completions, **kw: [0.0] * len(completions),
            config(optim="paged_adamw_8bit"),
            ROWS,
            progress=False,
        )
