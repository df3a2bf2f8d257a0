"""A Hugging Face causal LM wrapped with the HRPO gate, driven through public APIs only.

:class:`HybridModel` does not modify the wrapped model. It builds the input embeddings itself
(token embeddings, mixed with stored latents at thinking positions by :class:`~hrpo.gate.HybridGate`)
and passes them as ``inputs_embeds`` to the model's decoder (``get_decoder()``), then applies
the output head (``get_output_embeddings()``) only where log-probs are needed, in chunks. The
same two calls serve the rollout engine (with a KV cache) and teacher-forced recomputation, so
both see the same numbers.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from torch import nn
from transformers import PreTrainedModel

from hrpo import checkpoint
from hrpo.distributed import full_tensor
from hrpo.gate import HybridGate


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that count only attended tokens, so left padding does not shift them."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


class HybridModel(nn.Module):
    """A causal LM (plain or PEFT-wrapped) plus an HRPO gate.

    Args:
        model: any ``AutoModelForCausalLM`` model or a ``peft.PeftModel`` around one.
        gate: an existing gate; by default a fresh one for the model's hidden size.
        r_min, r_max: initial decay range of a fresh gate (spec §2).
        seed: seed for the fresh gate's initialisation.
    """

    def __init__(
        self,
        model: PreTrainedModel | PeftModel,
        gate: HybridGate | None = None,
        *,
        r_min: float = 0.99,
        r_max: float = 0.999,
        seed: int | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        embed = model.get_input_embeddings()
        hidden = embed.weight.shape[1]
        if gate is None:
            gen = torch.Generator().manual_seed(seed) if seed is not None else None
            gate = HybridGate(hidden, r_min=r_min, r_max=r_max, generator=gen)
        if gate.hidden_size != hidden:
            raise ValueError(f"gate hidden size {gate.hidden_size} != model embedding size {hidden}")
        self.gate = gate.to(embed.weight.device)
        self._cache_argument = cache_argument(model.get_decoder())
        self.decoding_settings: dict[str, Any] | None = None
        """The decoding settings the model was trained with (temperature, top-k/p, marker, system
        prompt, hybrid on/off), written beside its checkpoints (:mod:`hrpo.checkpoint`) so that
        ``hrpo eval/generate/inspect --checkpoint`` decode as training did."""

    # -- model facts ---------------------------------------------------------------------------
    @property
    def language_model(self) -> PreTrainedModel | PeftModel:
        """The wrapped causal LM (registered as the submodule ``model``, so parameter and
        checkpoint names read ``model.*``)."""
        return self.model

    @property
    def config(self):
        return self.model.config

    @property
    def _no_split_modules(self) -> list[str] | None:
        """The wrapped model's decoder-layer classes: what FSDP auto-wrapping shards one by one."""
        return getattr(self.model, "_no_split_modules", None)

    @property
    def device(self) -> torch.device:
        return self.model.get_input_embeddings().weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.get_input_embeddings().weight.dtype

    @property
    def vocab_size(self) -> int:
        return self.model.get_output_embeddings().weight.shape[0]

    @property
    def hidden_size(self) -> int:
        return self.gate.hidden_size

    @property
    def embed_scale(self) -> float | torch.Tensor:
        """Factor applied inside the embedding layer (Gemma's ``sqrt(d)``), else 1."""
        scale = getattr(self.model.get_input_embeddings(), "embed_scale", 1.0)
        return float(scale) if isinstance(scale, (int, float)) else scale

    def get_embedding_weight(self) -> torch.Tensor:
        """The input embedding matrix ``E`` (``V×d``) that latents are projected onto."""
        return self.model.get_input_embeddings().weight

    # -- embeddings ----------------------------------------------------------------------------
    def embed_tokens(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model.get_input_embeddings()(input_ids)

    def hybrid_embeds(
        self,
        input_ids: torch.Tensor,
        latents: torch.Tensor | None = None,
        thinking_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Input embeddings with the gate applied at thinking positions.

        ``latents`` ``(B, C, d)`` and ``thinking_mask`` ``(B, C)`` cover the *last* ``C`` positions
        of ``input_ids`` ``(B, L)`` (the completion); earlier positions are prompt tokens, which
        are never hybrid. Latents are rollout data: no gradient flows into them.

        Returns the embeddings and ``a`` ``(B, C, d)`` (None without latents).
        """
        embeds = self.embed_tokens(input_ids)
        if latents is None or thinking_mask is None:
            return embeds, None
        c = latents.shape[1]
        if thinking_mask.shape != latents.shape[:2] or c > input_ids.shape[1]:
            raise ValueError(
                f"latents {tuple(latents.shape)} and thinking_mask {tuple(thinking_mask.shape)} "
                f"must cover the last positions of input_ids {tuple(input_ids.shape)}"
            )
        tail = embeds[:, -c:]
        mixed, a = self.gate(tail, latents.detach())
        tail = torch.where(thinking_mask[..., None].bool(), mixed, tail)
        return torch.cat([embeds[:, :-c], tail], dim=1), a

    # -- forward pieces ------------------------------------------------------------------------
    def decode(
        self,
        inputs_embeds: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor | None = None,
        past_key_values=None,
    ) -> torch.Tensor:
        """Last hidden states of the decoder for ``inputs_embeds`` (``use_cache`` when a cache is given)."""
        if position_ids is None:
            position_ids = position_ids_from_mask(attention_mask)
        out = self.model.get_decoder()(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=past_key_values is not None,
            **{self._cache_argument: past_key_values},
        )
        return out.last_hidden_state

    def decode_step(
        self,
        inputs_embeds: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        past_key_values,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One cached decoding step: the last position's hidden state ``(B, d)`` and float32 logits.

        This is the unit the rollout engine compiles: with a static cache and a full-length
        ``attention_mask`` every call has the same shapes.
        """
        hidden = self.decode(inputs_embeds, attention_mask, position_ids, past_key_values=past_key_values)[
            :, -1
        ]
        return hidden, self.logits(hidden)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Output-head logits in float32, with the model's final soft-capping if it has one."""
        logits = self.model.get_output_embeddings()(hidden).float()
        cap = getattr(self.config.get_text_config(), "final_logit_softcapping", None)
        if cap:
            logits = torch.tanh(logits / cap) * cap
        return logits

    def completion_logprobs(
        self,
        prompt_ids: torch.Tensor,
        prompt_mask: torch.Tensor,
        completion_ids: torch.Tensor,
        completion_mask: torch.Tensor | None = None,
        latents: torch.Tensor | None = None,
        thinking_mask: torch.Tensor | None = None,
        temperature: float = 1.0,
        chunk_size: int = 128,
        return_entropy: bool = False,
    ) -> tuple[torch.Tensor, ...]:
        """Teacher-forced log-probs of ``completion_ids`` ``(B, C)`` given left-padded prompts.

        At thinking positions the input is rebuilt from the stored ``latents`` with the *current*
        gate, so gradients reach the gate, Λ and any adapters. The output head runs over
        ``chunk_size`` positions at a time, so float32 logits never exist for the whole
        ``B × C × V`` block. Returns log-probs ``(B, C)`` (float32; zero where
        ``completion_mask`` is 0) and the decay ``a`` at completion positions (or None); with
        ``return_entropy`` also the entropy of ``softmax(logits / temperature)`` at each position
        ``(B, C)`` (float32, detached, zero where ``completion_mask`` is 0), computed from the same
        chunks of logits: a metric at no extra forward pass.
        """
        if completion_mask is None:
            completion_mask = torch.ones_like(completion_ids)
        input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
        mask = torch.cat([prompt_mask, completion_mask], dim=1).long()
        embeds, a = self.hybrid_embeds(input_ids, latents, thinking_mask)
        hidden = self.decode(embeds, mask)
        p, c = prompt_ids.shape[1], completion_ids.shape[1]
        hidden = hidden[:, p - 1 : p + c - 1]  # position t predicts token t + 1
        out, entropy = [], []
        for s in range(0, c, chunk_size):
            logits = self.logits(hidden[:, s : s + chunk_size]) / temperature
            target = completion_ids[:, s : s + chunk_size]
            picked = logits.gather(-1, target[..., None]).squeeze(-1)
            lse = torch.logsumexp(logits, dim=-1)
            out.append(picked - lse)
            if return_entropy:
                with torch.no_grad():  # a metric: −Σ p log p = logsumexp(z) − Σ p·z, no graph kept
                    z = logits.detach()
                    entropy.append(lse.detach() - (torch.softmax(z, dim=-1) * z).sum(-1))
        logprobs = torch.cat(out, dim=1) * completion_mask
        if return_entropy:
            return logprobs, a, torch.cat(entropy, dim=1) * completion_mask
        return logprobs, a

    def forward(self, *args, **kwargs) -> tuple[torch.Tensor, ...]:
        """:meth:`completion_logprobs`; a ``forward`` so that DDP/FSDP wrappers see the call."""
        return self.completion_logprobs(*args, **kwargs)

    # -- persistence ---------------------------------------------------------------------------
    def trainable_state(self) -> dict[str, torch.Tensor]:
        """Full CPU copies of what a checkpoint holds, by name: the trainable parameters and the
        gate for an adapter model, the whole state for full fine-tuning.

        Under FSDP2 this all-gathers the shards: call it on every process.
        """
        if isinstance(self.model, PeftModel):
            items = [(n, p) for n, p in self.named_parameters() if p.requires_grad or n.startswith("gate.")]
        else:
            items = list(self.state_dict().items())
        return {name: full_tensor(t.detach()).cpu() for name, t in items}

    def save_pretrained(self, path: str | Path) -> Path:
        """Write adapter (PEFT) or full weights, plus the gate, to ``path`` atomically
        (:mod:`hrpo.checkpoint` has the format)."""
        return checkpoint.save_model(self, path)

    @classmethod
    def from_pretrained(
        cls, path: str | Path, base_model: PreTrainedModel | None = None, *, is_trainable: bool = False
    ) -> HybridModel:
        """Load what :meth:`save_pretrained` wrote.

        For an adapter checkpoint, ``base_model`` is the model the adapter was trained on;
        for a full checkpoint, the weights are loaded from ``path`` and ``base_model`` is unused.
        """
        lm, gate = checkpoint.read_model(path, base_model, is_trainable=is_trainable)
        model = cls(lm, gate)
        model.decoding_settings = checkpoint.read_decoding_settings(path)
        return model


def cache_argument(decoder: nn.Module) -> str:
    """The decoder's keyword for the KV cache: ``cache`` in transformers versions that renamed it
    (``past_key_values`` is deprecated there, to be removed in 5.40), else ``past_key_values``."""
    parameters = inspect.signature(decoder.forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"
