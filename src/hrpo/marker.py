"""The answer marker: where the thinking phase of a completion ends, in the rollout and in grading.

Rules (one definition, used by the rollout's token automaton and by the graders' text function):

* Occurrences of the marker string (default ``####``) are found left to right without overlap,
  as ``str.count`` finds them. Each is an *answer marker* unless the heading rule says otherwise.
  The answer is the text after the last answer marker (:func:`answer_start`; occurrences that
  overlap it extend it, so ``#####42`` reads ``42``).
* Heading rule (``ignore_headings``; on for tasks whose answers are numbers or option letters):
  an occurrence is a markdown-style *heading* when

  (a) it starts a line: only blanks (space, tab) precede it since the last ``\\n`` or the start
      of the completion;
  (b) the first non-blank character after it on its line is a letter that starts a word of at
      least two letters (letter: an ASCII letter or any non-ASCII character); and
  (c) its line is followed by a ``\\n`` and then more text that is not ASCII whitespace.

  A heading is neither an answer marker nor the end of the thinking phase; its whole line is its
  title (markers later on that line are part of it) and the search resumes on the next line.
  So ``#### Step 1\\nAdd.\\n#### 5`` has one answer marker, while ``#### 5``, ``Thus #### 5``,
  ``#### 17\\nThe answer is 17``, ``#### B\\nBecause…``, ``####\\n42`` and a final
  ``#### Answer: 42`` have one each; ``#### Answer: 42\\nDone.`` has none.
* A position of the completion is *thinking* while no answer marker has appeared. With the heading
  rule a line-start occurrence cannot be classified at once; until (b) and (c) decide it, the
  positions are *pending* and fed plain, as after an answer marker. A first character that is
  not a letter, a one-letter word, or a newline before any non-blank character makes it an answer
  marker; a word of two or more letters, a newline and then a non-whitespace character make it a heading,
  and that character's token thinks again. A completion that ends while pending ends with an
  answer marker, which is what the text rule says (no following section), so the plain positions
  were right. Without the rule, thinking lasts until the first occurrence; the token completing
  it is already plain.

The rollout matches over BYTES: each token id's exact byte string comes from its piece
(byte-level BPE: the GPT-2 byte↔character alphabet inverted; SentencePiece style: ``<0xHH>``
byte-fallback pieces are byte ``HH``, ``▁`` is a space; added tokens: their text), so a
non-ASCII marker (``→``, ``答案：``) split into single-byte tokens is found. Tokenizers of other
kinds (no fast tokenizer, WordPiece, …) fall back to decoding each token after an anchor token
(:func:`token_strings`), which finds a marker only where no token splits one of its characters
(so ASCII markers always). Special tokens are their text here, as ``decode`` writes them unless
told to skip them. The text rule runs on characters and the automaton on bytes with the same
classes (a non-ASCII character is its lead byte ≥ 0xC0 and continuation bytes), so they agree on
valid UTF-8. One known difference: a decoder with ByteFallback replaces a whole run of byte
tokens by U+FFFD when any of it is not valid UTF-8 (a completion cut inside a character), so the
decoded text can lack a marker that its bytes, and so the rollout, had. A byte DFA (the marker's
Knuth–Morris–Pratt automaton × a line-prefix automaton, plus the pending states and an absorbing
answer state) is compiled once per (tokenizer, marker, rule) into a token table
``T[token, state] -> state``, simulating all tokens in parallel byte position by byte position:
one gather per decoding step, on the device.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from hrpo.token_bytes import TokenBytes, token_bytes

BLANKS = " \t"
"""Blanks that may precede a heading on its line and separate it from its title."""
WHITESPACE = " \t\n\r\f\v"
"""ASCII whitespace: text made only of it after a heading's line is no section (rule (c))."""

_BLANK_BYTES = frozenset(BLANKS.encode())
_WS_BYTES = frozenset(WHITESPACE.encode())
_NEWLINE = ord("\n")


# --- the rule on text ---------------------------------------------------------------------------


def _is_letter(ch: str) -> bool:
    return not ch.isascii() or ch.isalpha()


@dataclass(frozen=True)
class MarkerOccurrences:
    """Start offsets (in characters) of a text's marker occurrences, by kind."""

    answers: tuple[int, ...]
    headings: tuple[int, ...]


def find_markers(text: str, marker: str, ignore_headings: bool = False) -> MarkerOccurrences:
    """Classify the occurrences of ``marker`` in ``text`` as answer markers or headings (module rules).

    Linear in ``len(text)``: each character is looked at a bounded number of times.
    """
    if not marker:
        raise ValueError("the answer marker must be a non-empty string")
    if ignore_headings and not marker.strip(WHITESPACE):
        raise ValueError(f"the heading rule needs a marker with a non-whitespace character, got {marker!r}")
    answers: list[int] = []
    headings: list[int] = []
    m, pos = len(marker), 0
    while True:
        s = text.find(marker, pos)
        if s < 0:
            break
        if not ignore_headings:
            answers.append(s)
            pos = s + m
            continue
        nl = _heading_line_end(text, s, m)
        if nl is None:
            answers.append(s)
            pos = s + m
        else:
            headings.append(s)
            pos = nl + 1
    return MarkerOccurrences(tuple(answers), tuple(headings))


def _heading_line_end(text: str, s: int, m: int) -> int | None:
    """The index of the newline ending the heading that starts at ``s``, or None if it is no heading."""
    i = s - 1  # (a): only blanks back to a newline or the start
    while i >= 0 and text[i] in BLANKS:
        i -= 1
    if i >= 0 and text[i] != "\n":
        return None
    n = len(text)
    i = s + m  # (b): after blanks, a letter followed by a letter
    while i < n and text[i] in BLANKS:
        i += 1
    if i + 1 >= n or not (_is_letter(text[i]) and _is_letter(text[i + 1])):
        return None
    nl = text.find("\n", i + 2)  # (c): a newline, then some non-whitespace text
    if nl < 0:
        return None
    k = nl + 1
    while k < n and text[k] in WHITESPACE:
        k += 1
    return nl if k < n else None


def answer_marker_spans(text: str, marker: str, ignore_headings: bool = False) -> list[int]:
    """Start offsets of the answer markers in ``text``, left to right (headings left out)."""
    return list(find_markers(text, marker, ignore_headings).answers)


def answer_start(text: str, marker: str, ignore_headings: bool = False) -> int | None:
    """Where the answer begins: after the last answer marker, or None without one.

    Occurrences overlapping that marker extend it, so a longer run of the marker's characters is
    read as one marker ending at the run's end (``#####42`` → ``42``, as ``rfind`` would read it).
    """
    found = find_markers(text, marker, ignore_headings).answers
    if not found:
        return None
    s, m = found[-1], len(marker)
    while (t := text.find(marker, s + 1, s + 2 * m - 1)) >= 0:
        s = t
    return s + m


# --- the automaton ------------------------------------------------------------------------------

# Byte-DFA states are tuples: ("search", kmp, line) while looking for the marker (``line``: the
# set of k such that the line so far is blanks + marker[:k], None without the heading rule);
# ("blank",) after a line-start occurrence, before its first non-blank character; ("word",) in
# a first word of one letter so far; ("title",) in the rest of a heading candidate's line;
# ("next", search) after its newline, only whitespace since (``search``: the state that searching
# from the newline on has reached); ("answer",) absorbing.
_ANSWER = ("answer",)


def _kmp_failure(marker: bytes) -> list[int]:
    fail = [0] * len(marker)
    k = 0
    for i in range(1, len(marker)):
        while k and marker[i] != marker[k]:
            k = fail[k - 1]
        if marker[i] == marker[k]:
            k += 1
        fail[i] = k
    return fail


class _ByteRule:
    """The module's rules as a step function over byte-DFA states."""

    def __init__(self, marker: bytes, ignore_headings: bool) -> None:
        self.marker, self.headings = marker, ignore_headings
        self.fail = _kmp_failure(marker)
        self.initial = ("search", 0, frozenset({0}) if ignore_headings else None)

    def _search(self, state: tuple, c: int) -> tuple:
        _, k, line = state
        marker = self.marker
        while k and c != marker[k]:
            k = self.fail[k - 1]
        if c == marker[k]:
            k += 1
        if line is not None:
            if c == _NEWLINE:
                line = frozenset({0})
            else:
                grown = {j + 1 for j in line if j < len(marker) and marker[j] == c}
                line = frozenset(grown | ({0} if 0 in line and c in _BLANK_BYTES else set()))
        if k == len(marker):
            return ("blank",) if line is not None and len(marker) in line else _ANSWER
        return ("search", k, line)

    def step(self, state: tuple, c: int) -> tuple:
        kind = state[0]
        if kind == "search":
            return self._search(state, c)
        letter = (0x41 <= (c & 0xDF) <= 0x5A) or c >= 0xC0  # an ASCII letter or a UTF-8 lead byte
        if kind == "blank":
            if c in _BLANK_BYTES:
                return state
            return ("word",) if letter else _ANSWER
        if kind == "word":
            if 0x80 <= c < 0xC0:  # continuation byte: the same letter
                return state
            return ("title",) if letter else _ANSWER
        if kind == "title":
            return ("next", self.initial) if c == _NEWLINE else state
        if kind == "next":
            search = self._search(state[1], c)
            return ("next", search) if c in _WS_BYTES else search
        return _ANSWER


def _byte_dfa(marker: bytes, ignore_headings: bool) -> tuple[np.ndarray, int]:
    """The rules' byte DFA ``(S, 256)``: searching states first (the initial one at 0), then the
    pending ones, the absorbing answer state last; and the number of searching states."""
    rule = _ByteRule(marker, ignore_headings)
    index = {rule.initial: 0}
    order, edges = [rule.initial], []
    for state in order:  # breadth-first over the reachable states
        row = [rule.step(state, c) for c in range(256)]
        for nxt in row:
            if nxt not in index:
                index[nxt] = len(order)
                order.append(nxt)
        edges.append(row)
    if _ANSWER not in index:  # unreachable only for degenerate markers; keep the layout uniform
        index[_ANSWER] = len(order)
        order.append(_ANSWER)
        edges.append([_ANSWER] * 256)
    rank = {"search": 0, "answer": 2}
    new_order = sorted(range(len(order)), key=lambda i: (rank.get(order[i][0], 1), i))
    renumber = {order[old]: new for new, old in enumerate(new_order)}
    dtype = np.int16 if len(order) < 2**15 else np.int32
    dfa = np.empty((len(order), 256), dtype=dtype)
    for old, row in enumerate(edges):
        dfa[renumber[order[old]]] = [renumber[s] for s in row]
    num_search = sum(1 for s in order if s[0] == "search")
    return dfa, num_search


def _run_tokens(dfa: np.ndarray, pieces: Sequence[bytes], starts: np.ndarray) -> np.ndarray:
    """States ``(V, len(starts))`` after feeding each token's bytes from each start state.

    All tokens advance together one byte position at a time, longest first, so step ``p`` is one
    gather over the tokens that have a byte ``p``.
    """
    v = len(pieces)
    lengths = np.fromiter(map(len, pieces), dtype=np.int64, count=v)
    order = np.argsort(-lengths, kind="stable")
    sorted_len = lengths[order]
    flat = np.frombuffer(b"".join(pieces[i] for i in order.tolist()), dtype=np.uint8)
    offsets = np.zeros(v, dtype=np.int64)
    if v:
        np.cumsum(sorted_len[:-1], out=offsets[1:])
    states = np.empty((v, len(starts)), dtype=dfa.dtype)
    states[:] = starts
    neg = -sorted_len  # ascending: tokens with more than p bytes are the first searchsorted(neg, -p)
    for p in range(int(sorted_len[0]) if v else 0):
        n = int(np.searchsorted(neg, -p, side="left"))
        byte = flat[offsets[:n] + p]
        states[:n] = dfa[states[:n], byte[:, None]]
    out = np.empty_like(states)
    out[order] = states
    return out


@dataclass(frozen=True, eq=False)
class CompiledMarker:
    """A token table ``(V, S)`` and its state layout: ``[0, num_search)`` search (thinking),
    then pending, ``answer = S − 1`` absorbing; the initial state is 0."""

    table: np.ndarray
    num_search: int

    @property
    def answer(self) -> int:
        return self.table.shape[1] - 1


@lru_cache(maxsize=8)
def compile_marker(tokens: TokenBytes, marker: str, ignore_headings: bool = False) -> CompiledMarker:
    """The token transition table of ``marker`` (and the heading rule) over ``tokens``.

    With ``tokens.first``, state 0 is "nothing written yet": a token's first-token bytes are fed
    from there, and ids that contribute nothing stay in it.
    """
    dfa, num_search = _byte_dfa(marker.encode("utf-8"), ignore_headings)
    table = _run_tokens(dfa, tokens.pieces, np.arange(dfa.shape[0], dtype=dfa.dtype))
    if tokens.first is None:
        return CompiledMarker(table, num_search)
    shift = 1
    dtype = np.int16 if dfa.shape[0] + shift < 2**15 else np.int32
    start = _run_tokens(dfa, tokens.first, np.zeros(1, dtype=dfa.dtype))[:, 0].astype(dtype) + shift
    empty = np.fromiter((not p for p in tokens.pieces), dtype=bool, count=len(tokens.pieces))
    start[empty] = 0
    full = np.concatenate([start[:, None], table.astype(dtype) + shift], axis=1)
    return CompiledMarker(full, num_search + shift)


class MarkerTracker:
    """Per-sequence marker automaton state, advanced one token id at a time on the device.

    ``state`` is an int32 tensor ``(B,)``; :meth:`seen` is True once the sequence has left the
    thinking phase for good (an answer marker) or for now (a line-start occurrence not yet
    classified by the heading rule). ``ignore_headings`` turns the heading rule on (module doc).
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        marker: str,
        vocab_size: int | None = None,
        *,
        ignore_headings: bool = False,
    ):
        if not marker:
            raise ValueError("answer_marker must be a non-empty string")
        if ignore_headings and not marker.strip(WHITESPACE):
            raise ValueError(
                f"the heading rule needs a marker with a non-whitespace character, got {marker!r}"
            )
        self.marker = marker
        self.ignore_headings = ignore_headings
        self.tokens = token_bytes(tokenizer, vocab_size or len(tokenizer))
        compiled = compile_marker(self.tokens, marker, ignore_headings)
        # int32 states index the table directly: one gather per step, no casts.
        self.table = torch.from_numpy(compiled.table.astype(np.int32))
        self.num_search = compiled.num_search
        self.done_state = compiled.answer

    @property
    def kind(self) -> str:
        """How token bytes were found: ``"byte-level"``, ``"sentencepiece"`` or ``"decoded"``."""
        return self.tokens.kind

    def to(self, device: torch.device | str) -> MarkerTracker:
        self.table = self.table.to(device)
        return self

    def initial_state(self, batch_size: int) -> torch.Tensor:
        return torch.zeros(batch_size, dtype=torch.int32, device=self.table.device)

    def step(self, state: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Advance ``state`` by one token per sequence; returns the new state."""
        return self.table[tokens, state]

    def seen(self, state: torch.Tensor) -> torch.Tensor:
        """Not thinking any more: an answer marker has appeared, or a line-start one is pending."""
        return state >= self.num_search

    def answered(self, state: torch.Tensor) -> torch.Tensor:
        """An answer marker has appeared (absorbing)."""
        return state == self.done_state

    def scan(self, token_ids: torch.Tensor) -> torch.Tensor:
        """:meth:`seen` flags after each token of ``token_ids`` ``(B, T)`` (for tests and analysis)."""
        state = self.initial_state(token_ids.shape[0])
        flags = [torch.zeros((token_ids.shape[0], 0), dtype=torch.bool, device=state.device)]
        for t in range(token_ids.shape[1]):
            state = self.step(state, token_ids[:, t])
            flags.append(self.seen(state)[:, None])
        return torch.cat(flags, dim=1)
