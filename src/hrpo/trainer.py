"""The HRPO training loop: prompts → hybrid rollouts → rewards → advantages → loss → update.

One optimiser step (spec §3, settings §4):

1. each process takes its share of the step's prompts (whole groups) and samples G hybrid
   rollouts per prompt (:mod:`hrpo.rollout`);
2. rewards are computed (:mod:`hrpo.reward`), gathered from all processes, and turned into
   group-relative advantages (:mod:`hrpo.advantage`), so every process sees the same numbers
   as a single process would;
3. reference log-probs (base model, adapters off, token ids) and, when rollouts are reused,
   old log-probs are computed once per rollout batch;
4. the policy log-probs are recomputed teacher-forced with the current gate over the stored
   latents, in micro-batches; the loss (:mod:`hrpo.loss`) is back-propagated and one AdamW step
   with three parameter groups (LoRA/model, gate linears, Λ) is taken per pass.

Runs are resumable: checkpoints hold weights, gate, optimiser, scheduler, RNG states, step and
data position, and are written atomically. The run directory's rules (a fresh run never reuses an
old one, one writer at a time, what a resume discards) are :mod:`hrpo.rundir`'s.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator, DistributedType
from tqdm.auto import tqdm
from transformers import get_scheduler

from hrpo.advantage import group_advantages
from hrpo.config import HRPOConfig
from hrpo.distributed import full_optimizer_state, gathered_parameters, load_optimizer_state
from hrpo.evaluation import evaluate
from hrpo.loss import LossNormalizer, policy_loss
from hrpo.marker import find_markers
from hrpo.metrics import MetricsLogger
from hrpo.model import HybridModel
from hrpo.reward import RewardFunc, compute_rewards, reward_name
from hrpo.rollout import Rollout, RolloutConfig, RolloutEngine, concat_rollouts
from hrpo.rundir import (
    API_HINTS,
    CHECKPOINT_PREFIX,
    CHECKPOINTS,
    TRAINER_STATE,
    discard_after,
    hold_run_dir,
    latest_checkpoint,
    list_checkpoints,
)
from hrpo.storage import atomic_directory, atomic_file, atomic_remove


class TrainingInterrupted(Exception):
    """Raised by :meth:`HRPOTrainer.train` after Ctrl-C, once a checkpoint has been saved."""

    def __init__(self, checkpoint: Path | None, step: int) -> None:
        super().__init__(f"interrupted at step {step}; checkpoint: {checkpoint}")
        self.checkpoint, self.step = checkpoint, step


def _seed_for(*parts: int) -> int:
    """A stable 63-bit seed from integers (Python's hash() is salted per process)."""
    digest = hashlib.sha256(",".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def _lora_targets(model: torch.nn.Module, wanted: Sequence[str]) -> list[str]:
    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    found = [t for t in wanted if t in present]
    if not found:
        raise ValueError(f"none of lora_target_modules={list(wanted)} exist in the model")
    return found


def peak_memory_gb() -> float:
    """This step's peak GPU memory allocated (GiB) on CUDA; the process's peak RSS on CPU."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB


def _check_engine(accelerator: Accelerator) -> None:
    """Refuse distributed engines the trainer does not drive correctly, before any work."""
    kind = accelerator.distributed_type
    if kind == DistributedType.DEEPSPEED:
        raise ValueError(
            "DeepSpeed is not supported: its engine steps the optimiser inside backward(), and hrpo "
            "runs several backward passes per step. Use FSDP2 for sharding "
            "(accelerate launch --config_file configs/accelerate/fsdp.yaml ...)"
        )
    if kind == DistributedType.FSDP and getattr(accelerator.state.fsdp_plugin, "fsdp_version", 1) != 2:
        raise ValueError("hrpo needs FSDP2: set fsdp_version: 2 in the accelerate config")


def _resolve_dtype(name: str, accelerator: Accelerator) -> str:
    if name != "auto":
        return name
    cuda = accelerator.device.type == "cuda"
    return "bfloat16" if cuda and torch.cuda.is_bf16_supported() else "float32"


class HRPOTrainer:
    """Trains a :class:`HybridModel` with HRPO (or GRPO with ``hybrid=False``).

    Args:
        config: the run's settings.
        train_dataset / eval_dataset: lists of rows with a ``prompt`` column (text or chat
            messages) and whatever columns the reward functions read; default: the task's
            ``train`` and ``test`` splits.
        reward_funcs: TRL-signature reward functions; default: the task's accuracy reward.
        model / tokenizer: an already loaded model (a :class:`HybridModel`, or a plain causal LM
            to wrap); default: loaded from ``config.model_name_or_path``.
        callbacks: functions ``f(trainer, step, metrics)`` called after each step.
    """

    def __init__(
        self,
        config: HRPOConfig,
        *,
        train_dataset: list[dict[str, Any]] | None = None,
        eval_dataset: list[dict[str, Any]] | None = None,
        reward_funcs: Sequence[RewardFunc] | None = None,
        model: torch.nn.Module | None = None,
        tokenizer=None,
        task=None,
        callbacks: Sequence[Callable[[HRPOTrainer, int, dict[str, float]], None]] = (),
        progress: bool = True,
    ) -> None:
        self.config = cfg = config
        self.accelerator = Accelerator(cpu=not torch.cuda.is_available())
        self.progress = progress and self.accelerator.is_main_process
        self.callbacks = list(callbacks)
        self.output_dir = Path(cfg.output_dir)
        torch.manual_seed(cfg.seed)

        if task is None and (train_dataset is None or reward_funcs is None):
            from hrpo.tasks import get_task

            task = get_task(cfg.task, **{"marker": cfg.answer_marker, **cfg.task_args})
        self.task = task
        self.train_dataset = train_dataset if train_dataset is not None else task.load("train")
        if eval_dataset is None and task is not None and cfg.eval_limit > 0:
            eval_dataset = task.load("test", limit=cfg.eval_limit)
        self.eval_dataset = eval_dataset or []
        self.reward_weights = cfg.reward_weights
        if reward_funcs is not None:
            self.reward_funcs = list(reward_funcs)
        else:
            self.reward_funcs = [task.reward_function(cfg.strict_format)]
            if cfg.format_reward_weight:
                self.reward_funcs.append(task.format_reward_function())
                self.reward_weights = self.reward_weights or [1.0, cfg.format_reward_weight]
        if self.reward_weights is not None and len(self.reward_weights) != len(self.reward_funcs):
            raise ValueError(
                f"config key 'reward_weights': {len(self.reward_weights)} weights for "
                f"{len(self.reward_funcs)} reward functions {[reward_name(f) for f in self.reward_funcs]}"
            )
        if not self.train_dataset:
            raise ValueError("the training dataset is empty")
        for i, row in enumerate(self.train_dataset[:1000]):
            if "prompt" not in row:
                raise ValueError(f"training row {i} has no 'prompt' column (columns: {sorted(row)})")

        self.model, self.tokenizer = self._build_model(model, tokenizer)
        self.ref_model = self._build_reference()
        self.optimizer = self._build_optimizer()

        world = self.accelerator.num_processes
        per_device = cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps
        if per_device % cfg.num_generations:
            raise ValueError(
                f"per_device_train_batch_size × gradient_accumulation_steps = {per_device} completions per "
                f"process must be a multiple of num_generations={cfg.num_generations} (whole groups per process)"
            )
        self.prompts_per_process = per_device // cfg.num_generations
        self.prompts_per_step = self.prompts_per_process * world
        if cfg.max_steps > 0:
            self.max_steps = cfg.max_steps
        else:
            self.max_steps = max(
                1, int(cfg.num_train_epochs * len(self.train_dataset) // self.prompts_per_step)
            )
        self.scheduler = get_scheduler(
            cfg.lr_scheduler_type if cfg.lr_scheduler_type != "constant" else "constant_with_warmup",
            self.optimizer,
            num_warmup_steps=int(math.ceil(cfg.warmup_ratio * self.max_steps * cfg.num_iterations)),
            num_training_steps=self.max_steps * cfg.num_iterations,
        )
        _check_engine(self.accelerator)
        self.ddp_model, self.optimizer = self.accelerator.prepare(self.model, self.optimizer)
        self.engine = RolloutEngine(self.model, self.tokenizer, self.rollout_config())
        self.step = 0
        self._order_epoch, self._order = -1, np.arange(0)

    # -- construction --------------------------------------------------------------------------
    def rollout_config(self) -> RolloutConfig:
        cfg = self.config
        return RolloutConfig(
            num_generations=cfg.num_generations,
            max_prompt_length=cfg.max_prompt_length,
            max_completion_length=cfg.max_completion_length,
            temperature=cfg.temperature,
            top_k=cfg.top_k,
            top_p=cfg.top_p,
            hybrid=cfg.hybrid,
            answer_marker=cfg.answer_marker,
            # The rollout must end thinking where the task's grader finds the answer marker.
            ignore_marker_headings=bool(getattr(self.task, "ignore_marker_headings", False)),
            rollout_backend=cfg.rollout_backend,
            cache_implementation=cfg.cache_implementation,
            compact_finished=cfg.compact_finished,
            sync_every=cfg.sync_every,
        )

    def _build_model(self, model, tokenizer):
        cfg = self.config
        device = self.accelerator.device
        if isinstance(model, HybridModel):
            if tokenizer is None:
                raise ValueError("pass the tokenizer with a preloaded model")
            return model.to(device), tokenizer
        if model is None:
            from hrpo.loading import load_model

            model, tokenizer = load_model(
                cfg.model_name_or_path, dtype=_resolve_dtype(cfg.dtype, self.accelerator)
            )
        elif tokenizer is None:
            raise ValueError("pass the tokenizer with a preloaded model")
        if cfg.gradient_checkpointing:
            # transformers 5 renamed gradient checkpointing to activation checkpointing.
            enable = getattr(model, "activation_checkpointing_enable", None)
            if enable is not None:
                enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model.config.use_cache = False
        if cfg.use_lora:
            from peft import LoraConfig, get_peft_model

            lora = LoraConfig(
                r=cfg.lora_r,
                lora_alpha=cfg.lora_alpha,
                lora_dropout=cfg.lora_dropout,
                target_modules=_lora_targets(model, cfg.lora_target_modules),
                task_type="CAUSAL_LM",
            )
            model = get_peft_model(model, lora)
        gen = torch.Generator().manual_seed(cfg.seed)
        from hrpo.gate import HybridGate

        hidden = model.get_input_embeddings().weight.shape[1]
        gate = HybridGate(
            hidden,
            r_min=cfg.r_min,
            r_max=cfg.r_max,
            generator=gen,
            hybrid_mix=cfg.hybrid_mix,
            latent_source=cfg.latent_source,
        )
        hybrid = HybridModel(model, gate).to(device)
        hybrid.train()
        return hybrid, tokenizer

    def _build_reference(self):
        """None with LoRA (the reference is the same model with adapters disabled)."""
        if self.config.beta == 0 or self.config.use_lora:
            return None
        import copy

        ref = copy.deepcopy(self.model.model).eval()
        for p in ref.parameters():
            p.requires_grad_(False)
        return ref

    def parameter_groups(self) -> list[dict[str, Any]]:
        """LoRA (or model) weights, gate linears and Λ, each with its own learning rate.

        In GRPO mode (``hybrid: false``) the gate is never used, so it is frozen and left out:
        DDP would otherwise wait forever for its gradients.
        """
        cfg = self.config
        model_params = [p for p in self.model.model.parameters() if p.requires_grad]
        groups = [
            {"params": model_params, "lr": cfg.learning_rate, "name": "lora" if cfg.use_lora else "model"}
        ]
        if cfg.hybrid:
            gate_linears = [p for n, p in self.model.gate.named_parameters() if n != "Lambda"]
            groups.append({"params": gate_linears, "lr": cfg.gate_learning_rate, "name": "gate"})
            groups.append(
                {"params": [self.model.gate.Lambda], "lr": cfg.lambda_learning_rate, "name": "lambda"}
            )
        else:
            self.model.gate.requires_grad_(False)
        return groups

    def _build_optimizer(self) -> torch.optim.Optimizer:
        cfg = self.config
        return torch.optim.AdamW(
            self.parameter_groups(),
            betas=(cfg.adam_beta1, cfg.adam_beta2),
            weight_decay=cfg.weight_decay,
        )

    # -- data ----------------------------------------------------------------------------------
    def step_rows(self, step: int) -> list[dict[str, Any]]:
        """This process's prompts for optimiser step ``step`` (0-based): a deterministic function
        of (seed, step), so a resumed run sees exactly the data an uninterrupted one would."""
        n = len(self.train_dataset)
        start = step * self.prompts_per_step + self.accelerator.process_index * self.prompts_per_process
        rows = []
        for k in range(start, start + self.prompts_per_process):
            epoch, pos = divmod(k, n)
            if self._order_epoch != epoch:
                self._order = np.random.default_rng(_seed_for(self.config.seed, epoch)).permutation(n)
                self._order_epoch = epoch
            rows.append(self.train_dataset[int(self._order[pos])])
        return rows

    # -- one step ------------------------------------------------------------------------------
    def _logprobs(self, model_call, ro: Rollout, idx: slice, temperature: float, hybrid: bool):
        return model_call(
            ro.prompt_ids[idx],
            ro.prompt_mask[idx],
            ro.completion_ids[idx],
            ro.completion_mask[idx],
            latents=ro.latents[idx] if hybrid else None,
            thinking_mask=ro.thinking_mask[idx] if hybrid else None,
            temperature=temperature,
            chunk_size=self.config.logit_chunk_size,
        )[0]

    @torch.no_grad()
    def _reference_logprobs(self, ro: Rollout, temperature: float) -> torch.Tensor | None:
        if self.config.beta == 0:
            return None
        mb = self.config.per_device_train_batch_size
        out = []
        for s in range(0, len(ro), mb):
            idx = slice(s, s + mb)
            if self.ref_model is not None:
                ref = HybridModel(self.ref_model, self.model.gate)
                out.append(self._logprobs(ref.completion_logprobs, ro, idx, temperature, hybrid=False))
            else:
                # Through the wrapped model, so FSDP gathers the shards it needs.
                with self.model.model.disable_adapter():
                    out.append(self._logprobs(self.ddp_model, ro, idx, temperature, hybrid=False))
        return torch.cat(out)

    def generate_rollouts(self, step: int, rows: list[dict[str, Any]]) -> Rollout:
        """This process's rollouts for ``step``, in calls of ``generation_batch_size`` prompts.

        Each call is seeded from (seed, step, global call index): the same prompts get the same
        samples whether one process or several share the step.
        """
        size = self.config.generation_batch_size or self.prompts_per_process
        calls_per_process = math.ceil(self.prompts_per_process / size)
        first = self.accelerator.process_index * calls_per_process
        parts = []
        for k, s in enumerate(range(0, len(rows), size)):
            seed = _seed_for(self.config.seed, step, first + k)
            parts.append(self.engine.generate([r["prompt"] for r in rows[s : s + size]], seed=seed))
        return concat_rollouts(parts, self.engine.pad_id)

    def train_step(self, step: int) -> dict[str, float]:
        """Run optimiser step ``step`` (0-based) and return its metrics."""
        cfg, acc = self.config, self.accelerator
        t0 = time.perf_counter()
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        rows = self.step_rows(step)
        ro = self.generate_rollouts(step, rows)
        t_roll = time.perf_counter() - t0
        g = cfg.num_generations

        expanded = [rows[i] for i in ro.group_ids.tolist()]
        columns = {k: [r.get(k) for r in expanded] for k in rows[0] if k != "prompt"}
        total, per_func = compute_rewards(
            self.reward_funcs,
            [r["prompt"] for r in expanded],
            ro.completion_texts,
            columns,
            self.reward_weights,
        )
        device = acc.device
        all_rewards = acc.gather(total.to(device))
        advantages_all = group_advantages(all_rewards, g, cfg.scale_rewards)
        n_local = len(ro)
        start = acc.process_index * n_local
        advantages = advantages_all[start : start + n_local]
        # Kept for inspection (tests, debugging): what this step's update was computed from.
        self.last_step = {
            "rewards": all_rewards.cpu(),
            "advantages": advantages_all.cpu(),
            "group_ids": ro.group_ids.cpu(),
        }

        loss_t = cfg.temperature if cfg.loss_temperature is None else cfg.loss_temperature
        ref_lp = self._reference_logprobs(ro, loss_t)
        old_lp = None
        if cfg.num_iterations > 1:
            with torch.no_grad():
                old_lp = torch.cat(
                    [
                        self._logprobs(
                            self.ddp_model,
                            ro,
                            slice(s, s + cfg.per_device_train_batch_size),
                            loss_t,
                            cfg.hybrid,
                        )
                        for s in range(0, n_local, cfg.per_device_train_batch_size)
                    ]
                )

        token_count = acc.gather(ro.completion_mask.sum().reshape(1).to(device)).sum().item()
        normalizer = LossNormalizer(
            num_sequences=n_local * acc.num_processes,
            num_tokens=int(token_count),
            max_completion_length=cfg.max_completion_length,
        )
        mb = cfg.per_device_train_batch_size
        loss_sum, kl_sum, clip_sum, grad_norm = 0.0, 0.0, 0.0, 0.0
        for _ in range(cfg.num_iterations):
            starts = list(range(0, n_local, mb))
            for j, s in enumerate(starts):
                idx = slice(s, s + mb)
                sync = j == len(starts) - 1
                ctx = (
                    acc.no_sync(self.ddp_model)
                    if not sync and acc.num_processes > 1
                    else contextlib.nullcontext()
                )
                with ctx, acc.autocast():
                    lp = self._logprobs(self.ddp_model, ro, idx, loss_t, cfg.hybrid)
                    loss, stats = policy_loss(
                        lp,
                        advantages[idx],
                        ro.completion_mask[idx],
                        normalizer,
                        old_logprobs=old_lp[idx] if old_lp is not None else None,
                        ref_logprobs=ref_lp[idx] if ref_lp is not None else None,
                        beta=cfg.beta,
                        epsilon=cfg.epsilon,
                        epsilon_high=cfg.epsilon_high,
                        loss_type=cfg.loss_type,
                    )
                    if not torch.isfinite(loss):
                        raise FloatingPointError(
                            f"step {step}: the loss is {loss.item()} (micro-batch at completions {s}..{s + mb - 1}); "
                            "lower the learning rates or check the rewards"
                        )
                    # DDP averages gradients over processes; the normaliser already divides by
                    # the global batch, so undo the average.
                    acc.backward(loss * acc.num_processes)
                loss_sum += loss.item()
                kl_sum += stats["kl_sum"].item()
                clip_sum += stats["clipped_sum"].item()
            grad_norm = float(acc.clip_grad_norm_(self._trainable(), cfg.max_grad_norm))
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)

        def mean(x: torch.Tensor) -> float:
            return float(acc.gather(x.float().to(device).reshape(-1)).mean())

        tokens_local = int(ro.completion_mask.sum())
        metrics: dict[str, float] = {
            "loss": float(acc.gather(torch.tensor([loss_sum], device=device)).sum()) / cfg.num_iterations,
            "reward": float(all_rewards.mean()),
            "reward_std": float(all_rewards.view(-1, g).std(dim=1).mean()),
        }
        for name, values in per_func.items():
            metrics[f"rewards/{name}"] = mean(values)
        if self.task is not None:
            correct = [
                self.task.score(c, r.get("answer"))
                for c, r in zip(ro.completion_texts, expanded, strict=True)
            ]
            metrics["accuracy"] = mean(torch.tensor(correct))
        all_tokens = float(acc.gather(torch.tensor([tokens_local], device=device)).sum())
        metrics["kl"] = (
            float(acc.gather(torch.tensor([kl_sum], device=device)).sum()) / cfg.num_iterations / all_tokens
        )
        metrics["clip_ratio"] = float(acc.gather(torch.tensor([clip_sum], device=device)).sum()) / (
            cfg.num_iterations * all_tokens
        )
        metrics["completion_length"] = mean(ro.completion_lengths)
        # The strict reward is 0 with two answer markers; headings are occurrences the rule skipped.
        rcfg = self.engine.config
        found = [
            find_markers(c, rcfg.answer_marker, rcfg.ignore_marker_headings) for c in ro.completion_texts
        ]
        metrics["multiple_markers"] = mean(torch.tensor([len(f.answers) > 1 for f in found]))
        metrics["heading_markers"] = mean(torch.tensor([len(f.headings) > 0 for f in found]))
        think = ro.thinking_mask.float()
        n_think = float(acc.gather(think.sum().reshape(1).to(device)).sum())
        metrics["thinking_fraction"] = n_think / all_tokens

        def think_mean(x: torch.Tensor | None, default: float) -> float:
            """Mean of a per-position statistic over every process's thinking positions."""
            if x is None or not n_think:
                return default
            return float(acc.gather((x * think).sum().reshape(1).to(device)).sum()) / n_think

        # What the hybrid mechanism does (spec §2): a, sqrt(1 − a²), i, and how large the latent
        # and its contribution to the fed input are relative to the token embedding.
        metrics["embeds_ratio"] = think_mean(ro.embeds_ratio, 1.0)
        metrics["hidden_ratio"] = think_mean(ro.hidden_ratio, 0.0)
        metrics["input_gate"] = think_mean(ro.input_gate, 0.0)
        metrics["latent_norm_ratio"] = think_mean(ro.latent_norm_ratio, 0.0)
        metrics["latent_input_ratio"] = think_mean(ro.latent_input_ratio, 0.0)
        if ro.entropy is not None:
            ent = float(acc.gather((ro.entropy * ro.completion_mask).sum().reshape(1).to(device)).sum())
            metrics["entropy"] = ent / all_tokens
        for group in self.optimizer.param_groups:
            metrics[f"lr/{group['name']}"] = group["lr"]
        metrics["grad_norm"] = grad_norm
        metrics["rollout_tokens_per_s"] = all_tokens / max(t_roll, 1e-9) / acc.num_processes
        metrics["step_time"] = time.perf_counter() - t0
        metrics["peak_memory_gb"] = peak_memory_gb()
        self._last_samples = [
            {
                "prompt": ro.prompt_texts[i],
                "completion": ro.completion_texts[i],
                "reward": float(total[i]),
                "advantage": float(advantages[i]),
            }
            for i in range(min(len(ro), g))
        ]
        return metrics

    def _trainable(self) -> list[torch.nn.Parameter]:
        return [p for group in self.optimizer.param_groups for p in group["params"]]

    # -- checkpoints ---------------------------------------------------------------------------
    @property
    def checkpoint_dir(self) -> Path:
        return self.output_dir / CHECKPOINTS

    def save_checkpoint(self) -> Path | None:
        """Write ``checkpoints/step-NNNNNN`` atomically (main process) and prune old ones."""
        acc = self.accelerator
        path = self.checkpoint_dir / f"{CHECKPOINT_PREFIX}{self.step:06d}"
        rng = {
            "python": random.getstate(),
            "numpy": np.random.get_state(),
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        }
        # Full tensors, gathered on every process (FSDP shards), so the files are the same
        # whatever the number of processes.
        weights = self.model.trainable_state()
        optimizer = full_optimizer_state(self.optimizer)
        acc.wait_for_everyone()
        if acc.is_main_process:
            with atomic_directory(path) as tmp:
                self.model.write_to(tmp, weights)
                torch.save(optimizer, tmp / "optimizer.pt")
                torch.save(self.scheduler.state_dict(), tmp / "scheduler.pt")
                torch.save(rng, tmp / "rng_state.pt")
                state = {
                    "step": self.step,
                    "max_steps": self.max_steps,
                    "prompts_consumed": self.step * self.prompts_per_step,
                    "num_processes": acc.num_processes,
                    "config": self.config.to_dict(),
                }
                (tmp / TRAINER_STATE).write_text(json.dumps(state, indent=2) + "\n")
            self._prune_checkpoints()
        acc.wait_for_everyone()
        return path

    def _prune_checkpoints(self) -> None:
        limit = self.config.save_total_limit
        if limit <= 0:
            return
        for old in list_checkpoints(self.checkpoint_dir)[:-limit]:
            atomic_remove(old)  # renamed away first: never listed half-deleted

    def load_checkpoint(self, path: str | Path) -> None:
        path = Path(path)
        state_file = path / TRAINER_STATE
        if not state_file.is_file():
            raise FileNotFoundError(f"{path} is not an hrpo training checkpoint ({TRAINER_STATE} missing)")
        state = json.loads(state_file.read_text())
        if state["num_processes"] != self.accelerator.num_processes:
            raise ValueError(
                f"{path} was written by {state['num_processes']} processes; resume with the same number "
                f"(now {self.accelerator.num_processes}) so the data order is unchanged"
            )
        self.model.load_trainable_state(path)
        load_optimizer_state(
            self.optimizer, torch.load(path / "optimizer.pt", map_location="cpu", weights_only=False)
        )
        self.scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=False))
        rng = torch.load(path / "rng_state.pt", weights_only=False)
        random.setstate(rng["python"])
        np.random.set_state(rng["numpy"])
        torch.set_rng_state(rng["torch"])
        if rng["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        self.step = int(state["step"])

    # -- the loop ------------------------------------------------------------------------------
    def evaluate(self, desc: str = "eval") -> dict[str, Any] | None:
        """Greedy accuracy on the eval rows, computed by the main process (None elsewhere)."""
        if not self.eval_dataset or self.task is None:
            return None
        # Every process joins the gathering of FSDP shards; only the main one generates.
        with gathered_parameters(self.model):
            if not self.accelerator.is_main_process:
                return None
            return evaluate(
                self.model,
                self.tokenizer,
                self.task,
                self.eval_dataset,
                self.rollout_config(),
                batch_size=self.config.eval_batch_size,
                progress=self.progress,
                desc=desc,
            )

    def train(self, resume_from_checkpoint: str | Path | bool | None = None) -> dict[str, Any]:
        """Train up to ``max_steps``; returns a summary (steps, final metrics, output paths).

        ``resume_from_checkpoint``: True for the latest checkpoint in ``output_dir`` (none there:
        start from step 0), or a checkpoint path. Resuming from step N discards what the directory
        holds after N (metric and sample lines, later checkpoints, ``eval_after.json``). Without
        it, an ``output_dir`` that holds a run is refused unless ``config.overwrite_output_dir``.
        The main process holds ``output_dir``'s lock meanwhile (:mod:`hrpo.rundir`); another
        process using it raises :class:`hrpo.rundir.RunDirectoryInUse`.
        On Ctrl-C, a checkpoint of the last completed step is saved and
        :class:`TrainingInterrupted` is raised.
        """
        with contextlib.ExitStack() as held:
            if self.accelerator.is_main_process:
                held.enter_context(
                    hold_run_dir(
                        self.output_dir,
                        resume=bool(resume_from_checkpoint),
                        overwrite=self.config.overwrite_output_dir,
                        hints=API_HINTS,
                    )
                )
            # The others list checkpoints only once the main process has tidied the directory.
            self.accelerator.wait_for_everyone()
            return self._train(resume_from_checkpoint)

    def _train(self, resume_from_checkpoint: str | Path | bool | None) -> dict[str, Any]:
        cfg, acc = self.config, self.accelerator
        if resume_from_checkpoint:
            path = (
                latest_checkpoint(self.checkpoint_dir)
                if resume_from_checkpoint is True
                else Path(resume_from_checkpoint)
            )
            if path is not None:
                self.load_checkpoint(path)
            if acc.is_main_process:
                discard_after(self.output_dir, self.step)
        if acc.is_main_process:
            with atomic_file(self.output_dir / "config.yaml") as tmp:
                cfg.save(tmp)
        logger = MetricsLogger(
            self.output_dir,
            report_to=[r for r in cfg.report_to if r != "none"],
            config=cfg.to_dict(),
            resume_step=self.step if resume_from_checkpoint else None,
            is_main_process=acc.is_main_process,
        )
        bar = tqdm(total=self.max_steps, initial=self.step, desc="hrpo train", disable=not self.progress)
        metrics: dict[str, float] = {}
        last_saved = None
        try:
            while self.step < self.max_steps:
                metrics = self.train_step(self.step)
                self.step += 1
                if self.step % cfg.logging_steps == 0 or self.step == self.max_steps:
                    logger.log(self.step, metrics)
                if cfg.log_completions_steps and self.step % cfg.log_completions_steps == 0:
                    logger.log_samples(self.step, self._last_samples)
                bar.update(1)
                bar.set_postfix(reward=f"{metrics['reward']:.3f}", hidden=f"{metrics['hidden_ratio']:.3f}")
                for cb in self.callbacks:
                    cb(self, self.step, metrics)
                if cfg.save_steps and self.step % cfg.save_steps == 0 and self.step < self.max_steps:
                    last_saved = self.save_checkpoint()
        except KeyboardInterrupt:
            bar.close()
            self.optimizer.zero_grad(set_to_none=True)
            path = self.save_checkpoint() if self.step > 0 else None
            logger.close()
            raise TrainingInterrupted(path, self.step) from None
        bar.close()
        last_saved = self.save_checkpoint()
        logger.close()
        return {
            "steps": self.step,
            "metrics": metrics,
            "checkpoint": last_saved,
            "output_dir": self.output_dir,
        }
