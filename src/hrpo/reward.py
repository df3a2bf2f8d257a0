"""Rewards: reward functions called as TRL calls them, weighted and checked.

A reward function is called with keyword arguments, one entry per completion (TRL's convention):
``prompts``, ``completions`` (the text, or ``[{"role": "assistant", "content": text}]`` when the
prompt is a list of chat messages), ``completion_ids`` (the completion's token ids, padding
removed), ``trainer_state`` (a :class:`TrainingState`) and every other dataset column by name,
repeated to line up with the completions. It returns one reward per completion: a finite real
number, or None where it does not apply. The total reward is ``sum_f weight_f * f(...)`` over the
functions that scored the completion (TRL's nansum); a completion no function scored is an error,
and so is any reward or total that is not a finite real number, since one NaN or inf turns its
whole group's advantages into NaN.
"""

from __future__ import annotations

import difflib
import importlib
import math
import numbers
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

RewardFunc = Callable[..., list[float | None]]

_FLOAT32_MAX = float(torch.finfo(torch.float32).max)
REWARD_ARGUMENTS = ("prompts", "completions", "completion_ids", "trainer_state")
"""The keyword arguments every reward function receives besides the dataset columns."""
DROPPED_COLUMNS = ("prompt", "completion", "completion_ids")
"""Dataset columns not passed to reward functions by name (TRL drops the same ones)."""


@dataclass
class TrainingState:
    """What reward functions get as ``trainer_state``: the fields of transformers' ``TrainerState``
    that reward shaping reads (TRL passes the trainer's ``TrainerState``)."""

    global_step: int = 0
    """Optimiser steps completed before this one."""
    max_steps: int = 0
    """Optimiser steps the run trains for."""
    epoch: float = 0.0
    """Passes over the training rows completed before this step (fractional)."""
    num_train_epochs: int = 0
    """Passes over the training rows the run makes, rounded up."""
    is_local_process_zero: bool = True
    is_world_process_zero: bool = True

    @classmethod
    def at(
        cls, step: int, max_steps: int, prompts_per_step: int, num_rows: int, accelerator: Any
    ) -> TrainingState:
        """The state while step ``step`` (0-based) of a run over ``num_rows`` prompts is computed."""
        return cls(
            global_step=step,
            max_steps=max_steps,
            epoch=step * prompts_per_step / num_rows,
            num_train_epochs=math.ceil(max_steps * prompts_per_step / num_rows),
            is_local_process_zero=accelerator.is_local_main_process,
            is_world_process_zero=accelerator.is_main_process,
        )


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


def _slice(value: Any, i: int) -> Any:
    """Item ``i`` of a per-completion argument as a list of one; other values (the state) as they are."""
    return value[i : i + 1] if isinstance(value, list) else value


def _call_one(fn: RewardFunc, kwargs: dict[str, Any], i: int) -> None:
    fn(**{k: _slice(v, i) for k, v in kwargs.items()})


def _unique_names(reward_funcs: Sequence[RewardFunc]) -> list[str]:
    """The functions' names, a repeated one suffixed ``_2``, ``_3``… so each keeps its metrics."""
    names: list[str] = []
    for fn in reward_funcs:
        name, k = reward_name(fn), 1
        while name in names:
            k += 1
            name = f"{reward_name(fn)}_{k}"
        names.append(name)
    return names


def _scores(fn: RewardFunc, name: str, kwargs: dict[str, Any], n: int) -> list[float]:
    """``fn``'s rewards (None as NaN), or a :class:`RewardFunctionError` showing the bad input."""
    prompts, completions = kwargs["prompts"], kwargs["completions"]
    columns = {k: v for k, v in kwargs.items() if k not in REWARD_ARGUMENTS}
    try:
        values = fn(**kwargs)
    except Exception as exc:
        for i in range(n):
            try:
                _call_one(fn, kwargs, i)
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
    if not hasattr(values, "__len__") or len(values) != n:
        got = f"{len(values)} values" if hasattr(values, "__len__") else _short(values)
        raise RewardFunctionError(f"reward function {name!r} returned {got} for {n} completions")
    out = []
    for i, v in enumerate(values):
        reward = math.nan if v is None else _as_reward(v)
        if reward is None:
            raise RewardFunctionError(
                f"reward function {name!r} returned {_short(v)} for completion {i} "
                f"(completion={_short(completions[i])}); rewards must be finite numbers, or None "
                "where the function does not apply"
            )
        out.append(reward)
    return out


def compute_rewards(
    reward_funcs: Sequence[RewardFunc],
    prompts: list[Any],
    completions: list[Any],
    columns: dict[str, list[Any]],
    weights: Sequence[float] | None = None,
    *,
    completion_ids: list[list[int]] | None = None,
    trainer_state: Any = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Weighted total reward ``(N,)`` and each function's rewards by name (NaN where it returned None).

    Each function is called as ``fn(prompts=, completions=, completion_ids=, trainer_state=,
    **columns)``. A None reward leaves that function's term out of the completion's total; a
    completion every function returned None for is an error naming its index and the functions.
    A function that raises is re-run item by item to find the first input that fails, and that
    input is reported in the error; a function that returns the wrong number of values, or a value
    that is neither None nor a finite real number (NaN, ±inf, beyond float32's range, a string) for
    some completion is reported likewise, naming the function, the completion's index and its text;
    so is a non-finite weighted total. Nothing is silently zeroed.
    """
    weights = list(weights) if weights is not None else [1.0] * len(reward_funcs)
    if len(weights) != len(reward_funcs):
        raise ValueError(f"{len(weights)} reward_weights for {len(reward_funcs)} reward functions")
    clash = sorted(set(columns) & set(REWARD_ARGUMENTS))
    if clash:
        raise ValueError(
            f"dataset column(s) {clash} have the name of a reward function argument; rename them"
        )
    n = len(completions)
    kwargs = {
        "prompts": prompts,
        "completions": completions,
        "completion_ids": completion_ids,
        "trainer_state": trainer_state,
        **columns,
    }
    names = _unique_names(reward_funcs)
    per_func: dict[str, torch.Tensor] = {}
    total = torch.zeros(n, dtype=torch.float32)
    for fn, name, w in zip(reward_funcs, names, weights, strict=True):
        values = torch.tensor(_scores(fn, name, kwargs, n), dtype=torch.float32)
        per_func[name] = values
        # A None (NaN) term is left out; adding 0 keeps the other totals' rounding unchanged.
        total += torch.where(torch.isnan(values), 0.0, w * values)
    if per_func:
        unscored = torch.stack(list(per_func.values())).isnan().all(0).nonzero().flatten().tolist()
        if unscored:
            i = unscored[0]
            raise RewardFunctionError(
                f"every reward function ({', '.join(names)}) returned None for completion {i} "
                f"(prompt={_short(prompts[i])}, completion={_short(completions[i])}); at least one "
                "must score each completion"
            )
    bad = (~torch.isfinite(total)).nonzero().flatten().tolist()
    if bad:
        i = bad[0]
        parts = ", ".join(f"{n}={r[i].item()!r}" for n, r in per_func.items())
        raise RewardFunctionError(
            f"the weighted total reward of completion {i} is {total[i].item()} (rewards {parts}, "
            f"weights {weights}; completion={_short(completions[i])}); rewards must be finite numbers"
        )
    return total, per_func


# -- what reward functions are given ------------------------------------------------------------


def is_conversational(prompt: Any) -> bool:
    """Whether ``prompt`` is a list of chat messages (TRL's conversational format)."""
    return (
        isinstance(prompt, (list, tuple))
        and len(prompt) > 0
        and isinstance(prompt[0], dict)
        and "role" in prompt[0]
    )


def reward_completions(prompts: Sequence[Any], texts: Sequence[str]) -> list[Any]:
    """Each completion as TRL passes it: ``[{"role": "assistant", "content": text}]`` after a
    conversational prompt, the text after a text prompt."""
    return [
        [{"role": "assistant", "content": t}] if is_conversational(p) else t
        for p, t in zip(prompts, texts, strict=True)
    ]


def unpadded_ids(ids: torch.Tensor, mask: torch.Tensor) -> list[list[int]]:
    """Each row's token ids where ``mask`` is set (the completion up to and including EOS)."""
    ids, mask = ids.cpu(), mask.cpu().bool()
    return [row[m].tolist() for row, m in zip(ids, mask, strict=True)]


# -- metrics -----------------------------------------------------------------------------------


def nanstd(x: torch.Tensor) -> torch.Tensor:
    """Sample standard deviation (Bessel-corrected) of the non-NaN values; NaN with fewer than two."""
    count = (~torch.isnan(x)).sum()
    if count < 2:
        return torch.tensor(math.nan)
    return ((x - torch.nanmean(x)) ** 2).nansum().div(count - 1).sqrt()


def reward_metrics(
    all_rewards: torch.Tensor, all_parts: dict[str, torch.Tensor], num_generations: int
) -> dict[str, float]:
    """TRL's reward metrics over every process's completions: ``reward`` (mean total),
    ``reward_std`` (std of the total over all of them, as TRL ≥ 0.27), ``frac_reward_zero_std``
    (share of groups whose rewards all tie, which give no learning signal, whatever
    ``scale_rewards``) and, per function, ``rewards/<name>/mean`` and ``/std`` over the
    completions it scored (not None)."""
    group_std = all_rewards.view(-1, num_generations).std(dim=1)
    metrics = {
        "reward": float(all_rewards.mean()),
        "reward_std": float(nanstd(all_rewards.float().cpu())),
        "frac_reward_zero_std": float(torch.isclose(group_std, torch.zeros_like(group_std)).float().mean()),
    }
    for name, values in all_parts.items():
        values = values.float().cpu()
        metrics[f"rewards/{name}/mean"] = float(torch.nanmean(values))
        metrics[f"rewards/{name}/std"] = float(nanstd(values))
    return metrics


# -- reward functions by import path ------------------------------------------------------------


def load_reward_func(path: str) -> RewardFunc:
    """The callable ``module:attr`` or ``module.attr`` names (``attr`` may be dotted after a colon).

    The working directory is importable (as under ``python -m``), so ``my_rewards:accuracy`` finds
    ``./my_rewards.py``. A :class:`ValueError` says what is wrong: the path's form, a module that
    does not import (with the import's own error), a missing attribute, or one that is not callable.
    """
    if not isinstance(path, str) or not path.strip():
        raise ValueError(f"reward function {path!r}: expected 'module:function' or 'module.function'")
    if ":" in path:
        module_name, _, attr = path.partition(":")
    else:
        module_name, _, attr = path.rpartition(".")
    if not module_name or not attr:
        raise ValueError(f"reward function {path!r}: expected 'module:function' or 'module.function'")
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as exc:  # a module's own errors (SyntaxError, NameError) as well as ImportError
        raise ValueError(
            f"reward function {path!r}: cannot import module {module_name!r} "
            f"({type(exc).__name__}: {exc}; the working directory {cwd} is on the import path)"
        ) from exc
    where = module_name
    for part in attr.split("."):
        if not hasattr(obj, part):
            close = difflib.get_close_matches(part, [a for a in dir(obj) if not a.startswith("_")], n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"reward function {path!r}: {where} has no attribute {part!r}{hint}")
        obj, where = getattr(obj, part), f"{where}.{part}"
    if not callable(obj):
        raise ValueError(f"reward function {path!r}: {where} is a {type(obj).__name__}, not callable")
    return obj


def resolve_reward_funcs(funcs: Sequence[RewardFunc | str] | RewardFunc | str) -> list[RewardFunc]:
    """One function, an import path, or a list of either, as a list of callables."""
    items = [funcs] if isinstance(funcs, str) or callable(funcs) else list(funcs)
    out = []
    for f in items:
        if isinstance(f, str):
            out.append(load_reward_func(f))
        elif callable(f):
            out.append(f)
        else:
            raise TypeError(f"a reward function must be callable or an import path, got {type(f).__name__}")
    return out
