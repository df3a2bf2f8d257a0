"""Tasks (data sets with a grader) and a registry to look them up by name."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from hrpo.tasks.arithmetic import ArithmeticTask
from hrpo.tasks.base import DEFAULT_MARKER, Task, TaskReward, clean_answer, completion_text
from hrpo.tasks.choice import ARCChallengeTask, MMLUStemTask, OpenBookQATask, QASCTask
from hrpo.tasks.gsm8k import GSM8KTask
from hrpo.tasks.math import MathTask
from hrpo.tasks.numbers import numbers_match, parse_number
from hrpo.tasks.qa import QATask

_REGISTRY: dict[str, Callable[..., Task]] = {}


def register_task(name: str, factory: Callable[..., Task], *, overwrite: bool = False) -> None:
    """Make ``get_task(name, **kwargs)`` call ``factory(**kwargs)``."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"a task name must be a non-empty string, got {name!r}")
    if not callable(factory):
        raise TypeError(f"the factory for task {name!r} is not callable")
    # Silently replacing a task would change what a config name means.
    if name in _REGISTRY and not overwrite:
        raise ValueError(f"task {name!r} is already registered (pass overwrite=True to replace it)")
    _REGISTRY[name] = factory


class UnknownTaskError(KeyError, ValueError):
    """A task name that is neither registered nor an importable ``module:attribute``."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


def _import_factory(path: str) -> Callable[..., Task]:
    module_name, _, attr = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UnknownTaskError(f"task {path!r}: cannot import module {module_name!r} ({exc})") from exc
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise UnknownTaskError(f"task {path!r}: {module_name} has no callable {attr!r}")
    return factory


def get_task(name: str, **kwargs: Any) -> Task:
    """A new task by registered name, or from ``package.module:factory`` (a Task subclass or a
    function returning a Task), so a custom task needs no registration: ``task: mytasks:Sudoku``.

    Unknown names raise :class:`UnknownTaskError` (a ``KeyError``) listing the known ones.
    """
    if name in _REGISTRY:
        factory = _REGISTRY[name]
    elif isinstance(name, str) and ":" in name:
        factory = _import_factory(name)
    else:
        raise UnknownTaskError(
            f"unknown task {name!r}; known tasks: {', '.join(list_tasks()) or '(none)'}, "
            "or a custom one as package.module:ClassName"
        )
    task = factory(**kwargs)
    if not isinstance(task, Task):
        raise TypeError(f"the factory for task {name!r} returned {type(task).__name__}, not a Task")
    return task


def list_tasks() -> list[str]:
    """Registered task names, sorted."""
    return sorted(_REGISTRY)


register_task("arithmetic", ArithmeticTask)
register_task("gsm8k", GSM8KTask)
register_task("mmlu_stem", MMLUStemTask)
register_task("arc_challenge", ARCChallengeTask)
register_task("openbookqa", OpenBookQATask)
register_task("qasc", QASCTask)
register_task("math", MathTask)
register_task("qa", QATask)

__all__ = [
    "DEFAULT_MARKER",
    "ARCChallengeTask",
    "ArithmeticTask",
    "GSM8KTask",
    "MMLUStemTask",
    "MathTask",
    "OpenBookQATask",
    "QASCTask",
    "QATask",
    "Task",
    "TaskReward",
    "UnknownTaskError",
    "clean_answer",
    "completion_text",
    "get_task",
    "list_tasks",
    "numbers_match",
    "parse_number",
    "register_task",
]
