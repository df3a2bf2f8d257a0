"""Run directories: what counts as a run, when a new one may start there, and one writer at a time.

Rules followed by ``hrpo train`` (and :meth:`HRPOTrainer.train`), ``hrpo eval --output`` and
``hrpo sweep``:

* **What holds a run.** A directory holds a training run when it has any of :data:`RUN_MARKERS`
  (``metrics.jsonl``, ``samples.jsonl``, ``eval_before.json``, ``eval_after.json``, or a non-empty
  ``checkpoints/``). A missing or empty directory, or one with other files only (a sweep's
  ``sweep_config.yaml`` and ``train.log``, the lock file), does not.
* **A fresh start never reuses a run.** Training without resume into a directory that holds a
  run is refused with one line naming what is there and the ways on: resume it, overwrite it, or
  choose another directory. Overwriting (``overwrite_output_dir``, ``hrpo train --overwrite``)
  moves every entry of the old run (:data:`RUN_ENTRIES`: the markers plus ``config.yaml``,
  ``plots/``, ``tensorboard/``, ``wandb/``, ``wandb_run_id``) into one trash directory inside it,
  renames that trash to mark the move done, and deletes it, all before the new run writes
  anything; other files are left alone. An overwrite cut short is finished by the next process
  that takes the directory, so the old and the new run never mix.
* **Resuming from step N** keeps what the run wrote up to N and discards the rest: metric and
  sample lines after N (:class:`hrpo.metrics.MetricsLogger`), checkpoints after N and
  ``eval_after.json`` (:func:`discard_after`). Without a checkpoint, N is 0.
* **One writer at a time.** A process takes an exclusive advisory lock (``fcntl.flock``) on the
  directory's :data:`LOCK_FILE` before writing anything there, and keeps it until it is done; the
  file records the holder's pid, host and command. A second process fails at once with an error
  naming the directory and the holder. The operating system drops the lock when the holder's
  process ends, however it ends (SIGKILL included), so a dead run never blocks the next one; the
  lock file itself stays (deleting it would let two processes lock two different files).
  Within one process the lock is re-entrant: the outermost holder checks and prepares the
  directory. Under accelerate only the main process takes it (the other processes write nothing
  into the run directory); if the main process dies, its lock goes with it while the launcher
  stops the others. The lock is advisory (only hrpo honours it) and relies on ``flock`` working on
  the file system (local disks do; NFS emulates it with byte-range locks).
* **Leftovers.** The next holder cleans what a killed writer left behind
  (:func:`hrpo.storage.clean_leftovers`) in the directory and its ``checkpoints/``.
"""

from __future__ import annotations

import errno
import json
import os
import shlex
import shutil
import socket
import sys
import threading
import time
import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hrpo.checkpoint import checkpoint_step, list_checkpoints
from hrpo.storage import atomic_remove, atomic_write_text, clean_leftovers, read_jsonl

# The files of a run directory (``hrpo train``, or ``HRPOTrainer.train()``).
CONFIG_FILE = "config.yaml"  # the run's settings, loadable with ``hrpo train --config``
METRICS_FILE = "metrics.jsonl"  # one line per logged step (hrpo.metrics)
SAMPLES_FILE = "samples.jsonl"  # logged completions, every ``log_completions_steps``
CHECKPOINTS = "checkpoints"  # step-NNNNNN training checkpoints (hrpo.checkpoint)
EVAL_BEFORE = "eval_before.json"  # held-out accuracy before training
EVAL_AFTER = "eval_after.json"  # ... and after; its presence marks a finished run
PLOTS = "plots"  # PNG curves (hrpo plot)
WANDB_ID_FILE = "wandb_run_id"  # lets a resumed run continue the same W&B run
LOCK_FILE = ".hrpo.lock"
RUN_MARKERS = (METRICS_FILE, SAMPLES_FILE, EVAL_BEFORE, EVAL_AFTER, CHECKPOINTS)
RUN_ENTRIES = (*RUN_MARKERS, CONFIG_FILE, PLOTS, "tensorboard", "wandb", WANDB_ID_FILE)
# An overwrite's trash: ".hrpo-overwrite-moving-*" while entries move in (the next holder must
# finish moving), ".hrpo-overwrite-deleting-*" once they all have (the next holder only deletes it).
_MOVING, _DELETING = ".hrpo-overwrite-moving-", ".hrpo-overwrite-deleting-"


class RunDirectoryError(ValueError):
    """The run directory cannot be used as asked; the message says why and what to do."""


class RunDirectoryInUse(RunDirectoryError):
    """Another process holds the run directory's lock; ``holder`` is what its lock file says."""

    def __init__(self, path: Path, holder: dict[str, Any]) -> None:
        pid = holder.get("pid", "unknown")
        host = holder.get("host")
        where = f" on {host}" if host and host != socket.gethostname() else ""
        command = str(holder.get("command") or "command unknown")
        if len(command) > 300:  # one readable line, even for a command with many overrides
            command = command[:299] + "…"
        super().__init__(
            f"{path} is in use by another hrpo process (pid {pid}{where}: {command}); "
            "wait for it to end or stop it, then run again"
        )
        self.path, self.holder = path, holder


@dataclass(frozen=True)
class Hints:
    """How the refusal message tells a user to resume or overwrite (command line or Python)."""

    resume: str
    overwrite: str


CLI_HINTS = Hints("--resume", "--overwrite (config key overwrite_output_dir)")
API_HINTS = Hints("train(resume_from_checkpoint=True)", "overwrite_output_dir=True")


# -- what is in a run directory -----------------------------------------------------------------
def _last_step(metrics: Path) -> int | None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # describing a run, not reading it: a torn tail is fine
        try:
            records = read_jsonl(metrics)
        except ValueError:
            return None
    steps = [r["step"] for r in records if isinstance(r.get("step"), int)]
    return steps[-1] if steps else None


def run_contents(path: str | Path) -> list[str]:
    """What of a run ``path`` holds, as short phrases (empty: it holds no run)."""
    path = Path(path)
    found = []
    metrics = path / METRICS_FILE
    if metrics.is_file():
        last = _last_step(metrics)
        found.append(
            f"{METRICS_FILE} up to step {last}" if last is not None else f"{METRICS_FILE} (no steps)"
        )
    ckpt_dir = path / CHECKPOINTS
    if ckpt_dir.is_dir():
        names = [p.name for p in list_checkpoints(ckpt_dir)]
        if len(names) > 3:
            found.append(f"{len(names)} checkpoints {names[0]} … {names[-1]}")
        elif names:
            found.append(f"checkpoint{'s' if len(names) > 1 else ''} {', '.join(names)}")
        elif any(True for _ in ckpt_dir.iterdir()):
            found.append(f"{CHECKPOINTS}/ (no complete checkpoint)")
    found += [name for name in (EVAL_BEFORE, EVAL_AFTER, SAMPLES_FILE) if (path / name).is_file()]
    return found


def holds_run(path: str | Path) -> bool:
    """Whether ``path`` holds a training run (see the module docstring)."""
    return bool(run_contents(path))


# -- the lock ------------------------------------------------------------------------------------
@dataclass
class _Hold:
    fd: int
    count: int


_holds: dict[str, _Hold] = {}
_holds_lock = threading.Lock()


def launched_main_process() -> bool:
    """Whether this process is the main one of a launch (accelerate/torchrun set ``RANK``), for
    decisions taken before the trainer's ``Accelerator`` exists."""
    return os.environ.get("RANK", "0") == "0"


def _read_holder(fd: int) -> dict[str, Any]:
    # The holder writes its record right after locking: retry briefly if we read in between.
    for _ in range(20):
        try:
            record = json.loads(os.pread(fd, 65536, 0).decode("utf-8", "replace"))
            if isinstance(record, dict):
                return record
        except ValueError:
            pass
        time.sleep(0.01)
    return {}


def _lock(path: Path, command: str) -> int:
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        raise RunDirectoryError(
            f"cannot lock {path}: run directories are locked with fcntl.flock, which this system "
            "lacks (hrpo supports Linux and macOS)"
        ) from None
    path.mkdir(parents=True, exist_ok=True)
    fd = os.open(path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)  # not inherited by exec'd children
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        holder = _read_holder(fd) if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN) else None
        os.close(fd)
        if holder is None:
            raise RunDirectoryError(f"cannot lock {path / LOCK_FILE}: {exc}") from exc
        raise RunDirectoryInUse(path, holder) from None
    record = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "command": command,
        "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
    return fd


@contextmanager
def lock_run_dir(path: str | Path, command: str | None = None) -> Iterator[bool]:
    """Hold ``path``'s lock for the block (creating the directory); yield whether this is the
    outermost hold in this process. Raises :class:`RunDirectoryInUse` at once if another process
    holds it. The outermost hold first cleans what killed writers left (see the module docstring).
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    key = os.path.realpath(path)
    with _holds_lock:
        hold = _holds.get(key)
        outermost = hold is None
        if outermost:
            hold = _holds[key] = _Hold(_lock(path, command or shlex.join(sys.argv)), 0)
        hold.count += 1
    try:
        if outermost:
            _finish_overwrites(path)
            for directory in (path, path / CHECKPOINTS):
                clean_leftovers(directory)
        yield outermost
    finally:
        with _holds_lock:
            hold.count -= 1
            if hold.count == 0:
                del _holds[key]
                os.ftruncate(hold.fd, 0)  # no stale holder record for the next process to misreport
                os.close(hold.fd)  # closing the only descriptor releases the flock


# -- starting, overwriting, resuming -------------------------------------------------------------
def _finish_overwrites(path: Path) -> None:
    for trash in sorted(path.glob(f"{_MOVING}*")):
        _move_run_into(path, trash)
        os.replace(trash, path / (_DELETING + trash.name[len(_MOVING) :]))
    for trash in sorted(path.glob(f"{_DELETING}*")):
        shutil.rmtree(trash, ignore_errors=True)


def _move_run_into(path: Path, trash: Path) -> None:
    for name in RUN_ENTRIES:
        entry = path / name
        if entry.exists() or entry.is_symlink():
            os.replace(entry, trash / name)


def overwrite_run(path: str | Path) -> None:
    """Delete the run in ``path`` (its :data:`RUN_ENTRIES`; other files stay). Hold the lock.

    The entries are moved into one trash directory first; a kill during the moves leaves a trash
    that the next holder of the lock finishes, so no mix of old and new run is ever seen.
    """
    path = Path(path)
    trash = path / f"{_MOVING}{os.getpid()}_{uuid.uuid4().hex[:8]}"
    trash.mkdir()
    _move_run_into(path, trash)
    deleting = path / (_DELETING + trash.name[len(_MOVING) :])
    os.replace(trash, deleting)
    shutil.rmtree(deleting, ignore_errors=True)


def check_fresh_start(path: str | Path, *, overwrite: bool, hints: Hints = CLI_HINTS) -> list[str]:
    """Before a run without resume: refuse if ``path`` holds a run, or delete it with ``overwrite``;
    return what was deleted (:func:`run_contents`)."""
    path = Path(path)
    contents = run_contents(path)
    if not contents:
        return []
    if overwrite:
        overwrite_run(path)
        return contents
    raise RunDirectoryError(
        f"{path} holds a run ({'; '.join(contents)}); continue it with {hints.resume}, "
        f"delete it and start over with {hints.overwrite}, or choose another output_dir"
    )


@contextmanager
def hold_run_dir(
    path: str | Path,
    *,
    resume: bool,
    overwrite: bool = False,
    hints: Hints = CLI_HINTS,
    command: str | None = None,
) -> Iterator[list[str]]:
    """Lock ``path`` for a training run and, as the outermost holder, check it: without
    ``resume`` it must hold no run (or ``overwrite`` deletes it). ``overwrite`` is ignored when
    resuming. Yields what an overwrite deleted (:func:`run_contents`; empty: nothing)."""
    with lock_run_dir(path, command) as outermost:
        deleted = []
        if outermost and not resume:
            deleted = check_fresh_start(path, overwrite=overwrite, hints=hints)
        yield deleted


def discard_after(path: str | Path, step: int) -> None:
    """Remove what a run in ``path`` wrote after ``step``, which it resumes from: later checkpoints
    and the final evaluation (metric and sample lines are the metrics logger's). Hold the lock."""
    path = Path(path)
    for ckpt in list_checkpoints(path / CHECKPOINTS):
        if checkpoint_step(ckpt) > step:  # type: ignore[operator]
            atomic_remove(ckpt)
    (path / EVAL_AFTER).unlink(missing_ok=True)


# -- reading and writing the run's own files -------------------------------------------------------
def write_eval(path: str | Path, name: str, result: dict[str, Any]) -> Path:
    """Write an evaluation (:data:`EVAL_BEFORE` or :data:`EVAL_AFTER`) atomically."""
    target = Path(path) / name
    atomic_write_text(target, json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    return target


def read_eval(path: str | Path, name: str) -> dict[str, Any] | None:
    """An evaluation the run wrote (:data:`EVAL_BEFORE` or :data:`EVAL_AFTER`), or None."""
    target = Path(path) / name
    return json.loads(target.read_text(encoding="utf-8")) if target.is_file() else None


def finished(path: str | Path) -> bool:
    """Whether the run in ``path`` ran to its end (its final evaluation is written)."""
    return (Path(path) / EVAL_AFTER).is_file()
