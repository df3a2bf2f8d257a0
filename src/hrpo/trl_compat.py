"""TRL's ``GRPOConfig``/``TrainingArguments`` field names that hrpo does not take, and why.

:class:`~hrpo.config.HRPOConfig` uses TRL's names with TRL's meaning wherever hrpo has the concept
(see the README, "Coming from TRL"). A TRL field listed here is refused with its message, both as
an ``HRPOConfig(...)`` keyword and as a YAML or ``key=value`` config key, so that a TRL script
never runs with a setting silently ignored, unless its value is one in :data:`SAME_AS_HRPO`:
a value that turns the feature off, or asks for what hrpo always does (``use_vllm=False``,
``shuffle_dataset=True``), is accepted and dropped, since ignoring it changes nothing.
The names are those of TRL 1.x's ``GRPOConfig`` and transformers 5's ``TrainingArguments``, plus
the older names TRL scripts still carry (``use_liger_loss``, ``wandb_log_unique_prompts``, ...).
"""

from __future__ import annotations

_VLLM = "hrpo generates with its own hybrid decoder (latent inputs cannot go through vLLM); drop it"
_DEEPSPEED = (
    "DeepSpeed steps the optimiser inside backward() and hrpo runs several backward passes per step; "
    "shard with FSDP2 instead (accelerate launch --config_file <hrpo recipe accelerate/fsdp>)"
)
_LIGER = "the loss is hrpo's own (it feeds latents back; Liger's fused loss does not); drop it"
_ENTROPY = "entropy regularisation is not implemented (the entropy metric is logged); drop it"
_LOSS = "this loss is not implemented; loss_type is one of grpo, dr_grpo, dapo, bnpo"
_EVAL = (
    "hrpo scores eval_limit held-out problems (greedy) before and after training, in eval_batch_size "
    "batches; set those instead"
)

UNSUPPORTED: dict[str, str] = {
    "use_vllm": _VLLM,
    "vllm_mode": _VLLM,
    "vllm_server_base_url": _VLLM,
    "vllm_server_host": _VLLM,
    "vllm_server_port": _VLLM,
    "vllm_server_timeout": _VLLM,
    "vllm_gpu_memory_utilization": _VLLM,
    "vllm_tensor_parallel_size": _VLLM,
    "vllm_model_impl": _VLLM,
    "vllm_enable_sleep_mode": _VLLM,
    "vllm_guided_decoding_regex": _VLLM,
    "vllm_structured_outputs_regex": _VLLM,
    "vllm_group_port": _VLLM,
    "vllm_max_model_length": _VLLM,
    "vllm_importance_sampling_correction": _VLLM,
    "vllm_importance_sampling_cap": _VLLM,
    "vllm_importance_sampling_mode": _VLLM,
    "vllm_importance_sampling_clip_min": _VLLM,
    "vllm_importance_sampling_clip_max": _VLLM,
    "use_transformers_paged": "hrpo's rollout backends are rollout_backend (eager or compiled); drop it",
    "use_transformers_continuous_batching": "hrpo's rollout backends are rollout_backend (eager or compiled); drop it",
    "transformers_continuous_batching_config": "hrpo's rollout backends are rollout_backend (eager or compiled); drop it",
    "use_liger_loss": _LIGER,
    "use_liger_kernel": _LIGER,
    "use_peft": "hrpo's name is use_lora (true by default), with lora_r, lora_alpha, lora_dropout, lora_target_modules",
    "trust_remote_code": "load the model yourself (AutoModelForCausalLM.from_pretrained(..., trust_remote_code=True)) "
    "and pass it as model",
    "sapo_temperature_neg": _LOSS,
    "sapo_temperature_pos": _LOSS,
    "vespo_k_pos": _LOSS,
    "vespo_k_neg": _LOSS,
    "vespo_lambda_pos": _LOSS,
    "vespo_lambda_neg": _LOSS,
    "entropy_coef": _ENTROPY,
    "use_adaptive_entropy": _ENTROPY,
    "entropy_coef_min": _ENTROPY,
    "entropy_coef_max": _ENTROPY,
    "entropy_coef_delta": _ENTROPY,
    "entropy_target": _ENTROPY,
    "off_policy_mask_threshold": "off-policy sequence masking is not implemented; drop it",
    "use_bias_correction_kl": "the KL term is the k3 estimator of the paper; drop it",
    "multi_objective_aggregation": "rewards are combined as TRL's default, the weighted sum (reward_weights)",
    "max_tool_calling_iterations": "tool calling is not supported in hybrid rollouts; drop it",
    "num_generations_eval": "hrpo evaluates greedily, one completion per problem (eval_limit, eval_batch_size)",
    "pad_to_multiple_of": "hrpo pads each batch to its longest sequence; drop it",
    "router_aux_loss_coef": "mixture-of-experts auxiliary losses are not added; drop it",
    "log_multimodal": "hrpo trains text models; drop it",
    "log_completions_hub_repo": "completions go to samples.jsonl in output_dir; push it yourself",
    "ds3_gather_for_generation": _DEEPSPEED,
    "deepspeed": _DEEPSPEED,
    "fsdp": "configure FSDP2 through accelerate (accelerate launch --config_file <hrpo recipe accelerate/fsdp>)",
    "model_init_kwargs": "set model_name_or_path and dtype, or load the model yourself and pass it as model",
    "torch_dtype": "use dtype (auto, float32, bfloat16, float16)",
    "use_cpu": "hrpo runs where accelerate puts it (CUDA when there is one); hide the GPUs "
    "(CUDA_VISIBLE_DEVICES=) to train on the CPU",
    "sync_ref_model": "the KL reference is the base model (adapters off) or a frozen copy; drop it",
    "ref_model_mixup_alpha": "the KL reference is fixed in hrpo; drop it",
    "ref_model_sync_steps": "the KL reference is fixed in hrpo; drop it",
    "delta": "two-sided clipping (an upper bound on the ratio where the advantage is negative) is not "
    "implemented; drop it",
    "top_entropy_quantile": "entropy masking is not implemented; drop it",
    "min_p": "the sampler has top_k and top_p only",
    "repetition_penalty": "the sampler has temperature, top_k and top_p only",
    "generation_kwargs": "set temperature, top_k, top_p and max_completion_length",
    "chat_template_kwargs": "render the prompts yourself (a text prompt column) to pass template options",
    "num_completions_to_print": "completions go to samples.jsonl (log_completions, log_completions_steps)",
    "wandb_log_unique_prompts": "completions go to samples.jsonl (log_completions, log_completions_steps)",
    "log_unique_prompts": "completions go to samples.jsonl (log_completions, log_completions_steps)",
    "cast_lm_head_to_fp32": "the LM head runs in the model's dtype and its log-softmax in float32 "
    "(logit_chunk_size chunks); for a float32 head, train with dtype=float32",
    "remove_unused_columns": "every dataset column is passed to the reward functions; drop it",
    "shuffle_dataset": "the data order is always a seeded shuffle per epoch (seed)",
    "lr_scheduler_kwargs": "set lr_scheduler_type and warmup_ratio",
    "warmup_steps": "use warmup_ratio (a fraction of the optimiser updates)",
    "per_device_eval_batch_size": "use eval_batch_size",
    "eval_strategy": _EVAL,
    "eval_steps": _EVAL,
    "do_eval": _EVAL,
    "tf32": "set torch.backends.cuda.matmul.allow_tf32 in your script",
    "torch_compile": "use rollout_backend=compiled",
    "push_to_hub": "push the checkpoint yourself (huggingface_hub.upload_folder)",
    "hub_model_id": "push the checkpoint yourself (huggingface_hub.upload_folder)",
    "resume_from_checkpoint": "pass it to train(resume_from_checkpoint=...) or use hrpo train --resume",
    "logging_dir": "metrics go to output_dir (metrics.jsonl, tensorboard/)",
}


_OFF = (None, False)

SAME_AS_HRPO: dict[str, tuple[object, ...]] = {
    **{key: _OFF for key in UNSUPPORTED if key.startswith("vllm_") and "importance_sampling" in key},
    "use_vllm": _OFF,
    "use_transformers_paged": _OFF,
    "use_transformers_continuous_batching": _OFF,
    "use_liger_loss": _OFF,
    "use_liger_kernel": _OFF,
    "ds3_gather_for_generation": (True, False, None),  # only read under DeepSpeed
    "sync_ref_model": _OFF,
    "delta": (None,),
    "top_entropy_quantile": (1.0,),
    "min_p": (None, 0.0),
    "repetition_penalty": (1.0,),
    "generation_kwargs": (None, {}),
    "chat_template_kwargs": (None, {}),
    "cast_lm_head_to_fp32": _OFF,
    "remove_unused_columns": (False,),
    "shuffle_dataset": (True,),
    "entropy_coef": (0.0, None),
    "use_adaptive_entropy": _OFF,
    "off_policy_mask_threshold": (None,),
    "use_bias_correction_kl": _OFF,
    "trust_remote_code": _OFF,
    "use_peft": (True,),
    "torch_compile": _OFF,
    "tf32": _OFF,
    "push_to_hub": _OFF,
    "use_cpu": _OFF,
    "do_eval": _OFF,
    "eval_strategy": ("no",),
    "resume_from_checkpoint": (None,),
    "log_multimodal": _OFF,
}
"""Values of refused fields that ask for what hrpo does anyway (a feature off, or hrpo's fixed
behaviour): accepted and dropped, so that TRL's defaults written out in a script still load.
``use_peft: true`` is hrpo's default use_lora."""


def _same(value: object, allowed: object) -> bool:
    # bool is an int: True must not pass as 1.0 (repetition_penalty) or False as 0.0 (entropy_coef).
    if isinstance(value, bool) or isinstance(allowed, bool):
        return value is allowed
    if isinstance(value, (int, float)) and isinstance(allowed, (int, float)):
        return value == allowed
    return type(value) is type(allowed) and value == allowed


def same_as_hrpo(key: str, value: object) -> bool:
    """Whether the refused TRL field ``key`` set to ``value`` asks for what hrpo does anyway."""
    return any(_same(value, allowed) for allowed in SAME_AS_HRPO.get(key, ()))


def unsupported_message(key: str, value: object = ...) -> str | None:
    """Why the TRL field ``key`` (set to ``value``, if given) is refused and what to do instead;
    None if it is not a refused field, or ``value`` asks for what hrpo does anyway."""
    why = UNSUPPORTED.get(key)
    if why is None or (value is not ... and same_as_hrpo(key, value)):
        return None
    shown = "" if value is ... else f" = {value!r}"
    return f"TRL's config key {key!r}{shown} is not supported by hrpo: {why}"
