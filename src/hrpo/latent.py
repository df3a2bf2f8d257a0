"""Latent projection: the model's next-token distribution mapped back into embedding space.

``h = Eᵀ p / ‖p‖₂`` (spec §2), with ``E`` the input embedding matrix (``V×d``) and ``p`` the
step's (possibly top-k/top-p restricted) distribution from :func:`hrpo.sampling.restrict`.
Dividing by the L2 norm rather than the sum keeps ``h`` at the scale of one embedding row when
``p`` is peaked and lets it grow, up to ``√k``, as the distribution spreads out.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from hrpo.sampling import Support


def project_latent(
    support: Support, embedding_weight: torch.Tensor, embed_scale: float | torch.Tensor = 1.0
) -> torch.Tensor:
    """Return ``h = Eᵀp / ‖p‖₂`` as a ``(B, d)`` float32 tensor.

    With a top-k support only the ``k`` kept rows of ``E`` are gathered (``B·k·d`` work instead
    of ``B·V·d``). ``embed_scale`` is the factor some models (Gemma) apply inside their
    embedding layer, so that ``h`` lives in the same space as the token embeddings it is mixed with.
    """
    probs = support.probs
    if support.index is None:
        # One V×d matmul in the weights' dtype; upcasting E every step would copy it.
        h = (probs.to(embedding_weight.dtype) @ embedding_weight).float()
    else:
        rows = F.embedding(support.index, embedding_weight).float()
        h = torch.einsum("bk,bkd->bd", probs, rows)
    h = h / probs.norm(dim=-1, keepdim=True)
    if not (isinstance(embed_scale, float) and embed_scale == 1.0):
        h = h * torch.as_tensor(embed_scale, dtype=h.dtype, device=h.device)
    return h
