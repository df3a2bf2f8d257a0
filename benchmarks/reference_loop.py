"""A hybrid rollout loop in the style of the HRPO reference implementation, for comparison only.

It reproduces the costs that HRPO_SPEC §6 lists as defects of the reference code, not its code:
every step it runs the model on ``inputs_embeds`` with a KV cache, samples with
``torch.multinomial``, projects the *full* ``V×d`` embedding matrix for the latent, and decodes
the text of every sequence generated so far to look for the answer marker (a device-to-host copy
and ``O(B·T)`` detokenisation per step, ``O(B·T²)`` per rollout). It is used by
``rollout_throughput.py`` as method (d); it is not part of the library.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache

from hrpo.model import HybridModel, position_ids_from_mask


@torch.no_grad()
def reference_style_rollout(
    model: HybridModel,
    tokenizer,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    *,
    max_new_tokens: int,
    temperature: float,
    top_k: int,
    marker: str = "####",
    seed: int = 0,
) -> torch.Tensor:
    """Generate ``max_new_tokens`` tokens per row (EOS ignored, as in the benchmark); returns the ids."""
    torch.manual_seed(seed)
    device = model.device
    ids, mask = prompt_ids.to(device), prompt_mask.to(device).long()
    n = ids.shape[0]
    weight = model.get_embedding_weight()
    cache = DynamicCache(config=model.config)
    positions = position_ids_from_mask(mask)
    hidden = model.decode(model.embed_tokens(ids), mask, positions, past_key_values=cache)
    logits = model.logits(hidden[:, -1])
    next_pos = positions[:, -1:] + 1
    generated = torch.empty((n, 0), dtype=torch.long, device=device)
    for _ in range(max_new_tokens):
        scaled = logits / temperature
        kth = scaled.topk(top_k, dim=-1).values[:, -1:]
        probs = torch.softmax(scaled.masked_fill(scaled < kth, float("-inf")), dim=-1)
        tok = torch.multinomial(probs, 1).squeeze(-1)
        generated = torch.cat([generated, tok[:, None]], dim=1)
        # The defects being measured: whole-text decoding per step, and a dense V×d projection.
        texts = tokenizer.batch_decode(generated.cpu(), skip_special_tokens=True)
        thinking = torch.tensor([marker not in t for t in texts], device=device)
        latent = (probs @ weight.float()) / probs.norm(dim=-1, keepdim=True)
        embeds = model.embed_tokens(tok)
        mixed, _ = model.gate(embeds, latent.to(embeds.dtype))
        embeds = torch.where(thinking[:, None], mixed, embeds)
        mask = torch.cat([mask, torch.ones((n, 1), dtype=mask.dtype, device=device)], dim=1)
        hidden = model.decode(embeds[:, None], mask, next_pos, past_key_values=cache)
        logits = model.logits(hidden[:, -1])
        next_pos = next_pos + 1
    return generated
