"""Output files: written whole or not at all, checked on load; a full disk keeps the old file."""

import contextlib
import errno
import os
import re
import subprocess
from pathlib import Path

import pytest
import torch

from pyro_otmdr.workflow.checkpoint import load_checkpoint, save_checkpoint
from pyro_otmdr.workflow.outputs import (
    ChecksumError,
    OutputError,
    atomic_path,
    read_verified,
    remove_temporaries,
    staged,
    write_bytes,
    write_text,
    write_verified,
)


@contextlib.contextmanager
def small_disk(path: Path, size: str = "512k"):
    """A tmpfs of ``size`` mounted at ``path`` (root only); the test skips where it cannot be."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(directory: Path) -> Path:
    """Write a filler file until the disk is full; returns it."""
    filler = directory / "filler"
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError as err:
            assert err.errno == errno.ENOSPC
    return filler


def test_a_write_replaces_the_file_whole_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "a.json"
    write_text(target, "old")
    write_text(target, "new")
    assert target.read_text() == "new" and sorted(tmp_path.iterdir()) == [target]


def test_a_failing_writer_keeps_the_previous_file(tmp_path):
    target = tmp_path / "figure.png"
    write_bytes(target, b"old")
    with pytest.raises(ZeroDivisionError), atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise ZeroDivisionError
    assert target.read_bytes() == b"old" and sorted(tmp_path.iterdir()) == [target]


def test_the_temporary_file_has_the_suffix_and_the_permissions_of_the_target(tmp_path):
    target = tmp_path / "plot.png"
    write_bytes(target, b"x")
    target.chmod(0o640)
    with atomic_path(target) as tmp:
        assert tmp.suffix == ".png" and tmp.parent == tmp_path and tmp.name.startswith(".")
        tmp.write_bytes(b"y")
    assert target.stat().st_mode & 0o777 == 0o640


def test_new_files_get_the_permissions_open_would_give(tmp_path):
    write_text(tmp_path / "fresh.json", "{}")
    (tmp_path / "plain.json").write_text("{}")
    modes = [(tmp_path / n).stat().st_mode & 0o777 for n in ("fresh.json", "plain.json")]
    assert modes[0] == modes[1]


def test_staged_files_move_together_or_not_at_all(tmp_path):
    (tmp_path / "a.png").write_bytes(b"old a")
    with staged(tmp_path) as folder:
        (folder / "a.png").write_bytes(b"new a")
        (folder / "a_pava.png").write_bytes(b"new b")
    assert (tmp_path / "a.png").read_bytes() == b"new a"
    assert (tmp_path / "a_pava.png").read_bytes() == b"new b"
    with pytest.raises(RuntimeError), staged(tmp_path) as folder:
        (folder / "a.png").write_bytes(b"newer")
        raise RuntimeError
    assert (tmp_path / "a.png").read_bytes() == b"new a"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "a_pava.png"]


def test_a_flipped_bit_is_caught_by_the_checksum(tmp_path):
    target = tmp_path / "tree.nc"
    payload = bytes(range(256)) * 8
    write_verified(target, payload)
    assert read_verified(target) == payload
    for position in (0, 700, len(payload) - 1):
        damaged = bytearray(payload)
        damaged[position] ^= 0x10
        target.write_bytes(bytes(damaged))
        with pytest.raises(ChecksumError, match="does not match its checksum"):
            read_verified(target)
    (tmp_path / "tree.nc.sha256").unlink()  # a file of an older version: read as it is
    assert read_verified(target) == bytes(damaged)


def test_temporaries_of_interrupted_writes_are_removed(tmp_path):
    kept = [tmp_path / "checkpoint.pt", tmp_path / ".lock"]
    for path in kept:
        path.write_bytes(b"x")
    left = [tmp_path / ".checkpoint.pt.abcd1234.tmp", tmp_path / ".tree.nc.x1.tmp.nc"]
    for path in left:
        path.write_bytes(b"partial")
    (tmp_path / ".staged.q9.tmp").mkdir()
    (tmp_path / ".staged.q9.tmp" / "calibration.png").write_bytes(b"partial")
    assert len(remove_temporaries(tmp_path)) == 3
    assert sorted(tmp_path.iterdir()) == sorted(kept)


def test_a_full_disk_keeps_every_kind_of_previous_file_and_says_so(tmp_path):
    with small_disk(tmp_path / "disk") as disk:
        write_text(disk / "history.json", "[1]")
        write_verified(disk / "tree.nc", b"tree" * 100)
        save_checkpoint(disk / "checkpoint.pt", epoch=1, extra={"w": torch.ones(8)})
        before = {p.name: p.read_bytes() for p in disk.iterdir()}
        filler = fill(disk)
        big = b"\1" * 300_000
        with pytest.raises(OutputError) as info:
            write_text(disk / "history.json", big.decode())
        message = "no space left on device while writing history.json; the previous "
        assert str(info.value) == message + "history.json is kept"
        with pytest.raises(
            OutputError, match=re.escape("writing tree.nc; the previous tree.nc is kept")
        ):
            write_verified(disk / "tree.nc", big)
        with pytest.raises(
            OutputError, match=re.escape("writing checkpoint.pt; the previous checkpoint")
        ):
            save_checkpoint(disk / "checkpoint.pt", epoch=2, extra={"w": torch.ones(80_000)})
        with pytest.raises(
            OutputError, match=re.escape("writing metrics.json; nothing was written")
        ):
            write_text(disk / "metrics.json", big.decode())
        with pytest.raises(OutputError, match="no space left on device"), staged(disk) as f:
            (f / "calibration.png").write_bytes(big)
        filler.unlink()
        after = {p.name: p.read_bytes() for p in disk.iterdir()}
        assert after == before  # no temporary file left, every file as it was
        assert load_checkpoint(disk / "checkpoint.pt", param_store=False).epoch == 1


@pytest.mark.skipif(os.geteuid() != 0, reason="remounting read-only needs root")
def test_a_read_only_directory_is_an_output_error_naming_the_file(tmp_path):
    with small_disk(tmp_path / "disk") as disk:
        write_text(disk / "metrics.json", "{}")
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
        with pytest.raises(
            OutputError, match=re.escape("cannot write metrics.json: Read-only file system")
        ):
            write_text(disk / "metrics.json", "{1}")
        assert (disk / "metrics.json").read_text() == "{}"
