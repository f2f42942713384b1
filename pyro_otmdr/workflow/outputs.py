"""Output files written whole or not at all, and checked when read back.

Every file of a run directory goes through :func:`atomic_path`: it is written to a temporary file
in its own directory (``.NAME.XXXXXXXX.tmp.EXT``), flushed and fsynced, then moved over the target
with ``os.replace``. A failed write removes the temporary file, keeps the previous file as it was
and raises :class:`OutputError`, whose message says so plainly ("no space left on device while
writing tree.nc; the previous tree.nc is kept"). Contents are serialised in memory first where a
library's own writer would meet the disk half-way (h5py crashes the process on a full disk), so a
full disk is an ordinary error.

:func:`write_verified` keeps a SHA-256 beside a file (``NAME.sha256``, the format of
``sha256sum``) and :func:`read_verified` checks it, so a flipped bit is caught on load.
:func:`remove_temporaries` clears what a killed process left behind.

Usage::

    import json
    from pathlib import Path
    from matplotlib.figure import Figure
    from pyro_otmdr.workflow.outputs import (atomic_path, read_verified, staged, write_text,
                                             write_verified)

    run = Path("runs/demo")
    run.mkdir(parents=True)
    write_text(run / "history.json", json.dumps([1.25, 0.75]))
    figure = Figure()
    figure.add_subplot().plot([1.25, 0.75])
    with atomic_path(run / "loss.png") as tmp:    # .loss.png.XXXXXXXX.tmp.png: PNG
        figure.savefig(tmp)
    with staged(run) as folder:                   # e.g. result.plot_calibration(folder / ...)
        (folder / "a.txt").write_text("a")
        (folder / "b.txt").write_text("b")        # both move into runs/demo, or neither
    write_verified(run / "tree.nc", b"payload")   # and tree.nc.sha256 beside it
    assert read_verified(run / "tree.nc") == b"payload"
    assert sorted(p.name for p in run.iterdir()) == [
        "a.txt", "b.txt", "history.json", "loss.png", "tree.nc", "tree.nc.sha256"]
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = [
    "ChecksumError",
    "OutputError",
    "atomic_path",
    "read_verified",
    "remove_temporaries",
    "staged",
    "write_bytes",
    "write_text",
    "write_verified",
]

_TEMP_MARK = ".tmp"  # temporary files are ".NAME.RANDOM.tmp[.EXT]"


class OutputError(OSError):
    """An output file could not be written; the previous file, if there was one, is kept."""


class ChecksumError(ValueError):
    """A file does not match the checksum written beside it: it was changed or corrupted."""


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path to write ``path``'s new contents to; it replaces ``path`` on success.

    The temporary file has ``path``'s suffix (a plotting library picks the format from it). On
    any error the temporary file is removed and ``path`` is left as it was; an ``OSError`` comes
    out as :class:`OutputError` naming the file and saying what was kept.
    """
    path = Path(path)
    existed = path.exists()
    try:
        fd, name = tempfile.mkstemp(
            dir=path.parent, prefix=f".{path.name}.", suffix=_TEMP_MARK + path.suffix
        )
        os.fchmod(fd, _mode_for(path))
        os.close(fd)
    except OSError as err:
        raise OutputError(_describe(err, path.name, _kept(path, existed))) from err
    tmp = Path(name)
    try:
        yield tmp
        _fsync(tmp)
        os.replace(tmp, path)
    except OSError as err:
        raise OutputError(_describe(err, path.name, _kept(path, existed))) from err
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)


def write_bytes(path: str | os.PathLike, data: bytes | memoryview) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_path`)."""
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
    return path


@contextlib.contextmanager
def staged(directory: str | os.PathLike) -> Iterator[Path]:
    """A fresh folder inside ``directory`` for a writer that makes several files (a figure and
    its companion); on success each file moves over its namesake in ``directory``.

    On an error nothing in ``directory`` is replaced: the previous files are kept.
    """
    directory = Path(directory)
    try:
        stage = Path(tempfile.mkdtemp(dir=directory, prefix=".staged.", suffix=_TEMP_MARK))
    except OSError as err:
        raise OutputError(_describe(err, directory.name + "/", "the previous files")) from err
    try:
        yield stage
        files = sorted(stage.iterdir())
        for f in files:
            _fsync(f)
        for f in files:
            os.replace(f, directory / f.name)
    except OSError as err:
        names = ", ".join(f.name for f in sorted(stage.iterdir())) or "the output files"
        raise OutputError(_describe(err, names, "the previous files")) from err
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    _fsync_dir(directory)


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return write_bytes(path, text.encode())


def write_verified(path: str | os.PathLike, data: bytes | memoryview) -> Path:
    """Write ``data`` to ``path`` and its SHA-256 to ``path.sha256``, each atomically.

    The data goes first: a process killed between the two writes leaves a file that
    :func:`read_verified` reports as not matching its checksum, never a silent mix.
    """
    path = Path(path)
    write_bytes(path, data)
    write_text(_checksum_path(path), f"{hashlib.sha256(data).hexdigest()}  {path.name}\n")
    return path


def read_verified(path: str | os.PathLike) -> bytes:
    """The bytes of ``path``, checked against ``path.sha256`` when there is one.

    A file without a checksum beside it (written before checksums were kept) is read as it is.

    :raises ChecksumError: if the file does not match its checksum.
    """
    path = Path(path)
    data = path.read_bytes()
    checksum = _checksum_path(path)
    if checksum.exists():
        expected = checksum.read_text().split()[:1]
        if expected != [hashlib.sha256(data).hexdigest()]:
            raise ChecksumError(
                f"{path} does not match its checksum {checksum.name}: the file was changed or "
                "corrupted (or a write was interrupted); write it again with the command that "
                "made it"
            )
    return data


def remove_temporaries(directory: str | os.PathLike) -> list[Path]:
    """Remove the temporary files that interrupted writes left in ``directory``; returns them.

    Call it only while no other process writes into ``directory`` (under its run lock).
    """
    found = sorted(Path(directory).glob(f".*{_TEMP_MARK}*"))
    for p in found:
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
    return found


def _checksum_path(path: Path) -> Path:
    return path.with_name(f"{path.name}.sha256")


def _mode_for(path: Path) -> int:
    """The permissions of the file being replaced, or those ``open`` would give a new file
    (``mkstemp`` makes its files private)."""
    try:
        return path.stat().st_mode & 0o7777
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def _kept(path: Path, existed: bool) -> str:
    return f"the previous {path.name}" if existed else ""


def _describe(err: OSError, what: str, kept: str) -> str:
    """``no space left on device while writing tree.nc; the previous tree.nc is kept``."""
    after = f"{kept} is kept" if kept else "nothing was written"
    if err.errno == errno.ENOSPC:
        return f"no space left on device while writing {what}; {after}"
    if err.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return f"cannot write {what}: {err.strerror} (a read-only directory?); {after}"
    return f"could not write {what}: {err.strerror or err}; {after}"


def _fsync(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # some platforms cannot open directories
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
