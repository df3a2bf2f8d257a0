import json
import math

import pytest
import torch

from hrpo.checkpoint import latest_checkpoint
from hrpo.config import HRPOConfig
from hrpo.reward import RewardFunctionError
from hrpo.trainer import HRPOTrainer, TrainingInterrupted

ROWS = [{"prompt": f"what is {i} + {i + 1} ?", "answer": str(2 * i + 1)} for i in range(24)]


def hash_reward(prompts, completions, answer, **kw):
    return [min(c.count("#"), 3) / 3 + 0.1 * (len(c) % 3) for c in completions]


def config(tmp_path, **kw):
    base = dict(
        output_dir=str(tmp_path / "run"),
        max_steps=3,
        num_generations=2,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=2,
        max_completion_length=8,
        temperature=1.0,
        learning_rate=1e-2,
        gate_learning_rate=1e-2,
        lambda_learning_rate=1e-1,
        eval_limit=0,
        lora_r=4,
        lora_alpha=8,
        save_steps=2,
        seed=0,
        warmup_ratio=0.0,
    )
    base.update(kw)
    return HRPOConfig(**base)


def trainer(tmp_path, make_model, tok, reward=hash_reward, callbacks=(), **kw):
    return HRPOTrainer(
        args=config(tmp_path, **kw),
        train_dataset=ROWS,
        reward_funcs=[reward],
        model=make_model("qwen2"),
        processing_class=tok,
        callbacks=callbacks,
        progress=False,
    )


def test_parameter_groups_have_their_own_learning_rates(tmp_path, make_model, tok):
    tr = trainer(
        tmp_path,
        make_model,
        tok,
        learning_rate=1e-5,
        gate_learning_rate=2e-4,
        lambda_learning_rate=3e-3,
        lr_scheduler_type="constant",
    )
    groups = {g["name"]: g for g in tr.optimizer.param_groups}
    assert {k: g["lr"] for k, g in groups.items()} == {"lora": 1e-5, "gate": 2e-4, "lambda": 3e-3}
    assert all("lora_" in n for n, p in tr.model.model.named_parameters() if p.requires_grad)
    assert groups["lambda"]["params"] == [tr.model.gate.Lambda]
    assert len(groups["gate"]["params"]) == 4 and all(g["weight_decay"] == 0.1 for g in groups.values())


def test_a_step_moves_gate_lambda_and_lora_but_not_the_base(tmp_path, make_model, tok):
    tr = trainer(tmp_path, make_model, tok)
    before = {n: p.detach().clone() for n, p in tr.model.named_parameters()}
    batch, metrics = tr.train_step(0)
    assert batch.all_advantages.abs().sum() > 0
    changed = {n for n, p in tr.model.named_parameters() if not torch.equal(p, before[n])}
    assert "gate.Lambda" in changed and "gate.gate_r.weight" in changed and "gate.gate_i.weight" in changed
    assert any("lora_B" in n for n in changed) and any("lora_A" in n for n in changed)
    assert all("lora_" in n or n.startswith("gate.") for n in changed)  # frozen base untouched
    for key in (
        "loss",
        "reward",
        "reward_std",
        "frac_reward_zero_std",
        "rewards/hash_reward/mean",
        "rewards/hash_reward/std",
        "kl",
        "completion_length",
        "embeds_ratio",
        "hidden_ratio",
        "input_gate",
        "latent_norm_ratio",
        "latent_input_ratio",
        "entropy",
        "lr/lora",
        "lr/gate",
        "lr/lambda",
        "grad_norm",
        "rollout_tokens_per_s",
        "step_time",
        "peak_memory_gb",
    ):
        assert key in metrics and metrics[key] == metrics[key], key


def test_grpo_baseline_has_no_thinking_inputs_and_a_frozen_gate(tmp_path, make_model, tok):
    tr = trainer(tmp_path, make_model, tok, hybrid=False)
    assert [g["name"] for g in tr.optimizer.param_groups] == ["lora"]
    gate_before = {k: v.clone() for k, v in tr.model.gate.state_dict().items()}
    _, metrics = tr.train_step(0)
    assert metrics["thinking_fraction"] == 0 and metrics["hidden_ratio"] == 0
    assert all(torch.equal(v, tr.model.gate.state_dict()[k]) for k, v in gate_before.items())


def test_a_gate_forced_shut_trains_exactly_like_grpo(tmp_path, make_model, tok):
    """The control of EXPERIMENTS.md: HRPO's whole path (hybrid rollouts, latents, thinking masks,
    teacher forcing with the gate, its optimiser groups) with a = 1 feeds exactly the token
    embeddings, so it must reproduce GRPO step for step. Same process, shapes and kernels: equal
    by construction, so compared exactly. Any difference would be something besides the latent
    (data order, RNG use, loss, clipping, optimiser) that differs between the two paths."""
    runs = {}
    for name, overrides in {"grpo": {"hybrid": False}, "closed": {"hybrid_mix": "closed"}}.items():
        tr = trainer(tmp_path / name, make_model, tok, max_steps=4, temperature=0.7, **overrides)
        steps = []
        for step in range(4):
            batch, metrics = tr.train_step(step)
            steps.append((metrics, batch.samples(tr.config.num_generations), batch.all_advantages))
        lora = {n: p.detach().clone() for n, p in tr.model.model.named_parameters() if p.requires_grad}
        runs[name] = (steps, lora, tr.model.gate.state_dict(), tr)
    (grpo, grpo_lora, _, _), (closed, closed_lora, gate_after, tr) = runs["grpo"], runs["closed"]
    assert tr.engine.config.hybrid and [g["name"] for g in tr.optimizer.param_groups] == [
        "lora",
        "gate",
        "lambda",
    ]
    same = ("loss", "reward", "reward_std", "accuracy", "kl", "grad_norm", "completion_length", "entropy")
    for (m_g, samples_g, adv_g), (m_c, samples_c, adv_c) in zip(grpo, closed, strict=True):
        assert m_c["thinking_fraction"] > 0 and m_c["hidden_ratio"] == 0.0 and m_c["embeds_ratio"] == 1.0
        assert m_c["latent_norm_ratio"] > 0 and m_c["latent_input_ratio"] == 0.0
        assert samples_c == samples_g and torch.equal(adv_c, adv_g)
        assert {k: m_c.get(k) for k in same} == {k: m_g.get(k) for k in same}
    assert grpo_lora.keys() == closed_lora.keys()
    assert all(torch.equal(grpo_lora[n], closed_lora[n]) for n in grpo_lora)
    assert any(not torch.equal(v, torch.zeros_like(v)) for n, v in grpo_lora.items() if "lora_B" in n)
    # The shut gate gets no gradient, so AdamW leaves it exactly as initialised.
    fresh = trainer(tmp_path / "fresh", make_model, tok, hybrid_mix="closed")
    assert all(torch.equal(v, fresh.model.gate.state_dict()[k]) for k, v in gate_after.items())


@pytest.mark.parametrize("overrides", [{"hybrid_mix": "latent_only"}, {"latent_source": "hidden_state"}])
def test_ablations_train(tmp_path, make_model, tok, overrides):
    tr = trainer(tmp_path, make_model, tok, **overrides)
    assert (tr.model.gate.hybrid_mix, tr.model.gate.latent_source) == (
        overrides.get("hybrid_mix", "gated"),
        overrides.get("latent_source", "projection"),
    )
    _, metrics = tr.train_step(0)
    assert torch.isfinite(torch.tensor(metrics["loss"])) and metrics["thinking_fraction"] > 0
    if "hybrid_mix" in overrides:  # the latent alone: all hidden, and the gate is not in the graph
        assert metrics["hidden_ratio"] == 1.0
        assert tr.model.gate.Lambda.grad is None


def test_compiled_rollout_backend_trains_like_the_eager_one(tmp_path, make_model, tok):
    import torch._dynamo

    torch._dynamo.reset()
    eager = trainer(tmp_path / "e", make_model, tok, max_steps=2)
    compiled = trainer(tmp_path / "c", make_model, tok, max_steps=2, rollout_backend="compiled")
    rollout = compiled.engine.config
    assert rollout.rollout_backend == "compiled" and rollout.cache_implementation == "static"
    # The compiled step's fused kernels round differently: its rollouts equal the eager ones up to
    # near ties (tests/invariance.py), and where the tokens are the same, so is the update.
    from hrpo.sampling import stable_seed
    from invariance import assert_same_until_near_ties, assert_teacher_forced_parity

    for step in range(2):
        rows = eager.step_rows(step)
        ro_e, ro_c = eager.generate_rollouts(step, rows), compiled.generate_rollouts(step, rows)
        cfg = compiled.engine.config
        seed = stable_seed(0, step, 0)
        agreed = assert_same_until_near_ties(eager.model, ro_e, ro_c, cfg, seed=seed, atol=1e-3, tie=2e-3)
        assert agreed.compared >= len(ro_e)
        assert_teacher_forced_parity(compiled.model, ro_c, cfg)
        (_, a), (_, b) = eager.train_step(step), compiled.train_step(step)
        assert all(map(math.isfinite, (a["loss"], b["loss"], a["grad_norm"], b["grad_norm"])))
        if not torch.equal(ro_e.completion_ids, ro_c.completion_ids):
            break  # a near tie went the other way: the two models now differ by a whole update
        assert a["reward"] == b["reward"] and a["completion_length"] == b["completion_length"]
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)


@pytest.mark.parametrize("loss_type", ["dr_grpo", "dapo"])
def test_other_loss_types_and_reused_rollouts_train(tmp_path, make_model, tok, loss_type):
    tr = trainer(tmp_path, make_model, tok, loss_type=loss_type, num_iterations=2, epsilon_high=0.28)
    _, metrics = tr.train_step(0)
    assert torch.isfinite(torch.tensor(metrics["loss"])) and metrics["clip_ratio"] >= 0


def strip_timing(lines):
    drop = {"step_time", "rollout_tokens_per_s", "peak_memory_gb"}
    return [{k: v for k, v in json.loads(line).items() if k not in drop} for line in lines]


def test_interrupted_then_resumed_run_logs_the_same_metrics(tmp_path, make_model, tok):
    full = trainer(tmp_path / "a", make_model, tok, max_steps=4)
    full.train()
    reference = strip_timing((tmp_path / "a/run/metrics.jsonl").read_text().splitlines())
    assert len(reference) == 4

    def ctrl_c_after_step_3(trainer, step, metrics):
        if step == 3:
            raise KeyboardInterrupt

    first = trainer(tmp_path / "b", make_model, tok, max_steps=4, callbacks=[ctrl_c_after_step_3])
    with pytest.raises(TrainingInterrupted) as info:
        first.train()
    assert info.value.step == 3 and info.value.checkpoint.name == "step-000003"
    assert latest_checkpoint(tmp_path / "b/run/checkpoints").name == "step-000003"

    resumed = trainer(tmp_path / "b", make_model, tok, max_steps=4)
    resumed.train(resume_from_checkpoint=True)
    got = strip_timing((tmp_path / "b/run/metrics.jsonl").read_text().splitlines())
    assert got == reference
    for (n, p), q in zip(full.model.named_parameters(), resumed.model.parameters(), strict=True):
        assert torch.equal(p, q), n


def test_checkpoints_are_pruned_and_complete(tmp_path, make_model, tok):
    tr = trainer(tmp_path, make_model, tok, max_steps=5, save_steps=1, save_total_limit=2)
    tr.train()
    ckpts = sorted(p.name for p in (tmp_path / "run/checkpoints").iterdir())
    assert ckpts == ["step-000004", "step-000005"]
    files = {p.name for p in (tmp_path / "run/checkpoints/step-000005").iterdir()}
    assert {
        "adapter_model.safetensors",
        "hrpo_gate.safetensors",
        "optimizer.pt",
        "scheduler.pt",
        "rng_state.pt",
        "trainer_state.json",
    } <= files
    assert (tmp_path / "run/config.yaml").is_file()


def test_a_raising_reward_function_is_reported_with_its_input(tmp_path, make_model, tok):
    def picky(prompts, completions, **kw):
        return [
            1 / (len(c) - len(c)) if "what is 2 +" in p[0]["content"] else 0.0
            for p, c in zip(prompts, completions, strict=True)
        ]

    rows = [{"prompt": [{"role": "user", "content": f"what is {i} + 1"}], "answer": "x"} for i in range(4)]
    tr = HRPOTrainer(
        args=config(tmp_path),
        train_dataset=rows,
        reward_funcs=[picky],
        model=make_model("qwen2"),
        processing_class=tok,
        progress=False,
    )
    with pytest.raises(RewardFunctionError, match=r"'picky' raised ZeroDivisionError.*what is 2 \+ 1"):
        for step in range(2):
            tr.train_step(step)


def test_nan_reward_is_an_error(tmp_path, make_model, tok):
    tr = trainer(
        tmp_path, make_model, tok, reward=lambda prompts, completions, **kw: [float("nan")] * len(prompts)
    )
    with pytest.raises(RewardFunctionError, match="finite"):
        tr.train_step(0)


def test_batch_must_hold_whole_groups(tmp_path, make_model, tok):
    with pytest.raises(ValueError, match="multiple of num_generations"):
        trainer(tmp_path, make_model, tok, num_generations=3)


def test_full_fine_tuning_uses_a_frozen_reference_copy(tmp_path, make_model, tok):
    tr = trainer(tmp_path, make_model, tok, use_lora=False, beta=0.1, learning_rate=1e-3)
    assert tr.ref_model is not None and not any(p.requires_grad for p in tr.ref_model.parameters())
    embed_before = tr.model.model.get_input_embeddings().weight.detach().clone()
    ref_before = tr.ref_model.model.get_input_embeddings().weight.detach().clone()
    _, metrics = tr.train_step(0)
    assert not torch.equal(tr.model.model.get_input_embeddings().weight, embed_before)
    assert torch.equal(tr.ref_model.model.get_input_embeddings().weight, ref_before)
    assert metrics["kl"] >= 0 and "lr/model" in metrics


def test_bfloat16_model_trains_with_a_float32_gate(tmp_path, tok):
    from tiny import tiny_model

    model = tiny_model("llama", len(tok)).to(torch.bfloat16)
    tr = HRPOTrainer(
        args=config(tmp_path, beta=0.01),
        train_dataset=ROWS,
        reward_funcs=[hash_reward],
        model=model,
        processing_class=tok,
        progress=False,
    )
    assert tr.model.gate.Lambda.dtype == torch.float32
    lam = tr.model.gate.Lambda.detach().clone()
    _, metrics = tr.train_step(0)
    assert all(v == v for v in metrics.values())  # no NaN
    assert not torch.equal(tr.model.gate.Lambda, lam)


def test_gradient_checkpointing_gives_the_same_update(tmp_path, make_model, tok):
    plain = trainer(tmp_path / "a", make_model, tok)
    ckpt = trainer(tmp_path / "b", make_model, tok, gradient_checkpointing=True)
    base = ckpt.model.model.get_base_model()
    assert getattr(base, "is_activation_checkpointing", None) or base.is_gradient_checkpointing
    (_, m1), (_, m2) = plain.train_step(0), ckpt.train_step(0)
    assert m1["reward"] == m2["reward"] and abs(m1["grad_norm"] - m2["grad_norm"]) < 1e-5
    for (n, p), q in zip(plain.model.named_parameters(), ckpt.model.parameters(), strict=True):
        assert torch.allclose(p, q, atol=1e-6), n


def _task_fixture(name, tmp_path):
    import json as _json

    from conftest import SHARED

    from hrpo.tasks import get_task

    if name == "math":
        return get_task("math", data_files={"train": str(SHARED / "data/math/math500_sample.jsonl")})
    if name == "mmlu_stem":
        f = tmp_path / "mmlu.jsonl"
        f.write_text(
            "\n".join(
                _json.dumps(
                    {
                        "question": f"{i}+1?",
                        "choices": [str(i), str(i + 1), "x", "y"],
                        "answer": 1,
                        "subject": "college_mathematics",
                    }
                )
                for i in range(8)
            )
        )
        return get_task("mmlu_stem", data_files={"train": str(f)})
    f = tmp_path / "qa.jsonl"
    f.write_text(
        "\n".join(
            _json.dumps(
                {
                    "question": f"capital {i}?",
                    "golden_answers": ["Paris", "paris"],
                    "passages": [f"Doc about {i}"],
                }
            )
            for i in range(8)
        )
    )
    return get_task("qa", data_files={"train": str(f)})


@pytest.mark.parametrize("name", ["math", "mmlu_stem", "qa"])
def test_one_step_on_each_benchmark_task(tmp_path, make_model, tok, name):
    task = _task_fixture(name, tmp_path)
    tr = HRPOTrainer(
        args=config(tmp_path, max_prompt_length=4096),
        task=task,
        train_dataset=task.load("train", limit=8),
        model=make_model("qwen2"),
        processing_class=tok,
        progress=False,
    )
    _, metrics = tr.train_step(0)
    assert f"rewards/{name}_accuracy/mean" in metrics and 0.0 <= metrics["accuracy"] <= 1.0


@pytest.mark.parametrize("hybrid", [True, False])
def test_evaluation_decodes_as_the_run_trains(tmp_path, make_model, tok, monkeypatch, hybrid):
    """Held-out accuracy before and after training is measured with the run's own decoding: hybrid
    or not, and the τ and top-k the latent is built with (greedy tokens, same latent)."""
    seen = []
    monkeypatch.setattr("hrpo.trainer.evaluate", lambda model, tok_, task, rows, cfg, **kw: seen.append(cfg))
    tr = trainer(tmp_path, make_model, tok, hybrid=hybrid, temperature=0.7, top_k=10, top_p=0.9)
    tr.eval_dataset, tr.task = ROWS[:2], object()
    tr.evaluate()
    (cfg,) = seen
    assert (cfg.hybrid, cfg.temperature, cfg.top_k, cfg.top_p) == (hybrid, 0.7, 10, 0.9)
    assert cfg == tr.engine.config


def test_python_api_writes_the_same_run_directory_as_the_cli(tmp_path, make_model, tok):
    """train() from Python evaluates before and after and plots, so `hrpo plot` and `hrpo sweep`
    read its run like one started by `hrpo train`."""
    from hrpo.cli import main
    from hrpo.rundir import EVAL_AFTER, EVAL_BEFORE, finished, read_eval
    from hrpo.tasks import get_task

    task = get_task("arithmetic")
    tr = HRPOTrainer(
        args=config(tmp_path, max_steps=2, eval_limit=3, eval_batch_size=3),
        task=task,
        model=make_model("qwen2"),
        processing_class=tok,
        progress=False,
    )
    summary = tr.train()
    out = tmp_path / "run"
    assert (
        summary["eval_before"] == read_eval(out, EVAL_BEFORE) and summary["eval_before"]["num_examples"] == 3
    )
    assert summary["eval_after"] == read_eval(out, EVAL_AFTER) and finished(out)
    assert {p.name for p in out.iterdir()} >= {"config.yaml", "metrics.jsonl", "checkpoints", "plots"}
    assert summary["plots"] and all(p.is_file() for p in summary["plots"])
    assert main(["plot", str(out), "--output", str(tmp_path / "again.png")]) == 0


LOSS_PASS_METRICS = ("clip_ratio", "clip_ratio/low_mean", "clip_ratio/high_mean", "clip_ratio/region_mean")


@pytest.mark.parametrize(
    "overrides",
    [
        {"loss_type": "bnpo"},
        {"importance_sampling_level": "sequence", "num_iterations": 2},
        {"mask_truncated_completions": True},
        {"steps_per_generation": 4, "loss_type": "dapo"},
    ],
    ids=["bnpo", "gspo", "mask_truncated", "steps_per_generation"],
)
def test_trl_loss_options_train_and_log_the_loss_pass_metrics(tmp_path, make_model, tok, overrides):
    tr = trainer(tmp_path, make_model, tok, beta=0.01, max_steps=1, logit_chunk_size=3, **overrides)
    tr.plots = False
    if overrides.get("mask_truncated_completions"):
        tr.engine.eos_ids = torch.arange(3, 33)  # a tenth of the vocabulary ends a completion: some do
    batches = []
    tr.train_step = lambda step, f=tr.train_step: batches.append(f(step)) or batches[-1]
    tr.train()
    (logged,) = [json.loads(line) for line in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    for key in (*LOSS_PASS_METRICS, "entropy", "rollout_entropy", "kl", "loss"):
        assert key in logged and math.isfinite(logged[key]), key
    assert all(0 <= logged[k] <= 1 for k in LOSS_PASS_METRICS)
    assert logged["clip_ratio/region_mean"] == pytest.approx(
        logged["clip_ratio/low_mean"] + logged["clip_ratio/high_mean"]
    )
    ((batch, metrics),) = batches
    ro = batch.rollout
    if "loss_type" in overrides and "steps_per_generation" not in overrides:  # bnpo, one update
        assert batch.normalizer.num_micro_batches == 2 and batch.old_logprobs is None
        # Teacher-forced at the rollout's temperature by the unchanged policy: the rollout's entropy.
        assert logged["entropy"] > 0 and logged["entropy"] == pytest.approx(
            logged["rollout_entropy"], rel=1e-4
        )
    if "num_iterations" in overrides:
        assert batch.old_logprobs is not None and tr.scheduler.last_epoch == 2
    if "mask_truncated_completions" in overrides:
        last = ro.completion_ids.gather(1, (ro.completion_lengths - 1)[:, None]).squeeze(1)
        ended = torch.isin(last, torch.arange(3, 33))
        assert batch.normalizer.num_tokens == int(ro.completion_lengths[ended].sum())
        assert batch.normalizer.num_sequences == len(ro)  # grpo/dr_grpo still count every sequence
    if "steps_per_generation" in overrides:  # two optimiser batches of 4 completions from one rollout batch
        assert len(ro) == 8 and batch.old_logprobs is not None and tr.scheduler.last_epoch == 2


def test_steps_per_generation_takes_one_update_per_optimiser_batch(tmp_path, make_model, tok):
    """steps_per_generation = 2 × gradient_accumulation_steps: the step's 8 completions are two
    optimiser batches of 4, each normalised on its own (dapo: its own token count). With zero
    learning rates the policy does not move, so the ratio is 1 and the logged loss is, by hand,
    the mean over the two halves of Σ(−A + β·k3) / tokens."""
    zero = {"learning_rate": 0.0, "gate_learning_rate": 0.0, "lambda_learning_rate": 0.0}
    tr = trainer(tmp_path, make_model, tok, beta=0.1, loss_type="dapo", steps_per_generation=4, **zero)
    batch, metrics = tr.train_step(0)
    ro = batch.rollout
    with torch.no_grad():
        lp = tr._logprobs(tr.prepared_model, ro, slice(None), hybrid=True)
    delta = batch.ref_logprobs - lp
    tok_loss = (-batch.advantages[:, None] + 0.1 * (torch.exp(delta) - delta - 1)) * ro.completion_mask
    halves = [slice(0, 4), slice(4, 8)]
    expect = sum(tok_loss[h].sum() / ro.completion_mask[h].sum() for h in halves) / 2
    assert metrics["loss"] == pytest.approx(expect.item(), abs=1e-5)
    assert metrics["clip_ratio"] == 0 and tr.scheduler.last_epoch == 2
    assert [tr._loss_normalizer(ro, h).num_tokens for h in halves] == [
        int(ro.completion_mask[h].sum()) for h in halves
    ]
