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
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields

import torch
from transformers import DynamicCache, PreTrainedTokenizerBase, StaticCache

from hrpo.config import FIELD_RANGES, Range
from hrpo.distributed import gathered_parameters
from hrpo.latent import project_latent
from hrpo.marker import MarkerTracker
from hrpo.model import HybridModel, position_ids_from_mask
from hrpo.prompts import Prompt, encode_prompts
from hrpo.sampling import restrict, sample, token_entropy, token_logprobs

StepCallback = Callable[[torch.Tensor, torch.Tensor], None]
PROMPT_BUCKET = 64
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
        self._compiled_step: Callable | None = None
        self._compiled_sampler: Callable | None = None
        self._compile_failed = False

    def _decode_step(self) -> Callable:
        """The compiled decoder + head (built once; reused across calls of the same shapes)."""
        if self._compiled_step is None:
            mode = "reduce-overhead" if self.model.device.type == "cuda" else None
            self._compiled_step = torch.compile(self.model.decode_step, dynamic=False, mode=mode)
        return self._compiled_step

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
        compiled = cfg.rollout_backend == "compiled" and not self._compile_failed
        if compiled:
            # Left-pad prompts to a multiple of 64 tokens so that batches of other prompt lengths
            # reuse the compiled step (padding does not change results).
            width = -(-ids.shape[1] // PROMPT_BUCKET) * PROMPT_BUCKET
            ids_in, mask = _pad_to(ids, width, self.pad_id, left=True), _pad_to(mask, width, 0, left=True)
        else:
            ids_in = ids
        gen = torch.Generator(device=device).manual_seed(seed) if seed is not None else None
        marker = self.marker.to(device)
        eos_ids = self.eos_ids.to(device) if not cfg.ignore_eos else self.eos_ids[:0].to(device)
        latent_dtype = cfg.latent_dtype or model.dtype

        completion = torch.full((n, max_new), self.pad_id, dtype=torch.long, device=device)
        comp_mask = torch.zeros((n, max_new), dtype=torch.long, device=device)
        thinking = torch.zeros((n, max_new), dtype=torch.bool, device=device)
        logprobs = torch.zeros((n, max_new), dtype=torch.float32, device=device)
        entropy = torch.zeros((n, max_new), dtype=torch.float32, device=device)
        gate_stats = {
            k: torch.zeros((n, max_new), dtype=torch.float32, device=device)
            for k in ("input_gate", "latent_norm_ratio", "latent_input_ratio")
        }
        embeds_ratio = torch.ones((n, max_new), dtype=torch.float32, device=device)
        hidden_ratio = torch.zeros((n, max_new), dtype=torch.float32, device=device)
        latents = torch.zeros((n, max_new, model.hidden_size), dtype=latent_dtype, device=device)
        # The decoding batch: `rows` are its sequences' indices in the outputs; it shrinks when
        # finished sequences are compacted away.
        rows = torch.arange(n, device=device)
        finished = torch.zeros(n, dtype=torch.bool, device=device)
        state = marker.initial_state(n)

        was_training = model.training
        model.eval()
        try:
            prompt_len = ids_in.shape[1]
            if cfg.cache_implementation == "static":
                cache = StaticCache(config=model.config, max_cache_len=prompt_len + max_new)
            else:
                cache = DynamicCache(config=model.config)
            positions = position_ids_from_mask(mask)
            hidden, logits = model.decode_step(model.embed_tokens(ids_in), mask, positions, cache)
            next_pos = positions[:, -1:] + 1
            if cfg.cache_implementation == "static":  # the whole attention mask up front, filled in place
                mask = _pad_to(mask, prompt_len + max_new, 0, left=False)
            steps = 0
            vocab = logits.shape[-1]
            width = cfg.top_k if cfg.top_k is not None and 0 < cfg.top_k < vocab else vocab
            for t in range(max_new):
                noise = None
                if cfg.do_sample:
                    # Noise for all n sequences, so compaction does not change what is sampled.
                    noise = torch.empty((n, width), device=device).exponential_(generator=gen)
                    noise = noise if len(rows) == n else noise[rows]
                args = (logits, noise, finished, hidden)
                if compiled:
                    out = self._compiled_call(self._compiled_sample_and_mix, self._sample_and_mix, *args)
                    compiled = not self._compile_failed
                else:
                    out = self._sample_and_mix(*args)
                tok, lp, ent, embeds, mixed, h, a, stats = out
                running = ~finished
                is_eos = torch.isin(tok, eos_ids) & running
                state = marker.step(state, tok)
                completion[rows, t] = tok
                comp_mask[rows, t] = running.long()
                logprobs[rows, t] = lp * running
                entropy[rows, t] = ent * running

                if cfg.hybrid:
                    think = running & ~marker.seen(state) & ~is_eos
                    embeds = torch.where(think[:, None], mixed, embeds)
                    thinking[rows, t] = think
                    latents[rows, t] = h * think[:, None]
                    embeds_ratio[rows, t] = torch.where(think, a.mean(-1), 1.0)
                    hidden_ratio[rows, t] = torch.where(think, torch.sqrt(1 - a * a).mean(-1), 0.0)
                    for k, v in stats.items():
                        gate_stats[k][rows, t] = v * think
                if on_step is not None:
                    on_step(completion[:, t].cpu(), comp_mask[:, t].bool().cpu())
                finished |= is_eos
                steps = t + 1
                if steps == max_new:
                    break
                if steps % cfg.sync_every:
                    done = -1  # no check this step
                else:
                    done = int(finished.sum())  # the host synchronisation
                    if done == len(rows):
                        break
                keep = _rows_to_keep(finished, done, cfg) if cfg.compact_finished and done > 0 else None
                if keep is not None:
                    if cfg.cache_implementation == "dynamic":
                        cache.batch_select_indices(keep)
                    else:
                        _select_static_rows(cache, keep)
                    rows, finished, state = rows[keep], finished[keep], state[keep]
                    mask, next_pos, embeds = mask[keep], next_pos[keep], embeds[keep]
                if cfg.cache_implementation == "static":
                    mask[:, prompt_len + t] = 1
                else:
                    ones = torch.ones((len(rows), 1), dtype=mask.dtype, device=device)
                    mask = torch.cat([mask, ones], dim=1)
                if compiled:
                    args = (embeds[:, None], mask, next_pos, cache)
                    hidden, logits = self._compiled_call(self._decode_step, model.decode_step, *args)
                    compiled = not self._compile_failed
                else:
                    hidden, logits = model.decode_step(embeds[:, None], mask, next_pos, cache)
                next_pos = next_pos + 1
        finally:
            model.train(was_training)

        # With sync_every > 1 the last steps may have been all padding.
        steps = max(1, int(comp_mask.sum(1).max())) if cfg.sync_every > 1 else steps
        completion = completion[:, :steps]
        comp_mask = comp_mask[:, :steps]
        texts = self.tokenizer.batch_decode(
            completion.masked_fill(comp_mask == 0, self.pad_id), skip_special_tokens=True
        )
        return Rollout(
            prompt_ids=ids,
            prompt_mask=prompt_mask.to(device).long(),
            completion_ids=completion,
            completion_mask=comp_mask,
            thinking_mask=thinking[:, :steps],
            latents=latents[:, :steps],
            embeds_ratio=embeds_ratio[:, :steps],
            hidden_ratio=hidden_ratio[:, :steps],
            logprobs=logprobs[:, :steps],
            group_ids=torch.arange(n, device=device),
            temperature=cfg.temperature,
            completion_texts=texts,
            entropy=entropy[:, :steps],
            **({k: v[:, :steps] for k, v in gate_stats.items()} if cfg.hybrid else {}),
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

    def _compiled_sample_and_mix(self) -> Callable:
        """The compiled token step (plain ``torch.compile``: small ops fused, no CUDA graphs)."""
        if self._compiled_sampler is None:
            self._compiled_sampler = torch.compile(self._sample_and_mix, dynamic=False)
        return self._compiled_sampler

    def _compiled_call(self, compiled: Callable[[], Callable], eager: Callable, *args):
        """``compiled()(*args)``; on a compilation error warn once and run ``eager(*args)`` instead
        (the caller then stays eager for the rest of the engine's life)."""
        try:
            return compiled()(*args)
        except Exception as exc:  # noqa: BLE001 - any backend failure falls back to the eager path
            if not _is_compile_error(exc):
                raise
            self._compile_failed = True
            warnings.warn(
                f"rollout backend 'compiled': torch.compile failed ({type(exc).__name__}: {exc}); "
                "decoding eagerly from here on",
                RuntimeWarning,
                stacklevel=3,
            )
            return eager(*args)

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


def _select_static_rows(cache: StaticCache, keep: torch.Tensor) -> None:
    """Keep only the ``keep`` rows of a static cache's pre-allocated keys and values.

    New, smaller buffers replace the old ones and are marked as static addresses, as the cache
    does for its own buffers, so CUDA graphs can be captured for the smaller batch.
    """
    for layer in cache.layers:
        if not getattr(layer, "is_initialized", False):
            continue
        layer.keys = layer.keys.index_select(0, keep.to(layer.keys.device))
        layer.values = layer.values.index_select(0, keep.to(layer.values.device))
        layer.batch_size = len(keep)
        torch._dynamo.mark_static_address(layer.keys)
        torch._dynamo.mark_static_address(layer.values)


def _is_compile_error(exc: Exception) -> bool:
    """Errors raised by dynamo/inductor (tracing, code generation, a missing C compiler)."""
    module = type(exc).__module__
    return module.startswith(("torch._dynamo", "torch._inductor")) or "CppCompileError" in type(exc).__name__


def _pad_to(x: torch.Tensor, width: int, value, left: bool) -> torch.Tensor:
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
        return torch.cat([_pad_to(getattr(r, name), width, value, left) for r in rollouts])

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
