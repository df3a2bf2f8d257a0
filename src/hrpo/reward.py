"""Rewards: TRL-signature reward functions, weighted and checked.

A reward function is ``f(prompts, completions, **columns) -> list[float]``: ``prompts`` and
``completions`` have one entry per completion, and every other dataset column is passed by
name, repeated to line up with the completions (TRL's convention). The total reward is
``sum_f weight_f * f(...)``; every reward and every total must be a finite real number, since one
NaN or inf turns its whole group's advantages into NaN.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

RewardFunc = Callable[..., list[float]]

_FLOAT32_MAX = float(torch.finfo(torch.float32).max)


class RewardFunctionError(RuntimeError):
    """A reward function raised, or returned something unusable; the message shows the input."""


def reward_name(fn: RewardFunc) -> str:
    return getattr(fn, "__name__", type(fn).__name__)


def _short(x: Any, n: int = 200) -> str:
    text = repr(x)
    return text if len(text) <= n else text[:n] + "…"


def _as_reward(v: Any) -> float | None:
    """``v`` as a float32-representable reward, or None when it is not a finite real number.

    Python and numpy bools and reals (``numpy.float32`` is no ``float`` subclass) are accepted.
    ±inf is refused like NaN: it would pass here and turn the group's advantages into NaN later,
    far from its cause; so is a finite value beyond float32's range, which the reward tensor would
    turn into inf.
    """
    if not isinstance(v, (bool, numbers.Real, np.bool_)):
        return None
    try:
        x = float(v)
    except (OverflowError, TypeError, ValueError):  # e.g. an int beyond float's range
        return None
    return x if math.isfinite(x) and abs(x) <= _FLOAT32_MAX else None


def _call_one(fn: RewardFunc, prompts, completions, columns, i: int) -> None:
    fn(prompts[i : i + 1], completions[i : i + 1], **{k: v[i : i + 1] for k, v in columns.items()})


def compute_rewards(
    reward_funcs: Sequence[RewardFunc],
    prompts: list[Any],
    completions: list[Any],
    columns: dict[str, list[Any]],
    weights: Sequence[float] | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Weighted total reward ``(N,)`` and each function's rewards, by name.

    A function that raises is re-run item by item to find the first input that fails, and that
    input is reported in the error; a function that returns the wrong number of values, or a value
    that is not a finite real number (NaN, ±inf, beyond float32's range, a string, None) for some
    completion is reported likewise, naming the function, the completion's index and its text; so is
    a non-finite weighted total. Nothing is silently zeroed.
    """
    weights = list(weights) if weights is not None else [1.0] * len(reward_funcs)
    if len(weights) != len(reward_funcs):
        raise ValueError(f"{len(weights)} reward_weights for {len(reward_funcs)} reward functions")
    n = len(completions)
    per_func: dict[str, torch.Tensor] = {}
    total = torch.zeros(n, dtype=torch.float32)
    for fn, w in zip(reward_funcs, weights, strict=True):
        name = reward_name(fn)
        try:
            values = fn(prompts, completions, **columns)
        except Exception as exc:
            for i in range(n):
                try:
                    _call_one(fn, prompts, completions, columns, i)
                except Exception as item_exc:
                    raise RewardFunctionError(
                        f"reward function {name!r} raised {type(item_exc).__name__}: {item_exc} "
                        f"on completion {i} "
                        f"(prompt={_short(prompts[i])}, completion={_short(completions[i])}, "
                        f"columns={_short({k: v[i] for k, v in columns.items()})})"
                    ) from item_exc
            raise RewardFunctionError(
                f"reward function {name!r} raised {type(exc).__name__}: {exc} on a batch of {n} "
                "(each item alone succeeds)"
            ) from exc
        if values is None or len(values) != n:
            got = "None" if values is None else f"{len(values)} values"
            raise RewardFunctionError(f"reward function {name!r} returned {got} for {n} completions")
        out = []
        for i, v in enumerate(values):
            reward = _as_reward(v)
            if reward is None:
                raise RewardFunctionError(
                    f"reward function {name!r} returned {_short(v)} for completion {i} "
                    f"(completion={_short(completions[i])}); rewards must be finite numbers"
                )
            out.append(reward)
        per_func[name] = torch.tensor(out, dtype=torch.float32)
        total += w * per_func[name]
    bad = (~torch.isfinite(total)).nonzero().flatten().tolist()
    if bad:
        i = bad[0]
        parts = ", ".join(f"{n}={r[i].item()!r}" for n, r in per_func.items())
        raise RewardFunctionError(
            f"the weighted total reward of completion {i} is {total[i].item()} (rewards {parts}, "
            f"weights {weights}; completion={_short(completions[i])}); rewards must be finite numbers"
        )
    return total, per_func
