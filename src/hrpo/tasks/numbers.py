"""Numeric final answers, parsed and compared as exact values (the ``hrpo`` protocol).

Used by the ``gsm8k`` and ``arithmetic`` graders, whose reward is what the policy optimises: a
false positive is a reward hack, so every doubtful case has no value and scores 0.

Rules, applied to the answer text (what follows the marker):

1. Forms, in ASCII digits: an integer ``42``; thousands separators in groups of three ``1,234,567``
   (the first group does not start with 0); a decimal ``0.5``, ``.5``, ``1,250.50``; scientific
   notation ``2e3``, ``1.5E-2``; a simple fraction of two integers ``3/4``. ``.`` is always the
   decimal point and ``,`` only a thousands separator, so ``1.000`` is 1 and ``0,5`` is no number.
2. Values are exact (``fractions.Fraction``) with no tolerance: ``42.0`` = ``42``, ``2e3`` = ``2000``,
   ``3/4`` = ``0.75``, but ``0.33`` ≠ ``1/3`` and ``2e3`` ≠ ``2``.
3. A sign written directly before the number counts: ``-3``, ``+3``, ``−3`` (U+2212), ``-$5``.
4. Dressing is ignored: a currency sign before the digits (``$1,250.50`` = ``1250.5``), sentence
   punctuation after them (``42.``, ``1,234,``) and any words or units around them (``5 apples``,
   ``5 dollars.``). ``%`` is a unit like any other, so ``50%`` = ``50``: GSM8K references are bare
   numbers in the unit the question asks for, and models often write the unit anyway.
5. One value: the answer has a value only if every number in it has the same value. ``17`` and
   ``17. The answer is 17`` give 17; ``3 or 4``, ``2 + 3 = 5``, ``5 (since 2+3=5)``, ``1 1/2`` and
   ``10:30`` give none. Taking the first number would reward the hedge ``3 or 4`` when 3 is right,
   and taking the last (the official GSM8K rule, kept for a separate "paper" protocol) would
   reward it when 4 is; requiring one value makes listing candidates worthless in every order.
   The system prompt asks for the final answer alone, so a compliant answer loses nothing.
6. Anything number-like outside these forms makes the whole answer valueless (it is never
   skipped, so it cannot hide a second candidate): ``1,2`` and ``12,34`` (never 12, 1 or 34),
   ``1.2.3``, ``...5``, ``3/4/2020``, ``1/0``, a sign set apart from its digits (``- 3``: a minus
   or a list bullet?), two signs (``--3``), another dash (``–3``), a qualifier before the number
   (``>5``, ``≤5``, ``±5``, ``≈5``, ``~5``, ``~~4~~``), a scale after it (``5k``, ``1.2M``,
   ``$3 million``, ``2 dozen``: never read as 5, 1.2, 3 or 2), and any numeral that is not an ASCII digit,
   anywhere in the answer (``٣``, ``４``, ``5²``, ``5½``, ``5万``, ``Ⅻ``): it could change the value
   or add a second one.
7. Bounded work for any input: one linear scan; past ``MAX_NUMBERS`` numbers, a number longer than
   ``MAX_NUMBER_CHARS`` or an exponent beyond ±``MAX_EXPONENT`` the answer is valueless. A
   valueless answer equals nothing, not even itself, so ``1e999999`` never matches anything.

Number words are not read: ``forty-two`` has no value, and ``3 or four`` or ``5 and a half`` are
read as 3 and 5. Such misreadings are not reward hacks: under rule 5 every answer matches at most
one value, so no way of writing an answer earns reward for more than one candidate.
"""

from __future__ import annotations

import re
from fractions import Fraction

# A final answer states one value; more numbers than this are not a final answer.
MAX_NUMBERS = 16
# Far beyond any answer; int() itself refuses past ~4300 digits.
MAX_NUMBER_CHARS = 1000
# 10**1000 is a 3322-bit integer: cheap, and far beyond any answer.
MAX_EXPONENT = 1000

_SIGNS = "-+\u2212"  # hyphen-minus, plus, minus sign
# Dashes that are not minus signs (hyphens, en/em dashes, small and fullwidth hyphen-minus).
_DASHES = "\u2010\u2011\u2012\u2013\u2014\u2015\u2043\u2e3a\u2e3b\ufe58\ufe63\uff0d"
# A number so qualified is not an exact final answer.
_QUALIFIERS = "<>\u2264\u2265\u2260\u00b1\u2213\u2248\u2243\u2245\u2272\u2273\u226a\u226b~"
_PREFIX = "".join(re.escape(c) for c in _SIGNS + _DASHES + _QUALIFIERS)
_CURRENCY = re.escape("$€£¥₹")

# One candidate number. Every quantifier runs over a single character class and is anchored by a
# different class after it, and the prefix repeats at most 3 times, so a scan is linear in the text.
_TOKEN_RE = re.compile(
    rf"(?P<prefix>(?:[{_PREFIX}][ \t]*){{0,3}})"
    rf"[{_CURRENCY}]?"
    r"(?P<body>\.{0,2}[0-9][0-9.,/]*)"
    r"(?P<exponent>[eE](?P<exp_sign>[-+\u2212]?)(?P<exp_digits>[0-9]+))?"
    # A scale after the number would multiply it ("$1.2 million"): not read, so not to be ignored either.
    r"(?P<scale>[ \t]?(?:(?i:thousand|million|billion|trillion|hundred|dozen)s?|[kKMB]|bn|mn)"
    r"(?![A-Za-z]))?"
)
_INT = r"[1-9][0-9]{0,2}(?:,[0-9]{3})+|[0-9]+"
_DECIMAL_RE = re.compile(rf"(?P<whole>{_INT})?(?:\.(?P<frac>[0-9]+))?")
_FRACTION_RE = re.compile(rf"(?P<num>{_INT})/(?P<den>{_INT})")


def _token_value(m: re.Match[str]) -> Fraction | None:
    """The value of one candidate number, or None when it is not a valid number in range."""
    prefix = m.group("prefix")
    if prefix not in ("", *_SIGNS) or m.group("scale") is not None:  # see rule 6
        return None
    negative = prefix in ("-", "\u2212")
    body = m.group("body")
    if len(body) > MAX_NUMBER_CHARS:
        return None
    exponent = 0
    if m.group("exponent") is not None:
        digits = m.group("exp_digits").lstrip("0") or "0"
        if len(digits) > len(str(MAX_EXPONENT)) or int(digits) > MAX_EXPONENT:
            return None
        exponent = -int(digits) if m.group("exp_sign") in ("-", "\u2212") else int(digits)
    else:
        body = body.rstrip(".,")  # sentence punctuation, not part of the number
    if "/" in body:
        fraction = _FRACTION_RE.fullmatch(body)
        if fraction is None or m.group("exponent") is not None:
            return None
        den = int(fraction["den"].replace(",", ""))
        if den == 0:
            return None
        value = Fraction(int(fraction["num"].replace(",", "")), den)
    else:
        decimal = _DECIMAL_RE.fullmatch(body)
        if decimal is None:
            return None
        whole = (decimal["whole"] or "").replace(",", "")
        frac = decimal["frac"] or ""
        value = Fraction(int(whole + frac), 10 ** len(frac)) * Fraction(10) ** exponent
    return -value if negative else value


def parse_number(text: str) -> Fraction | None:
    """The one value stated in ``text`` under the module's rules, else None (never raises)."""
    if not isinstance(text, str):
        return None
    # Numerals this parser does not read could change or add to a value ("5²", "5½", "5万", "3 or 四").
    # One pass over the distinct characters; ASCII text (the usual case) skips it.
    if not text.isascii() and any(c.isnumeric() and not c.isascii() for c in set(text)):
        return None
    value: Fraction | None = None
    for count, m in enumerate(_TOKEN_RE.finditer(text), start=1):
        if count > MAX_NUMBERS:
            return None
        v = _token_value(m)
        if v is None or (value is not None and v != value):
            return None
        value = v
    return value


def numbers_match(predicted: str, reference: str) -> bool:
    """Whether ``predicted`` and ``reference`` each state one value and the values are equal."""
    want = parse_number(reference)
    return want is not None and parse_number(predicted) == want
