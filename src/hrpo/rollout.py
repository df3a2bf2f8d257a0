"""Hybrid rollouts: sampling completions while feeding back gated latent inputs (spec §2).

At each decoding step, for every sequence still running:

1. the step's logits give the restricted distribution ``p`` (temperature, top-k, top-p) and
   the next token ``x̂`` (sampled, or argmax when greedy);
2. the marker automaton advances on ``x̂``; the token is a *thinking* position if the answer
   marker has not yet appeared (the token completing it is already plain) and it is not EOS;
   with ``ignore_marker_headings`` a line-start marker is plain while it may still turn out a
   heading, and thinking resumes if it does (:mod:`hrpo.marker`);
3. the next input is ``E[x̂]`` for plain positions and the gate's mix of ``E[x̂]`` with the
   latent ``h = Eᵀp/‖p‖₂`` for thinking positions; the latent is stored with the rollout so the
   trainer can rebuild the exact same input under the current gate.

With ``hybrid=False`` step 3 always feeds ``E[x̂]``: plain token rollouts, the GRPO baseline.
The gate's ablation options (:mod:`hrpo.gate`) change what ``h`` is (``latent_source``) and how
it is mixed (``hybrid_mix``); the engine follows them.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import DynamicCache, PreTrainedTokenizerBase, StaticCache

from hrpo.batch import Rollout, pad_to
from hrpo.compiled import PROMPT_BUCKET, CompiledSteps, select_static_rows
from hrpo.config import FIELD_RANGES, Range
from hrpo.distributed import gathered_parameters
from hrpo.latent import project_latent
from hrpo.marker import MarkerTracker
from hrpo.model import HybridModel, position_ids_from_mask
from hrpo.prompts import Prompt, encode_prompts
from hrpo.sampling import restrict, sample, token_entropy, token_logprobs

StepCallback = Callable[[torch.Tensor, torch.Tensor], None]
MIN_BUCKET = 4  # smallest batch a static cache is compacted to


_ROLLOUT_RANGES = {
    "num_generations": Range(1),
    "max_prompt_length": Range(1, special=(None,)),
    **{k: FIELD_RANGES[k] for k in ("max_completion_length", "temperature", "top_k", "top_p", "sync_every")},
}
_INTEGER_SETTINGS = {"num_generations", "max_prompt_length", "max_completion_length", "top_k", "sync_every"}


@dataclass
class RolloutConfig:
    """Settings of the rollout engine (TRL names where TRL has them)."""

    num_generations: int = 1
    """G: completions sampled per prompt; a prompt's G completions are contiguous in the batch."""
    max_prompt_length: int | None = 512
    """Prompts longer than this (in tokens, after the chat template) raise an error."""
    max_completion_length: int = 512
    """Generation stops after this many new tokens (or at EOS)."""
    temperature: float = 0.5
    """τ: sampling temperature, also the temperature of ``p`` in the latent and of the recorded log-probs."""
    top_k: int | None = 50
    """Keep the k most likely tokens; None or 0 (stored as None) or k ≥ the vocabulary's size: all.
    Restricts both the sampler and ``p`` in the latent."""
    top_p: float = 1.0
    """Nucleus restriction applied after top-k; 1.0 disables it."""
    do_sample: bool = True
    """False: greedy decoding (argmax); the latent still uses the restricted ``p``."""
    hybrid: bool = True
    """Feed gated latent inputs at thinking positions; False gives plain token rollouts (GRPO)."""
    answer_marker: str = "####"
    """The thinking phase of a sequence ends once this string has appeared in its completion."""
    ignore_marker_headings: bool = False
    """Read a line-start marker followed by a word of two or more letters and then a further line
    (``#### Step 1\n…``) as a markdown heading, not the answer marker: it does not end the thinking
    phase (rules in :mod:`hrpo.marker`). Set it as the task grades (``Task.ignore_marker_headings``:
    on for numeric and multiple-choice tasks); the trainer and evaluation take it from the task."""
    system_prompt: str | None = None
    """Prepended as a system turn to prompts that have none."""
    chat_template: bool = True
    """Wrap plain-string prompts as a user turn in the tokenizer's chat template."""
    latent_dtype: torch.dtype | None = None
    """Storage dtype of latents (default: the model's dtype); the rollout feeds the stored values."""
    ignore_eos: bool = False
    """Keep generating past EOS up to ``max_completion_length`` (for throughput benchmarks)."""
    compact_finished: bool = True
    """Drop finished sequences from the decoding batch (and their KV-cache rows) so they stop
    costing compute: with the dynamic cache once a quarter of it has finished; with the static
    cache by halving the batch once at most half of it is running (a few fixed shapes, each
    compiled once by the compiled backend). Sampling noise is drawn for the full batch either
    way, but a smaller batch rounds differently (~1e-7 relative): the rollouts are the same up
    to near ties (see "What the decoding options guarantee" in the README), and each rollout's
    log-probs equal its own teacher-forced recomputation."""
    cache_implementation: str = "dynamic"
    """KV cache: ``"dynamic"`` grows by concatenation and allows ``compact_finished``;
    ``"static"`` pre-allocates prompt + ``max_completion_length`` positions and writes in place
    (no per-step reallocation; the form compiled decode steps need)."""
    sync_every: int = 1
    """Steps between the host's checks of how many sequences have finished (the only
    device-to-host synchronisation of a step). On GPUs a value like 8 keeps the launch queue
    full; finished sequences just emit padding until the next check. Without compaction the
    rollouts are bit-identical to ``sync_every=1``'s (every step has the same shapes); with it,
    the batch shrinks at other steps, so they are the same up to near ties."""
    rollout_backend: str = "eager"
    """``"eager"``: the model runs op by op (any cache). ``"compiled"``: the decoder and head are
    ``torch.compile``d once per batch shape over a static cache and a pre-allocated attention
    mask, so every step has the same shapes (CUDA graphs on GPUs), and the token step (sampling,
    log-prob, latent, gate) is compiled into fused kernels. Implies
    ``cache_implementation="static"``; if compilation fails, a warning is given and decoding
    continues eagerly. Fused kernels round differently from eager ones: the same rollouts as eager
    up to near ties; the same compiled shapes called again give bit-identical rollouts."""

    def __post_init__(self) -> None:
        for name, allowed in _ROLLOUT_RANGES.items():
            value = getattr(self, name)
            if name in _INTEGER_SETTINGS and value is not None and not isinstance(value, numbers.Integral):
                raise ValueError(f"RolloutConfig.{name}: must be an integer (got {value!r})")
            allowed.check(f"RolloutConfig.{name}", value)
        if self.top_k == 0:  # the one place 0 is read: from here on None alone means "all tokens"
            self.top_k = None
        if self.cache_implementation not in ("dynamic", "static"):
            raise ValueError(
                f"cache_implementation must be 'dynamic' or 'static', got {self.cache_implementation!r}"
            )
        if self.rollout_backend not in ("eager", "compiled"):
            raise ValueError(f"rollout_backend must be 'eager' or 'compiled', got {self.rollout_backend!r}")
        if self.rollout_backend == "compiled":
            self.cache_implementation = "static"


def eos_token_ids(model: HybridModel, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Every id that ends a completion: the tokenizer's EOS and the generation config's."""
    ids: set[int] = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    gen = getattr(model.model, "generation_config", None)
    eos = getattr(gen, "eos_token_id", None)
    if isinstance(eos, int):
        ids.add(eos)
    elif eos is not None:
        ids.update(int(i) for i in eos)
    if not ids:
        raise ValueError("the tokenizer and generation config define no EOS token")
    return sorted(ids)


@dataclass
class _Outputs:
    """A rollout's per-position outputs, ``(n, max_completion_length)`` each, written step by step
    at the rows of the sequences still in the decoding batch."""

    completion: torch.Tensor
    mask: torch.Tensor
    thinking: torch.Tensor
    logprobs: torch.Tensor
    entropy: torch.Tensor
    embeds_ratio: torch.Tensor
    hidden_ratio: torch.Tensor
    latents: torch.Tensor
    gate_stats: dict[str, torch.Tensor]

    @classmethod
    def empty(cls, n: int, max_new: int, hidden_size: int, latent_dtype, pad_id: int, device) -> _Outputs:
        def zeros(dtype: torch.dtype) -> torch.Tensor:
            return torch.zeros((n, max_new), dtype=dtype, device=device)

        return cls(
            completion=torch.full((n, max_new), pad_id, dtype=torch.long, device=device),
            mask=zeros(torch.long),
            thinking=zeros(torch.bool),
            logprobs=zeros(torch.float32),
            entropy=zeros(torch.float32),
            embeds_ratio=torch.ones((n, max_new), dtype=torch.float32, device=device),
            hidden_ratio=zeros(torch.float32),
            latents=torch.zeros((n, max_new, hidden_size), dtype=latent_dtype, device=device),
            gate_stats={
                k: zeros(torch.float32) for k in ("input_gate", "latent_norm_ratio", "latent_input_ratio")
            },
        )

    def record(self, rows, t: int, tok, running, logprob, entropy) -> None:
        """Step ``t``'s sampled tokens; positions of finished sequences stay padding."""
        self.completion[rows, t] = tok
        self.mask[rows, t] = running.long()
        self.logprobs[rows, t] = logprob * running
        self.entropy[rows, t] = entropy * running

    def record_hybrid(self, rows, t: int, think, h, a, stats: dict[str, torch.Tensor]) -> None:
        """Step ``t``'s thinking flags, latents and what the gate did (at thinking positions)."""
        self.thinking[rows, t] = think
        self.latents[rows, t] = h * think[:, None]
        self.embeds_ratio[rows, t] = torch.where(think, a.mean(-1), 1.0)
        self.hidden_ratio[rows, t] = torch.where(think, torch.sqrt(1 - a * a).mean(-1), 0.0)
        for k, v in stats.items():
            self.gate_stats[k][rows, t] = v * think


class RolloutEngine:
    """Generates hybrid (or plain) rollouts with a KV cache, for a :class:`HybridModel`."""

    def __init__(
        self, model: HybridModel, tokenizer: PreTrainedTokenizerBase, config: RolloutConfig | None = None
    ):
        self.model = model
        self.tokenizer = tokenizer
        self.config = config or RolloutConfig()
        self.marker = MarkerTracker(
            tokenizer,
            self.config.answer_marker,
            vocab_size=model.vocab_size,
            ignore_headings=self.config.ignore_marker_headings,
        )
        self.eos_ids = torch.tensor(eos_token_ids(model, tokenizer), dtype=torch.long)
        pad = tokenizer.pad_token_id
        self.pad_id = int(pad if pad is not None else self.eos_ids[0])
        self.compiled = CompiledSteps(model.decode_step, self._sample_and_mix, model.device.type)

    def encode(self, prompts: Sequence[Prompt]) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        cfg = self.config
        return encode_prompts(
            self.tokenizer,
            prompts,
            max_prompt_length=cfg.max_prompt_length,
            system_prompt=cfg.system_prompt,
            chat_template=cfg.chat_template,
        )

    @torch.no_grad()
    def generate(
        self,
        prompts: Sequence[Prompt],
        *,
        num_generations: int | None = None,
        seed: int | None = None,
        on_step: StepCallback | None = None,
    ) -> Rollout:
        """Sample ``num_generations`` completions for each prompt (default: the config's G).

        ``on_step(tokens, running)`` is called after each decoding step with the step's tokens
        ``(N,)`` and which sequences were still running; it is for streaming output, and costs
        a device-to-host copy per step.
        """
        g = num_generations or self.config.num_generations
        ids, mask, texts = self.encode(prompts)
        group_ids = torch.arange(len(prompts)).repeat_interleave(g)
        rollout = self.generate_from_ids(
            ids.repeat_interleave(g, 0), mask.repeat_interleave(g, 0), seed=seed, on_step=on_step
        )
        rollout.group_ids = group_ids.to(rollout.group_ids.device)
        rollout.prompt_texts = [texts[i] for i in group_ids.tolist()]
        return rollout

    @torch.no_grad()
    def generate_from_ids(
        self,
        prompt_ids: torch.Tensor,
        prompt_mask: torch.Tensor,
        *,
        seed: int | None = None,
        on_step: StepCallback | None = None,
    ) -> Rollout:
        """Roll out from left-padded prompt ids ``(N, P)``; each row is one sample.

        Under FSDP2 every process must call this together (see :func:`gathered_parameters`).
        """
        with gathered_parameters(self.model):
            return self._generate(prompt_ids, prompt_mask, seed, on_step)

    def _generate(
        self,
        prompt_ids: torch.Tensor,
        prompt_mask: torch.Tensor,
        seed: int | None,
        on_step: StepCallback | None,
    ) -> Rollout:
        cfg, model = self.config, self.model
        device = model.device
        ids, mask = prompt_ids.to(device), prompt_mask.to(device).long()
        n, max_new = ids.shape[0], cfg.max_completion_length
        compiled = cfg.rollout_backend == "compiled" and not self.compiled.failed
        ids_in = ids
        if compiled:
            # Left-pad prompts to a multiple of 64 tokens so that batches of other prompt lengths
            # reuse the compiled step (padding does not change results).
            width = -(-ids.shape[1] // PROMPT_BUCKET) * PROMPT_BUCKET
            ids_in, mask = pad_to(ids, width, self.pad_id, left=True), pad_to(mask, width, 0, left=True)
        gen = torch.Generator(device=device).manual_seed(seed) if seed is not None else None
        marker = self.marker.to(device)
        eos_ids = self.eos_ids.to(device) if not cfg.ignore_eos else self.eos_ids[:0].to(device)
        out = _Outputs.empty(
            n, max_new, model.hidden_size, cfg.latent_dtype or model.dtype, self.pad_id, device
        )
        # The decoding batch: `rows` are its sequences' indices in the outputs; it shrinks when
        # finished sequences are compacted away.
        rows = torch.arange(n, device=device)
        finished = torch.zeros(n, dtype=torch.bool, device=device)
        state = marker.initial_state(n)

        was_training = model.training
        model.eval()
        try:
            prompt_len = ids_in.shape[1]
            cache, mask, next_pos, hidden, logits = self._prefill(ids_in, mask)
            steps = 0
            vocab = logits.shape[-1]
            width = cfg.top_k if cfg.top_k is not None and 0 < cfg.top_k < vocab else vocab
            for t in range(max_new):
                noise = None
                if cfg.do_sample:
                    # Noise for all n sequences, so compaction does not change what is sampled.
                    noise = torch.empty((n, width), device=device).exponential_(generator=gen)
                    noise = noise if len(rows) == n else noise[rows]
                tok, lp, ent, embeds, mixed, h, a, stats = self._token_step(
                    compiled, logits, noise, finished, hidden
                )
                compiled = compiled and not self.compiled.failed
                running = ~finished
                is_eos = torch.isin(tok, eos_ids) & running
                state = marker.step(state, tok)
                out.record(rows, t, tok, running, lp, ent)
                if cfg.hybrid:
                    think = running & ~marker.seen(state) & ~is_eos
                    embeds = torch.where(think[:, None], mixed, embeds)
                    out.record_hybrid(rows, t, think, h, a, stats)
                if on_step is not None:
                    on_step(out.completion[:, t].cpu(), out.mask[:, t].bool().cpu())
                finished |= is_eos
                steps = t + 1
                if steps == max_new:
                    break
                # Every sync_every steps, one host synchronisation: stop once all have finished.
                done = -1 if steps % cfg.sync_every else int(finished.sum())
                if done == len(rows):
                    break
                keep = _rows_to_keep(finished, done, cfg) if cfg.compact_finished and done > 0 else None
                if keep is not None:
                    self._compact(cache, keep)
                    rows, finished, state = rows[keep], finished[keep], state[keep]
                    mask, next_pos, embeds = mask[keep], next_pos[keep], embeds[keep]
                mask = self._attend_to(mask, prompt_len + t)
                hidden, logits = self._decode(compiled, embeds[:, None], mask, next_pos, cache)
                compiled = compiled and not self.compiled.failed
                next_pos = next_pos + 1
        finally:
            model.train(was_training)
        return self._finish(ids, prompt_mask, out, steps)

    def _prefill(
        self, ids: torch.Tensor, mask: torch.Tensor
    ) -> tuple[Any, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Run the prompts through the decoder: the cache, the attention mask to extend, the next
        positions, and the last position's hidden state and logits."""
        model, static = self.model, self.config.cache_implementation == "static"
        prompt_len, max_new = ids.shape[1], self.config.max_completion_length
        if static:
            cache = StaticCache(config=model.config, max_cache_len=prompt_len + max_new)
        else:
            cache = DynamicCache(config=model.config)
        positions = position_ids_from_mask(mask)
        hidden, logits = model.decode_step(model.embed_tokens(ids), mask, positions, cache)
        if static:  # the whole attention mask up front, filled in place
            mask = pad_to(mask, prompt_len + max_new, 0, left=False)
        return cache, mask, positions[:, -1:] + 1, hidden, logits

    def _token_step(self, compiled: bool, *args) -> tuple[Any, ...]:
        return self.compiled.sample(*args) if compiled else self._sample_and_mix(*args)

    def _decode(self, compiled: bool, *args) -> tuple[torch.Tensor, torch.Tensor]:
        return self.compiled.decode(*args) if compiled else self.model.decode_step(*args)

    def _compact(self, cache: Any, keep: torch.Tensor) -> None:
        """Keep only the ``keep`` rows of the KV cache."""
        if self.config.cache_implementation == "dynamic":
            cache.batch_select_indices(keep)
        else:
            select_static_rows(cache, keep)

    def _attend_to(self, mask: torch.Tensor, position: int) -> torch.Tensor:
        """The attention mask with the token about to be fed (at ``position``) attended."""
        if self.config.cache_implementation == "static":
            mask[:, position] = 1
            return mask
        return torch.cat([mask, torch.ones((len(mask), 1), dtype=mask.dtype, device=mask.device)], dim=1)

    def _finish(self, ids: torch.Tensor, prompt_mask: torch.Tensor, out: _Outputs, steps: int) -> Rollout:
        """The :class:`Rollout` of the first ``steps`` positions, with the completions' text."""
        cfg = self.config
        # With sync_every > 1 the last steps may have been all padding.
        steps = max(1, int(out.mask.sum(1).max())) if cfg.sync_every > 1 else steps
        completion, mask = out.completion[:, :steps], out.mask[:, :steps]
        texts = self.tokenizer.batch_decode(
            completion.masked_fill(mask == 0, self.pad_id), skip_special_tokens=True
        )
        return Rollout(
            prompt_ids=ids,
            prompt_mask=prompt_mask.to(ids.device).long(),
            completion_ids=completion,
            completion_mask=mask,
            thinking_mask=out.thinking[:, :steps],
            latents=out.latents[:, :steps],
            embeds_ratio=out.embeds_ratio[:, :steps],
            hidden_ratio=out.hidden_ratio[:, :steps],
            logprobs=out.logprobs[:, :steps],
            group_ids=torch.arange(len(ids), device=ids.device),
            temperature=cfg.temperature,
            completion_texts=texts,
            entropy=out.entropy[:, :steps],
            **({k: v[:, :steps] for k, v in out.gate_stats.items()} if cfg.hybrid else {}),
        )

    def _sample_and_mix(
        self, logits: torch.Tensor, noise: torch.Tensor | None, finished: torch.Tensor, hidden: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        """One step's token work, after the decoder: restrict, sample (or argmax), log-prob, the
        policy's entropy at τ, and the next input's pieces: token embedding, latent ``h``, the
        gate's mix ``(mixed, a)`` and per-row statistics of what the gate did.

        A pure function of tensors, so the compiled backend fuses it into a few kernels; the
        marker automaton and the bookkeeping stay outside. ``mixed``, ``h`` and ``a`` are None
        without hybrid decoding.
        """
        cfg, model = self.config, self.model
        support = restrict(logits, cfg.temperature, cfg.top_k, cfg.top_p)
        tok = sample(support, noise=noise) if noise is not None else logits.argmax(dim=-1)
        tok = tok.masked_fill(finished, self.pad_id)
        lp = token_logprobs(logits, tok, cfg.temperature)
        ent = token_entropy(logits, cfg.temperature)
        embeds = model.embed_tokens(tok)
        if not cfg.hybrid:
            return tok, lp, ent, embeds, None, None, None, None
        if model.gate.latent_source == "hidden_state":
            h = hidden
        else:
            h = project_latent(support, model.get_embedding_weight(), model.embed_scale)
        h = h.to(cfg.latent_dtype or model.dtype)
        mixed, a = model.gate(embeds, h)
        e = embeds.float()
        e_norm = e.norm(dim=-1).clamp_min(1e-12)
        stats = {
            "input_gate": model.gate.input_gate(embeds).mean(-1),
            "latent_norm_ratio": h.float().norm(dim=-1) / e_norm,
            "latent_input_ratio": (mixed.float() - a * e).norm(dim=-1) / e_norm,
        }
        return tok, lp, ent, embeds, mixed, h, a, stats

    def teacher_forced_logprobs(self, rollout: Rollout, *, hybrid: bool | None = None) -> torch.Tensor:
        """Recompute ``rollout``'s completion log-probs teacher-forced at the rollout temperature."""
        use_latents = self.config.hybrid if hybrid is None else hybrid
        logprobs, _ = self.model.completion_logprobs(
            **rollout.model_inputs(hybrid=use_latents), temperature=rollout.temperature
        )
        return logprobs


def _rows_to_keep(finished: torch.Tensor, done: int, cfg: RolloutConfig) -> torch.Tensor | None:
    """Which rows of the decoding batch to keep, or None to keep them all.

    Dynamic cache: every running row, once a quarter of the batch has finished. Static cache:
    the batch halves (running rows first, topped up with finished ones) once at most half of it
    is running, down to ``MIN_BUCKET`` rows, so a compiled step sees only a few batch shapes.
    """
    n = len(finished)
    if cfg.cache_implementation == "dynamic":
        return (~finished).nonzero().squeeze(1) if done * 4 >= n else None
    size = n // 2
    if size < MIN_BUCKET or n - done > size:
        return None
    return torch.argsort(finished.to(torch.int8), stable=True)[:size]
