"""The policy loss over teacher-forced log-probs (spec §3), and its variants.

Per completion token, with ``ℓ`` the policy log-prob, ``ℓ_old`` the log-prob when the rollout
batch was made (``sg(ℓ)`` when each batch is used once), ``ℓ_ref`` the reference model's and
``A`` the sequence's advantage::

    ratio  = exp(ℓ − ℓ_old)
    policy = −min(ratio·A, clip(ratio, 1 − ε, 1 + ε_high)·A)
    kl     = exp(ℓ_ref − ℓ) − (ℓ_ref − ℓ) − 1                    (k3 estimator, ≥ 0)
    token  = policy + β·kl

With ``num_iterations = 1`` the ratio is ``exp(ℓ − sg(ℓ)) = 1`` and clipping is inactive; the
gradient is that of ``−ℓ·A``, as in the paper. Aggregation over tokens (``loss_type``):

- ``"grpo"`` (the paper): mean over each sequence's tokens, then mean over sequences;
- ``"dr_grpo"``: sum over all tokens / (sequences × ``max_completion_length``), no length bias;
- ``"dapo"``: sum over all tokens / number of tokens (token-level mean).

Tokens are those of the completion up to and including EOS (``mask``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

LossType = Literal["grpo", "dr_grpo", "dapo"]


def k3_kl(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """Per-token ``exp(ℓ_ref − ℓ) − (ℓ_ref − ℓ) − 1``: an unbiased, non-negative KL(π‖π_ref) estimate."""
    delta = ref_logprobs - logprobs
    return torch.exp(delta) - delta - 1


@dataclass
class LossNormalizer:
    """Denominators of the aggregation, taken over the whole optimiser step's batch.

    A step's completions are processed in micro-batches; summing each micro-batch's loss with
    these global denominators gives exactly the loss of the full batch.
    """

    num_sequences: int
    num_tokens: int
    max_completion_length: int


def policy_loss(
    logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    normalizer: LossNormalizer,
    *,
    old_logprobs: torch.Tensor | None = None,
    ref_logprobs: torch.Tensor | None = None,
    beta: float = 0.0,
    epsilon: float = 0.2,
    epsilon_high: float | None = None,
    loss_type: LossType = "grpo",
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Loss of a micro-batch ``(B, C)`` as its share of the step loss, plus detached statistics.

    Returns ``(loss, stats)``; ``stats`` holds the masked sums ``kl_sum``, ``clipped_sum`` and
    ``token_count`` of this micro-batch (sums, so they add up across micro-batches).
    """
    mask = mask.to(logprobs.dtype)
    old = logprobs.detach() if old_logprobs is None else old_logprobs
    ratio = torch.exp(logprobs - old)
    eps_high = epsilon if epsilon_high is None else epsilon_high
    adv = advantages[:, None].to(logprobs.dtype)
    unclipped = ratio * adv
    clipped = torch.clamp(ratio, 1 - epsilon, 1 + eps_high) * adv
    per_token = -torch.minimum(unclipped, clipped)
    kl = None
    if beta != 0.0:
        if ref_logprobs is None:
            raise ValueError("beta != 0 needs ref_logprobs")
        kl = k3_kl(logprobs, ref_logprobs)
        per_token = per_token + beta * kl

    if loss_type == "grpo":
        per_seq = (per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1)
        loss = per_seq.sum() / normalizer.num_sequences
    elif loss_type == "dr_grpo":
        loss = (per_token * mask).sum() / (normalizer.num_sequences * normalizer.max_completion_length)
    elif loss_type == "dapo":
        loss = (per_token * mask).sum() / max(normalizer.num_tokens, 1)
    else:
        raise ValueError(f"loss_type must be 'grpo', 'dr_grpo' or 'dapo', got {loss_type!r}")

    with torch.no_grad():
        stats = {
            "kl_sum": (kl * mask).sum() if kl is not None else torch.zeros((), device=mask.device),
            "clipped_sum": (((ratio < 1 - epsilon) | (ratio > 1 + eps_high)).to(mask.dtype) * mask).sum(),
            "token_count": mask.sum(),
        }
    return loss, stats
