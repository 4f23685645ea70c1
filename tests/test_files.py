"""mmadapter.files: the one way files are written (temporary beside the destination, then a rename)."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mmadapter.files import (
    FileWriteError,
    atomic_path,
    atomic_write_text,
    atomic_write_with,
    remove_stale_temps,
    temp_name,
)


def _dead_pid() -> int:
    return int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True).stdout)


def test_write_replace_and_no_clobber(tmp_path: Path) -> None:
    dest = tmp_path / "a.txt"
    atomic_write_text(dest, "one")
    atomic_write_text(dest, "two")
    assert dest.read_text() == "two"
    with pytest.raises(FileWriteError, match="exists"):
        atomic_write_text(dest, "three", overwrite=False)
    assert dest.read_text() == "two" and sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]


def test_no_clobber_is_checked_again_at_the_final_step(tmp_path: Path) -> None:
    """Another process creating the file while this one writes: this one fails, theirs stays."""
    dest = tmp_path / "a.bin"
    with pytest.raises(FileWriteError, match="another process"):
        with atomic_path(dest, overwrite=False) as tmp:
            tmp.write_bytes(b"mine")
            dest.write_bytes(b"theirs")
    assert dest.read_bytes() == b"theirs" and sorted(p.name for p in tmp_path.iterdir()) == ["a.bin"]


@pytest.mark.parametrize("fault", [KeyboardInterrupt, RuntimeError])
def test_a_failed_or_interrupted_write_leaves_nothing(fault: type[BaseException], tmp_path: Path) -> None:
    dest = tmp_path / "a.bin"
    dest.write_bytes(b"old")
    with pytest.raises(fault):
        with atomic_path(dest) as tmp:
            tmp.write_bytes(b"half")
            raise fault()
    assert dest.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["a.bin"]


def test_write_errors_are_one_file_write_error(tmp_path: Path) -> None:
    class SafetensorError(Exception):  # the name is what safetensors raises; not an OSError
        pass

    def full_disk(path: Path) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    def safetensors_failure(path: Path) -> None:
        raise SafetensorError("Error while serializing: IoError")

    with pytest.raises(FileWriteError, match="no space left"):
        atomic_write_with(tmp_path / "a.bin", full_disk)
    with pytest.raises(FileWriteError, match="IoError"):
        atomic_write_with(tmp_path / "b.bin", safetensors_failure)
    with pytest.raises(FileWriteError, match="is a folder"):
        atomic_write_text(tmp_path, "x")
    assert list(tmp_path.iterdir()) == []


def test_symlinked_destination_is_followed(tmp_path: Path) -> None:
    target, link = tmp_path / "target.txt", tmp_path / "link.txt"
    target.write_text("old")
    link.symlink_to(target)
    atomic_write_text(link, "new")
    assert link.is_symlink() and target.read_text() == "new"
    dangling = tmp_path / "dangling.txt"
    dangling.symlink_to(tmp_path / "nowhere")
    with pytest.raises(FileWriteError, match="broken symbolic link"):
        atomic_write_text(dangling, "x")
    assert not (tmp_path / "nowhere").exists()


def test_stale_temporaries_of_dead_processes_are_removed(tmp_path: Path) -> None:
    dest = tmp_path / "a.bin"
    dead = dest.with_name(f".a.bin.partial-{_dead_pid()}")
    dead.write_bytes(b"left by a killed run")
    mine = temp_name(dest)  # this process is alive: its temporary is not stale
    mine.write_bytes(b"in progress")
    other_file = tmp_path / f".b.bin.partial-{_dead_pid()}.png"
    other_file.write_bytes(b"x")
    assert remove_stale_temps(dest) == [dead]
    assert mine.exists() and other_file.exists()
    assert remove_stale_temps(tmp_path / "*") == [other_file]  # every file of the folder
    assert mine.exists()


def test_results_get_an_ordinary_file_mode(tmp_path: Path) -> None:
    """safetensors creates its files 0600; a checkpoint should be readable like any file."""
    def private_writer(path: Path) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
        os.write(fd, b"x")
        os.close(fd)

    dest = atomic_write_with(tmp_path / "a.bin", private_writer)
    umask = os.umask(0)
    os.umask(umask)
    assert dest.stat().st_mode & 0o777 == 0o666 & ~umask
