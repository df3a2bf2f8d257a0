"""What a test may assert when two rollouts of the same prompts were computed differently.

Two rollouts computed with different batch shapes, padding, caches, kernels, thread counts or
processes round differently (about 1e-7 relative in float32: BLAS blocking and vectorisation
depend on the shape and the CPU). A token is decided by the order of the two best *decision
scores* of its step:

- greedy: the logits (the rollout takes their argmax);
- sampled: ``log p − log E``, with ``p`` the restricted distribution and ``E ~ Exp(1)`` the
  step's noise (the exponential race of :func:`hrpo.sampling.sample`; the engine draws the
  noise for the whole batch every step, so both runs see the same ``E``).

So the two rollouts are equal token for token until the first step whose decision gap is
within that rounding, and may legitimately continue differently from there. In hybrid mode
the latent feeds ``p`` back, which can amplify rounding along a sequence, and with top-k a
near tie at the k-th place changes the latent by a jump. What is guaranteed, and what
:func:`assert_same_until_near_ties` checks, row by row:

1. while the tokens agree, the recorded log-probs agree within ``atol`` (log-prob units), and
   so do the thinking flags;
2. the first differing token, if any, is at a near tie: the reference run's decision gap
   there, recomputed teacher-forced, is at most ``tie``;
3. log-probs of identical tokens that drift apart by more than ``atol`` are allowed only
   after a near tie at the top-k boundary (hybrid mode with top-k).

Together with "each rollout's log-probs equal its own teacher-forced recomputation" (checked
separately), this is what training relies on. A real bug (a padding, position, cache or
compaction error) changes the distributions by far more than the tolerances, from the first
affected step on.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from hrpo import HybridModel, Rollout, RolloutConfig
from hrpo.sampling import restrict


@dataclass
class Agreement:
    """How far two rollouts were compared, for messages and for asserting the test is not vacuous."""

    compared: int  # token positions compared (identical tokens, log-probs within atol)
    diverged: list[tuple[int, int, float]]  # (row, step, decision gap) where tokens first differ
    drifted: list[tuple[int, int]]  # (row, step) where log-probs drifted after a top-k boundary tie


def teacher_forced_logits(model: HybridModel, ro: Rollout, hybrid: bool) -> torch.Tensor:
    """Float32 logits ``(N, C, V)`` predicting each completion token, fed the rollout's own inputs."""
    ids = torch.cat([ro.prompt_ids, ro.completion_ids], dim=1)
    mask = torch.cat([ro.prompt_mask, ro.completion_mask], dim=1).long()
    with torch.no_grad():
        embeds, _ = model.hybrid_embeds(
            ids, ro.latents if hybrid else None, ro.thinking_mask if hybrid else None
        )
        hidden = model.decode(embeds, mask)
        p, c = ro.prompt_ids.shape[1], ro.completion_ids.shape[1]
        return model.logits(hidden[:, p - 1 : p + c - 1])


def replay_noise(cfg: RolloutConfig, n: int, vocab: int, steps: int, seed: int) -> list[torch.Tensor]:
    """The exponential noise the engine drew at each step for a batch of ``n`` rows."""
    width = cfg.top_k if cfg.top_k is not None and 0 < cfg.top_k < vocab else vocab
    gen = torch.Generator().manual_seed(seed)
    return [torch.empty((n, width)).exponential_(generator=gen) for _ in range(steps)]


def decision_gaps(
    model: HybridModel, ro: Rollout, cfg: RolloutConfig, seed: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per step ``(N, C)``: the gap between the two best decision scores, and the top-k boundary gap.

    Both in log-prob units (logits / τ). The boundary gap is ``inf`` without top-k or in plain mode
    (the latent is then a continuous function of the logits, or absent).
    """
    logits = teacher_forced_logits(model, ro, cfg.hybrid)
    n, c, vocab = logits.shape
    noise = replay_noise(cfg, n, vocab, c, seed) if cfg.do_sample else None
    gaps = torch.full((n, c), float("inf"))
    boundary = torch.full((n, c), float("inf"))
    for t in range(c):
        z = logits[:, t]
        if noise is None:
            top = (z / cfg.temperature).topk(2, dim=-1).values
        else:
            support = restrict(z, cfg.temperature, cfg.top_k, cfg.top_p)
            scores = support.probs.log() - noise[t].log()
            top = scores.topk(2, dim=-1).values
        gaps[:, t] = top[:, 0] - top[:, 1]
        if cfg.hybrid and cfg.top_k is not None and 0 < cfg.top_k < vocab:
            kth = (z / cfg.temperature).topk(cfg.top_k + 1, dim=-1).values
            boundary[:, t] = kth[:, -2] - kth[:, -1]
    return gaps, boundary


def assert_same_until_near_ties(
    model: HybridModel,
    ref: Rollout,
    other: Rollout,
    cfg: RolloutConfig,
    *,
    atol: float,
    tie: float,
    seed: int | None = None,
    rows: list[int] | None = None,
) -> Agreement:
    """Check guarantees 1–3 of the module docstring for ``other`` against ``ref``.

    ``rows[i]`` is the row of ``ref`` that row ``i`` of ``other`` continues (default: the same row).
    ``seed`` is the rollout's seed (needed to replay the sampling noise of sampled rollouts).
    """
    gaps, boundary = decision_gaps(model, ref, cfg, seed)
    rows = list(range(len(other))) if rows is None else rows
    return check_agreement(
        Tokens.of(ref, rows), Tokens.of(other), gaps[rows], boundary[rows], atol=atol, tie=tie
    )


@dataclass
class Tokens:
    """The per-token record of a rollout that the agreement check reads (rows × steps)."""

    ids: torch.Tensor
    mask: torch.Tensor
    logprobs: torch.Tensor
    thinking: torch.Tensor

    @classmethod
    def of(cls, ro: Rollout, rows: list[int] | None = None) -> Tokens:
        idx = slice(None) if rows is None else rows
        return cls(ro.completion_ids[idx], ro.completion_mask[idx], ro.logprobs[idx], ro.thinking_mask[idx])


def check_agreement(
    ref: Tokens, other: Tokens, gaps: torch.Tensor, boundary: torch.Tensor, *, atol: float, tie: float
) -> Agreement:
    """Guarantees 1–3 row by row, with ``gaps``/``boundary`` ``(N, C)`` from :func:`decision_gaps` on ``ref``."""
    result = Agreement(0, [], [])
    for r in range(ref.ids.shape[0]):
        len_ref, len_other = int(ref.mask[r].sum()), int(other.mask[r].sum())
        for t in range(min(len_ref, len_other)):
            a, b = int(ref.ids[r, t]), int(other.ids[r, t])
            if a != b:
                gap = float(gaps[r, t])
                assert gap <= tie, (
                    f"row {r} step {t}: token {a} vs {b}, but the decision gap there is {gap:.3g} > {tie:g}: "
                    "not a rounding tie"
                )
                result.diverged.append((r, t, gap))
                break
            diff = abs(float(ref.logprobs[r, t]) - float(other.logprobs[r, t]))
            if diff > atol:
                assert bool((boundary[r, :t] <= tie).any()), (
                    f"row {r} step {t}: identical history, but log-probs differ by {diff:.3g} > {atol:g} "
                    "with no near tie before"
                )
                result.drifted.append((r, t))
                break
            assert bool(ref.thinking[r, t]) == bool(other.thinking[r, t]), (r, t)
            result.compared += 1
        else:
            # Identical tokens up to the shorter length: both ended there (EOS or the length limit).
            assert len_ref == len_other, f"row {r}: lengths {len_ref} vs {len_other} after identical tokens"
    return result


def assert_teacher_forced_parity(
    model: HybridModel, ro: Rollout, cfg: RolloutConfig, atol: float = 1e-4
) -> None:
    """The rollout's recorded log-probs equal its own teacher-forced recomputation (what training uses)."""
    with torch.no_grad():
        tf, _ = model.completion_logprobs(
            ro.prompt_ids,
            ro.prompt_mask,
            ro.completion_ids,
            ro.completion_mask,
            latents=ro.latents if cfg.hybrid else None,
            thinking_mask=ro.thinking_mask if cfg.hybrid else None,
            temperature=ro.temperature,
        )
    torch.testing.assert_close(tf, ro.logprobs, atol=atol, rtol=0)
