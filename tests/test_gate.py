import math

import pytest
import torch
from peft import LoraConfig, get_peft_model

from hrpo import HybridGate, HybridModel, RolloutConfig, RolloutEngine
from hrpo.gate import lambda_init


def closed(gate: HybridGate) -> HybridGate:
    """softplus(−1e4) underflows to 0, so a = exp(0) = 1 exactly."""
    with torch.no_grad():
        gate.Lambda.fill_(-1e4)
    return gate


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_closed_gate_returns_token_embedding_exactly(dtype):
    gate = closed(HybridGate(32))
    e = torch.randn(3, 5, 32).to(dtype)
    h = torch.randn(3, 5, 32) * 10
    mixed, a = gate(e, h)
    assert torch.all(a == 1.0)
    assert mixed.dtype == dtype
    assert torch.equal(mixed, e)


def test_fresh_init_decay_in_range():
    for seed in range(5):
        gate = HybridGate(64, r_min=0.99, r_max=0.999, generator=torch.Generator().manual_seed(seed))
        u = torch.exp(-gate.c * torch.nn.functional.softplus(gate.Lambda))
        assert u.min() >= 0.99 - 1e-6 and u.max() <= 0.999 + 1e-6
        a = gate(torch.randn(4, 7, 64) * 3, torch.randn(4, 7, 64))[1]
        assert a.min() > 0.99 - 1e-6 and a.max() < 1.0


def test_lambda_init_inverts_decay():
    u = torch.tensor([0.5, 0.95, 0.99, 0.999], dtype=torch.float64)
    lam = lambda_init(u, 8.0)
    back = torch.exp(-8.0 * torch.nn.functional.softplus(lam.double()))
    assert torch.allclose(back, u, atol=1e-6)


def test_gate_matches_spec_formula():
    gate = HybridGate(16, r_min=0.5, r_max=0.6, generator=torch.Generator().manual_seed(0))
    e, h = torch.randn(2, 16, dtype=torch.float64), torch.randn(2, 16, dtype=torch.float64)
    p = {k: v.double() for k, v in gate.state_dict().items()}
    r = torch.sigmoid(e @ p["gate_r.weight"].T + p["gate_r.bias"])
    i = torch.sigmoid(e @ p["gate_i.weight"].T + p["gate_i.bias"])
    a = torch.exp(-8.0 * torch.nn.functional.softplus(p["Lambda"]) * r)
    expect = a * e + torch.sqrt(1 - a**2 + 1e-8) * (i * h)
    mixed, a_out = gate(e.float(), h.float())
    assert torch.allclose(a_out.double(), a, atol=1e-6)
    assert torch.allclose(mixed.double(), expect, atol=1e-5)


def test_bf16_inputs_keep_float32_precision():
    gate = HybridGate(64, r_min=0.999, r_max=0.9999, generator=torch.Generator().manual_seed(0))
    e = torch.randn(8, 64)
    h = torch.randn(8, 64)
    ref, a_ref = gate(e, h)
    out, a = gate(e.bfloat16(), h.bfloat16())
    assert a.dtype == torch.float32 and out.dtype == torch.bfloat16
    assert torch.isfinite(out.float()).all()
    # Only the bf16 rounding of the inputs and the output separate the two.
    assert (a - a_ref).abs().max() < 1e-4
    assert (1 - a).min() > 0  # 1 - a² would be 0 everywhere if a were computed in bf16
    assert torch.allclose(out.float(), ref, atol=0.05, rtol=0.02)


def test_gradients_reach_gate_lambda_and_lora_not_latents(make_model, tok):
    base = make_model("qwen2")
    peft = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    # LoRA B starts at zero, which would make its A gradient zero: perturb it.
    with torch.no_grad():
        for n, p in peft.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)
    model = HybridModel(peft, seed=0, r_min=0.5, r_max=0.6)
    engine = RolloutEngine(model, tok, RolloutConfig(max_completion_length=12, temperature=0.8))
    ro = engine.generate(["3 + 4 = ?", "so we get 10 + 20"], seed=0)
    assert ro.thinking_mask.any()
    latents = ro.latents.clone().requires_grad_(True)
    lp, a = model.completion_logprobs(
        ro.prompt_ids, ro.prompt_mask, ro.completion_ids, ro.completion_mask, latents, ro.thinking_mask
    )
    lp.sum().backward()
    assert latents.grad is None
    for p in (model.gate.gate_r.weight, model.gate.gate_i.weight, model.gate.gate_i.bias, model.gate.Lambda):
        assert p.grad is not None and p.grad.abs().sum() > 0
    lora = [p for n, p in peft.named_parameters() if "lora_" in n]
    assert lora and all(p.grad is not None and p.grad.abs().sum() > 0 for p in lora)
    frozen = [p for n, p in peft.named_parameters() if "lora_" not in n]
    assert all(p.grad is None for p in frozen)


def test_closed_gate_rollout_equals_plain_rollout(make_model, tok):
    model = HybridModel(make_model("llama"), seed=0)
    closed(model.gate)
    prompts = ["what is 3 + 4 ?", "apples and pears total 5 + 9 so we get"]
    cfg = dict(max_completion_length=20, temperature=0.7, top_k=20, num_generations=2)
    hyb = RolloutEngine(model, tok, RolloutConfig(hybrid=True, **cfg)).generate(prompts, seed=3)
    plain = RolloutEngine(model, tok, RolloutConfig(hybrid=False, **cfg)).generate(prompts, seed=3)
    assert hyb.thinking_mask.any()
    assert torch.equal(hyb.completion_ids, plain.completion_ids)
    assert torch.equal(hyb.logprobs, plain.logprobs)
    assert math.isclose(hyb.mean_embeds_ratio(), 1.0)


def test_latent_only_mix_feeds_the_latent_alone():
    gate = HybridGate(16, hybrid_mix="latent_only")
    e, h = torch.randn(2, 3, 16), torch.randn(2, 3, 16)
    mixed, a = gate(e, h)
    assert torch.equal(mixed, h) and torch.all(a == 0)


def test_unknown_ablation_names_are_refused():
    with pytest.raises(ValueError, match="hybrid_mix"):
        HybridGate(8, hybrid_mix="sum")
    with pytest.raises(ValueError, match="latent_source"):
        HybridGate(8, latent_source="logits")
