"""Owned folders: one way for a command to write a whole folder (an export, a serving repository, a
web page, the demo's output) that it may later replace, and nothing else.

``with owned_folder(dest, overwrite=..., protected=...) as tmp:`` locks the destination (a second
run fails at once, naming the pid that holds it), refuses a folder that is not ours or that holds
the command's own inputs, and yields a temporary sibling to build in. When the block succeeds the
temporary folder is swapped in with renames, after checking again that nobody changed the
destination meanwhile; on any exit (error, Ctrl-C, SIGTERM raised as an exception) the temporary
folder, the lock file and any parent folders made here are removed and the destination is as it was.
A SIGINT or SIGTERM recorded during the block stops the swap even if the block's code caught its
exception, and the renames of the swap run with those signals held back (``interrupts.committing``).

"Ours" is decided by a marker file that the command writes: either the marker proves the whole
folder ours (``Owner.whole``), or it lists the files we wrote and only those may be replaced. A
listing is trusted only after a check that it was not edited (its own sha256, and each file's
size), so an edited marker can never make us delete a file that someone else put there.

Torch-free: the serving side writes web folders and repositories too.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from mmadapter import interrupts
from mmadapter.errors import MMAdapterError
from mmadapter.files import (
    atomic_write_text,
    canonical_sha256,
    first_line,
    read_sealed_json,
    remove_stale_temps,
    same_size,
    temp_name,
)

LOCK_SUFFIX = ".lock"
LISTING_HASH = "listing_sha256"


class FolderError(MMAdapterError):
    """A destination folder that cannot or may not be written."""


@dataclass(frozen=True)
class Owner:
    """A kind of folder a command writes, and how an earlier one is recognised as that command's."""

    noun: str  # who writes it, for messages: "another <noun> into --out X is running"
    marker: str  # the file (relative path) that marks a folder as written by us
    proof: Callable[[Path], Iterable[str] | None]  # files an earlier folder proves ours; None: not ours
    refusal: str  # "holds files that no export wrote": why a folder is refused
    whole: bool = False  # a proven marker makes the whole folder ours, not only what it lists
    write_marker: Callable[[Path], object] | None = None  # for owners whose builder does not write it
    error: type[MMAdapterError] = FolderError


@dataclass
class Destination:
    """A folder to write, with symbolic links followed (the link's target is replaced, never the link)."""

    given: Path  # as the caller named it, for messages
    path: Path  # absolute, links resolved
    what: str  # the option that named it: "--out", "--web"
    owner: Owner

    @property
    def tmp(self) -> Path:
        return temp_name(self.path)

    @property
    def lock(self) -> Path:
        return self.path.with_name(f".{self.path.name}{LOCK_SUFFIX}")

    def fail(self, text: str) -> MMAdapterError:
        return self.owner.error(f"{self.what} {self.given} {text}")


def destination(given: str | Path, what: str, owner: Owner) -> Destination:
    given = Path(given)
    try:
        path = given.resolve(strict=True) if given.is_symlink() else given.resolve()
    except (OSError, RuntimeError):
        raise owner.error(f"{what} {given} is a broken symbolic link (or a link loop); refusing to write "
                          "through it") from None
    return Destination(given, path, what, owner)


# Listings: a marker naming the files we wrote -----------------------------------------------------------

def write_listing(folder: Path, marker: str, fmt: str, files: Iterable[str]) -> Path:
    """Write ``folder/marker``: the files (relative, '/'-separated) with their sizes, sealed by the
    sha256 of the listing itself, so that an edit of the list is seen before it is trusted."""
    body = {"format": fmt, "files": {f: (folder / f).stat().st_size for f in sorted(files)}}
    sealed = {**body, LISTING_HASH: canonical_sha256(body, LISTING_HASH)}
    return atomic_write_text(folder / marker, json.dumps(sealed, indent=2) + "\n")


def read_listing(folder: Path, marker: str, fmt: str) -> set[str] | None:
    """The files that ``folder/marker`` lists and that still have the size written there; None when
    the marker is missing, of another format, or was edited after it was written."""
    data = read_sealed_json(Path(folder) / marker, fmt, LISTING_HASH)
    if data is None:
        return None
    return {name for name, size in data["files"].items() if safe_relative(name) and same_size(folder / name, size)}


def safe_relative(name: object) -> bool:
    """A relative '/'-separated path that stays inside its folder."""
    return (isinstance(name, str) and bool(name) and not name.startswith("/") and "\\" not in name
            and "\0" not in name and all(part not in ("", ".", "..") for part in name.split("/")))


# Checks -----------------------------------------------------------------------------------------------------

def _unlisted(folder: Path, listed: set[str]) -> str | None:
    """The first entry under ``folder`` (sorted, depth first) that ``listed`` does not account for:
    a file not listed, a link, or a folder that holds no listed file."""
    needed = {p.as_posix() for name in listed for p in Path(name).parents}
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        base = Path(root).relative_to(folder)
        for name in sorted(dirs + files):
            entry, rel = Path(root) / name, (base / name).as_posix()
            if entry.is_symlink() or (name in dirs and rel not in needed):
                return rel
            if name in files and (rel not in listed or not entry.is_file()):
                return rel
    return None


def foreign_entry(folder: Path, owner: Owner) -> str | None:
    """What in ``folder`` an earlier run of ``owner`` cannot be shown to have written, or None when
    all of it may be replaced."""
    listed = owner.proof(folder)
    if listed is None:
        with os.scandir(folder) as entries:
            names = sorted(e.name for e in entries)
        if owner.marker in names:
            return f"{owner.marker}, which does not prove the folder ours (edited, or another program's)"
        return names[0] if names else None
    return None if owner.whole else _unlisted(folder, set(listed) | {owner.marker})


def _is_within(inner: Path, outer: Path) -> bool:
    return inner == outer or outer in inner.parents


def check_folder(dest: Destination, overwrite: bool, protected: Sequence[tuple[str, Path]] = (),
                 in_place: bool = False) -> None:
    """Every check of ``dest`` that needs no lock; raises one error line naming the folder."""
    path, owner = dest.path, dest.owner
    for label, inp in protected:
        if _is_within(Path(inp), path):
            raise dest.fail(f"holds the {label} {inp}; choose a folder that does not contain the {owner.noun}'s "
                            "inputs")
    if path.exists() and not path.is_dir():
        raise dest.fail("exists and is not a folder")
    if path.is_dir() and not in_place and os.path.ismount(path):
        raise dest.fail(f"is a mount point, which cannot be replaced by a rename; give a new folder inside it "
                        f"(e.g. {dest.given / 'out'})")
    if path.is_dir():
        try:
            empty = not any(path.iterdir())
            foreign = None if empty or not overwrite else foreign_entry(path, owner)
        except OSError as exc:
            raise dest.fail(f"cannot be read: {first_line(exc)}") from None
        if not empty and not overwrite:
            raise dest.fail("is not empty (use --overwrite to replace it)")
        if foreign is not None:
            raise dest.fail(f"{owner.refusal} (e.g. {foreign}); refusing to replace it")
    probe = path.parent
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise dest.fail(f"cannot be written: {probe} is not a writable folder")


def write_error(dest: Destination, exc: OSError) -> MMAdapterError:
    """An OSError while writing ``dest`` as one error line (MMAdapterErrors pass through)."""
    if isinstance(exc, MMAdapterError):
        return exc
    reason = "no space left on the device" if exc.errno == errno.ENOSPC else first_line(exc)
    return dest.owner.error(f"cannot write {dest.what} {dest.given}: {reason}")


# Lock, swap and clean-up --------------------------------------------------------------------------------

def _lock(dest: Destination) -> int:
    """An exclusive flock on ``.<name>.lock`` beside ``dest``, holding our pid; a held lock is an
    error at once, naming the pid written there."""
    for _ in range(5):
        fd = os.open(dest.lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = ""
            with contextlib.suppress(OSError):
                pid = os.read(fd, 32).decode(errors="replace").strip()
            os.close(fd)
            raise dest.owner.error(f"another {dest.owner.noun} into {dest.what} {dest.given} is running (pid "
                                   f"{pid or 'unknown'}); wait for it to finish") from None
        # The holder before us may have removed the file after we opened it: then our lock is on a
        # file no one else sees, and we start again with the one now at that path.
        try:
            same = os.stat(dest.lock).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            return fd
        os.close(fd)
    raise dest.owner.error(f"cannot lock {dest.what} {dest.given}: {dest.lock} keeps changing")


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


def _rename_error(dest: Destination, exc: OSError) -> MMAdapterError:
    if exc.errno in (errno.EBUSY, errno.EXDEV):  # a mount point cannot be renamed, nor renamed over
        return dest.fail(f"cannot be replaced by a rename ({first_line(exc)}): it is likely a mount point; give a "
                         f"new folder inside it (e.g. {dest.given / 'out'})")
    return write_error(dest, exc)


def _set_aside(dest: Destination, overwrite: bool, identity: tuple[int, int] | None) -> Path | None:
    """Rename the folder now at ``dest`` to a temporary name and check it there, where nothing can
    add to it by its old name any more; returns that name, or None when ``dest`` is absent. A folder
    that is no longer the one checked under the lock is renamed back and refused."""
    path, noun = dest.path, dest.owner.noun
    if not os.path.lexists(path):
        return None
    if path.is_symlink() or not path.is_dir():
        raise dest.fail(f"changed during the {noun}; nothing was replaced")
    old = temp_name(path, ".old")
    try:
        os.rename(path, old)
    except OSError as exc:
        raise _rename_error(dest, exc) from None
    try:
        try:
            if overwrite:
                foreign = foreign_entry(old, dest.owner)
            else:
                with os.scandir(old) as entries:
                    foreign = next((e.name for e in entries), None)
        except OSError as exc:
            foreign = first_line(exc)
    except BaseException:  # Ctrl-C or SIGTERM right here: the earlier folder goes back to its name
        os.rename(old, path)
        raise
    replaced = identity is not None and _identity(old) != identity
    if foreign is not None or replaced:
        os.rename(old, path)
        if foreign is not None:
            raise dest.fail(f"was filled by another process during the {noun} (it holds {foreign}); nothing was "
                            "replaced")
        raise dest.fail(f"was replaced by another process during the {noun}; nothing was replaced")
    return old


def _swap(tmp: Path, dest: Destination, overwrite: bool, identity: tuple[int, int] | None) -> None:
    """Put ``tmp`` in place of ``dest`` with renames only; the earlier folder is kept, under a
    temporary name, until the new one is in place, and put back if anything fails before."""
    if dest.owner.proof(tmp) is None:  # what we leave must be recognisable as ours by the next run
        raise dest.owner.error(f"internal error: the new {dest.what} {dest.given} lacks a valid {dest.owner.marker}")
    old = _set_aside(dest, overwrite, identity)
    try:
        os.rename(tmp, dest.path)
    except BaseException as exc:
        if old is not None:
            try:
                os.rename(old, dest.path)
            except OSError:
                raise dest.fail(f"was created by another process during the {dest.owner.noun}; the previous one "
                                f"is kept in {old}") from None
        if isinstance(exc, OSError):
            raise _rename_error(dest, exc) from None
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _parents_to_make(path: Path) -> list[Path]:
    made = []
    probe = path.parent
    while not probe.exists():
        made.append(probe)
        probe = probe.parent
    return made


@contextlib.contextmanager
def owned_folder(dest: Destination, *, overwrite: bool, protected: Sequence[tuple[str, Path]] = (),
                 in_place: bool = False) -> Iterator[Path]:
    """Lock ``dest``, check it again under the lock, remove the temporaries of killed runs and yield
    a fresh temporary folder beside it; when the block succeeds, swap it in (see the module
    docstring). ``in_place``: yield ``dest`` itself, marked as ours first, for a folder whose
    contents name their own final paths (the demo); nothing is swapped or rolled back then.
    ``overwrite``: an earlier folder of ours may be replaced; without it only an empty one."""
    made = _parents_to_make(dest.path)
    fd = None
    try:
        try:
            for folder in reversed(made):
                folder.mkdir()
            fd = _lock(dest)
            check_folder(dest, overwrite, protected, in_place)
            identity = _identity(dest.path)
            remove_stale_temps(dest.path)
            target = dest.path if in_place else dest.tmp
            if not in_place:
                shutil.rmtree(target, ignore_errors=True)
            target.mkdir(exist_ok=in_place)
            if dest.owner.write_marker is not None and in_place:
                dest.owner.write_marker(target)
        except OSError as exc:
            raise write_error(dest, exc) from None
        yield target
        if not in_place:
            # A signal whose exception the block's code caught stops the run here: nothing is swapped in.
            with interrupts.committing():
                try:
                    if dest.owner.write_marker is not None:
                        dest.owner.write_marker(target)
                    _swap(target, dest, overwrite, identity)
                except OSError as exc:
                    raise write_error(dest, exc) from None
        else:
            interrupts.check()
    finally:
        if not in_place:
            shutil.rmtree(dest.tmp, ignore_errors=True)
        if fd is not None:
            with contextlib.suppress(OSError):
                dest.lock.unlink()
            os.close(fd)
        for folder in made:
            with contextlib.suppress(OSError):
                folder.rmdir()


__all__ = ["Destination", "FolderError", "Owner", "check_folder", "destination", "foreign_entry", "owned_folder",
           "read_listing", "safe_relative", "write_error", "write_listing"]
