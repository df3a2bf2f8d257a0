"""The data that flows through a step: rollouts, and what one optimiser step is computed from.

A :class:`Rollout` is what :class:`~hrpo.rollout.RolloutEngine` returns: token ids, masks, the
stored latents and per-position statistics of a batch of completions. A :class:`StepBatch` is
what :meth:`HRPOTrainer.collect` gathers and :meth:`HRPOTrainer.update` trains on; an
:class:`UpdateStats` is what the update sums; :meth:`HRPOTrainer.metrics` reads both.

A step's trajectory is this process's share of the step's completions (whole groups of G) with
their rollouts, rewards and group-relative advantages (gathered across processes, then sliced),
the reference and old log-probs when the loss needs them, and the loss normaliser that makes the
micro-batched, multi-process loss equal the loss over the whole global batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import torch

from hrpo.loss import LossNormalizer


@dataclass
class Rollout:
    """A batch of completed rollouts, ``N = num_prompts × G`` rows, completions right-padded."""

    prompt_ids: torch.Tensor  # (N, P) left-padded
    prompt_mask: torch.Tensor  # (N, P)
    completion_ids: torch.Tensor  # (N, C) padded with pad_token_id after EOS
    completion_mask: torch.Tensor  # (N, C) 1 up to and including EOS
    thinking_mask: torch.Tensor  # (N, C) bool: positions fed as hybrid inputs
    latents: torch.Tensor  # (N, C, d) latent h at thinking positions, 0 elsewhere
    embeds_ratio: torch.Tensor  # (N, C) mean of a over d at thinking positions, 1 elsewhere
    hidden_ratio: torch.Tensor  # (N, C) mean of sqrt(1 - a²) at thinking positions, 0 elsewhere
    logprobs: torch.Tensor  # (N, C) log softmax(z/τ)[x̂], 0 after EOS
    group_ids: torch.Tensor  # (N,) index of the prompt each row came from
    temperature: float
    prompt_texts: list[str] = field(default_factory=list)
    completion_texts: list[str] = field(default_factory=list)
    entropy: torch.Tensor | None = None  # (N, C) entropy of softmax(z/τ) over the vocabulary, 0 after EOS
    # What the gate does, at thinking positions (0 elsewhere): mean of i over d, ‖h‖/‖ê‖, and
    # ‖e − a⊙ê‖/‖ê‖, the size of what the latent adds to the fed input relative to the token embedding.
    input_gate: torch.Tensor | None = None  # (N, C)
    latent_norm_ratio: torch.Tensor | None = None  # (N, C)
    latent_input_ratio: torch.Tensor | None = None  # (N, C)

    def __len__(self) -> int:
        return self.completion_ids.shape[0]

    def to(self, device: torch.device | str) -> Rollout:
        moved = {
            f.name: (v.to(device) if isinstance(v := getattr(self, f.name), torch.Tensor) else v)
            for f in fields(self)
        }
        return Rollout(**moved)

    @property
    def completion_lengths(self) -> torch.Tensor:
        return self.completion_mask.sum(-1)

    def model_inputs(
        self, rows: slice = slice(None), *, hybrid: bool = True
    ) -> dict[str, torch.Tensor | None]:
        """Keyword arguments of :meth:`HybridModel.completion_logprobs` that recompute ``rows``
        teacher-forced: with the stored latents (``hybrid``) or as plain tokens."""
        return {
            "prompt_ids": self.prompt_ids[rows],
            "prompt_mask": self.prompt_mask[rows],
            "completion_ids": self.completion_ids[rows],
            "completion_mask": self.completion_mask[rows],
            "latents": self.latents[rows] if hybrid else None,
            "thinking_mask": self.thinking_mask[rows] if hybrid else None,
        }

    def mean_embeds_ratio(self) -> float:
        """Mean of ``a`` over all thinking positions and dimensions (1.0 with none)."""
        n = self.thinking_mask.sum()
        return float((self.embeds_ratio * self.thinking_mask).sum() / n) if n else 1.0

    def mean_hidden_ratio(self) -> float:
        """Mean of ``sqrt(1 − a²)`` over all thinking positions and dimensions (0.0 with none)."""
        n = self.thinking_mask.sum()
        return float((self.hidden_ratio * self.thinking_mask).sum() / n) if n else 0.0


def pad_to(x: torch.Tensor, width: int, value, left: bool) -> torch.Tensor:
    """``x`` padded with ``value`` on the left or right of dim 1 to ``width`` positions."""
    extra = width - x.shape[1]
    if extra == 0:
        return x
    pad = torch.full((x.shape[0], extra, *x.shape[2:]), value, dtype=x.dtype, device=x.device)
    return torch.cat([pad, x] if left else [x, pad], dim=1)


def concat_rollouts(rollouts: Sequence[Rollout], pad_id: int) -> Rollout:
    """Concatenate rollouts along the batch, re-padding prompts (left) and completions (right).

    ``group_ids`` are offset so that groups stay distinct and contiguous.
    """
    if len(rollouts) == 1:
        return rollouts[0]
    p = max(r.prompt_ids.shape[1] for r in rollouts)
    c = max(r.completion_ids.shape[1] for r in rollouts)
    offsets, total = [], 0
    for r in rollouts:
        offsets.append(total)
        total += int(r.group_ids.max()) + 1 if len(r) else 0

    def cat(name: str, width: int, value, left: bool) -> torch.Tensor:
        return torch.cat([pad_to(getattr(r, name), width, value, left) for r in rollouts])

    return Rollout(
        prompt_ids=cat("prompt_ids", p, pad_id, True),
        prompt_mask=cat("prompt_mask", p, 0, True),
        completion_ids=cat("completion_ids", c, pad_id, False),
        completion_mask=cat("completion_mask", c, 0, False),
        thinking_mask=cat("thinking_mask", c, False, False),
        latents=cat("latents", c, 0.0, False),
        embeds_ratio=cat("embeds_ratio", c, 1.0, False),
        hidden_ratio=cat("hidden_ratio", c, 0.0, False),
        logprobs=cat("logprobs", c, 0.0, False),
        **{
            name: cat(name, c, 0.0, False)
            for name in ("entropy", "input_gate", "latent_norm_ratio", "latent_input_ratio")
            if all(getattr(r, name) is not None for r in rollouts)
        },
        group_ids=torch.cat([r.group_ids + o for r, o in zip(rollouts, offsets, strict=True)]),
        temperature=rollouts[0].temperature,
        prompt_texts=[t for r in rollouts for t in r.prompt_texts],
        completion_texts=[t for r in rollouts for t in r.completion_texts],
    )


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
    """Sum of the updates' losses."""
    kl: float = 0.0
    clipped: float = 0.0
    grad_norm: float = 0.0
    """Of the last update."""
    entropy: float = 0.0
    """Sum of the policy's per-token entropy over the loss tokens, from the loss pass."""
    clip_low: float = 0.0
    clip_high: float = 0.0
    clip_region: float = 0.0
    clip_count: float = 0.0
    """Denominator of the three clip sums (tokens, or sequences at sequence level)."""
    updates: int = 0
    """Optimiser updates taken (num_iterations × optimiser batches per rollout batch)."""

    def add(self, loss: torch.Tensor, entropy_sum: torch.Tensor, parts: dict[str, torch.Tensor]) -> None:
        """Add a micro-batch's loss, entropy sum and :func:`~hrpo.loss.policy_loss` statistics,
        with one device synchronisation for all of them."""
        keys = ("kl_sum", "clipped_sum", "clip_low_sum", "clip_high_sum", "clip_region_sum", "clip_count")
        values = torch.stack([loss.detach().float(), entropy_sum.float(), *(parts[k].float() for k in keys)])
        names = ("loss", "entropy", "kl", "clipped", "clip_low", "clip_high", "clip_region", "clip_count")
        for name, value in zip(names, values.tolist(), strict=True):
            setattr(self, name, getattr(self, name) + value)


def micro_batches(start: int, n: int, size: int) -> list[slice]:
    """Slices of ``size`` rows covering rows ``start .. start + n`` (the last one may be shorter)."""
    return [slice(s, min(s + size, start + n)) for s in range(start, start + n, size)]


def optimizer_batches(n: int, k: int) -> list[slice]:
    """The rows of each optimiser update of a pass over a rollout batch of ``n`` rows: ``k``
    consecutive equal parts (``steps_per_generation``; one part by default)."""
    size = n // k
    return [slice(j * size, (j + 1) * size) for j in range(k)]
