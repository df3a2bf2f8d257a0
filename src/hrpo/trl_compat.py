"""TRL's ``GRPOConfig``/``TrainingArguments`` field names that hrpo does not take, and why.

:class:`~hrpo.config.HRPOConfig` uses TRL's names with TRL's meaning wherever hrpo has the concept
(see the README, "Coming from TRL"). A TRL field listed here is refused with its message, both as
an ``HRPOConfig(...)`` keyword and as a YAML or ``key=value`` config key, so that a TRL script
never runs with a setting silently ignored.
"""

from __future__ import annotations

_VLLM = "hrpo generates with its own hybrid decoder (latent inputs cannot go through vLLM); drop it"
_DEEPSPEED = (
    "DeepSpeed steps the optimiser inside backward() and hrpo runs several backward passes per step; "
    "shard with FSDP2 instead (accelerate launch --config_file <hrpo recipe accelerate/fsdp>)"
)
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
    "vllm_importance_sampling_correction": _VLLM,
    "vllm_importance_sampling_cap": _VLLM,
    "use_transformers_paged": "hrpo's rollout backends are rollout_backend (eager or compiled); drop it",
    "use_liger_loss": "the loss is hrpo's own (it feeds latents back); drop it",
    "ds3_gather_for_generation": _DEEPSPEED,
    "deepspeed": _DEEPSPEED,
    "fsdp": "configure FSDP2 through accelerate (accelerate launch --config_file <hrpo recipe accelerate/fsdp>)",
    "model_init_kwargs": "set model_name_or_path and dtype, or load the model yourself and pass it as model",
    "torch_dtype": "use dtype (auto, float32, bfloat16, float16)",
    "sync_ref_model": "the KL reference is the base model (adapters off) or a frozen copy; drop it",
    "ref_model_mixup_alpha": "the KL reference is fixed in hrpo; drop it",
    "ref_model_sync_steps": "the KL reference is fixed in hrpo; drop it",
    "delta": "two-sided clipping is not implemented; use epsilon and epsilon_high",
    "top_entropy_quantile": "entropy masking is not implemented; drop it",
    "min_p": "the sampler has top_k and top_p only",
    "repetition_penalty": "the sampler has temperature, top_k and top_p only",
    "generation_kwargs": "set temperature, top_k, top_p and max_completion_length",
    "chat_template_kwargs": "render the prompts yourself (a text prompt column) to pass template options",
    "num_completions_to_print": "completions go to samples.jsonl (log_completions, log_completions_steps)",
    "wandb_log_unique_prompts": "completions go to samples.jsonl (log_completions, log_completions_steps)",
    "disable_dropout": "set lora_dropout (the base model is loaded in eval mode)",
    "cast_lm_head_to_fp32": "log-probs are already computed in float32 chunks (logit_chunk_size)",
    "remove_unused_columns": "every dataset column is passed to the reward functions; drop it",
    "shuffle_dataset": "the data order is always a seeded shuffle per epoch (seed)",
    "optim": "the optimiser is AdamW with three parameter groups (learning_rate, gate_learning_rate, "
    "lambda_learning_rate)",
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


def unsupported_message(key: str) -> str | None:
    """Why the TRL field ``key`` is refused and what to do instead; None if it is not a refused one."""
    why = UNSUPPORTED.get(key)
    if why is None:
        return None
    return f"TRL's config key {key!r} is not supported by hrpo: {why}"
