"""Next-token distributions: temperature, top-k / top-p restriction and sampling.

The rollout engine and the latent projection (:mod:`hrpo.latent`) share one restricted
distribution per step, so the latent is built from exactly the probabilities the token was
sampled from (spec §2: the reference applies the sampler's top-k before normalising).
:func:`stable_seed` derives the seeds that must repeat across processes and runs.
"""

from __future__ import annotations

import hashlib
from typing import NamedTuple

import torch


def stable_seed(*parts: object) -> int:
    """A 63-bit seed from ``parts`` (by their ``str``), the same in every process, run and machine.

    Python's ``hash()`` is salted per process, so it cannot derive a seed that must repeat.
    """
    digest = hashlib.sha256(",".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


class Support(NamedTuple):
    """A restricted next-token distribution.

    ``probs`` sums to 1 along the last dim. With ``index`` set, ``probs[b, j]`` is the
    probability of vocabulary id ``index[b, j]`` (a top-k support, sorted by descending
    probability); with ``index`` None, ``probs`` is dense over the whole vocabulary.
    """

    probs: torch.Tensor
    index: torch.Tensor | None


def restrict(
    logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None, top_p: float = 1.0
) -> Support:
    """``softmax(logits / temperature)`` restricted to the top-k, then top-p, tokens.

    ``logits`` is ``(B, V)``. Restriction follows ``transformers``' warpers: top-k first, then
    the smallest set of tokens whose probability reaches ``top_p``; always at least one token.
    With top-k the result is gathered (``B×k``), never a dense ``B×V`` tensor.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if top_k is not None and top_k < 0:
        raise ValueError(f"top_k must be >= 0 or None (0 and None keep every token), got {top_k}")
    scaled = logits.float() / temperature
    vocab = scaled.shape[-1]
    if top_k is not None and 0 < top_k < vocab:
        vals, index = scaled.topk(top_k, dim=-1)
        if top_p < 1.0:
            vals = _mask_top_p(vals, top_p)
        return Support(torch.softmax(vals, dim=-1), index)
    if top_p < 1.0:
        vals, order = scaled.sort(dim=-1, descending=True)
        vals = _mask_top_p(vals, top_p)
        scaled = torch.full_like(scaled, float("-inf")).scatter(-1, order, vals)
    return Support(torch.softmax(scaled, dim=-1), None)


def _mask_top_p(sorted_vals: torch.Tensor, top_p: float) -> torch.Tensor:
    """Set to −inf every sorted logit outside the smallest prefix with probability ≥ top_p."""
    probs = torch.softmax(sorted_vals, dim=-1)
    mass_before = probs.cumsum(dim=-1) - probs
    return sorted_vals.masked_fill(mass_before >= top_p, float("-inf"))


def sample(
    support: Support, generator: torch.Generator | None = None, noise: torch.Tensor | None = None
) -> torch.Tensor:
    """Draw one token id per row from ``support``.

    Uses the exponential-race form of categorical sampling (``argmax p / E`` with
    ``E ~ Exp(1)``): the same law as ``torch.multinomial``, without a host synchronisation.
    ``noise`` supplies ``E`` (shaped like ``support.probs``) instead of drawing it.
    """
    if noise is None:
        noise = torch.empty_like(support.probs).exponential_(generator=generator)
    choice = (support.probs / noise).argmax(dim=-1)
    if support.index is None:
        return choice
    return support.index.gather(-1, choice[:, None]).squeeze(-1)


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """``log softmax(logits / temperature)[token]`` over the full vocabulary, in float32.

    ``logits`` is ``(..., V)`` and ``tokens`` is ``(...)``. This is the quantity the trainer
    recomputes teacher-forced, so the rollout records exactly this (not the top-k law).
    """
    scaled = logits.float() / temperature
    picked = scaled.gather(-1, tokens[..., None]).squeeze(-1)
    return picked - torch.logsumexp(scaled, dim=-1)


def token_entropy(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Entropy ``−Σ p log p`` of ``softmax(logits / temperature)`` over the full vocabulary, in
    float32 (TRL's ``entropy`` metric: the policy's, not the top-k/top-p sampler's)."""
    scaled = logits.float() / temperature
    logp = torch.log_softmax(scaled, dim=-1)
    return -(logp.exp() * logp).sum(-1)
