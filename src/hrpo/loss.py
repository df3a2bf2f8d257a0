"""The policy loss over teacher-forced log-probs (spec §3), and its variants.

Per completion token, with ``ℓ`` the policy log-prob, ``ℓ_old`` the log-prob when the rollout
batch was made (``sg(ℓ)`` when each batch is used once), ``ℓ_ref`` the reference model's and
``A`` the sequence's advantage::

    ratio  = exp(ℓ − ℓ_old)
    policy = −min(ratio·A, clip(ratio, 1 − ε, 1 + ε_high)·A)
    kl     = exp(ℓ_ref − ℓ) − (ℓ_ref − ℓ) − 1                    (k3 estimator, ≥ 0)
    token  = policy + β·kl

With ``importance_sampling_level="sequence"`` (GSPO) the log-ratio is first averaged over the
completion's tokens, ``mean_t(ℓ_t − ℓ_old,t)``, and that one ratio is used at every token, as in
TRL (the only stop-gradient is in ``ℓ_old = sg(ℓ)`` when rollouts are used once).

With a single update per rollout batch the ratio is ``exp(ℓ − sg(ℓ)) = 1`` and clipping is
inactive; the gradient is that of ``−ℓ·A`` (token level; ``−mean_t ℓ_t·A`` at sequence level), as
in the paper. Aggregation over tokens (``loss_type``, TRL's definitions):

- ``"grpo"`` (the paper): mean over each sequence's tokens, then mean over sequences;
- ``"dr_grpo"``: sum over all tokens / (sequences × ``max_completion_length``), no length bias;
- ``"dapo"``: sum over all tokens / number of tokens (token-level mean over the optimiser step);
- ``"bnpo"``: each micro-batch's token-level mean, averaged over the step's micro-batches (of
  every process). As in TRL the mean is over the *local* batch, so the loss depends on
  ``per_device_train_batch_size`` (with 1 it is ``"grpo"``; with the whole step in one
  micro-batch it is ``"dapo"``), not on the number of processes sharing those micro-batches.

Tokens are those of ``mask``: the completion up to and including EOS, less any completion the
trainer excludes (``mask_truncated_completions``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

LossType = Literal["grpo", "dr_grpo", "dapo", "bnpo"]
ImportanceSamplingLevel = Literal["token", "sequence"]


def k3_kl(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """Per-token ``exp(ℓ_ref − ℓ) − (ℓ_ref − ℓ) − 1``: an unbiased, non-negative KL(π‖π_ref) estimate."""
    delta = ref_logprobs - logprobs
    return torch.exp(delta) - delta - 1


def truncated_rows(
    completion_ids: torch.Tensor, completion_mask: torch.Tensor, eos_ids: torch.Tensor
) -> torch.Tensor:
    """``(N,)`` bool: completions whose last token is not an end of sequence (they hit the length
    limit), TRL's ``is_truncated``. ``completion_mask`` covers the tokens up to and including EOS."""
    last = (completion_mask.sum(-1).long() - 1).clamp(min=0)
    last_token = completion_ids.gather(1, last[:, None]).squeeze(1)
    return ~torch.isin(last_token, eos_ids.to(completion_ids.device))


@dataclass
class LossNormalizer:
    """Denominators of the aggregation, taken over the whole optimiser step's batch.

    A step's completions are processed in micro-batches; summing each micro-batch's loss with
    these global denominators gives exactly the loss of the full batch (for ``"bnpo"``: the mean
    of the micro-batches' token means, TRL's definition).
    """

    num_sequences: int
    num_tokens: int
    max_completion_length: int
    num_micro_batches: int = 1
    """Micro-batches in the optimiser step, over every process (``"bnpo"`` only)."""


def _importance_log_ratio(
    logprobs: torch.Tensor, old: torch.Tensor, mask: torch.Tensor, level: ImportanceSamplingLevel
) -> torch.Tensor:
    """``ℓ − ℓ_old`` per token ``(B, C)``, or its mean over each completion's tokens ``(B, 1)``."""
    log_ratio = logprobs - old
    if level == "token":
        return log_ratio
    if level == "sequence":
        return ((log_ratio * mask).sum(-1) / mask.sum(-1).clamp(min=1))[:, None]
    raise ValueError(f"importance_sampling_level must be 'token' or 'sequence', got {level!r}")


def _aggregate(
    per_token: torch.Tensor, mask: torch.Tensor, normalizer: LossNormalizer, loss_type: LossType
) -> torch.Tensor:
    """This micro-batch's share of the step loss (see the module docstring)."""
    if loss_type == "grpo":
        per_seq = (per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1)
        return per_seq.sum() / normalizer.num_sequences
    if loss_type == "dr_grpo":
        return (per_token * mask).sum() / (normalizer.num_sequences * normalizer.max_completion_length)
    if loss_type == "dapo":
        return (per_token * mask).sum() / max(normalizer.num_tokens, 1)
    if loss_type == "bnpo":
        return (per_token * mask).sum() / mask.sum().clamp(min=1) / normalizer.num_micro_batches
    raise ValueError(f"loss_type must be 'grpo', 'dr_grpo', 'dapo' or 'bnpo', got {loss_type!r}")


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
    importance_sampling_level: ImportanceSamplingLevel = "token",
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Loss of a micro-batch ``(B, C)`` as its share of the step loss, plus detached statistics.

    Returns ``(loss, stats)``; ``stats`` holds sums over this micro-batch (so they add up across
    micro-batches): ``kl_sum``, ``token_count`` and ``clipped_sum`` (tokens whose ratio is outside
    ``[1 − ε, 1 + ε_high]``) over ``mask``'s tokens, and TRL's region counts ``clip_low_sum``
    (ratio < 1 − ε with A < 0), ``clip_high_sum`` (ratio > 1 + ε_high with A > 0) and
    ``clip_region_sum`` (either) over ``clip_count`` units: tokens, or at sequence level
    sequences with at least one token in ``mask``.
    """
    mask = mask.to(logprobs.dtype)
    old = logprobs.detach() if old_logprobs is None else old_logprobs
    ratio = torch.exp(_importance_log_ratio(logprobs, old, mask, importance_sampling_level))
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
    loss = _aggregate(per_token, mask, normalizer, loss_type)

    with torch.no_grad():
        # Sequence level: one ratio per completion, counted once (TRL), if it is in the loss at all.
        units = mask if ratio.shape[1] > 1 else (mask.sum(-1, keepdim=True) > 0).to(mask.dtype)
        low = ((ratio < 1 - epsilon) & (adv < 0)).to(mask.dtype)
        high = ((ratio > 1 + eps_high) & (adv > 0)).to(mask.dtype)
        stats = {
            "kl_sum": (kl * mask).sum() if kl is not None else torch.zeros((), device=mask.device),
            "clipped_sum": (((ratio < 1 - epsilon) | (ratio > 1 + eps_high)).to(mask.dtype) * mask).sum(),
            "token_count": mask.sum(),
            "clip_low_sum": (low * units).sum(),
            "clip_high_sum": (high * units).sum(),
            "clip_region_sum": (torch.maximum(low, high) * units).sum(),
            "clip_count": units.sum(),
        }
    return loss, stats
