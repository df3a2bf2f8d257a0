"""Construction: an :class:`~hrpo.config.HRPOConfig` turned into the parts of a training run.

Every setting of the config is translated here, once, and nowhere else in the trainer:

* the data: the task, its training and held-out rows (or a dataset's), the reward functions (or
  their import paths) and their weights;
* the policy: the language model (loaded, or the one passed in), gradient checkpointing, LoRA
  (PEFT), and the gate, wrapped together as a :class:`~hrpo.model.HybridModel`;
* the reference for the KL term: a frozen copy for full fine-tuning, or none (with LoRA the
  reference is the same model with its adapters off; with β = 0 there is no KL term);
* the optimiser (AdamW, ``optim``'s implementation, over three parameter groups: LoRA/model
  weights, gate linears, Λ, each with its own learning rate) and the learning-rate schedule;
* the :class:`~hrpo.rollout.RolloutConfig` the rollouts and the evaluation decode with.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from accelerate import Accelerator, DistributedType
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import PreTrainedModel, get_scheduler

from hrpo.config import ConfigError, HRPOConfig
from hrpo.gate import HybridGate
from hrpo.model import HybridModel
from hrpo.recipes import recipe_path
from hrpo.reward import RewardFunc, resolve_reward_funcs, reward_name
from hrpo.rollout import RolloutConfig

Rows = Sequence[Mapping[str, Any]]
"""A dataset: a list of dicts, or anything read by index as dicts (a map-style ``datasets.Dataset``)."""


@dataclass
class RunData:
    """What a run trains and evaluates on, and how completions are rewarded."""

    task: Any | None
    """The task (None when the datasets and reward functions were all given)."""
    train_dataset: Rows
    eval_dataset: Rows
    reward_funcs: list[RewardFunc]
    reward_weights: list[float] | None


def check_data_sources(cfg: HRPOConfig) -> None:
    """Fail on a ``reward_funcs`` path that does not import or is not callable, and on a
    ``dataset_name`` that cannot load, before anything slow (``hrpo train`` calls it first)."""
    resolve_reward_funcs(cfg.reward_funcs)
    if cfg.dataset_name:
        from hrpo.tasks.data import check_dataset_name  # the tasks package imports every task

        check_dataset_name(cfg.dataset_name)


def build_data(
    cfg: HRPOConfig,
    *,
    task: Any | None = None,
    train_dataset: Rows | None = None,
    eval_dataset: Rows | None = None,
    reward_funcs: Sequence[RewardFunc | str] | RewardFunc | str | None = None,
) -> RunData:
    """The task (``cfg.task`` unless given), datasets and reward functions of a run.

    Datasets: those given, else ``cfg.dataset_name``'s train and test splits, else the task's
    ``train`` split and the first ``eval_limit`` rows of its ``test`` split. Reward functions
    (callables or import paths): those given, else ``cfg.reward_funcs``, else the task's accuracy
    reward, plus its format reward when ``format_reward_weight`` is set. Reward paths are imported
    first, so a wrong one fails before any data or model loads.
    """
    if reward_funcs is None and cfg.reward_funcs:
        reward_funcs = cfg.reward_funcs
    funcs = None if reward_funcs is None else resolve_reward_funcs(reward_funcs)
    if train_dataset is None and cfg.dataset_name:
        from hrpo.tasks.data import load_dataset_splits  # the tasks package imports every task

        train_dataset, test = load_dataset_splits(
            cfg.dataset_name, cfg.dataset_config, cfg.dataset_train_split, cfg.dataset_test_split
        )
        if eval_dataset is None:  # held-out problems: the first eval_limit rows of the test split
            eval_dataset = [] if test is None or cfg.eval_limit == 0 else _head(test, cfg.eval_limit)
    if task is None and (train_dataset is None or funcs is None):
        from hrpo.tasks import get_task  # the task registry imports every task's dependencies

        task = get_task(cfg.task, **task_kwargs(cfg))
    if train_dataset is None:
        train_dataset = task.load("train")
    if eval_dataset is None and task is not None and cfg.eval_limit > 0:
        eval_dataset = task.load("test", limit=cfg.eval_limit)
    weights = cfg.reward_weights
    if funcs is None:
        funcs = [task.reward_function(cfg.strict_format)]
        if cfg.format_reward_weight:
            funcs.append(task.format_reward_function())
            weights = weights or [1.0, cfg.format_reward_weight]
    if weights is not None and len(weights) != len(funcs):
        raise ValueError(
            f"config key 'reward_weights': {len(weights)} weights for "
            f"{len(funcs)} reward functions {[reward_name(f) for f in funcs]}"
        )
    _check_rows(train_dataset, "training")
    return RunData(task, train_dataset, [] if eval_dataset is None else eval_dataset, funcs, weights)


def task_kwargs(cfg: HRPOConfig) -> dict[str, Any]:
    """The task constructor's keywords: the marker, system prompt and protocol config keys, then
    ``task_args`` (which may not set those three again)."""
    twice = sorted({"marker", "system_prompt", "protocol"} & set(cfg.task_args))
    if twice:
        raise ConfigError(
            f"task_args sets {', '.join(twice)}: use the config keys "
            "(answer_marker, system_prompt, protocol) instead"
        )
    kwargs: dict[str, Any] = {"marker": cfg.answer_marker, "protocol": cfg.protocol}
    if cfg.system_prompt is not None:
        kwargs["system_prompt"] = cfg.system_prompt
    return {**kwargs, **cfg.task_args}


def _head(rows: Rows, n: int) -> Rows:
    """The first ``n`` rows (a ``datasets.Dataset`` stays one)."""
    select = getattr(rows, "select", None)
    return select(range(min(n, len(rows)))) if callable(select) else rows[:n]


def _check_rows(rows: Any, what: str) -> None:
    """``rows`` is read by index as dicts, has rows, and has a ``prompt`` column."""
    if isinstance(rows, Mapping):  # a DatasetDict, or columns
        raise TypeError(
            f"the {what} dataset is a mapping (keys {sorted(rows)[:5]}); pass one split's rows, "
            "e.g. dataset['train']"
        )
    if not (hasattr(rows, "__len__") and hasattr(rows, "__getitem__")):
        raise TypeError(
            f"the {what} dataset must be a list of dicts or a map-style datasets.Dataset, got "
            f"{type(rows).__name__} (a streaming IterableDataset cannot be read by index)"
        )
    if not len(rows):
        raise ValueError(f"the {what} dataset is empty")
    columns = getattr(rows, "column_names", None)
    if isinstance(columns, list):  # a datasets.Dataset: one schema for every row
        if "prompt" not in columns:
            raise ValueError(f"the {what} dataset has no 'prompt' column (columns: {sorted(columns)})")
        return
    for i in range(min(len(rows), 1000)):
        row = rows[i]
        if not isinstance(row, Mapping):
            raise TypeError(f"{what} row {i} is a {type(row).__name__}, not a dict")
        if "prompt" not in row:
            raise ValueError(f"{what} row {i} has no 'prompt' column (columns: {sorted(row)})")


def rollout_config(cfg: HRPOConfig, task: Any | None = None) -> RolloutConfig:
    """The decoding settings of the run's rollouts (and of its held-out evaluation, greedy)."""
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
        ignore_marker_headings=bool(getattr(task, "ignore_marker_headings", False)),
        rollout_backend=cfg.rollout_backend,
        cache_implementation=cfg.cache_implementation,
        compact_finished=cfg.compact_finished,
        sync_every=cfg.sync_every,
    )


def check_engine(accelerator: Accelerator) -> None:
    """Refuse distributed engines the trainer does not drive correctly, before any work."""
    kind = accelerator.distributed_type
    if kind == DistributedType.DEEPSPEED:
        raise ValueError(
            "DeepSpeed is not supported: its engine steps the optimiser inside backward(), and hrpo "
            "runs several backward passes per step. Use FSDP2 for sharding "
            f"(accelerate launch --config_file {recipe_path('accelerate/fsdp')} ...)"
        )
    if kind == DistributedType.FSDP and getattr(accelerator.state.fsdp_plugin, "fsdp_version", 1) != 2:
        raise ValueError("hrpo needs FSDP2: set fsdp_version: 2 in the accelerate config")


def resolve_dtype(name: str, device: torch.device) -> str:
    """``dtype: auto`` → bfloat16 on a GPU that supports it, else float32."""
    if name != "auto":
        return name
    return "bfloat16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "float32"


def lora_targets(model: torch.nn.Module, wanted: Sequence[str]) -> list[str]:
    """The names of ``wanted`` that exist among the model's module names."""
    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    found = [t for t in wanted if t in present]
    if not found:
        raise ValueError(f"none of lora_target_modules={list(wanted)} exist in the model")
    return found


def model_name(model: str | torch.nn.Module | None) -> str | None:
    """The hub id or path a model argument names (a loaded model's ``_name_or_path``)."""
    if model is None or isinstance(model, str):
        return model
    if isinstance(model, HybridModel):
        model = model.language_model
    if isinstance(model, PeftModel):
        model = model.get_base_model()
    return getattr(getattr(model, "config", None), "_name_or_path", None) or None


def trainer_config(
    model: str | torch.nn.Module | None, args: HRPOConfig | None, peft_config: LoraConfig | None
) -> HRPOConfig:
    """The run's config: ``args`` (default, as TRL: ``HRPOConfig(output_dir="<model>-HRPO")``),
    with ``model_name_or_path`` from a model string, and ``use_lora`` on when the adapters come
    from ``peft_config`` or a ``PeftModel`` (so the KL reference is the model with adapters off)."""
    if args is None:
        name = model_name(model)
        args = (
            HRPOConfig() if name is None else HRPOConfig(output_dir=f"{name.rstrip('/').split('/')[-1]}-HRPO")
        )
    changes: dict[str, Any] = {}
    if isinstance(model, str) and model != args.model_name_or_path:
        changes["model_name_or_path"] = model
    if (peft_config is not None or isinstance(model, PeftModel)) and not args.use_lora:
        changes["use_lora"] = True
    return dataclasses.replace(args, **changes) if changes else args


def resolve_generation_batch_size(cfg: HRPOConfig, num_processes: int) -> HRPOConfig:
    """TRL's ``generation_batch_size`` (completions per generation over all processes) turned
    into ``steps_per_generation`` micro-batches per process; the config unchanged without it."""
    if cfg.generation_batch_size is None:
        return cfg
    micro = cfg.per_device_train_batch_size * num_processes
    spg, rest = divmod(cfg.generation_batch_size, micro)
    if rest or spg % cfg.gradient_accumulation_steps:
        raise ConfigError(
            f"config key 'generation_batch_size': {cfg.generation_batch_size} must be a multiple of "
            f"per_device_train_batch_size × processes × gradient_accumulation_steps = "
            f"{micro * cfg.gradient_accumulation_steps} (hrpo takes whole optimiser steps from a generation)"
        )
    return dataclasses.replace(cfg, generation_batch_size=None, steps_per_generation=spg)


def check_callbacks(callbacks: Sequence[Any] | None) -> list[Any]:
    """The callbacks as a list; each must be a function ``f(trainer, step, metrics)``."""
    for cb in callbacks or ():
        if not callable(cb):
            raise TypeError(
                f"callbacks: {type(cb).__name__} is not callable; hrpo's callbacks are functions "
                "f(trainer, step, metrics) (transformers TrainerCallback objects are not supported)"
            )
    return list(callbacks or ())


def build_model(
    cfg: HRPOConfig,
    device: torch.device,
    model: str | torch.nn.Module | None = None,
    tokenizer: Any = None,
    peft_config: LoraConfig | None = None,
) -> tuple[HybridModel, Any]:
    """The policy and its tokenizer.

    ``model``: a :class:`HybridModel` (used as it is), a ``PeftModel`` (its adapters are the
    trained ones), a plain causal LM (LoRA added when ``use_lora``), or a hub id / path (None:
    ``cfg.model_name_or_path``), loaded. LoRA is ``peft_config`` when given, else the ``lora_*``
    fields. The tokenizer, when not given, is loaded from the model's name or path.
    """
    if model is None or isinstance(model, str):
        from hrpo.loading import load_model  # loading the embedded default imports its converter

        model, loaded = load_model(model or cfg.model_name_or_path, dtype=resolve_dtype(cfg.dtype, device))
        tokenizer = loaded if tokenizer is None else tokenizer
    if tokenizer is None:
        from hrpo.loading import load_tokenizer

        name = model_name(model)
        if name is None:
            raise ValueError("pass processing_class (the tokenizer) with a model that has no name or path")
        tokenizer = load_tokenizer(name)
    if isinstance(model, HybridModel):
        if cfg.disable_dropout:
            _disable_dropout(model)
        return model.to(device), tokenizer
    if cfg.gradient_checkpointing:
        _enable_checkpointing(model)
    if not isinstance(model, PeftModel) and (cfg.use_lora or peft_config is not None):
        lora = peft_config or LoraConfig(
            r=cfg.lora_r,
            lora_alpha=cfg.lora_alpha,
            lora_dropout=cfg.lora_dropout,
            target_modules=lora_targets(model, cfg.lora_target_modules),
            task_type="CAUSAL_LM",
        )
        model = get_peft_model(model, lora)
    if cfg.disable_dropout:
        _disable_dropout(model)
    gate = HybridGate(
        model.get_input_embeddings().weight.shape[1],
        r_min=cfg.r_min,
        r_max=cfg.r_max,
        generator=torch.Generator().manual_seed(cfg.seed),
        hybrid_mix=cfg.hybrid_mix,
        latent_source=cfg.latent_source,
    )
    hybrid = HybridModel(model, gate).to(device)
    hybrid.train()
    return hybrid, tokenizer


def _disable_dropout(model: torch.nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0


def _enable_checkpointing(model: PreTrainedModel) -> None:
    # transformers 5 renamed gradient checkpointing to activation checkpointing.
    enable = getattr(model, "activation_checkpointing_enable", None)
    if enable is not None:
        enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False


def build_reference(cfg: HRPOConfig, policy: HybridModel) -> HybridModel | None:
    """A frozen copy of the language model for full fine-tuning with β > 0, wrapped once for the
    token-only forward (its gate is never used); None otherwise (with LoRA the reference is the
    policy with its adapters disabled)."""
    if cfg.beta == 0 or cfg.use_lora:
        return None
    ref = HybridModel(copy.deepcopy(policy.language_model), seed=0).eval()
    return ref.requires_grad_(False)


def parameter_groups(cfg: HRPOConfig, model: HybridModel) -> list[dict[str, Any]]:
    """LoRA (or model) weights, gate linears and Λ, each with its own learning rate.

    In GRPO mode (``hybrid: false``) the gate is never used, so it is frozen and left out:
    DDP would otherwise wait forever for its gradients.
    """
    model_params = [p for p in model.language_model.parameters() if p.requires_grad]
    groups = [{"params": model_params, "lr": cfg.learning_rate, "name": "lora" if cfg.use_lora else "model"}]
    if cfg.hybrid:
        gate_linears = [p for n, p in model.gate.named_parameters() if n != "Lambda"]
        groups.append({"params": gate_linears, "lr": cfg.gate_learning_rate, "name": "gate"})
        groups.append({"params": [model.gate.Lambda], "lr": cfg.lambda_learning_rate, "name": "lambda"})
    else:
        model.gate.requires_grad_(False)
    return groups


BNB_OPTIMIZERS = {
    "adamw_8bit": "AdamW8bit",
    "paged_adamw_8bit": "PagedAdamW8bit",
    "paged_adamw_32bit": "PagedAdamW32bit",
}
"""``optim`` values run by bitsandbytes → its class in ``bitsandbytes.optim``."""


def _bitsandbytes(optim: str) -> Any:
    try:
        # Imported here: bitsandbytes is an optional, CUDA-only native package (hrpo[bnb]).
        import bitsandbytes
    except ImportError as e:
        raise ConfigError(
            f"config key 'optim': {optim} needs bitsandbytes: pip install bitsandbytes "
            "(or pip install 'hrpo[bnb]'), or use optim=adamw_torch"
        ) from e
    return bitsandbytes


def check_optimizer(cfg: HRPOConfig, device: torch.device) -> None:
    """Fail on a bitsandbytes ``optim`` that cannot run on ``device`` (not CUDA, or bitsandbytes
    not installed), before the model loads."""
    if cfg.optim not in BNB_OPTIMIZERS:
        return
    if device.type != "cuda":
        raise ConfigError(
            f"config key 'optim': {cfg.optim} runs on CUDA only (bitsandbytes' 8-bit and paged "
            f"optimisers) and this run is on {device.type}; use optim=adamw_torch on the CPU"
        )
    _bitsandbytes(cfg.optim)


def build_optimizer(cfg: HRPOConfig, model: HybridModel) -> torch.optim.Optimizer:
    """AdamW (``optim``'s implementation) over :func:`parameter_groups`."""
    kwargs = {
        "betas": (cfg.adam_beta1, cfg.adam_beta2),
        "eps": cfg.adam_epsilon,
        "weight_decay": cfg.weight_decay,
    }
    groups = parameter_groups(cfg, model)
    if cfg.optim in BNB_OPTIMIZERS:
        return getattr(_bitsandbytes(cfg.optim).optim, BNB_OPTIMIZERS[cfg.optim])(groups, **kwargs)
    if cfg.optim == "adamw_torch_fused":
        return torch.optim.AdamW(groups, fused=True, **kwargs)
    return torch.optim.AdamW(groups, **kwargs)


def optimizer_batches_per_rollout(cfg: HRPOConfig) -> int:
    """k: the optimiser batches in one step's rollout batch (``steps_per_generation`` over
    ``gradient_accumulation_steps``; 1 by default). A step takes ``k × num_iterations`` updates."""
    if cfg.steps_per_generation is None:
        return 1
    return cfg.steps_per_generation // cfg.gradient_accumulation_steps


def build_scheduler(cfg: HRPOConfig, optimizer: torch.optim.Optimizer, max_steps: int) -> Any:
    """Warm-up then ``lr_scheduler_type``, stepped once per optimiser update (``num_iterations``
    passes over ``k`` optimiser batches per training step, see :func:`optimizer_batches_per_rollout`)."""
    passes = max_steps * cfg.num_iterations * optimizer_batches_per_rollout(cfg)
    return get_scheduler(
        cfg.lr_scheduler_type if cfg.lr_scheduler_type != "constant" else "constant_with_warmup",
        optimizer,
        num_warmup_steps=int(math.ceil(cfg.warmup_ratio * passes)),
        num_training_steps=passes,
    )


def step_budget(cfg: HRPOConfig, num_rows: int, num_processes: int) -> tuple[int, int]:
    """(prompts per process per step, number of steps): whole groups per process in each optimiser
    batch (``k`` of them per step, see :func:`optimizer_batches_per_rollout`), and ``max_steps`` or
    else ``num_train_epochs`` passes over the rows."""
    per_device = cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps
    if per_device % cfg.num_generations:
        raise ValueError(
            f"per_device_train_batch_size × gradient_accumulation_steps = {per_device} completions per "
            f"process must be a multiple of num_generations={cfg.num_generations} (whole groups per process)"
        )
    per_process = per_device * optimizer_batches_per_rollout(cfg) // cfg.num_generations
    if cfg.max_steps > 0:
        return per_process, cfg.max_steps
    return per_process, max(1, int(cfg.num_train_epochs * num_rows // (per_process * num_processes)))
