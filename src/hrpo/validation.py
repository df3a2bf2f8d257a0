"""Checking setting values: the error type, numeric ranges, and annotated types.

:class:`Range` is the one definition of a numeric setting's allowed values, shared by the config
keys (:data:`hrpo.config.FIELD_RANGES`), :class:`~hrpo.rollout.RolloutConfig` and the command-line
options, so they accept exactly the same values and say the same thing about the rest.
"""

from __future__ import annotations

import math
import numbers
import types
import typing
from dataclasses import dataclass
from typing import Any, Literal


class ConfigError(ValueError):
    """A configuration key or value is invalid; the message names it."""


@dataclass(frozen=True)
class Range:
    """The allowed values of a numeric setting: finite numbers in an interval, plus special values.

    ``Range(0, 1, high_open=True)`` is [0, 1); ``Range(1, special=(-1,))`` is -1 or >= 1;
    ``Range(0, low_open=True, special=(None,))`` is > 0 or null. NaN and ±inf are never allowed.
    """

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    special: tuple[Any, ...] = ()
    why: str = ""
    """Appended to the error message."""

    def __contains__(self, value: Any) -> bool:
        if value in self.special:
            return True
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def __str__(self) -> str:
        def num(x: float) -> str:
            return str(x) if isinstance(x, int) else f"{x:g}"

        if self.low is not None and self.high is not None:
            left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
            text = f"in {left}{num(self.low)}, {num(self.high)}{right}"
        elif self.low is not None:
            text = f"{'>' if self.low_open else '>='} {num(self.low)}"
        elif self.high is not None:
            text = f"{'<' if self.high_open else '<='} {num(self.high)}"
        else:
            text = "a finite number"
        numbers = [num(s) for s in self.special if s is not None]
        text = " or ".join([*numbers, text])
        return text + " or null" if None in self.special else text

    def problem(self, value: Any) -> str | None:
        """None if ``value`` is allowed, else what is wrong: ``"must be > 0 (got -1)"``."""
        if value in self:
            return None
        non_finite = isinstance(value, float) and not math.isfinite(value)
        prefix = "a finite number " if non_finite and (self.low, self.high) != (None, None) else ""
        why = f"; {self.why}" if self.why else ""
        return f"must be {prefix}{self} (got {value!r}){why}"

    def check(self, what: str, value: Any) -> None:
        """Raise a :class:`ConfigError` starting with ``what`` unless ``value`` is allowed."""
        problem = self.problem(value)
        if problem is not None:
            raise ConfigError(f"{what}: {problem}")


def matches(value: Any, tp: Any) -> bool:
    """Whether ``value`` is of the annotated type ``tp`` (unions, Literal, list[...], dict, int/float without bool)."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(matches(value, t) for t in typing.get_args(tp))
    if origin is Literal:
        return value in typing.get_args(tp)
    if tp is type(None):
        return value is None
    if origin is list:
        (item,) = typing.get_args(tp)
        return isinstance(value, list) and all(matches(v, item) for v in value)
    if origin is dict:
        return isinstance(value, dict)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, tp)


def describe(tp: Any) -> str:
    """``tp`` as an error message writes it."""
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    return str(tp).replace("typing.", "").replace("<class '", "").replace("'>", "")


def coerce(value: Any, tp: Any) -> Any:
    """Accept ints for float fields, and '1e-4' (which YAML 1.1 reads as a string) as a float."""
    wants_float = tp is float or typing.get_args(tp) == (float, type(None))
    if wants_float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if wants_float and isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value
