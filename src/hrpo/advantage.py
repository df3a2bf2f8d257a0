"""Group-relative advantages (spec §3): ``A_i = (R_i − mean_group) / (std_group + 1e-4)``."""

from __future__ import annotations

from typing import Literal

import torch

ScaleRewards = Literal["group", "batch", "none"]


def group_advantages(
    rewards: torch.Tensor, num_generations: int, scale_rewards: ScaleRewards = "group", eps: float = 1e-4
) -> torch.Tensor:
    """Advantages for rewards ``(N,)`` laid out as contiguous groups of ``num_generations``.

    ``scale_rewards``: ``"group"`` divides by each group's standard deviation (the paper, and
    GRPO); ``"batch"`` by the standard deviation over the whole batch; ``"none"`` only centres
    (Dr. GRPO, which argues the division biases towards too-easy and too-hard prompts). The
    standard deviation is the unbiased one, as in the reference code (TRL's ``Tensor.std``).
    """
    if rewards.ndim != 1 or rewards.numel() % num_generations:
        raise ValueError(
            f"rewards must be 1-D with a multiple of num_generations={num_generations} rows, "
            f"got shape {tuple(rewards.shape)}"
        )
    grouped = rewards.float().view(-1, num_generations)
    centred = grouped - grouped.mean(dim=1, keepdim=True)
    if scale_rewards == "group":
        std = grouped.std(dim=1, keepdim=True) if num_generations > 1 else torch.zeros_like(grouped[:, :1])
        centred = centred / (std + eps)
    elif scale_rewards == "batch":
        std = rewards.float().std() if rewards.numel() > 1 else torch.zeros(())
        centred = centred / (std + eps)
    elif scale_rewards != "none":
        raise ValueError(f"scale_rewards must be 'group', 'batch' or 'none', got {scale_rewards!r}")
    return centred.view(-1)
