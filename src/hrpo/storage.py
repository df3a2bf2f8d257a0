"""Crash-safe writes: files and directories appear complete or not at all.

Every write goes through a temporary sibling named ``.NAME.tmp-XXXX`` and one rename; a directory
that is replaced is first moved aside to ``.NAME.old-XXXX``, and one being deleted is first
renamed to ``.NAME.del-XXXX``. A process killed at any moment (SIGKILL, power cut of the process)
therefore leaves either the old or the new complete ``NAME``, plus perhaps such leftovers, which
:func:`clean_leftovers` resolves: temporaries and deletions are removed, and a moved-aside old
directory whose ``NAME`` is missing (killed between the two renames) is put back.

JSON-lines files that hrpo appends to (metrics, samples, predictions) are read by one rule,
:func:`read_jsonl`: a damaged *last* line is what a writer killed mid-line leaves, so it is dropped
with a warning (and cut from the file before appending continues); a damaged line anywhere else
cannot come from a kill and is an error naming the file and line.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

# ".NAME.tmp-XXXX" (mkstemp/mkdtemp suffixes), ".NAME.old-XXXX", ".NAME.del-XXXX".
_LEFTOVER = re.compile(r"^\.(?P<name>.+)\.(?P<kind>tmp|old|del)-[A-Za-z0-9_]+$")
# mkstemp/mkdtemp create owner-only entries; what we publish gets the usual umask-based modes.
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def _aside(path: Path, kind: str) -> Path:
    # Unique per call: a name left by a dead process with the same pid can never collide.
    return path.with_name(f".{path.name}.{kind}-{os.getpid()}_{uuid.uuid4().hex[:8]}")


@contextmanager
def atomic_directory(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling directory that replaces ``path`` when the block succeeds.

    On an exception the temporary directory is removed and ``path`` is left as it was. An
    existing ``path`` is moved aside before the rename and deleted after it, so at every moment
    either the old or the new complete directory is at ``path`` or, between the two renames, the
    old one is at its ``.old`` name (:func:`clean_leftovers` puts it back).
    """
    path = Path(path).absolute()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        os.chmod(tmp, 0o777 & ~_UMASK)
        yield tmp
        old = None
        if path.exists():
            old = _aside(path, "old")
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling path to write; it replaces ``path`` when the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename (never half-written)."""
    with atomic_file(path) as tmp, tmp.open("w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())  # the rename must not reach the disk before the data


def read_jsonl(path: str | Path, *, repair: bool = False, what: str = "JSON object") -> list[dict[str, Any]]:
    """The JSON-object lines of ``path``, by the module's rule for damaged lines.

    A damaged last line (a killed writer's half line) is dropped with a :class:`RuntimeWarning`;
    with ``repair`` it is also cut from the file, so that appending continues on a fresh line.
    A damaged line followed by others raises :class:`ValueError` naming ``path:line``.
    """
    path = Path(path)
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    records: list[dict[str, Any]] = []
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not isinstance(record, dict):
                raise ValueError("not a JSON object")
        except ValueError as exc:
            if any(rest.strip() for rest in lines[lineno:]):
                raise ValueError(
                    f"{path}:{lineno}: not a {what} ({exc}); the file is damaged: repair or delete it"
                ) from None
            warnings.warn(
                f"{path}: line {lineno} is corrupt ({exc}), the half line of an interrupted write; "
                f"using the {len(records)} records before it",
                RuntimeWarning,
                stacklevel=2,
            )
            if repair:
                atomic_write_text(path, "".join(f"{kept}\n" for kept in lines[: lineno - 1]))
            break
        records.append(record)
    return records


def atomic_remove(path: str | Path) -> None:
    """Delete the directory (or file) ``path`` so that it is never seen half-deleted at its name.

    It is renamed to ``.NAME.del-XXXX`` first, then removed; a kill during the removal leaves only
    that leftover, which :func:`clean_leftovers` finishes.
    """
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return
    doomed = _aside(path, "del")
    os.replace(path, doomed)
    _remove(doomed)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def clean_leftovers(directory: str | Path) -> list[Path]:
    """Resolve what killed writers left in ``directory`` (not recursive); return what was removed.

    Only call it while no other process writes there (hold the run directory's lock): a live
    writer's temporary looks exactly like a dead one's.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return []
    removed = []
    for entry in sorted(directory.iterdir()):
        match = _LEFTOVER.match(entry.name)
        if match is None:
            continue
        original = directory / match["name"]
        if match["kind"] == "old" and not original.exists():
            os.replace(entry, original)  # killed between the two renames: the old one is complete
            continue
        _remove(entry)
        removed.append(entry)
    return removed
