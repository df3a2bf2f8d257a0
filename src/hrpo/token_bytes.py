"""Token ids → bytes: what each token of a vocabulary contributes to a text, byte for byte.

The answer-marker automaton (:mod:`hrpo.marker`) matches over bytes, so that a marker split into
single-byte tokens is found. Each token id's exact byte string comes from its piece: byte-level
BPE (GPT-2 and descendants) maps the byte↔character alphabet back; SentencePiece style reads
``<0xHH>`` byte-fallback pieces as byte ``HH`` and ``▁`` as a space; added tokens are their text.
Tokenizers of other kinds fall back to decoding each token after an anchor token
(:func:`token_strings`).
"""

from __future__ import annotations

import contextlib
import json
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from transformers import PreTrainedTokenizerBase


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
