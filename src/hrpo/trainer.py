"""The HRPO training loop: prompts → hybrid rollouts → rewards → advantages → loss → update.

One optimiser step (spec §3, settings §4) is three calls, read top to bottom in
:meth:`HRPOTrainer.train_step`:

1. :meth:`~HRPOTrainer.collect`: each process takes its share of the step's prompts (whole
   groups) and samples G hybrid rollouts per prompt (:mod:`hrpo.rollout`); rewards are computed
   (:mod:`hrpo.reward`), gathered from all processes and turned into group-relative advantages
   (:mod:`hrpo.advantage`), so every process sees the numbers a single process would; reference
   log-probs (base model, adapters off, token ids) and, when rollouts are reused, old log-probs
   are computed once. The result is a :class:`StepBatch`.
2. :meth:`~HRPOTrainer.update`: ``num_iterations`` passes over the batch in micro-batches; the
   policy log-probs are recomputed teacher-forced with the current gate over the stored latents,
   the loss (:mod:`hrpo.loss`) is back-propagated, gradients are clipped and one AdamW step with
   three parameter groups (LoRA/model, gate linears, Λ) is taken per pass (per optimiser batch
   of the pass with ``steps_per_generation``).
3. :meth:`~HRPOTrainer.metrics`: what is logged (:mod:`hrpo.metrics`), from the batch and the
   update's sums.

The parts are built from the config by :mod:`hrpo.build`; checkpoints are :mod:`hrpo.checkpoint`'s
files; the run directory (its files, who may write it, what a resume discards) is
:mod:`hrpo.rundir`'s. :meth:`HRPOTrainer.train` writes the same run directory as ``hrpo train``.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list
from tqdm.auto import tqdm

from hrpo import build, checkpoint
from hrpo.advantage import group_advantages
from hrpo.batch import Rollout, StepBatch, UpdateStats, concat_rollouts, micro_batches, optimizer_batches
from hrpo.config import HRPOConfig
from hrpo.distributed import gathered_parameters
from hrpo.evaluation import evaluate
from hrpo.loss import LossNormalizer, policy_loss, truncated_rows
from hrpo.metrics import MetricsLogger, step_metrics
from hrpo.reward import (
    DROPPED_COLUMNS,
    RewardFunc,
    TrainingState,
    compute_rewards,
    reward_completions,
    unpadded_ids,
)
from hrpo.rollout import RolloutEngine
from hrpo.rundir import (
    API_HINTS,
    CHECKPOINTS,
    CONFIG_FILE,
    EVAL_AFTER,
    EVAL_BEFORE,
    discard_after,
    hold_run_dir,
    read_eval,
    write_eval,
)
from hrpo.sampling import stable_seed
from hrpo.storage import atomic_file


class TrainingInterrupted(Exception):
    """Raised by :meth:`HRPOTrainer.train` after Ctrl-C, once a checkpoint has been saved."""

    def __init__(self, checkpoint: Path | None, step: int) -> None:
        super().__init__(f"interrupted at step {step}; checkpoint: {checkpoint}")
        self.checkpoint, self.step = checkpoint, step


class HRPOTrainer:
    """Trains a :class:`HybridModel` with HRPO (or GRPO with ``hybrid=False``); TRL's
    ``GRPOTrainer`` arguments, in its order.

    Args:
        model: a hub id or local path, a ``PreTrainedModel`` (LoRA added when ``use_lora``), a
            ``PeftModel`` (its adapters trained as they are) or a :class:`HybridModel`; None:
            ``args.model_name_or_path``.
        reward_funcs: one TRL-signature reward function, a list, or import paths
            (``module:function``); default: ``args.reward_funcs``, else the task's accuracy reward.
        args: the run's settings; default ``HRPOConfig(output_dir="<model name>-HRPO")``.
        train_dataset / eval_dataset: lists of dicts or map-style ``datasets.Dataset`` with a
            ``prompt`` column (text or chat messages) and whatever columns the reward functions
            read; default: ``args.dataset_name``'s splits, else the task's.
        processing_class: the tokenizer; default: loaded from the model's name or path.
        callbacks: functions ``f(trainer, step, metrics)`` called after each step.
        peft_config: a ``peft.LoraConfig`` used instead of the ``lora_*`` fields.
        task: the task grading the held-out evaluation (default: ``args.task``).
        progress: show a progress bar.
        plots: write PNG curves into the run directory at the end of :meth:`train`.
    """

    def __init__(
        self,
        model: str | torch.nn.Module | None = None,
        reward_funcs: RewardFunc | str | Sequence[RewardFunc | str] | None = None,
        args: HRPOConfig | None = None,
        train_dataset: build.Rows | None = None,
        eval_dataset: build.Rows | None = None,
        processing_class: Any = None,
        callbacks: Sequence[Callable[[HRPOTrainer, int, dict[str, float]], None]] | None = None,
        peft_config: Any = None,
        *,
        task: Any = None,
        progress: bool = True,
        plots: bool = True,
    ) -> None:
        cfg = build.trainer_config(model, args, peft_config)
        mixed = "bf16" if cfg.bf16 else "fp16" if cfg.fp16 else None  # None: accelerate's own setting
        self.accelerator = acc = Accelerator(cpu=not torch.cuda.is_available(), mixed_precision=mixed)
        self.config = cfg = build.resolve_generation_batch_size(cfg, acc.num_processes)
        build.check_optimizer(cfg, acc.device)
        self.progress = progress and acc.is_main_process
        self.callbacks = build.check_callbacks(callbacks)
        self.plots = plots
        self.output_dir = Path(cfg.output_dir)
        torch.manual_seed(cfg.seed)

        data = build.build_data(
            cfg, task=task, train_dataset=train_dataset, eval_dataset=eval_dataset, reward_funcs=reward_funcs
        )
        self.task, self.train_dataset, self.eval_dataset = data.task, data.train_dataset, data.eval_dataset
        self.reward_funcs, self.reward_weights = data.reward_funcs, data.reward_weights

        self.model, self.tokenizer = build.build_model(cfg, acc.device, model, processing_class, peft_config)
        self.ref_model = build.build_reference(cfg, self.model)
        self.optimizer = build.build_optimizer(cfg, self.model)
        self.prompts_per_process, self.max_steps = build.step_budget(
            cfg, len(self.train_dataset), acc.num_processes
        )
        self.prompts_per_step = self.prompts_per_process * acc.num_processes
        self.scheduler = build.build_scheduler(cfg, self.optimizer, self.max_steps)
        build.check_engine(acc)
        # The module accelerate prepared (DDP/FSDP wrapper around self.model): forward passes
        # that train go through it, so gradients are synchronised and shards gathered.
        self.prepared_model, self.optimizer = acc.prepare(self.model, self.optimizer)
        self.engine = RolloutEngine(self.model, self.tokenizer, build.rollout_config(cfg, self.task))
        # Saved beside every checkpoint: eval/generate/inspect --checkpoint decode with them.
        self.model.decoding_settings = {
            **checkpoint.decoding_settings(cfg),
            "system_prompt": _system_turn(self.train_dataset[0]["prompt"])
            if len(self.train_dataset)
            else None,
        }
        self.loss_temperature = cfg.temperature if cfg.loss_temperature is None else cfg.loss_temperature
        self.step = 0
        self._order_epoch, self._order = -1, np.arange(0)

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
                self._order = np.random.default_rng(stable_seed(self.config.seed, epoch)).permutation(n)
                self._order_epoch = epoch
            rows.append(self.train_dataset[int(self._order[pos])])
        return rows

    def generate_rollouts(self, step: int, rows: list[dict[str, Any]]) -> Rollout:
        """This process's rollouts for ``step``, in calls of ``rollout_batch_size`` prompts.

        Each call is seeded from (seed, step, global call index): the same prompts get the same
        samples whether one process or several share the step.
        """
        size = self.config.rollout_batch_size or self.prompts_per_process
        calls_per_process = math.ceil(self.prompts_per_process / size)
        first = self.accelerator.process_index * calls_per_process
        parts = []
        for k, s in enumerate(range(0, len(rows), size)):
            seed = stable_seed(self.config.seed, step, first + k)
            parts.append(self.engine.generate([r["prompt"] for r in rows[s : s + size]], seed=seed))
        return concat_rollouts(parts, self.engine.pad_id)

    # -- one step ------------------------------------------------------------------------------
    def train_step(self, step: int) -> tuple[StepBatch, dict[str, float]]:
        """Run optimiser step ``step`` (0-based); return its batch and metrics."""
        batch = self.collect(step)
        stats = self.update(batch)
        return batch, self.metrics(batch, stats)

    def _logprobs(self, module: torch.nn.Module, ro: Rollout, rows: slice, *, hybrid: bool) -> torch.Tensor:
        """Teacher-forced log-probs of ``rows`` of ``ro`` through ``module`` (a HybridModel or
        its prepared wrapper), at the loss temperature."""
        return module(
            **ro.model_inputs(rows, hybrid=hybrid),
            temperature=self.loss_temperature,
            chunk_size=self.config.logit_chunk_size,
        )[0]

    def _micro_batches(self, n: int, start: int = 0) -> list[slice]:
        return micro_batches(start, n, self.config.per_device_train_batch_size)

    def _optimizer_batches(self, n: int) -> list[slice]:
        return optimizer_batches(n, build.optimizer_batches_per_rollout(self.config))

    def _loss_mask(self, ro: Rollout) -> torch.Tensor:
        """The tokens the loss sees: the completion mask, less truncated completions when
        ``mask_truncated_completions`` (TRL's rule: no EOS within max_completion_length)."""
        if not self.config.mask_truncated_completions:
            return ro.completion_mask
        kept = ~truncated_rows(ro.completion_ids, ro.completion_mask, self.engine.eos_ids)
        return ro.completion_mask * kept[:, None].to(ro.completion_mask.dtype)

    def _loss_normalizer(self, ro: Rollout, rows: slice) -> LossNormalizer:
        """Denominators of the optimiser update over ``rows`` of every process's rollout batch."""
        acc = self.accelerator
        n = len(range(*rows.indices(len(ro))))
        tokens = self._loss_mask(ro)[rows].sum().reshape(1).to(acc.device)
        return LossNormalizer(
            num_sequences=n * acc.num_processes,
            num_tokens=int(acc.gather(tokens).sum().item()),
            max_completion_length=self.config.max_completion_length,
            num_micro_batches=len(self._micro_batches(n)) * acc.num_processes,
        )

    @torch.no_grad()
    def _reference_logprobs(self, ro: Rollout) -> torch.Tensor | None:
        if self.config.beta == 0:
            return None
        if self.ref_model is not None:
            return torch.cat(
                [self._logprobs(self.ref_model, ro, r, hybrid=False) for r in self._micro_batches(len(ro))]
            )
        # With LoRA: through the prepared model with adapters off, so FSDP gathers the shards it needs.
        with self.model.language_model.disable_adapter():
            return torch.cat(
                [
                    self._logprobs(self.prepared_model, ro, r, hybrid=False)
                    for r in self._micro_batches(len(ro))
                ]
            )

    @torch.no_grad()
    def _old_logprobs(self, ro: Rollout) -> torch.Tensor | None:
        if self.config.num_iterations * build.optimizer_batches_per_rollout(self.config) == 1:
            return None  # the policy has not moved: the ratio is 1 and the old log-probs are lp.detach()
        return torch.cat(
            [
                self._logprobs(self.prepared_model, ro, r, hybrid=self.config.hybrid)
                for r in self._micro_batches(len(ro))
            ]
        )

    def collect(self, step: int) -> StepBatch:
        """Prompts → rollouts → rewards → gathered advantages → reference/old log-probs."""
        cfg, acc = self.config, self.accelerator
        started = time.perf_counter()
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        prompt_rows = self.step_rows(step)
        ro = self.generate_rollouts(step, prompt_rows)
        rollout_seconds = time.perf_counter() - started

        rows = [prompt_rows[i] for i in ro.group_ids.tolist()]
        prompts = [r["prompt"] for r in rows]
        columns = {k: [r.get(k) for r in rows] for k in prompt_rows[0] if k not in DROPPED_COLUMNS}
        rewards, parts = compute_rewards(
            self.reward_funcs,
            prompts,
            reward_completions(prompts, ro.completion_texts),
            columns,
            self.reward_weights,
            completion_ids=unpadded_ids(ro.completion_ids, ro.completion_mask),
            trainer_state=TrainingState.at(
                step, self.max_steps, self.prompts_per_step, len(self.train_dataset), self.accelerator
            ),
        )
        all_rewards = acc.gather(rewards.to(acc.device))
        all_advantages = group_advantages(all_rewards, cfg.num_generations, cfg.scale_rewards)
        start = acc.process_index * len(ro)
        return StepBatch(
            step=step,
            rows=rows,
            rollout=ro,
            rewards=rewards,
            reward_parts=parts,
            all_rewards=all_rewards,
            all_advantages=all_advantages,
            advantages=all_advantages[start : start + len(ro)],
            ref_logprobs=self._reference_logprobs(ro),
            old_logprobs=self._old_logprobs(ro),
            normalizer=self._loss_normalizer(ro, slice(None)),
            started=started,
            rollout_seconds=rollout_seconds,
        )

    def update(self, batch: StepBatch) -> UpdateStats:
        """``num_iterations`` passes over ``batch``; each pass takes one optimiser update per
        optimiser batch (one, or ``k`` with ``steps_per_generation``), in micro-batches."""
        cfg, acc = self.config, self.accelerator
        stats = UpdateStats()
        splits = self._optimizer_batches(len(batch.rollout))
        normalizers = (
            [batch.normalizer]
            if len(splits) == 1
            else [self._loss_normalizer(batch.rollout, rows) for rows in splits]
        )
        mask = self._loss_mask(batch.rollout)
        for _ in range(cfg.num_iterations):
            for rows, normalizer in zip(splits, normalizers, strict=True):
                self._accumulate_gradients(batch, rows, mask, normalizer, stats)
                trainable = [p for group in self.optimizer.param_groups for p in group["params"]]
                stats.grad_norm = float(acc.clip_grad_norm_(trainable, cfg.max_grad_norm))
                self.optimizer.step()
                self.scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
                stats.updates += 1
        return stats

    def _accumulate_gradients(
        self,
        batch: StepBatch,
        part: slice,
        mask: torch.Tensor,
        normalizer: LossNormalizer,
        stats: UpdateStats,
    ) -> None:
        """Back-propagate the loss of rows ``part`` of ``batch`` in micro-batches; add to ``stats``."""
        cfg, acc, ro = self.config, self.accelerator, batch.rollout
        chunks = self._micro_batches(part.stop - part.start, part.start)
        for j, rows in enumerate(chunks):
            # Gradients are synchronised across processes on the last micro-batch only.
            last = j == len(chunks) - 1
            sync = (
                contextlib.nullcontext()
                if last or acc.num_processes == 1
                else acc.no_sync(self.prepared_model)
            )
            with sync, acc.autocast():
                # The entropy comes from the same chunks of logits: a metric without another forward.
                lp, _, entropy = self.prepared_model(
                    **ro.model_inputs(rows, hybrid=cfg.hybrid),
                    temperature=self.loss_temperature,
                    chunk_size=cfg.logit_chunk_size,
                    return_entropy=True,
                )
                loss, parts = policy_loss(
                    lp,
                    batch.advantages[rows],
                    mask[rows],
                    normalizer,
                    old_logprobs=None if batch.old_logprobs is None else batch.old_logprobs[rows],
                    ref_logprobs=None if batch.ref_logprobs is None else batch.ref_logprobs[rows],
                    beta=cfg.beta,
                    epsilon=cfg.epsilon,
                    epsilon_high=cfg.epsilon_high,
                    loss_type=cfg.loss_type,
                    importance_sampling_level=cfg.importance_sampling_level,
                )
                if not torch.isfinite(loss):
                    raise FloatingPointError(
                        f"step {batch.step}: the loss is {loss.item()} (micro-batch at completions "
                        f"{rows.start}..{rows.stop - 1}); lower the learning rates or check the rewards"
                    )
                # DDP averages gradients over processes; the normaliser already divides by
                # the global batch, so undo the average.
                acc.backward(loss * acc.num_processes)
            stats.add(loss, (entropy * mask[rows]).sum(), parts)

    def metrics(self, batch: StepBatch, stats: UpdateStats) -> dict[str, float]:
        """The step's logged metrics, averaged over every process's completions or tokens."""
        return step_metrics(
            batch,
            stats,
            config=self.config,
            accelerator=self.accelerator,
            task=self.task,
            rollout_config=self.engine.config,
            loss_mask=self._loss_mask(batch.rollout),
            eos_ids=self.engine.eos_ids,
            param_groups=self.optimizer.param_groups,
        )

    # -- checkpoints ---------------------------------------------------------------------------
    @property
    def checkpoint_dir(self) -> Path:
        return self.output_dir / CHECKPOINTS

    def save_checkpoint(self) -> Path:
        """Write ``checkpoints/step-NNNNNN`` atomically (main process) and prune old ones."""
        return checkpoint.save_trainer_checkpoint(self)

    def load_checkpoint(self, path: str | Path) -> None:
        """Restore weights, optimiser, scheduler, random generators and step from ``path``."""
        checkpoint.load_trainer_checkpoint(self, path)

    # -- the run -------------------------------------------------------------------------------
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
                build.rollout_config(self.config, self.task),
                batch_size=self.config.eval_batch_size,
                progress=self.progress,
                desc=desc,
            )

    def train(self, resume_from_checkpoint: str | Path | bool | None = None) -> dict[str, Any]:
        """Evaluate, train up to ``max_steps``, evaluate again; return a summary (steps, final
        metrics, evaluations before and after, last checkpoint, plots, output directory).

        ``resume_from_checkpoint``: True for the latest checkpoint in ``output_dir`` (none there:
        start from step 0), or a checkpoint path. Resuming from step N discards what the directory
        holds after N (metric and sample lines, later checkpoints, ``eval_after.json``) and reads
        back the evaluation before training. Without it, an ``output_dir`` that holds a run is
        refused unless ``config.overwrite_output_dir``. The main process holds ``output_dir``'s
        lock meanwhile (:mod:`hrpo.rundir`); another process using it raises
        :class:`hrpo.rundir.RunDirectoryInUse`. On Ctrl-C, a checkpoint of the last completed
        step is saved and :class:`TrainingInterrupted` is raised.
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
            before = self._evaluate_before(resumed=bool(resume_from_checkpoint))
            summary = self._train(resume_from_checkpoint)
            after = self.evaluate("eval after")
            plots: list[Path] = []
            if self.accelerator.is_main_process:
                if after is not None:
                    write_eval(self.output_dir, EVAL_AFTER, after)
                if self.plots:
                    from hrpo.plotting import plot_run  # matplotlib: only when plots are drawn

                    plots = plot_run(self.output_dir)
            return {**summary, "eval_before": before, "eval_after": after, "plots": plots}

    def _evaluate_before(self, resumed: bool) -> dict[str, Any] | None:
        """The evaluation before training, written at once so a resumed run still reports it.

        A resumed run reads it back; if the first run was killed before writing it, it is
        computed now, on the model as constructed (the checkpoint is loaded afterwards)."""
        # Decided by the main process for all: every process joins the evaluation or none does.
        done = broadcast_object_list([resumed and (self.output_dir / EVAL_BEFORE).is_file()])[0]
        if done:
            return read_eval(self.output_dir, EVAL_BEFORE) if self.accelerator.is_main_process else None
        result = self.evaluate("eval before")
        if result is not None:
            write_eval(self.output_dir, EVAL_BEFORE, result)
        return result

    def _train(self, resume_from_checkpoint: str | Path | bool | None) -> dict[str, Any]:
        cfg, acc = self.config, self.accelerator
        if resume_from_checkpoint:
            path = (
                checkpoint.latest_checkpoint(self.checkpoint_dir)
                if resume_from_checkpoint is True
                else Path(resume_from_checkpoint)
            )
            if path is not None:
                self.load_checkpoint(path)
            if acc.is_main_process:
                discard_after(self.output_dir, self.step)
        if acc.is_main_process:
            with atomic_file(self.output_dir / CONFIG_FILE) as tmp:
                cfg.save(tmp)
        logger = MetricsLogger(
            self.output_dir,
            report_to=[r for r in cfg.report_to if r != "none"],
            config=cfg.to_dict(),
            run_name=cfg.run_name,
            resume_step=self.step if resume_from_checkpoint else None,
            is_main_process=acc.is_main_process,
        )
        bar = tqdm(total=self.max_steps, initial=self.step, desc="hrpo train", disable=not self.progress)
        metrics: dict[str, float] = {}
        try:
            while self.step < self.max_steps:
                batch, metrics = self.train_step(self.step)
                self.step += 1
                if self.step % cfg.logging_steps == 0 or self.step == self.max_steps:
                    logger.log(self.step, metrics)
                every = cfg.log_completions_steps if cfg.log_completions else 0
                if every and self.step % every == 0:
                    logger.log_samples(self.step, batch.samples(cfg.num_generations))
                bar.update(1)
                bar.set_postfix(reward=f"{metrics['reward']:.3f}", hidden=f"{metrics['hidden_ratio']:.3f}")
                for cb in self.callbacks:
                    cb(self, self.step, metrics)
                if cfg.save_steps and self.step % cfg.save_steps == 0 and self.step < self.max_steps:
                    self.save_checkpoint()
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


def _system_turn(prompt: Any) -> str | None:
    """The system message of a conversational prompt (the text the model was trained under), or None."""
    if (
        isinstance(prompt, list)
        and prompt
        and isinstance(prompt[0], dict)
        and prompt[0].get("role") == "system"
    ):
        content = prompt[0].get("content")
        return content if isinstance(content, str) else None
    return None
