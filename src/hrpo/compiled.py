"""The compiled rollout backend (``rollout_backend: compiled``) and the static KV cache it needs.

Two functions of a decoding step are compiled with ``torch.compile``, each built on first use and
reused for every later call of the same shapes:

* the decoder step (:meth:`HybridModel.decode_step`: decoder + output head over a static cache),
  with CUDA graphs on GPUs (``mode="reduce-overhead"``);
* the token step (restrict, sample, log-prob, entropy, latent and gate mix), fused into a few
  kernels (no CUDA graphs: its inputs change address every step).

Shapes are kept few so that compilations are reused: prompts are left-padded to a multiple of
:data:`PROMPT_BUCKET` tokens and a static cache is compacted by halving. The compiled step rounds
differently from the eager one, so rollouts agree with eager ones up to near ties. If compilation
fails (no C compiler, an unsupported op), a warning is given and decoding goes on eagerly.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from transformers import StaticCache

PROMPT_BUCKET = 64
"""Prompts are left-padded to a multiple of this many tokens (padding does not change results)."""


class CompiledSteps:
    """The compiled decoder step and token step of one engine, and whether compilation failed."""

    def __init__(self, decode_step: Callable, sample_and_mix: Callable, device_type: str) -> None:
        self._eager = {"decode": decode_step, "sample": sample_and_mix}
        self._compiled: dict[str, Callable] = {}
        self._modes = {"decode": "reduce-overhead" if device_type == "cuda" else None, "sample": None}
        self.failed = False
        """True once a compilation failed; the engine then decodes eagerly for the rest of its life."""

    def decode(self, *args) -> tuple[torch.Tensor, torch.Tensor]:
        return self._call("decode", *args)

    def sample(self, *args) -> tuple:
        return self._call("sample", *args)

    def _call(self, name: str, *args):
        """The compiled function's result; on a compilation error warn once and run it eagerly."""
        try:
            if name not in self._compiled:
                self._compiled[name] = torch.compile(self._eager[name], dynamic=False, mode=self._modes[name])
            return self._compiled[name](*args)
        except Exception as exc:  # noqa: BLE001 - any backend failure falls back to the eager path
            if not is_compile_error(exc):
                raise
            self.failed = True
            warnings.warn(
                f"rollout backend 'compiled': torch.compile failed ({type(exc).__name__}: {exc}); "
                "decoding eagerly from here on",
                RuntimeWarning,
                stacklevel=4,
            )
            return self._eager[name](*args)


def is_compile_error(exc: Exception) -> bool:
    """Errors raised by dynamo/inductor (tracing, code generation, a missing C compiler)."""
    module = type(exc).__module__
    return module.startswith(("torch._dynamo", "torch._inductor")) or "CppCompileError" in type(exc).__name__


def select_static_rows(cache: StaticCache, keep: torch.Tensor) -> None:
    """Keep only the ``keep`` rows of a static cache's pre-allocated keys and values.

    New, smaller buffers replace the old ones and are marked as static addresses, as the cache
    does for its own buffers, so CUDA graphs can be captured for the smaller batch.
    """
    for layer in cache.layers:
        if not getattr(layer, "is_initialized", False):
            continue
        layer.keys = layer.keys.index_select(0, keep.to(layer.keys.device))
        layer.values = layer.values.index_select(0, keep.to(layer.values.device))
        layer.batch_size = len(keep)
        torch._dynamo.mark_static_address(layer.keys)
        torch._dynamo.mark_static_address(layer.values)
