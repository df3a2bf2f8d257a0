"""The authors' grading protocol (``paper``), beside ours (``hrpo``): spec §7, reimplemented safely.

For like-for-like comparisons with the paper's numbers. The rules, in our words:

1. Extraction (reward and evaluation): the text after the LAST marker, or the whole completion when
   it has none; whitespace stripped, then ONE trailing period dropped.
2. Reward and evaluation: the training reward (``strict_format=True``) is 1 only if the extracted
   answer matches AND the completion contains the marker exactly once, counted as a plain
   substring (``#### Step 1`` headings count too); evaluation (``strict_format=False``) is the match
   alone.
3. Numbers (GSM8K, arithmetic): commas removed; every number of the form sign, digits, optionally
   ``.`` or ``/`` and digits is found; the LAST one, normalised, must equal the reference's last
   number normalised the same way, as a string. Normal form: an integer value is written as an
   integer (``72.0`` → ``72``, ``-0`` → ``0``); other values as the exact decimal with trailing
   zeros dropped (``2.50`` → ``2.5``, ``3/4`` → ``0.75``), or, when the decimal does not terminate,
   as the fraction in lowest terms (``2/6`` → ``1/3``). The authors computed ``a/b`` with ``eval()``
   and wrote floats (so ``1/3`` became ``0.3333333333333333``): we compute exactly with
   ``fractions.Fraction``. Since an exact value and its terminating decimal get one string,
   ``3/4`` matches ``0.75`` as under the authors' floats; a fraction without a finite decimal matches
   only an equal fraction (a rounded decimal such as ``0.333`` never matched under floats either).
   ``x/0`` and numbers longer than ``MAX_NUMBER_CHARS`` keep their written form.
4. MATH: the answer is, if the text contains ``boxed``, the content of the last ``\\boxed{…}``
   (braces counted in one scan; none, or unclosed, means no answer); else the content of the last
   LaTeX span (``\\[…\\]``, ``\\(…\\)``, ``$$…$$``, ``$…$``); else the last number as written. Then
   the steps §7 lists of Hendrycks' string normalisation, in the order of his ``_strip_string``
   (see :func:`paper_math_normalize`), are applied to it and to the reference, which must be equal.
   Hendrycks' steps §7 does not list (``\\\\`` → ``\\``, ``" ."``/``"{."`` → ``0.`` inside the
   string, and ``0.5`` → ``\\frac{1}{2}``) are left out; where his code would raise (``\\frac`` at
   the very end, several ``\\text{ ``), the step leaves the text as it is or keeps the first part.
5. Multiple choice: the extracted text upper-cased; its LAST standalone letter A–J (so the
   article "a" and the pronoun "I" count: ``I think it is a`` gives A); with none, the whole
   upper-cased stripped text. It must equal the key letter.
6. Knowledge QA: SQuAD normalisation (:func:`hrpo.tasks.qa.normalize_answer`: lower-case,
   punctuation and the articles a/an/the removed, whitespace collapsed) of the whole extracted
   text, equal to that of any gold answer.
7. Any other task: the extracted answer equals the reference stripped and with one trailing
   period dropped.

Model output is never executed, and every rule is one linear pass or a bounded number of them
(``str`` methods, regexes without nested quantifiers, brace counting in one scan), so megabyte
completions are graded in linear time.
"""

from __future__ import annotations

import functools
import re
import string
from collections import deque
from collections.abc import Callable, Sequence
from fractions import Fraction
from typing import Any

from hrpo.tasks.qa import gold_answers, normalize_answer

PAPER_MARKER = "####"

# The numbers the authors' GSM8K rule reads (after commas are removed).
_NUMBER_RE = re.compile(r"[-+]?[0-9]+(?:[./][0-9]+)?")
# Far beyond any answer; int() refuses past ~4300 digits and its cost grows with length.
MAX_NUMBER_CHARS = 1000

_BOXED = "\\boxed"
_BRACE_RE = re.compile(r"[{}]")
# LaTeX span openers; "$$" before "$" so a display span is not read as two empty inline ones.
_SPAN_OPEN_RE = re.compile(r"\\\[|\\\(|\$\$|\$")
_SPAN_CLOSE = {"\\[": "\\]", "\\(": "\\)", "$$": "$$", "$": "$"}

# Integers as Python writes them, so "a/b" reads back the same ("03/4" and "-0/4" are not).
_INT = r"0|-?[1-9][0-9]*"
_A_SLASH_B_RE = re.compile(rf"({_INT})/({_INT})")
# [^{}] stops every attempt at the next brace, and each "\text{" holds one: linear.
_TEXT_RE = re.compile(r"\\text\{([^{}]*)\}")


# --- extraction --------------------------------------------------------------------------------


def _strip_answer(text: str) -> str:
    """Whitespace stripped, then one trailing period dropped."""
    text = text.strip()
    return text[:-1] if text.endswith(".") else text


def paper_extract(completion: str, marker: str = PAPER_MARKER) -> str:
    """The text after the last ``marker`` (all of it when there is none), stripped, one final ``.`` dropped.

    The last piece of a left-to-right split, as the authors' ``split``: ``"##### 5"`` gives ``"# 5"``.
    """
    return _strip_answer(completion.split(marker)[-1])


def paper_format_ok(completion: str, marker: str = PAPER_MARKER) -> bool:
    """The authors' format rule for the training reward: the marker occurs exactly once (plain count)."""
    return completion.count(marker) == 1


# --- numbers (GSM8K, arithmetic) ---------------------------------------------------------------


def _decimal_string(value: Fraction) -> str | None:
    """``value`` as a decimal without trailing zeros, or None when its decimal does not terminate."""
    den = value.denominator
    twos = fives = 0
    while den % 2 == 0:
        den //= 2
        twos += 1
    while den % 5 == 0:
        den //= 5
        fives += 1
    if den != 1:
        return None
    places = max(twos, fives)
    digits = str(abs(value.numerator) * 10**places // value.denominator).rjust(places + 1, "0")
    whole, frac = digits[:-places], digits[-places:].rstrip("0")
    return f"{'-' if value < 0 else ''}{whole}.{frac}"


def paper_number_form(token: str) -> str:
    """The normal form of one number token (rule 3 of the module docstring)."""
    if len(token) > MAX_NUMBER_CHARS:
        return token
    if "/" in token:
        num, den = token.split("/")
        if int(den) == 0:
            return token
        value = Fraction(int(num), int(den))
    else:
        value = Fraction(token)
    if value.denominator == 1:
        return str(value.numerator)
    decimal = _decimal_string(value)
    return decimal if decimal is not None else f"{value.numerator}/{value.denominator}"


def paper_last_number(text: str) -> str | None:
    """The normal form of the last number in ``text`` once commas are removed, or None."""
    # A deque of length 1 keeps the last match without holding them all.
    last = deque(_NUMBER_RE.finditer(text.replace(",", "")), maxlen=1)
    return paper_number_form(last[0].group()) if last else None


def paper_numeric_match(extracted: str, reference: str) -> bool:
    """The GSM8K rule: the last numbers of the answer and of the reference have one normal form."""
    want = paper_last_number(reference)
    return want is not None and paper_last_number(extracted) == want


# --- MATH --------------------------------------------------------------------------------------


def _last_boxed_content(text: str) -> str | None:
    """The content of the last ``\\boxed{…}``, braces counted; None if it is not braced or never closes."""
    at = text.rfind(_BOXED)
    start = at + len(_BOXED)
    if at < 0 or not text.startswith("{", start):
        return None
    depth = 0
    for m in _BRACE_RE.finditer(text, start):
        depth += 1 if m.group() == "{" else -1
        if depth == 0:
            return text[start + 1 : m.start()]
    return None


def _last_latex_span(text: str) -> str | None:
    """The content of the last LaTeX span, each opener closed by the next closer of its kind."""
    last = None
    pos = 0
    absent: set[str] = set()  # closers not in the rest of the text: later openers need no search
    while (m := _SPAN_OPEN_RE.search(text, pos)) is not None:
        closer = _SPAN_CLOSE[m.group()]
        end = -1 if closer in absent else text.find(closer, m.end())
        if end < 0:
            absent.add(closer)
            pos = m.end()
            continue
        last = text[m.end() : end]
        pos = end + len(closer)
    return last


def paper_math_answer(text: str) -> str | None:
    """The MATH rule's answer: last ``\\boxed{}`` content, else last LaTeX span, else last number."""
    if "boxed" in text:
        return _last_boxed_content(text)
    span = _last_latex_span(text)
    if span is not None:
        return span.strip()
    last = deque(_NUMBER_RE.finditer(text), maxlen=1)
    return last[0].group() if last else None


def _fix_fracs(text: str) -> str:
    """``\\frac12`` → ``\\frac{1}{2}``, ``\\frac1{2}`` → ``\\frac{1}{2}`` (Hendrycks)."""
    head, *rest = text.split("\\frac")
    out = [head]
    for part in rest:
        out.append("\\frac")
        if part.startswith("{"):
            out.append(part)
        elif len(part) < 2:
            return text
        elif part[1] != "{":
            out.append(f"{{{part[0]}}}{{{part[1]}}}{part[2:]}")
        else:
            out.append(f"{{{part[0]}}}{part[1:]}")
    return "".join(out)


def _fix_sqrt(text: str) -> str:
    """``\\sqrt2`` → ``\\sqrt{2}`` (Hendrycks)."""
    head, *rest = text.split("\\sqrt")
    out = [head]
    for part in rest:
        out.append(f"\\sqrt{{{part[0]}}}{part[1:]}" if part and part[0] != "{" else f"\\sqrt{part}")
    return "".join(out)


def _fix_a_slash_b(text: str) -> str:
    """An integer ``a/b`` → ``\\frac{a}{b}`` (Hendrycks)."""
    m = _A_SLASH_B_RE.fullmatch(text)
    return f"\\frac{{{m[1]}}}{{{m[2]}}}" if m else text


def paper_math_normalize(text: str) -> str:
    """The §7 steps of Hendrycks' MATH string normalisation, in his order, then ``\\text{}`` and case."""
    for old, new in (
        ("\n", ""),
        ("\\!", ""),
        ("tfrac", "frac"),
        ("dfrac", "frac"),
        ("\\left", ""),
        ("\\right", ""),
        ("^{\\circ}", ""),
        ("^\\circ", ""),
        ("\\$", ""),
    ):
        text = text.replace(old, new)
    text = text.partition("\\text{ ")[0]  # "\text{ " starts units, as in "5 \text{ cm}"
    text = text.replace("\\%", "")
    if text.startswith("."):
        text = "0" + text
    if text.count("=") == 1:
        left, _, right = text.partition("=")
        if len(left) <= 2:  # "x = 5", "k=5": a variable named before the value
            text = right
    text = _fix_sqrt(text)
    text = text.replace(" ", "")
    text = _fix_fracs(text)
    text = _fix_a_slash_b(text)
    return _TEXT_RE.sub(r"\1", text).lower()


def paper_math_match(extracted: str, reference: str) -> bool:
    """The MATH rule: the normalised answer of ``extracted`` equals the normalised reference."""
    answer = paper_math_answer(extracted)
    return answer is not None and paper_math_normalize(answer) == paper_math_normalize(reference)


# --- multiple choice, QA, other text -----------------------------------------------------------


@functools.lru_cache(maxsize=32)
def _letter_re(n_letters: int) -> re.Pattern[str]:
    return re.compile(rf"\b([A-{string.ascii_uppercase[n_letters - 1]}])\b")


def paper_choice_letter(extracted: str, n_letters: int = 10) -> str:
    """The last standalone letter among the first ``n_letters`` of the upper-cased text, else that text stripped."""
    if isinstance(n_letters, bool) or not isinstance(n_letters, int) or not 1 <= n_letters <= 26:
        raise ValueError(f"n_letters must be an int from 1 to 26, got {n_letters!r}")
    upper = extracted.upper()
    last = deque(_letter_re(n_letters).finditer(upper), maxlen=1)
    return last[0].group(1) if last else upper.strip()


def paper_choice_match(extracted: str, reference: str) -> bool:
    """The multiple-choice rule: the letter read from ``extracted`` is the key letter."""
    return paper_choice_letter(extracted) == reference.strip()


def paper_qa_match(extracted: str, reference: str | Sequence[str]) -> bool:
    """The QA rule: SQuAD-normalised exact match with any gold (a JSON list string, one answer or a list)."""
    predicted = normalize_answer(extracted)
    return any(predicted == normalize_answer(gold) for gold in gold_answers(reference))


def paper_text_match(extracted: str, reference: str) -> bool:
    """Any other task: equality with the reference, stripped and with one trailing period dropped."""
    return extracted == _strip_answer(reference)


# --- one entry ---------------------------------------------------------------------------------

PAPER_MATCHERS: dict[str, Callable[[str, Any], bool]] = {
    "number": paper_numeric_match,
    "math": paper_math_match,
    "choice": paper_choice_match,
    "qa": paper_qa_match,
    "text": paper_text_match,
}


def paper_grade(
    kind: str, completion: str, reference: Any, *, marker: str = PAPER_MARKER, strict_format: bool = False
) -> float:
    """1.0 or 0.0 for one completion by the authors' rule for answers of ``kind`` (a key of PAPER_MATCHERS).

    With ``strict_format`` (the training reward) the completion must contain ``marker`` exactly once.
    A reference other than a string (or, for QA, a list of golds) is graded as its ``str``.
    """
    match = PAPER_MATCHERS[kind]
    if not isinstance(completion, str) or reference is None:
        return 0.0
    if strict_format and not paper_format_ok(completion, marker):
        return 0.0
    if not isinstance(reference, str) and kind != "qa":
        reference = str(reference)
    try:
        return 1.0 if match(paper_extract(completion, marker), reference) else 0.0
    except Exception:  # a grader facing model output must never crash training
        return 0.0
