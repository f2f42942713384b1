"""One process at a time writes a run directory: an exclusive lock on ``RUN_DIR/.lock``.

The lock is ``fcntl.flock`` on an open file, so the kernel releases it when its process ends, by
any means (SIGKILL included): a lock file left by a dead process is free at once, there is no
stale lock to clean. The file itself stays (removing it would let two processes lock two files
of one name); it holds the pid and command of its last holder, for the error message. Taking the
lock also removes the temporary files of interrupted writes, and fails at once, before any work,
when the directory cannot be written.

Usage::

    from pathlib import Path
    from pyro_otmdr.experiments.cli.runlock import run_lock

    Path("runs/demo").mkdir(parents=True, exist_ok=True)
    with run_lock(Path("runs/demo"), "evaluate"):
        pass  # read and write the run directory; another otmdr process is refused meanwhile
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from ...workflow.outputs import remove_temporaries
from .parser import RunError

__all__ = ["LOCK_NAME", "run_lock"]

LOCK_NAME = ".lock"


@contextlib.contextmanager
def run_lock(run_dir: Path, command: str) -> Iterator[None]:
    """Hold ``run_dir``'s lock for the ``with`` block.

    :raises RunError: if another process holds it (naming its pid and command), or if the
        directory is missing or cannot be written.
    """
    if not run_dir.is_dir():
        raise RunError(f"there is no run directory {run_dir}")
    path = run_dir / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as err:
        raise RunError(
            f"cannot write to {run_dir}: {err.strerror} (a read-only directory?)"
        ) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
            raise RunError(
                f"{run_dir} is in use by another otmdr process ({holder}): wait until it ends, "
                "or write into another directory"
            ) from None
        _claim(fd, run_dir, command)
        yield
    finally:
        os.close(fd)  # releases the lock


def _claim(fd: int, run_dir: Path, command: str) -> None:
    """Write who holds the lock (best effort: on a full disk the message goes without it) and
    clear what interrupted writes left behind."""
    holder = f"pid {os.getpid()}, otmdr {command}\n".encode()
    with contextlib.suppress(OSError):
        os.pwrite(fd, holder, 0)
        os.ftruncate(fd, len(holder))
    try:
        remove_temporaries(run_dir)
    except OSError as err:
        raise RunError(f"cannot write to {run_dir}: {err.strerror}") from None
