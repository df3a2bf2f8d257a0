"""The HRPO gate: mixes a sampled token's embedding with a latent vector (spec §2).

For a sampled token embedding ``ê`` and a latent ``h`` (see :mod:`hrpo.latent`)::

    r = σ(W_r ê + b_r)            i = σ(W_i ê + b_i)
    a = exp(−c · softplus(Λ) · r)                  (c = 8)
    e = a ⊙ ê + sqrt(1 − a² + ε) ⊙ (i ⊙ h)          (ε = 1e-8)

``Λ`` is initialised so that ``exp(−c·softplus(Λ)) = u`` with ``u ~ U[r_min, r_max]`` per
dimension, hence ``a = u^r`` starts close to 1 (almost pure token embeddings). The bounds
``r_min``/``r_max`` are bounds on ``u``, not on the gate's ``r``.

Two ablations of the paper (spec §5) are options of the gate, so that rollouts, teacher-forced
recomputation and saved checkpoints all agree on them:

- ``hybrid_mix="latent_only"`` (interpolation only): ``e = h``, the latent replaces the token embedding
  (``a = 0``); the gate's parameters are unused.
- ``hybrid_mix="closed"`` (a control, not in the paper): the gate is forced closed, ``a = 1``, so
  every position is fed its token embedding exactly while the rest of HRPO's path (latents,
  thinking masks, teacher forcing, the gate's optimiser groups) runs. A run with it must train
  exactly like plain GRPO (``hybrid: false``); if it does not, something besides the latent
  differs between the two paths.
- ``latent_source="hidden_state"``: the rollout stores the decoder's last hidden state instead of
  the projection ``Eᵀp/‖p‖₂``, and the gate mixes that in unprojected.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F

GATE_EPS = 1e-8
MIXES = ("gated", "latent_only", "closed")
LATENT_SOURCES = ("projection", "hidden_state")


def lambda_init(u: torch.Tensor, c: float) -> torch.Tensor:
    """Solve ``exp(−c · softplus(Λ)) = u`` for Λ (inverse softplus of ``−ln(u)/c``)."""
    s = -torch.log(u.double()) / c
    return torch.log(torch.expm1(s)).float()


class HybridGate(nn.Module):
    """Gate parameters ``W_r, b_r, W_i, b_i, Λ`` and the hybrid-input computation.

    Parameters are kept in float32 and the gate is always evaluated in float32 (autocast off),
    whatever the model's dtype: ``1 − a²`` with ``a ≈ 0.999`` loses all its digits in bf16.
    """

    def __init__(
        self,
        hidden_size: int,
        r_min: float = 0.99,
        r_max: float = 0.999,
        c: float = 8.0,
        generator: torch.Generator | None = None,
        hybrid_mix: Literal["gated", "latent_only", "closed"] = "gated",
        latent_source: Literal["projection", "hidden_state"] = "projection",
    ) -> None:
        super().__init__()
        if isinstance(hidden_size, bool) or not isinstance(hidden_size, int) or hidden_size < 1:
            raise ValueError(f"gate hidden_size must be an integer >= 1, got {hidden_size!r}")
        if not 0.0 < r_min <= r_max < 1.0:  # also rejects NaN
            raise ValueError(f"gate init needs 0 < r_min <= r_max < 1, got r_min={r_min}, r_max={r_max}")
        if not 0.0 < c < math.inf:  # also rejects NaN
            raise ValueError(f"gate constant c must be a finite number > 0, got {c}")
        if hybrid_mix not in MIXES:
            raise ValueError(f"hybrid_mix must be one of {MIXES}, got {hybrid_mix!r}")
        if latent_source not in LATENT_SOURCES:
            raise ValueError(f"latent_source must be one of {LATENT_SOURCES}, got {latent_source!r}")
        self.hidden_size = hidden_size
        self.r_min, self.r_max, self.c = r_min, r_max, c
        self.hybrid_mix, self.latent_source = hybrid_mix, latent_source
        self.gate_r = nn.Linear(hidden_size, hidden_size, bias=True, dtype=torch.float32)
        self.gate_i = nn.Linear(hidden_size, hidden_size, bias=True, dtype=torch.float32)
        self.Lambda = nn.Parameter(torch.zeros(hidden_size, dtype=torch.float32))
        self.reset_parameters(generator)

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Default ``nn.Linear`` init for the gate linears and ``U[r_min, r_max]`` decay for Λ."""
        for lin in (self.gate_r, self.gate_i):
            bound = 1.0 / math.sqrt(lin.in_features)
            lin.weight.uniform_(-bound, bound, generator=generator)
            lin.bias.uniform_(-bound, bound, generator=generator)
        u = torch.empty(self.hidden_size, dtype=torch.float64)
        u.uniform_(self.r_min, self.r_max, generator=generator)
        self.Lambda.copy_(lambda_init(u, self.c))

    def input_gate(self, token_embeds: torch.Tensor) -> torch.Tensor:
        """``i = σ(W_i ê + b_i)`` in float32 (what :meth:`forward` scales the latent by)."""
        with torch.autocast(device_type=token_embeds.device.type, enabled=False):
            return torch.sigmoid(self.gate_i(token_embeds.float()))

    def forward(self, token_embeds: torch.Tensor, latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Hybrid inputs ``a ⊙ ê + sqrt(1 − a² + ε) ⊙ (i ⊙ h)`` and the decay ``a``.

        Returns the hybrid embeddings in ``token_embeds``'s dtype and ``a`` in float32.
        Where ``a`` is exactly 1 the latent coefficient is set to 0 instead of ``sqrt(ε)`` so
        that a closed gate reproduces the token embedding bit for bit.
        With ``hybrid_mix="latent_only"`` the result is the latent itself and ``a`` is 0; with
        ``hybrid_mix="closed"`` it is ``token_embeds`` itself and ``a`` is 1.
        """
        if self.hybrid_mix == "closed":
            a = torch.ones(token_embeds.shape, dtype=torch.float32, device=token_embeds.device)
            return token_embeds, a
        if self.hybrid_mix == "latent_only":
            a = torch.zeros(token_embeds.shape, dtype=torch.float32, device=token_embeds.device)
            return latents.to(token_embeds.dtype), a
        with torch.autocast(device_type=token_embeds.device.type, enabled=False):
            e = token_embeds.float()
            r = torch.sigmoid(self.gate_r(e))
            i = torch.sigmoid(self.gate_i(e))
            a = torch.exp(-self.c * F.softplus(self.Lambda) * r)
            b = torch.sqrt(1.0 - a * a + GATE_EPS)
            b = torch.where(a < 1.0, b, torch.zeros_like(b))
            mixed = a * e + b * (i * latents.float())
        return mixed.to(token_embeds.dtype), a

    def extra_repr(self) -> str:
        extra = "" if self.hybrid_mix == "gated" else f", hybrid_mix={self.hybrid_mix}"
        if self.latent_source != "projection":
            extra += f", latent_source={self.latent_source}"
        return f"hidden_size={self.hidden_size}, r_min={self.r_min}, r_max={self.r_max}, c={self.c}{extra}"
