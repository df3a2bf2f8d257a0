"""The data of one optimiser step: what :meth:`HRPOTrainer.collect` gathers and what
:meth:`HRPOTrainer.update` sums, read by :meth:`HRPOTrainer.metrics` and the run's logs.

A step's trajectory is this process's share of the step's completions (whole groups of G) with
their rollouts, rewards and group-relative advantages (gathered across processes, then sliced),
the reference and old log-probs when the loss needs them, and the loss normaliser that makes the
micro-batched, multi-process loss equal the loss over the whole global batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from hrpo.loss import LossNormalizer
from hrpo.rollout import Rollout


@dataclass
class StepBatch:
    """What one optimiser step is computed from (this process's share; ``all_*``: every process's)."""

    step: int
    rows: list[dict[str, Any]]
    """The dataset row of each completion (a prompt's row repeated G times)."""
    rollout: Rollout
    rewards: torch.Tensor
    """(N,) weighted total reward of this process's completions."""
    reward_parts: dict[str, torch.Tensor]
    """Each reward function's (N,) unweighted values, by name."""
    all_rewards: torch.Tensor
    """(N × processes,) every process's total rewards, in process order."""
    all_advantages: torch.Tensor
    advantages: torch.Tensor
    """(N,) this process's slice of ``all_advantages``."""
    ref_logprobs: torch.Tensor | None
    old_logprobs: torch.Tensor | None
    normalizer: LossNormalizer
    started: float
    """``time.perf_counter()`` when the step began."""
    rollout_seconds: float

    def samples(self, limit: int) -> list[dict[str, Any]]:
        """The first ``limit`` completions with their rewards and advantages, for samples.jsonl."""
        ro = self.rollout
        return [
            {
                "prompt": ro.prompt_texts[i],
                "completion": ro.completion_texts[i],
                "reward": float(self.rewards[i]),
                "advantage": float(self.advantages[i]),
            }
            for i in range(min(len(ro), limit))
        ]


@dataclass
class UpdateStats:
    """Sums over an update's micro-batches (this process), for the step's metrics."""

    loss: float = 0.0
    kl: float = 0.0
    clipped: float = 0.0
    grad_norm: float = 0.0
