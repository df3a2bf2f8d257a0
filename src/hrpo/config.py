"""One configuration dataclass for an HRPO (or GRPO) training run.

Field names follow TRL's ``GRPOConfig`` where TRL has the concept. Load from YAML with
command-line overrides (``key=value``, values parsed as YAML); the file is a path or the name of a
recipe shipped in the package (``hrpo/configs/``, see :mod:`hrpo.recipes`)::

    cfg = hrpo.recipes.load_config("quickstart", ["learning_rate=1e-4", "hybrid=false"])
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from hrpo.trl_compat import UNSUPPORTED, unsupported_message
from hrpo.validation import ConfigError, Range, coerce, describe, matches

__all__ = ["FIELD_RANGES", "ConfigError", "HRPOConfig", "Range"]


@dataclass
class HRPOConfig:
    # ---- model -------------------------------------------------------------------------------
    model_name_or_path: str | None = None
    """Local directory or hub id; None: the embedded SmolLM2-135M-Instruct."""
    dtype: str = "auto"
    """Weights dtype: "auto" (bfloat16 on a GPU that supports it, else float32), "float32", "bfloat16"."""

    # ---- task --------------------------------------------------------------------------------
    task: str = "arithmetic"
    """Registered task (hrpo.tasks) supplying prompts, references and the reward, or a custom one as
    ``package.module:ClassName`` (a Task subclass or a function returning a Task)."""
    task_args: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments of the task's constructor (e.g. ``{difficulty: 2}`` for arithmetic)."""
    system_prompt: str | None = None
    """The task's system turn: "hrpo" (or None), hrpo's instruction to reason and then answer after
    the marker exactly once; "paper", the authors' prompt verbatim (spec §7); any other text is
    used as it is (it must contain answer_marker). Not used with dataset_name (the data's prompts)."""
    protocol: Literal["hrpo", "paper"] = "hrpo"
    """Grading rules of the task's reward and evaluation: "hrpo", ours (exact values, math-verify
    equivalence, a marker that must be there); "paper", the authors' extraction and matching (spec
    §7: the last number, the last standalone letter, Hendrycks' string match; the whole text when
    there is no marker), for like-for-like comparisons with the paper's numbers (README: "Two
    grading protocols")."""
    dataset_name: str | None = None
    """Data to train on instead of the task's: a local .json (a list of records), .jsonl or .parquet
    file, a directory holding one such file per split (train.jsonl, test.jsonl, …), or a hub
    dataset id (pip install 'hrpo[datasets]'). Rows need a ``prompt`` column (text or chat messages)
    plus the columns the reward functions read (the task's reward reads ``answer``)."""
    dataset_config: str | None = None
    """Configuration (subset) of a hub dataset, as ``datasets.load_dataset``'s ``name``."""
    dataset_train_split: str = "train"
    """Split of dataset_name trained on (a single file is the training split)."""
    dataset_test_split: str | None = "test"
    """Split of dataset_name evaluated before and after training (its first eval_limit rows, graded by
    the task, so not with reward_funcs); none when the dataset has no such split."""
    reward_funcs: list[str] = field(default_factory=list)
    """Reward functions by import path, ``module:function`` or ``module.function`` (the working
    directory is importable; a single path may be given without the list), called with TRL's
    arguments; each one's name labels its ``rewards/<name>/mean`` and ``/std`` metrics. Empty: the
    task's accuracy reward (and its format reward, see format_reward_weight)."""
    eval_limit: int = 100
    """Held-out problems scored (greedy) before and after training; 0 skips the evaluation."""
    eval_batch_size: int = 50
    """Prompts per batch during evaluation."""

    # ---- rollouts (spec §2) ------------------------------------------------------------------
    num_generations: int = 4
    """G: completions per prompt; advantages are normalised within each prompt's group."""
    max_prompt_length: int = 512
    """Longer prompts raise an error naming the row."""
    max_completion_length: int = 512
    """New-token limit of a rollout."""
    temperature: float = 0.5
    """τ: rollout sampling temperature; also the temperature of p in the latent h = Eᵀp/‖p‖₂."""
    top_k: int | None = 50
    """Top-k restriction of the sampler and of p in the latent; None or 0: the full vocabulary (as is
    any k at least the vocabulary's size)."""
    top_p: float = 1.0
    """Nucleus restriction after top-k (1.0: off)."""
    hybrid: bool = True
    """True: HRPO (gated latent inputs while thinking). False: plain GRPO, everything else identical."""
    answer_marker: str = "####"
    """The thinking phase ends once this string has appeared in the completion."""
    rollout_batch_size: int | None = None
    """Prompts per rollout call (each with its G completions); None: all of a process's prompts of a step.
    Rollouts are seeded per call from (seed, step, global call index), so as long as this is the
    same, the number of processes sharing the work does not change the rollouts (bit for bit
    with the same threads per process; otherwise up to near ties, see the README)."""
    generation_batch_size: int | None = None
    """TRL's: completions generated at once over all processes; sets steps_per_generation to this
    / (per_device_train_batch_size × processes) when the trainer starts (so the two are exclusive).
    Not the size of a rollout call (rollout_batch_size)."""
    rollout_backend: Literal["eager", "compiled"] = "eager"
    """Rollout decoding: "eager" (op by op) or "compiled" (torch.compile'd decoder step over a
    static KV cache with CUDA graphs on GPUs, and a fused sampling/latent/gate step; the same
    rollouts as eager up to near ties; falls back to eager if compilation fails).
    The first rollout of each batch shape pays the compilation (tens of seconds)."""
    cache_implementation: str = "dynamic"
    """Rollout KV cache: "dynamic" (grows; finished sequences are compacted out of the batch) or
    "static" (pre-allocated prompt + max_completion_length positions, written in place). The
    compiled backend always uses "static"."""
    compact_finished: bool = True
    """Drop finished sequences from the decoding batch (less compute; the same rollouts up to near
    ties): with the dynamic cache once a quarter of it has finished, with the static cache by
    halving the batch once at most half of it is running."""
    sync_every: int = 1
    """Decoding steps between host checks for finished sequences; ~8 keeps a GPU's queue full."""
    r_min: float = 0.99
    """The gate's initial decay base u = exp(−c·softplus(Λ)) is drawn from U[r_min, r_max] per
    dimension (r_min ≤ r_max). Two things are called r: the gate's r = σ(W_r ê + b_r) is the
    learned per-token exponent of the decay a = exp(−c·softplus(Λ)·r) = u^r, while r_min and r_max
    only bound u at initialisation, so a starts just below 1."""
    r_max: float = 0.999
    """Upper end of the initial decay base's range (see r_min; not the gate's r)."""
    hybrid_mix: Literal["gated", "latent_only", "closed"] = "gated"
    """How thinking positions are fed: "gated" (HRPO); "latent_only", the paper's
    interpolation-only ablation (the latent alone, no token embedding); or "closed", a control
    with the gate forced shut (a = 1): HRPO's code path feeding token embeddings only, which must
    train exactly like hybrid: false."""
    latent_source: Literal["projection", "hidden_state"] = "projection"
    """What the latent is: "projection" h = Eᵀp/‖p‖₂ (HRPO) or "hidden_state", the paper's ablation
    feeding back the decoder's last hidden state without projecting it."""

    # ---- objective (spec §3) -----------------------------------------------------------------
    beta: float = 0.005
    """β of the k3 KL penalty against the reference model (base weights, adapters off, token ids);
    0: no KL term and no reference forward pass."""
    loss_type: Literal["grpo", "dr_grpo", "dapo", "bnpo"] = "grpo"
    """Token aggregation (TRL's): "grpo" per-sequence mean then mean over sequences (paper); "dr_grpo"
    sum / (sequences × max_completion_length); "dapo" token-level mean over the optimiser step's
    batch (all processes); "bnpo" token-level mean of each micro-batch, averaged over the step's
    micro-batches: like TRL it depends on per_device_train_batch_size (1: same as "grpo")."""
    importance_sampling_level: Literal["token", "sequence"] = "token"
    """Importance ratio of the clipped objective: per token exp(ℓ − ℓ_old), or "sequence" (GSPO,
    TRL's): exp of the mean of ℓ − ℓ_old over the completion's tokens, one ratio for all its
    tokens. GSPO pairs it with loss_type "grpo"; the others weight each completion by its length."""
    mask_truncated_completions: bool = False
    """Leave completions that hit max_completion_length without an end of sequence out of the loss
    (DAPO, TRL's): their tokens get no gradient and are not counted in the "dapo"/"bnpo" token
    counts (nor in kl, entropy and clip_ratio*), but, as in TRL, they still count as sequences
    for "grpo" and "dr_grpo" (a masked completion adds 0 to the mean over sequences)."""
    scale_rewards: Literal["group", "batch", "none"] = "group"
    """Advantage scaling: (R − mean_group) / (std + 1e-4) with the group's std, the batch's, or none
    (centred only). TRL's older booleans are accepted: true is "group", false "none"."""
    epsilon: float = 0.2
    """Lower (and default upper) clip range of the ratio exp(ℓ − ℓ_old): the ratio is clipped to
    [1 − epsilon, 1 + epsilon_high]; active when a rollout batch is used for more than one update
    (num_iterations > 1, or steps_per_generation above gradient_accumulation_steps)."""
    epsilon_high: float | None = None
    """Upper clip range (DAPO's clip-higher); None: same as epsilon."""
    num_iterations: int = 1
    """Optimiser passes over each rollout batch (μ). 1 is the paper (ratio ≡ 1, no clipping)."""
    steps_per_generation: int | None = None
    """TRL's rollout reuse across optimiser steps: one rollout batch (made with the policy of the
    moment) holds this many micro-batches per process and is consumed gradient_accumulation_steps
    micro-batches per optimiser step, so it must be a multiple k of gradient_accumulation_steps
    (None: equal to it, k = 1). A step then generates k optimiser batches' rollouts at once
    (advantages within each group as usual) and takes k × num_iterations optimiser updates on
    them, in order, with the ratio clipped against the log-probs at generation. max_steps and the
    logged metrics count these steps (each one rollout batch), not the updates; the learning-rate
    schedule counts updates. The step's completions are split per process, so with k > 1 which
    completions share an update depends on the number of processes (not the rollouts or
    advantages)."""
    loss_temperature: float | None = None
    """Temperature of the log-probs in the loss; None: the rollout temperature. The reference code used 1.0."""
    reward_weights: list[float] | None = None
    """Weights of the reward functions, one finite number per function (default: all 1)."""
    strict_format: bool = True
    """Reward 0 unless the completion contains the answer marker exactly once (spec §3)."""
    format_reward_weight: float = 0.0
    """Weight of an extra format-only reward (marker exactly once, then an answer); 0: the paper's
    single binary reward. Helps very small models that rarely produce a well-formed answer."""

    # ---- parameters and optimiser (spec §4) -------------------------------------------------
    use_lora: bool = True
    """LoRA through PEFT; False: full fine-tuning (needs a copy of the model as reference if beta > 0)."""
    lora_r: int = 32
    """LoRA rank."""
    lora_alpha: int = 64
    """LoRA scale numerator: the adapters' update is scaled by lora_alpha / lora_r."""
    lora_dropout: float = 0.0
    """Dropout on the adapters' input."""
    disable_dropout: bool = False
    """Set every dropout probability of the model (its own and the adapters') to 0, as TRL's field
    does. The models hrpo's recipes train have none; a model that has dropout trains with it
    otherwise (rollouts always decode without it)."""
    lora_target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    learning_rate: float = 5e-6
    """Learning rate of LoRA (or all model) weights (0 freezes them, as for the two below)."""
    gate_learning_rate: float = 1e-4
    """Learning rate of the gate linears W_r, W_i and their biases."""
    lambda_learning_rate: float = 1e-3
    """Learning rate of Λ."""
    weight_decay: float = 0.1
    """AdamW weight decay, applied to every group (the paper decays Λ too)."""
    adam_beta1: float = 0.9
    """AdamW β₁ (decay of the gradient average)."""
    adam_beta2: float = 0.99
    """AdamW β₂ (decay of the squared-gradient average)."""
    adam_epsilon: float = 1e-8
    """AdamW ε (added to the denominator)."""
    optim: Literal[
        "adamw_torch", "adamw_torch_fused", "adamw_8bit", "paged_adamw_8bit", "paged_adamw_32bit"
    ] = "adamw_torch"
    """The AdamW implementation (TrainingArguments' names), over the same three parameter groups
    with the same betas, eps and weight decay: "adamw_torch" (torch.optim.AdamW), "adamw_torch_fused"
    (its fused kernel, TRL's default), "adamw_8bit" (bitsandbytes' AdamW8bit: 8-bit moments, a
    quarter of the state memory; tensors under 4096 values keep 32-bit moments), "paged_adamw_8bit" (PagedAdamW8bit, the paper's: 8-bit moments
    paged to CPU memory under GPU memory pressure), "paged_adamw_32bit" (PagedAdamW32bit). The
    bitsandbytes ones run on CUDA only and need ``pip install bitsandbytes`` (or 'hrpo[bnb]');
    checked before the model loads. Untested until a GPU run: their state in checkpoints (save and
    resume) and under FSDP2."""
    warmup_ratio: float = 0.1
    """Fraction of the optimiser updates (max_steps × num_iterations × steps_per_generation /
    gradient_accumulation_steps) with a linear warm-up."""
    lr_scheduler_type: Literal["cosine", "linear", "constant"] = "cosine"
    """Learning-rate schedule after the warm-up: cosine or linear decay to 0, or constant."""
    max_grad_norm: float = 0.1
    """Gradients are clipped to this total L2 norm before each optimiser update."""
    per_device_train_batch_size: int = 8
    """Completions per micro-batch (forward + backward)."""
    gradient_accumulation_steps: int = 4
    """Micro-batches per optimiser step. Completions per step = this × per_device_train_batch_size × processes."""
    max_steps: int = -1
    """Training steps, each one rollout batch (num_iterations × steps_per_generation /
    gradient_accumulation_steps optimiser updates, 1 by default; TRL counts the updates);
    -1: num_train_epochs over the task's training split."""
    num_train_epochs: float = 1.0
    """Passes (fractions allowed) over the training split when max_steps is -1; at least one step."""
    gradient_checkpointing: bool = False
    """Recompute the decoder's activations in the backward pass: less memory, more compute."""
    logit_chunk_size: int = 128
    """Positions per output-head chunk when computing log-probs (bounds float32 logits memory)."""

    # ---- run ---------------------------------------------------------------------------------
    output_dir: str = "runs/hrpo"
    """Run directory: config.yaml, metrics.jsonl, samples.jsonl, checkpoints and plots."""
    overwrite_output_dir: bool = False
    """A run started without resume into an output_dir that already holds a run (metrics, samples,
    checkpoints or evaluations) is refused; true deletes that run's files first (other files stay).
    Ignored when resuming. The same as ``hrpo train --overwrite``."""
    seed: int = 42
    """Seeds the gate's initialisation, the data order and the rollouts."""
    save_steps: int = 50
    """Checkpoint every this many steps (and at the end); 0: only at the end."""
    save_total_limit: int = 3
    """Checkpoints kept (oldest deleted first); 0: all."""
    logging_steps: int = 1
    """Write metrics (metrics.jsonl and report_to) every this many steps, and at the last step."""
    log_completions_steps: int = 10
    """Write sample completions to samples.jsonl every this many steps (0: never; see log_completions)."""
    log_completions: bool = True
    """Write sample completions to samples.jsonl (every log_completions_steps steps); TRL's name,
    but on by default since it only writes a local file."""
    report_to: list[str] = field(default_factory=list)
    """Extra metric sinks: "tensorboard", "wandb", "trackio" (metrics.jsonl is always written)."""
    run_name: str | None = None
    """Name of the run on the dashboards (wandb, trackio); None: output_dir's last component."""
    bf16: bool = False
    """Mixed precision (accelerate's autocast) in bfloat16 for the loss pass; the weights' dtype is dtype's."""
    fp16: bool = False
    """Mixed precision in float16 with loss scaling (GPU only); exclusive with bf16."""

    def __post_init__(self) -> None:
        if isinstance(self.reward_funcs, str):  # reward_funcs=my_rewards:accuracy on the command line
            self.reward_funcs = [self.reward_funcs]
        if isinstance(self.scale_rewards, bool):  # TRL's older booleans
            self.scale_rewards = "group" if self.scale_rewards else "none"
        if isinstance(self.report_to, str):  # TRL accepts one sink as a string
            self.report_to = [self.report_to]
        _check_types(self)
        for name, allowed in FIELD_RANGES.items():
            allowed.check(f"config key {name!r}", getattr(self, name))
        if self.r_min > self.r_max:
            raise ConfigError(
                f"config keys 'r_min', 'r_max': need r_min <= r_max (got {self.r_min}, {self.r_max})"
            )
        if self.reward_weights is not None:
            if not self.reward_weights:
                raise ConfigError("config key 'reward_weights': must be null or a non-empty list (got [])")
            for i, weight in enumerate(self.reward_weights):
                Range().check(f"config key 'reward_weights', item {i}", weight)
        spg, accumulation = self.steps_per_generation, self.gradient_accumulation_steps
        if spg is not None and spg % accumulation:
            raise ConfigError(
                f"config key 'steps_per_generation': must be null or a multiple of "
                f"gradient_accumulation_steps={accumulation} (got {spg}): hrpo takes whole optimiser "
                "steps from a rollout batch. To reuse one batch for several updates raise "
                "num_iterations; to generate in smaller calls set rollout_batch_size"
            )
        if spg is not None and self.generation_batch_size is not None:
            raise ConfigError(
                "config keys 'steps_per_generation', 'generation_batch_size': set one of them (as in TRL)"
            )
        if self.bf16 and self.fp16:
            raise ConfigError("config keys 'bf16', 'fp16': set at most one of them")
        if self.cache_implementation not in ("dynamic", "static"):
            raise ConfigError(
                f"config key 'cache_implementation': must be 'dynamic' or 'static' "
                f"(got {self.cache_implementation!r})"
            )
        self._check_data_fields()
        if not self.answer_marker:
            raise ConfigError("config key 'answer_marker': must not be empty")
        if self.dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise ConfigError(
                f"config key 'dtype': must be auto, float32, bfloat16 or float16 (got {self.dtype!r})"
            )
        for sink in self.report_to:
            if sink not in ("tensorboard", "wandb", "trackio", "none"):
                raise ConfigError(
                    f"report_to: unknown sink {sink!r} (known: tensorboard, wandb, trackio, none)"
                )

    def _check_data_fields(self) -> None:
        for name in ("dataset_name", "dataset_config", "dataset_train_split", "dataset_test_split"):
            value = getattr(self, name)
            if value is not None and not value.strip():
                raise ConfigError(f"config key {name!r}: must not be empty")
        for i, path in enumerate(self.reward_funcs):
            if ":" not in path and "." not in path.strip("."):
                raise ConfigError(
                    f"config key 'reward_funcs', item {i}: {path!r} is no import path "
                    "(expected module:function or module.function)"
                )
        if self.reward_funcs and self.format_reward_weight:
            raise ConfigError(
                "config keys 'reward_funcs', 'format_reward_weight': the format reward is the task's, "
                "which reward_funcs replaces; list a format reward in reward_funcs (weighted by reward_weights)"
            )

    def completions_per_step(self, num_processes: int = 1) -> int:
        return self.per_device_train_batch_size * self.gradient_accumulation_steps * num_processes

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))


_dataclass_init = HRPOConfig.__init__


@functools.wraps(_dataclass_init)
def _init(self: HRPOConfig, *args: Any, **kwargs: Any) -> None:
    # A TRL field hrpo does not support fails with its reason, not as an unexpected keyword;
    # set to what hrpo does anyway (use_vllm=False), it is dropped.
    for key in [k for k in kwargs if k in UNSUPPORTED and k not in _fields()]:
        message = unsupported_message(key, kwargs[key])
        if message is not None:
            raise ConfigError(message)
        del kwargs[key]
    _dataclass_init(self, *args, **kwargs)


HRPOConfig.__init__ = _init  # type: ignore[method-assign]


_POSITIVE_INT = Range(1)
_NON_NEGATIVE_INT = Range(0)
_POSITIVE = Range(0, low_open=True)
_NON_NEGATIVE = Range(0)
_UNIT = Range(0, 1)
_BETA = Range(0, 1, high_open=True)

FIELD_RANGES: dict[str, Range] = {
    "eval_limit": _NON_NEGATIVE_INT,
    "eval_batch_size": _POSITIVE_INT,
    "num_generations": Range(2, why="advantages compare the completions of a group"),
    "max_prompt_length": _POSITIVE_INT,
    "max_completion_length": _POSITIVE_INT,
    "temperature": _POSITIVE,
    "top_k": Range(0, special=(None,)),
    "top_p": Range(0, 1, low_open=True),
    "rollout_batch_size": Range(1, special=(None,)),
    "generation_batch_size": Range(1, special=(None,)),
    "sync_every": _POSITIVE_INT,
    "r_min": Range(0, 1, low_open=True, high_open=True),
    "r_max": Range(0, 1, low_open=True, high_open=True),
    "beta": _NON_NEGATIVE,
    "epsilon": Range(0, 1, low_open=True, high_open=True, why="the ratio's lower clip is 1 - epsilon"),
    "epsilon_high": Range(0, low_open=True, special=(None,)),
    "num_iterations": _POSITIVE_INT,
    "steps_per_generation": Range(1, special=(None,)),
    "loss_temperature": Range(0, low_open=True, special=(None,)),
    "format_reward_weight": _NON_NEGATIVE,
    "lora_r": _POSITIVE_INT,
    "lora_alpha": _POSITIVE_INT,
    "lora_dropout": Range(0, 1, high_open=True),
    "learning_rate": _NON_NEGATIVE,
    "gate_learning_rate": _NON_NEGATIVE,
    "lambda_learning_rate": _NON_NEGATIVE,
    "weight_decay": _NON_NEGATIVE,
    "adam_beta1": _BETA,
    "adam_beta2": _BETA,
    "adam_epsilon": _POSITIVE,
    "warmup_ratio": _UNIT,
    "max_grad_norm": Range(0, low_open=True, why="0 would zero every gradient"),
    "per_device_train_batch_size": _POSITIVE_INT,
    "gradient_accumulation_steps": _POSITIVE_INT,
    "max_steps": Range(1, special=(-1,)),
    "num_train_epochs": _POSITIVE,
    "logit_chunk_size": _POSITIVE_INT,
    "seed": Range(0, 2**63 - 1),
    "save_steps": _NON_NEGATIVE_INT,
    "save_total_limit": _NON_NEGATIVE_INT,
    "logging_steps": _POSITIVE_INT,
    "log_completions_steps": _NON_NEGATIVE_INT,
}
"""Allowed values of every numeric config key (``reward_weights``: any finite numbers), checked on
construction and shown by ``hrpo train --help``."""


def _fields() -> dict[str, Any]:
    hints = typing.get_type_hints(HRPOConfig)
    return {f.name: hints[f.name] for f in dataclasses.fields(HRPOConfig)}


def _check_types(cfg: HRPOConfig) -> None:
    for name, tp in _fields().items():
        value = coerce(getattr(cfg, name), tp)
        if not matches(value, tp):
            raise ConfigError(f"config key {name!r}: expected {describe(tp)}, got {value!r}")
        setattr(cfg, name, value)
