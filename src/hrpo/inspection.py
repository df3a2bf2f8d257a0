"""A per-token look inside hybrid reasoning: which positions think, how much latent they mix in,
and which vocabulary tokens the mixed-in latent is closest to.

At a thinking position the token ``x̂_t`` is fed back as ``a ⊙ E[x̂_t] + √(1−a²) ⊙ (i ⊙ h_t)``,
with ``h_t = Eᵀp_t / ‖p_t‖`` the latent of the step's distribution (spec §2). The rows here give,
per completion token, ``a`` averaged over the hidden dimensions (1 = pure token), the hidden
ratio ``√(1−a²)`` and the tokens whose embeddings have the highest cosine similarity with ``h_t``
(the paper finds latents that mix tokens of several languages).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from hrpo.model import HybridModel
from hrpo.prompts import Prompt
from hrpo.rollout import RolloutConfig, RolloutEngine


@torch.no_grad()
def nearest_tokens(
    latents: torch.Tensor, embedding: torch.Tensor, k: int, chunk: int = 64
) -> tuple[torch.Tensor, torch.Tensor]:
    """Ids and cosine similarities ``(T, k)`` of the ``k`` embedding rows closest to each latent."""
    e = torch.nn.functional.normalize(embedding.float(), dim=-1)
    ids, sims = [], []
    for s in range(0, latents.shape[0], chunk):  # T×V similarities a chunk at a time
        h = torch.nn.functional.normalize(latents[s : s + chunk].float().to(e.device), dim=-1)
        top = (h @ e.T).topk(k, dim=-1)
        ids.append(top.indices)
        sims.append(top.values)
    if not ids:
        return torch.zeros((0, k), dtype=torch.long), torch.zeros((0, k))
    return torch.cat(ids).cpu(), torch.cat(sims).cpu()


def inspect_prompt(
    model: HybridModel,
    tokenizer: PreTrainedTokenizerBase,
    prompt: Prompt,
    config: RolloutConfig,
    *,
    top: int = 5,
    seed: int | None = None,
) -> dict[str, Any]:
    """Generate one completion for ``prompt`` and describe each of its tokens.

    Returns ``completion`` (text), ``tokens`` (one dict per completion token: ``position``,
    ``token`` text, ``id``, ``thinking``, ``a``, ``hidden_ratio`` and, at thinking positions,
    ``nearest``: ``[token text, cosine]`` pairs) and the mean ``hidden_ratio`` over thinking tokens.
    """
    engine = RolloutEngine(model, tokenizer, dataclasses.replace(config, num_generations=1))
    ro = engine.generate([prompt], seed=seed)
    n = int(ro.completion_mask[0].sum())
    ids = ro.completion_ids[0, :n].tolist()
    thinking = ro.thinking_mask[0, :n].cpu()
    think_pos = thinking.nonzero().flatten()
    near_ids, near_sims = nearest_tokens(
        ro.latents[0, :n][think_pos.to(ro.latents.device)], model.get_embedding_weight(), top
    )
    nearest = {int(p): (near_ids[j].tolist(), near_sims[j].tolist()) for j, p in enumerate(think_pos)}
    rows = []
    for t, tid in enumerate(ids):
        row: dict[str, Any] = {
            "position": t,
            "token": tokenizer.decode([tid]),
            "id": tid,
            "thinking": bool(thinking[t]),
            "a": float(ro.embeds_ratio[0, t]),
            "hidden_ratio": float(ro.hidden_ratio[0, t]),
        }
        if t in nearest:
            row["nearest"] = [[tokenizer.decode([i]), round(s, 4)] for i, s in zip(*nearest[t], strict=True)]
        rows.append(row)
    think_rows = [r for r in rows if r["thinking"]]
    return {
        "prompt": ro.prompt_texts[0],
        "completion": ro.completion_texts[0],
        "tokens": rows,
        "thinking_tokens": len(think_rows),
        "hidden_ratio": sum(r["hidden_ratio"] for r in think_rows) / len(think_rows) if think_rows else 0.0,
    }


def format_table(report: dict[str, Any]) -> str:
    """The report as a fixed-width text table, one line per token."""
    lines = [
        f"{'pos':>4}  {'token':<16}{'think':<6}{'a':>7}{'hidden':>8}  nearest tokens to the latent (cosine)"
    ]
    for r in report["tokens"]:
        near = "  ".join(f"{tok!r} {sim:.2f}" for tok, sim in r.get("nearest", []))
        lines.append(
            f"{r['position']:>4}  {repr(r['token'])[:15]:<16}{'yes' if r['thinking'] else '':<6}"
            f"{r['a']:>7.3f}{r['hidden_ratio']:>8.3f}  {near}".rstrip()
        )
    lines.append(
        f"{len(report['tokens'])} tokens, {report['thinking_tokens']} thinking, "
        f"mean hidden ratio {report['hidden_ratio']:.3f}"
    )
    return "\n".join(lines)


def plot_heatmap(report: dict[str, Any], path: str | Path, *, per_row: int = 12) -> Path:
    """Draw the completion as a grid of tokens coloured by hidden ratio (plain tokens grey)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    tokens = report["tokens"]
    n_rows = max(1, -(-len(tokens) // per_row))
    grid = np.full((n_rows, per_row), np.nan)
    for r in tokens:
        if r["thinking"]:
            grid[divmod(r["position"], per_row)] = r["hidden_ratio"]
    fig, ax = plt.subplots(figsize=(per_row * 1.1, 0.45 * n_rows + 1.2))
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="#dddddd")
    think = [r["hidden_ratio"] for r in tokens if r["thinking"]] or [0.0]
    # The colour range spans the values present: hidden ratios often differ only in the 3rd decimal.
    vmin, vmax = min(think), max(think)
    if vmax - vmin < 1e-3:
        vmin, vmax = vmin - 5e-4, vmax + 5e-4
    image = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
    for r in tokens:
        row, col = divmod(r["position"], per_row)
        text = r["token"].replace("\n", "⏎")
        label = "".join(c if c.isprintable() else "·" for c in text)[:10]
        dark = r["thinking"] and r["hidden_ratio"] < vmin + 0.6 * (vmax - vmin)
        ax.text(col, row, label, ha="center", va="center", fontsize=7, color="white" if dark else "black")
    ax.set_xticks([])
    ax.set_yticks(range(n_rows), [str(i * per_row) for i in range(n_rows)], fontsize=7)
    ax.set_title("hybrid reasoning: hidden ratio √(1−a²) per thinking token (grey: plain token)", fontsize=9)
    fig.colorbar(image, ax=ax, fraction=0.02, pad=0.01, label="hidden ratio")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
