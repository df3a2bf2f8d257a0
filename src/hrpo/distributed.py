"""What the trainer needs to run unchanged on one process, under DDP, or under FSDP2.

FSDP2 (``torch.distributed.fsdp.fully_shard``, what accelerate's ``fsdp_version: 2`` applies)
keeps each process's shard of the parameters as ``DTensor``s and all-gathers a module's
parameters in its forward hook. Two things in HRPO do not fit that pattern:

* **Rollouts.** Each process stops decoding when its own sequences are done, so processes make
  different numbers of forward calls; per-layer all-gathers would then deadlock. Generation
  therefore runs inside :func:`gathered_parameters`: every FSDP module is unsharded once, with
  resharding after forward turned off, so no collective happens while decoding.
* **Checkpoints.** Weights and optimiser state are written as full tensors (all-gathered with
  :meth:`DTensor.full_tensor`) in the same files as a single-process run, and loaded back by
  re-sharding (:func:`load_full_`), so a checkpoint does not depend on how it was trained.

Without FSDP every helper here is a no-op or a plain copy.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import torch
from torch import nn

try:  # torch >= 2.6
    from torch.distributed.fsdp import FSDPModule
    from torch.distributed.tensor import DTensor, distribute_tensor
except ImportError:  # pragma: no cover - older torch without FSDP2
    FSDPModule = DTensor = None  # type: ignore[assignment,misc]
    distribute_tensor = None  # type: ignore[assignment]


def fsdp_modules(model: nn.Module) -> list[nn.Module]:
    """The FSDP2 modules in ``model``, outermost first (empty when it is not sharded)."""
    if FSDPModule is None:
        return []
    return [m for m in model.modules() if isinstance(m, FSDPModule)]


def is_sharded(model: nn.Module) -> bool:
    return bool(fsdp_modules(model))


@contextlib.contextmanager
def gathered_parameters(model: nn.Module) -> Iterator[None]:
    """Hold full parameters on every process, so code inside makes no collective calls.

    Every process must enter and leave together (entering and leaving all-gather and free);
    what happens inside may differ between processes (e.g. how many decoding steps each runs).
    Costs one full copy of the weights per process for the duration, as in TRL's and verl's
    rollouts.
    """
    mods = fsdp_modules(model)
    if not mods or getattr(model, "_hrpo_gathered", False):  # not sharded, or already gathered
        yield
        return
    root = mods[0]
    root.set_reshard_after_forward(False)
    if root is model:
        # A forward through the root is what initialises FSDP (which module is the root); calling
        # submodules first would make each its own root. With resharding off, this one-token pass
        # also leaves every parameter gathered.
        one = torch.zeros((1, 1), dtype=torch.long, device=next(model.parameters()).device)
        model(one, torch.ones_like(one), one)
    for m in mods:
        m.unshard()
    model._hrpo_gathered = True
    try:
        yield
    finally:
        model._hrpo_gathered = False
        for m in mods:
            m.reshard()
        # Back to FSDP's defaults: layers reshard after forward, the root keeps its parameters.
        root.set_reshard_after_forward(True)
        root.set_reshard_after_forward(False, recurse=False)


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """``t`` as an ordinary tensor; all-gathers a ``DTensor`` (a collective: call on every process)."""
    if DTensor is not None and isinstance(t, DTensor):
        return t.full_tensor()
    return t


@torch.no_grad()
def load_full_(target: torch.Tensor, value: torch.Tensor) -> None:
    """Copy the full tensor ``value`` into ``target``, keeping only this process's shard if
    ``target`` is a ``DTensor``. Every process must pass the same ``value``."""
    if DTensor is not None and isinstance(target, DTensor):
        shard = distribute_tensor(
            value.to(device=target.device, dtype=target.dtype), target.device_mesh, target.placements
        )
        target.to_local().copy_(shard.to_local())
    else:
        target.copy_(value.to(device=target.device, dtype=target.dtype))


def _inner(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    return getattr(optimizer, "optimizer", optimizer)  # accelerate wraps the optimizer


def full_optimizer_state(optimizer: torch.optim.Optimizer) -> dict:
    """``optimizer.state_dict()`` with every sharded state tensor all-gathered (collective)."""
    sd = _inner(optimizer).state_dict()
    sd["state"] = {
        i: {k: full_tensor(v) if torch.is_tensor(v) else v for k, v in st.items()}
        for i, st in sd["state"].items()
    }
    return sd


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Load what :func:`full_optimizer_state` returned, re-sharding state tensors of sharded parameters."""
    opt = _inner(optimizer)
    opt.load_state_dict(state)
    if DTensor is None:
        return
    for group in opt.param_groups:
        for p in group["params"]:
            if not isinstance(p, DTensor):
                continue
            st = opt.state.get(p, {})
            for k, v in st.items():
                if torch.is_tensor(v) and not isinstance(v, DTensor) and v.shape == p.shape:
                    st[k] = distribute_tensor(v.to(p.to_local().device), p.device_mesh, p.placements)


def end_process_group() -> None:
    """Close the default process group at the end of a successful run, on every process.

    Gloo runs collectives on worker threads that release each finished one's tensors, which needs
    the GIL. If the process group is torn down while such a release is pending (at interpreter
    exit, or when the last reference, e.g. DDP's reducer, is dropped with the GIL held), the
    process aborts ("terminate called without an active exception") or deadlocks. So: wait for
    every process's collectives (barrier), give the worker threads a moment without the GIL to
    release them, then destroy the group. A no-op without a process group.
    """
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()):
        return
    dist.barrier()
    time.sleep(0.2)  # the GIL is free while sleeping: pending releases finish
    dist.destroy_process_group()
