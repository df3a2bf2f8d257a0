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

import contextlib
import json
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

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


# --- token ids -> bytes -----------------------------------------------------------------------


def _byte_alphabet() -> dict[str, int]:
    """The byte-level BPE alphabet (GPT-2 and its descendants): character -> the byte it stands for.

    Bytes that are printable Latin-1 characters stand for themselves; the other 68 (controls,
    space, DEL, no-break space, soft hyphen and 0x80–0xA0) take the characters from U+0100 on,
    in byte order.
    """
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    chars = {chr(b): b for b in printable}
    extra = 0
    for b in range(256):
        if b not in printable:
            chars[chr(0x100 + extra)] = b
            extra += 1
    return chars


_ALPHABET = _byte_alphabet()
_TO_LATIN1 = {ord(ch): b for ch, b in _ALPHABET.items()}  # str.translate: alphabet char -> byte value
_DROP_ALPHABET = dict.fromkeys(map(ord, _ALPHABET))


@dataclass(frozen=True, eq=False)
class TokenBytes:
    """What each token id contributes to a text's bytes.

    ``kind`` is ``"byte-level"``, ``"sentencepiece"`` or ``"decoded"`` (the fallback). ``pieces[i]``
    is what id ``i`` adds after other text; ``first[i]``, when not None, what it adds as the first
    token of a text (decoders that drop the leading space of a text).
    """

    kind: str
    pieces: tuple[bytes, ...]
    first: tuple[bytes, ...] | None = None


def token_strings(tokenizer: PreTrainedTokenizerBase, vocab_size: int) -> list[str]:
    """The text each token id contributes when it follows other text (the fallback of :func:`token_bytes`).

    Decoding a token alone drops a SentencePiece word-initial space ("▁##" → "##"), so each id
    is decoded after an anchor token and the anchor's own text is removed. Ids the tokenizer
    does not know (embedding rows padded past the vocabulary) contribute no text. A token that
    is part of a character decodes to U+FFFD.
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


def _decoder_steps(tokenizer: PreTrainedTokenizerBase) -> list[dict[str, Any]] | None:
    """The backend tokenizer's decoder as a flat list of steps, or None without a readable one."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    try:
        decoder = backend.decoder if backend is not None else None
        if decoder is None:
            return None
        spec = json.loads(decoder.__getstate__())
    except Exception:  # noqa: BLE001 - any backend without a readable decoder uses the fallback
        return None

    def flatten(step: dict[str, Any]) -> list[dict[str, Any]]:
        if step.get("type") == "Sequence":
            return [s for sub in step.get("decoders", []) for s in flatten(sub)]
        return [step]

    return flatten(spec) if isinstance(spec, dict) else None


def _byte_level_pieces(tokens: Sequence[str | None]) -> list[bytes]:
    """Bytes of byte-level BPE tokens; a token with a character outside the alphabet (an added
    token such as one with a space) stands for its own UTF-8 text, as the ByteLevel decoder reads it."""
    out = []
    for t in tokens:
        if t is None:
            out.append(b"")
        elif t.translate(_DROP_ALPHABET):
            out.append(t.encode("utf-8"))
        else:
            out.append(t.translate(_TO_LATIN1).encode("latin-1"))
    return out


def _byte_fallback(piece: str) -> bytes | None:
    if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
        try:
            return bytes([int(piece[3:5], 16)])
        except ValueError:
            return None
    return None


def _strip_start(piece: str | bytes, content: str, count: int) -> str | bytes:
    unit: str | bytes = content if isinstance(piece, str) else content.encode("utf-8")
    for _ in range(count):
        if not piece.startswith(unit):  # type: ignore[arg-type]
            break
        piece = piece[len(unit) :]
    return piece


def _sentencepiece_pieces(
    tokens: Sequence[str | None], steps: list[dict[str, Any]]
) -> tuple[list[bytes], list[bytes]] | None:
    """Emulate a SentencePiece-style decoder chain per token: ``(pieces, first)``; None if a step
    is not one whose effect on a token is local (Replace of a string, ByteFallback, Fuse, Strip
    at the start, Metaspace)."""
    later: list[str | bytes] = ["" if t is None else t for t in tokens]
    first: list[str | bytes] = list(later)
    fused = False
    for step in steps:
        kind = step.get("type")
        if kind == "Replace":
            pattern = step.get("pattern", {}).get("String")
            content = step.get("content")
            if not isinstance(pattern, str) or not isinstance(content, str) or fused:
                return None
            later = [p.replace(pattern, content) if isinstance(p, str) else p for p in later]
            first = [p.replace(pattern, content) if isinstance(p, str) else p for p in first]
        elif kind == "Metaspace":
            rep = step.get("replacement", "▁")
            if fused or not isinstance(rep, str):
                return None
            # The decoder drops every replacement character of the text's first token.
            drop = "" if step.get("prepend_scheme", "always") != "never" else " "
            later = [p.replace(rep, " ") if isinstance(p, str) else p for p in later]
            first = [p.replace(rep, drop) if isinstance(p, str) else p for p in first]
        elif kind == "ByteFallback":
            if fused:
                return None
            later = [(b if isinstance(p, str) and (b := _byte_fallback(p)) is not None else p) for p in later]
            first = [(b if isinstance(p, str) and (b := _byte_fallback(p)) is not None else p) for p in first]
        elif kind == "Fuse":
            fused = True
        elif kind == "Strip":
            content, start, stop = step.get("content", " "), step.get("start", 0), step.get("stop", 0)
            if stop or not isinstance(content, str) or not isinstance(start, int):
                return None
            # After Fuse, Strip sees the whole text: only its first token loses the leading content.
            first = [_strip_start(p, content, start) for p in first]
            if not fused:
                later = [_strip_start(p, content, start) for p in later]
        else:
            return None

    def encode(p: str | bytes) -> bytes:
        return p.encode("utf-8") if isinstance(p, str) else p

    return [encode(p) for p in later], [encode(p) for p in first]


_TOKEN_BYTES: weakref.WeakKeyDictionary[Any, dict[tuple[int, int], TokenBytes]] = weakref.WeakKeyDictionary()


def token_bytes(tokenizer: PreTrainedTokenizerBase, vocab_size: int | None = None) -> TokenBytes:
    """The exact bytes each id of ``range(vocab_size)`` contributes to a decoded text.

    The kind is read from the backend tokenizer's decoder: ``ByteLevel`` → byte-level BPE;
    ``Replace``/``Metaspace``/``ByteFallback``/``Fuse``/``Strip`` → SentencePiece style; anything
    else (or no fast tokenizer) → ``"decoded"``: :func:`token_strings` as UTF-8, exact for tokens
    that are whole characters only. Ids past the tokenizer's vocabulary contribute nothing.
    Cached per tokenizer object.
    """
    vocab_size = vocab_size or len(tokenizer)
    key = (vocab_size, len(tokenizer))
    try:
        cached = _TOKEN_BYTES.get(tokenizer, {})
    except TypeError:  # not weak-referenceable: no cache
        cached = {}
    if key in cached:
        return cached[key]
    known = min(vocab_size, len(tokenizer))
    pad = [b""] * (vocab_size - known)
    result: TokenBytes | None = None
    steps = _decoder_steps(tokenizer)
    if steps is not None:
        kinds = [s.get("type") for s in steps if s.get("type") != "Fuse"]
        tokens = tokenizer.convert_ids_to_tokens(list(range(known)))
        if kinds == ["ByteLevel"]:
            result = TokenBytes("byte-level", tuple(_byte_level_pieces(tokens) + pad))
        elif kinds and "ByteLevel" not in kinds:
            emulated = _sentencepiece_pieces(tokens, steps)
            if emulated is not None:
                later, first = emulated
                result = TokenBytes(
                    "sentencepiece",
                    tuple(later + pad),
                    tuple(first + pad) if first != later else None,
                )
    if result is None:
        strings = token_strings(tokenizer, vocab_size)
        result = TokenBytes("decoded", tuple(s.encode("utf-8") for s in strings))
    with contextlib.suppress(TypeError):  # not weak-referenceable: no cache
        _TOKEN_BYTES.setdefault(tokenizer, {})[key] = result
    return result


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
