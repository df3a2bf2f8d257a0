import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model

from hrpo import HybridModel, RolloutConfig, RolloutEngine
from hrpo.checkpoint import GATE_WEIGHTS
from hrpo.storage import atomic_directory

PROMPTS = ["what is 3 + 4 ?", "apples and pears total each has gives left so we get 5 + 9 = ?", "so 1 + 1"]


def hybrid_rollout(model, tok, **kw):
    cfg = RolloutConfig(max_completion_length=16, temperature=0.8, **kw)
    return RolloutEngine(model, tok, cfg).generate(PROMPTS, seed=0)


def row(ro, i, extra_pad: int = 0):
    """Row ``i`` of a rollout alone, with its prompt left-padded by ``extra_pad`` more tokens."""
    p_ids, p_mask = ro.prompt_ids[i : i + 1], ro.prompt_mask[i : i + 1]
    if extra_pad:
        p_ids = torch.cat([torch.full((1, extra_pad), 5), p_ids], 1)
        p_mask = torch.cat([torch.zeros(1, extra_pad, dtype=torch.long), p_mask], 1)
    return (
        p_ids,
        p_mask,
        ro.completion_ids[i : i + 1],
        ro.completion_mask[i : i + 1],
        ro.latents[i : i + 1],
        ro.thinking_mask[i : i + 1],
    )


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3_text"])
def test_padding_does_not_change_logprobs(make_model, tok, arch):
    model = HybridModel(make_model(arch), seed=0, r_min=0.5, r_max=0.6)
    ro = hybrid_rollout(model, tok)
    with torch.no_grad():
        batch, _ = model.completion_logprobs(
            ro.prompt_ids, ro.prompt_mask, ro.completion_ids, ro.completion_mask, ro.latents, ro.thinking_mask
        )
        for i in range(len(ro)):
            alone, _ = model.completion_logprobs(*row(ro, i))
            padded, _ = model.completion_logprobs(*row(ro, i, extra_pad=7))
            assert (alone - batch[i]).abs().max() < 1e-5
            assert (padded - alone).abs().max() < 1e-5


def test_chunk_size_does_not_change_logprobs(make_model, tok):
    model = HybridModel(make_model("qwen2"), seed=0, r_min=0.5, r_max=0.6)
    ro = hybrid_rollout(model, tok)
    args = (
        ro.prompt_ids,
        ro.prompt_mask,
        ro.completion_ids,
        ro.completion_mask,
        ro.latents,
        ro.thinking_mask,
    )
    with torch.no_grad():
        a, _ = model.completion_logprobs(*args, chunk_size=1)
        b, _ = model.completion_logprobs(*args, chunk_size=1000)
    assert torch.allclose(a, b, atol=1e-6)


def test_latents_must_align_with_the_completion(make_model, tok):
    model = HybridModel(make_model(), seed=0)
    with pytest.raises(ValueError, match="last positions"):
        model.hybrid_embeds(torch.zeros(2, 4, dtype=torch.long), torch.zeros(2, 5, 64), torch.ones(2, 5))


def perturbed_lora(base):
    peft = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "o_proj"]))
    with torch.no_grad():
        for n, p in peft.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.2)
    return peft


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_save_load_round_trip_gives_identical_logprobs(make_model, tok, tmp_path, arch):
    model = HybridModel(perturbed_lora(make_model(arch)), seed=0, r_min=0.5, r_max=0.6)
    with torch.no_grad():
        model.gate.gate_i.bias.add_(0.3)
    ro = hybrid_rollout(model, tok)
    args = (
        ro.prompt_ids,
        ro.prompt_mask,
        ro.completion_ids,
        ro.completion_mask,
        ro.latents,
        ro.thinking_mask,
    )
    with torch.no_grad():
        before, _ = model.completion_logprobs(*args)
    model.save_pretrained(tmp_path / "ckpt")
    assert (tmp_path / "ckpt" / GATE_WEIGHTS).is_file()
    assert (tmp_path / "ckpt" / "adapter_model.safetensors").is_file()

    loaded = HybridModel.from_pretrained(tmp_path / "ckpt", make_model(arch))
    assert isinstance(loaded.model, PeftModel)
    with torch.no_grad():
        after, _ = loaded.completion_logprobs(*args)
    assert torch.equal(before, after)
    for k, v in model.gate.state_dict().items():
        assert torch.equal(v, loaded.gate.state_dict()[k])


def test_full_model_save_load_round_trip(make_model, tok, tmp_path):
    model = HybridModel(make_model("qwen2"), seed=1, r_min=0.5, r_max=0.6)
    ro = hybrid_rollout(model, tok)
    args = (
        ro.prompt_ids,
        ro.prompt_mask,
        ro.completion_ids,
        ro.completion_mask,
        ro.latents,
        ro.thinking_mask,
    )
    model.save_pretrained(tmp_path / "full")
    loaded = HybridModel.from_pretrained(tmp_path / "full")
    with torch.no_grad():
        assert torch.equal(model.completion_logprobs(*args)[0], loaded.completion_logprobs(*args)[0])


def test_checkpoint_keeps_the_ablation_settings(make_model, tmp_path):
    from hrpo import HybridGate

    hf = make_model("qwen2")
    gate = HybridGate(hf.config.hidden_size, hybrid_mix="latent_only", latent_source="hidden_state")
    HybridModel(hf, gate).save_pretrained(tmp_path / "abl")
    loaded = HybridModel.from_pretrained(tmp_path / "abl")
    assert (loaded.gate.hybrid_mix, loaded.gate.latent_source) == ("latent_only", "hidden_state")


def test_adapter_checkpoint_needs_its_base_model(make_model, tmp_path):
    HybridModel(perturbed_lora(make_model()), seed=0).save_pretrained(tmp_path / "c")
    with pytest.raises(ValueError, match="base model"):
        HybridModel.from_pretrained(tmp_path / "c")
    with pytest.raises(FileNotFoundError, match="not an hrpo checkpoint"):
        HybridModel.from_pretrained(tmp_path)


def test_interrupted_save_leaves_previous_checkpoint_intact(tmp_path):
    target = tmp_path / "ckpt"
    with atomic_directory(target) as d:
        (d / "weights").write_text("v1")
    with pytest.raises(RuntimeError), atomic_directory(target) as d:
        (d / "weights").write_text("half")
        raise RuntimeError("killed")
    assert (target / "weights").read_text() == "v1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
    with atomic_directory(target) as d:
        (d / "weights").write_text("v2")
    assert (target / "weights").read_text() == "v2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
