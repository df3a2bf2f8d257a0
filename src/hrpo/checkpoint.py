"""Checkpoints: what is saved, in which files, and how it is read back.

Two kinds, both directories that appear complete or not at all (:mod:`hrpo.storage`):

* a **model checkpoint** (:meth:`HybridModel.save_pretrained`, ``--checkpoint`` of ``hrpo eval``,
  ``generate`` and ``inspect``): the PEFT adapter (``adapter_model.safetensors`` +
  ``adapter_config.json``) or, for full fine-tuning, the whole model (``model.safetensors``,
  possibly sharded), plus the gate in :data:`GATE_WEIGHTS` (its linears and Λ) and
  :data:`GATE_CONFIG` (its settings), and :data:`DECODING_CONFIG`, the decoding settings it was
  trained with (:data:`DECODING_KEYS`), which ``hrpo eval/generate/inspect --checkpoint`` use;
* a **training checkpoint** ``checkpoints/step-NNNNNN`` of a run directory: a model checkpoint
  plus ``optimizer.pt``, ``scheduler.pt``, ``rng_state.pt`` (Python, NumPy, torch and CUDA
  generators) and :data:`TRAINER_STATE` (step, step budget, prompts consumed, process count and
  the run's config). Tensors are full (gathered from FSDP shards), so the files do not depend on
  the number of processes that wrote them.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import yaml
from peft import PeftModel
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, PreTrainedModel

from hrpo.distributed import full_optimizer_state, load_full_, load_optimizer_state
from hrpo.gate import HybridGate
from hrpo.storage import atomic_directory, atomic_remove

if TYPE_CHECKING:  # model.py imports this module for save_pretrained/from_pretrained
    from hrpo.model import HybridModel
    from hrpo.trainer import HRPOTrainer

GATE_WEIGHTS = "hrpo_gate.safetensors"
GATE_CONFIG = "hrpo_gate.json"
DECODING_CONFIG = "hrpo_decoding.json"
TRAINER_STATE = "trainer_state.json"
DECODING_KEYS = ("temperature", "top_k", "top_p", "answer_marker", "system_prompt", "hybrid", "protocol")
"""The training config keys that shape decoding (and the latent: τ and the top-k/p support)."""
CHECKPOINT_PREFIX = "step-"
_CHECKPOINT_NAME = re.compile(rf"^{CHECKPOINT_PREFIX}(\d+)$")


# -- model checkpoints -----------------------------------------------------------------------------
def write_model(
    directory: str | Path, model: HybridModel, state: dict[str, torch.Tensor] | None = None
) -> None:
    """Write adapter (PEFT) or full weights plus the gate into the existing ``directory``.

    ``state`` is what :meth:`HybridModel.trainable_state` returned (default: computed here, which
    under FSDP2 only works if every process calls this).
    """
    directory = Path(directory)
    state = model.trainable_state() if state is None else state
    gate = {k[len("gate.") :]: v.float().contiguous() for k, v in state.items() if k.startswith("gate.")}
    lm_state = {k[len("model.") :]: v for k, v in state.items() if k.startswith("model.")}
    model.language_model.save_pretrained(directory, state_dict=lm_state, safe_serialization=True)
    save_file(gate, str(directory / GATE_WEIGHTS))
    meta = {
        "hidden_size": model.gate.hidden_size,
        "r_min": model.gate.r_min,
        "r_max": model.gate.r_max,
        "c": model.gate.c,
        "mix": model.gate.hybrid_mix,  # the file key predates the rename: older readers know it
        "latent_source": model.gate.latent_source,
        "adapter": isinstance(model.language_model, PeftModel),
    }
    (directory / GATE_CONFIG).write_text(json.dumps(meta, indent=2) + "\n")
    if model.decoding_settings is not None:
        settings = {
            **model.decoding_settings,
            "hybrid_mix": meta["mix"],
            "latent_source": meta["latent_source"],
        }
        (directory / DECODING_CONFIG).write_text(json.dumps(settings, indent=2) + "\n")


def decoding_settings(config: Any) -> dict[str, Any]:
    """:data:`DECODING_KEYS` of a training config (an :class:`~hrpo.config.HRPOConfig` or its dict)."""
    values = config if isinstance(config, dict) else config.to_dict()
    return {k: values[k] for k in DECODING_KEYS if k in values}


def read_decoding_settings(path: str | Path) -> dict[str, Any] | None:
    """The decoding settings a checkpoint was trained with: its :data:`DECODING_CONFIG`, or, for a
    training checkpoint written before that file existed, the run's ``config.yaml`` two levels up;
    None when neither is there (a checkpoint saved by hand)."""
    path = Path(path)
    if (path / DECODING_CONFIG).is_file():
        return json.loads((path / DECODING_CONFIG).read_text())
    run_config = path.parent.parent / "config.yaml"  # RUN/checkpoints/step-N
    if path.parent.name == "checkpoints" and run_config.is_file():
        values = yaml.safe_load(run_config.read_text())
        if isinstance(values, dict):
            return decoding_settings(values)
    return None


def save_model(model: HybridModel, path: str | Path) -> Path:
    """Write a model checkpoint to ``path`` atomically (an interrupted save leaves no half)."""
    path = Path(path)
    with atomic_directory(path) as tmp:
        write_model(tmp, model)
    return path


def load_model_state(model: HybridModel, directory: str | Path) -> None:
    """Load into ``model`` the adapter (or full) weights and gate that :func:`write_model` wrote.

    Works on a sharded (FSDP2) model too: every process reads the files and keeps its shard.
    """
    directory = Path(directory)
    files = {"gate.": load_file(str(directory / GATE_WEIGHTS))}
    if isinstance(model.language_model, PeftModel):
        files["model."] = load_file(str(directory / "adapter_model.safetensors"))
        adapter = model.language_model.active_adapter
    else:
        index = directory / "model.safetensors.index.json"
        shards = (
            sorted(set(json.loads(index.read_text())["weight_map"].values()))
            if index.is_file()
            else ["model.safetensors"]
        )
        files["model."] = {k: v for f in shards for k, v in load_file(str(directory / f)).items()}
        adapter = None
    used: set[str] = set()
    for name, param in model.named_parameters():
        prefix = "gate." if name.startswith("gate.") else "model."
        key = name[len(prefix) :]
        if adapter is not None and prefix == "model.":
            if not param.requires_grad:
                continue  # frozen base weights are not in an adapter file
            key = key.replace(f".{adapter}.", ".")  # PEFT drops the adapter name in files
        if key not in files[prefix]:
            if prefix == "gate." or adapter is not None:
                raise ValueError(f"{directory}: no weight for {name} ({key})")
            continue  # e.g. a tied output head, saved once
        load_full_(param, files[prefix][key])
        used.add(prefix + key)
    unused = sorted(p + k for p, f in files.items() for k in f if p + k not in used)
    if unused and adapter is not None:
        raise ValueError(f"{directory}: weights that do not fit this model: {unused[:3]}")


def read_model(
    path: str | Path, base_model: PreTrainedModel | None = None, *, is_trainable: bool = False
) -> tuple[PreTrainedModel | PeftModel, HybridGate]:
    """The language model and gate of a model checkpoint.

    For an adapter checkpoint, ``base_model`` is the model the adapter was trained on; for a
    full checkpoint the weights come from ``path`` and ``base_model`` is unused.
    """
    path = Path(path)
    meta_file = path / GATE_CONFIG
    if not meta_file.is_file():
        raise FileNotFoundError(f"{path} is not an hrpo checkpoint: {GATE_CONFIG} is missing")
    meta = json.loads(meta_file.read_text())
    if meta["adapter"]:
        if base_model is None:
            raise ValueError(f"{path} holds a LoRA adapter: pass the base model it was trained on")
        lm = PeftModel.from_pretrained(base_model, str(path), is_trainable=is_trainable)
    else:
        lm = AutoModelForCausalLM.from_pretrained(str(path))
    gate = HybridGate(
        meta["hidden_size"],
        r_min=meta["r_min"],
        r_max=meta["r_max"],
        c=meta["c"],
        hybrid_mix=meta.get("mix", "gated"),
        latent_source=meta.get("latent_source", "projection"),
    )
    gate.load_state_dict(load_file(str(path / GATE_WEIGHTS)))
    return lm, gate


# -- training checkpoints --------------------------------------------------------------------------
def checkpoint_path(directory: str | Path, step: int) -> Path:
    """Where the training checkpoint of ``step`` lives in a run's ``checkpoints/`` directory."""
    return Path(directory) / f"{CHECKPOINT_PREFIX}{step:06d}"


def checkpoint_step(path: str | Path) -> int | None:
    """The step of a ``step-NNNNNN`` checkpoint directory name, or None for another name."""
    match = _CHECKPOINT_NAME.match(Path(path).name)
    return int(match[1]) if match else None


def list_checkpoints(directory: str | Path) -> list[Path]:
    """Complete checkpoints (``step-NNNNNN`` with a trainer state) in ``directory``, oldest first.

    A checkpoint is written under a temporary name and renamed when complete, so leftovers of a
    killed write (dot names) are never listed.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = []
    for p in directory.iterdir():
        step = checkpoint_step(p)
        if step is not None and (p / TRAINER_STATE).is_file():
            found.append((step, p))
    return [p for _, p in sorted(found)]


def latest_checkpoint(directory: str | Path) -> Path | None:
    """The newest complete checkpoint in ``directory``, or None."""
    found = list_checkpoints(directory)
    return found[-1] if found else None


def prune_checkpoints(directory: str | Path, limit: int) -> None:
    """Keep the newest ``limit`` checkpoints of ``directory`` (``limit <= 0``: keep all)."""
    if limit <= 0:
        return
    for old in list_checkpoints(directory)[:-limit]:
        atomic_remove(old)  # renamed away first: never listed half-deleted


def rng_state() -> dict[str, Any]:
    """Every random generator a training step draws from."""
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_training(
    path: str | Path,
    model: HybridModel,
    *,
    weights: dict[str, torch.Tensor],
    optimizer_state: dict[str, Any],
    scheduler: Any,
    trainer_state: dict[str, Any],
) -> Path:
    """Write a training checkpoint atomically (one process: the others pass their shards through
    ``weights`` and ``optimizer_state``, gathered beforehand)."""
    path = Path(path)
    with atomic_directory(path) as tmp:
        write_model(tmp, model, weights)
        torch.save(optimizer_state, tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        torch.save(rng_state(), tmp / "rng_state.pt")
        (tmp / TRAINER_STATE).write_text(json.dumps(trainer_state, indent=2) + "\n")
    return path


def read_trainer_state(path: str | Path) -> dict[str, Any]:
    """A training checkpoint's :data:`TRAINER_STATE`; a clear error for any other directory."""
    state_file = Path(path) / TRAINER_STATE
    if not state_file.is_file():
        raise FileNotFoundError(f"{path} is not an hrpo training checkpoint ({TRAINER_STATE} missing)")
    return json.loads(state_file.read_text())


def load_training(path: str | Path, model: HybridModel, optimizer: Any, scheduler: Any) -> dict[str, Any]:
    """Restore weights, optimiser, scheduler and random generators from a training checkpoint;
    return its trainer state."""
    path = Path(path)
    state = read_trainer_state(path)
    load_model_state(model, path)
    load_optimizer_state(optimizer, torch.load(path / "optimizer.pt", map_location="cpu", weights_only=False))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=False))
    set_rng_state(torch.load(path / "rng_state.pt", weights_only=False))
    return state


def save_trainer_checkpoint(trainer: HRPOTrainer) -> Path:
    """Write the trainer's ``checkpoints/step-NNNNNN`` atomically (main process) and prune old ones."""
    acc = trainer.accelerator
    path = checkpoint_path(trainer.checkpoint_dir, trainer.step)
    # Full tensors, gathered on every process (FSDP shards), so the files are the same
    # whatever the number of processes.
    weights = trainer.model.trainable_state()
    optimizer_state = full_optimizer_state(trainer.optimizer)
    acc.wait_for_everyone()
    if acc.is_main_process:
        state = {
            "step": trainer.step,
            "max_steps": trainer.max_steps,
            "prompts_consumed": trainer.step * trainer.prompts_per_step,
            "num_processes": acc.num_processes,
            "config": trainer.config.to_dict(),
        }
        save_training(
            path,
            trainer.model,
            weights=weights,
            optimizer_state=optimizer_state,
            scheduler=trainer.scheduler,
            trainer_state=state,
        )
        prune_checkpoints(trainer.checkpoint_dir, trainer.config.save_total_limit)
    acc.wait_for_everyone()
    return path


def load_trainer_checkpoint(trainer: HRPOTrainer, path: str | Path) -> None:
    """Restore the trainer's weights, optimiser, scheduler, random generators and step from ``path``."""
    state = read_trainer_state(path)
    if state["num_processes"] != trainer.accelerator.num_processes:
        raise ValueError(
            f"{path} was written by {state['num_processes']} processes; resume with the same number "
            f"(now {trainer.accelerator.num_processes}) so the data order is unchanged"
        )
    load_training(path, trainer.model, trainer.optimizer, trainer.scheduler)
    trainer.step = int(state["step"])
