"""Run ``hrpo`` commands that SIGKILL themselves at chosen points (for tests/test_rundir.py).

usage: python rundir_driver.py SPEC.json REPORT.json

SPEC: ``{"watch": DIR, "stages": [{"argv": [...], "kill": [POINT, N] or null, "hang": [POINT, N,
READY_FILE] or null, "log": FILE}]}``. Each stage runs ``hrpo.cli.main(argv)`` in a child process
forked from this one (so the imports are paid once), with one intra-op thread, its output in
``log``. No product code knows about this: the child patches functions so that, the N-th time it
reaches POINT, it SIGKILLs itself (``kill``) or writes its pid to READY_FILE and sleeps until
killed from outside (``hang``). Points:

* ``eval:DESC``: the trainer's evaluation with that description ("eval before", "eval after")
  starts (it writes nothing until it returns, so this is the state of a kill during it);
* ``log``: right after a metrics line is written (between two checkpoints);
* ``checkpoint-file``: a ``torch.save`` into a checkpoint's temporary directory starts (the
  weights and the N-1 files saved before are in it);
* ``before-prune``: a checkpoint has been renamed into place; old ones are not pruned yet;
* ``replace-aside``: an existing checkpoint has been moved aside to be replaced by a new one,
  which is not renamed in yet;
* ``remove``: a checkpoint being deleted has been renamed away; nothing of it is deleted yet.

After each stage the report holds its exit (code or signal), the paths under DIR and whether
DIR's lock file is free to lock (the dead process's lock released).
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import signal
import sys
import time
import traceback
from pathlib import Path

import torch

import hrpo.checkpoint
import hrpo.cli
import hrpo.evaluation
import hrpo.metrics
import hrpo.storage
import hrpo.trainer
from hrpo.rundir import LOCK_FILE


def _stop(hang: list | None) -> None:
    if hang is None:
        os.kill(os.getpid(), signal.SIGKILL)
    Path(hang[2]).write_text(str(os.getpid()))
    while True:
        time.sleep(60)


def _install(point: str, n: int, hang: list | None) -> None:
    count = 0

    def reached() -> None:
        nonlocal count
        count += 1
        if count == n:
            sys.stdout.flush()
            sys.stderr.flush()
            _stop(hang)

    if point.startswith("eval:"):
        desc, evaluate = point[len("eval:") :], hrpo.trainer.evaluate

        def patched_evaluate(*args, **kwargs):
            if kwargs.get("desc") == desc:
                reached()
            return evaluate(*args, **kwargs)

        hrpo.trainer.evaluate = patched_evaluate
    elif point == "log":
        log = hrpo.metrics.MetricsLogger.log

        def patched_log(self, *args, **kwargs):
            log(self, *args, **kwargs)
            reached()

        hrpo.metrics.MetricsLogger.log = patched_log
    elif point == "checkpoint-file":
        save = torch.save

        def patched_save(obj, f, *args, **kwargs):
            if re.match(r"\.step-\d+\.tmp-", Path(f).parent.name):
                reached()
            return save(obj, f, *args, **kwargs)

        torch.save = patched_save
    elif point == "before-prune":
        prune = hrpo.checkpoint.prune_checkpoints

        def patched_prune(directory, limit):
            reached()
            return prune(directory, limit)

        hrpo.checkpoint.prune_checkpoints = patched_prune
    elif point == "replace-aside":
        replace = os.replace

        def patched_replace(src, dst, *args, **kwargs):
            replace(src, dst, *args, **kwargs)
            if re.match(r"\.step-\d+\.old-", Path(dst).name):
                reached()

        os.replace = patched_replace
    elif point == "remove":
        remove = hrpo.storage._remove

        def patched_remove(path):
            if re.match(r"\.step-\d+\.del-", Path(path).name):
                reached()
            return remove(path)

        hrpo.storage._remove = patched_remove
    else:
        raise ValueError(f"unknown point {point!r}")


def _run_child(stage: dict) -> None:
    code = 99
    try:
        fd = os.open(stage["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        torch.set_num_threads(1)
        point = stage.get("kill") or stage.get("hang")
        if point:
            _install(point[0], point[1], stage.get("hang"))
        code = hrpo.cli.main(stage["argv"])
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _lock_free(directory: Path) -> bool | None:
    path = directory / LOCK_FILE
    if not path.exists():
        return None
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)  # also releases it


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text())
    watch = Path(spec["watch"])
    report = []
    for stage in spec["stages"]:
        pid = os.fork()
        if pid == 0:
            _run_child(stage)
        _, status = os.waitpid(pid, 0)
        report.append(
            {
                "code": os.waitstatus_to_exitcode(status),  # -9: killed by SIGKILL
                "paths": sorted(str(p.relative_to(watch)) for p in watch.rglob("*"))
                if watch.is_dir()
                else [],
                "lock_free": _lock_free(watch),
            }
        )
        Path(sys.argv[2]).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
