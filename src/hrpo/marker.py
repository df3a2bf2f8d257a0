"""Incremental, on-device detection of the answer marker in generated token ids.

The thinking phase of a sequence lasts until the answer marker (default ``####``) has appeared
in its completion. The reference implementation decodes the whole batch's text at every step
to find it (O(B·T²) host work plus a device→host sync per token). Here the marker is matched by
a Knuth–Morris–Pratt automaton over characters, compiled once per (tokenizer, marker) into a
token-level transition table ``T[token, state] -> state``: one gather per step, on the device.
A marker split across several tokens ("##" + "##"), or glued to other text (":####5"), is
matched because each token's full text is fed through the character automaton.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase


def _kmp_failure(marker: str) -> list[int]:
    fail = [0] * len(marker)
    k = 0
    for i in range(1, len(marker)):
        while k and marker[i] != marker[k]:
            k = fail[k - 1]
        if marker[i] == marker[k]:
            k += 1
        fail[i] = k
    return fail


def _char_step(marker: str, fail: list[int], state: int, ch: str) -> int:
    while state and ch != marker[state]:
        state = fail[state - 1]
    return state + 1 if ch == marker[state] else state


def token_strings(tokenizer: PreTrainedTokenizerBase, vocab_size: int) -> list[str]:
    """The text each token id contributes when it follows other text.

    Decoding a token alone drops a SentencePiece word-initial space ("▁##" → "##"), so each id
    is decoded after an anchor token and the anchor's own text is removed. Ids the tokenizer
    does not know (embedding rows padded past the vocabulary) contribute no text.
    """
    anchor = tokenizer.encode("a", add_special_tokens=False)[:1]
    known = min(vocab_size, len(tokenizer))
    kw = {"skip_special_tokens": False, "clean_up_tokenization_spaces": False}
    prefix = tokenizer.decode(anchor, **kw)
    pairs = tokenizer.batch_decode([anchor + [i] for i in range(known)], **kw)
    out = []
    for i, text in enumerate(pairs):
        out.append(text[len(prefix) :] if text.startswith(prefix) else tokenizer.decode([i], **kw))
    return out + [""] * (vocab_size - known)


@lru_cache(maxsize=8)
def _compile(strings: tuple[str, ...], marker: str) -> np.ndarray:
    m = len(marker)
    fail = _kmp_failure(marker)
    chars = set(marker)
    table = np.zeros((len(strings), m), dtype=np.int64)
    for tok, text in enumerate(strings):
        if not text:
            table[tok] = np.arange(m)  # contributes nothing: state unchanged
            continue
        if chars.isdisjoint(text):
            continue  # any char outside the marker resets the automaton to 0
        for start in range(m):
            state = start
            for ch in text:
                state = _char_step(marker, fail, state, ch)
                if state == m:
                    break
            table[tok, start] = state
    return table


class MarkerTracker:
    """Per-sequence marker automaton state, advanced one token id at a time on the device.

    ``state`` is an int64 tensor ``(B,)`` with values in ``[0, len(marker)]``; the value
    ``len(marker)`` means "the marker has appeared" and is absorbing.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, marker: str, vocab_size: int | None = None):
        if not marker:
            raise ValueError("answer_marker must be a non-empty string")
        self.marker = marker
        vocab_size = vocab_size or len(tokenizer)
        strings = tuple(token_strings(tokenizer, vocab_size))
        self.table = torch.from_numpy(_compile(strings, marker))
        self.done_state = len(marker)

    def to(self, device: torch.device | str) -> MarkerTracker:
        self.table = self.table.to(device)
        return self

    def initial_state(self, batch_size: int) -> torch.Tensor:
        return torch.zeros(batch_size, dtype=torch.long, device=self.table.device)

    def step(self, state: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Advance ``state`` by one token per sequence; returns the new state."""
        seen = state == self.done_state
        nxt = self.table[tokens, state.clamp(max=self.done_state - 1)]
        return torch.where(seen, state, nxt)

    def seen(self, state: torch.Tensor) -> torch.Tensor:
        return state == self.done_state

    def scan(self, token_ids: torch.Tensor) -> torch.Tensor:
        """Marker-seen flags after each token of ``token_ids`` ``(B, T)`` (for tests and analysis)."""
        state = self.initial_state(token_ids.shape[0])
        flags = []
        for t in range(token_ids.shape[1]):
            state = self.step(state, token_ids[:, t])
            flags.append(self.seen(state))
        return torch.stack(flags, dim=1)
