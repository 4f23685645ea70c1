"""File helpers with no torch dependency (the serving runtime imports them too).

One way to write a file or a folder: build it under a temporary name beside the destination (same
file system, so the final step is a rename), then move it into place. A temporary carries the pid
of the process that made it, so a later run can tell a killed run's leftovers (process gone) from a
run still in progress, and removes only the former.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

from mmadapter.errors import MMAdapterError

TEMP_MARK = ".partial-"  # .<name>.partial-<pid>[.<suffix>]: what a killed run may leave behind


class FileWriteError(MMAdapterError, OSError):
    """A destination that cannot be written (permissions, full disk, read-only file system, ...)."""


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def first_line(exc: BaseException) -> str:
    """An exception as one line of text (its first non-empty line, else its type)."""
    for line in str(exc).splitlines():
        if line.strip():
            return " ".join(line.split())
    return type(exc).__name__


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def temp_name(dest: Path, suffix: str = "") -> Path:
    """The temporary path beside ``dest`` that this process uses for it."""
    return dest.with_name(f".{dest.name}{TEMP_MARK}{os.getpid()}{suffix}")


def remove_stale_temps(dest: Path) -> list[Path]:
    """Remove temporaries of ``dest`` left by processes that no longer exist; returns what was removed.
    ``dest`` named ``*`` stands for every file of its folder."""
    folder = dest.parent
    name = ".+" if dest.name == "*" else re.escape(dest.name)
    pattern = re.compile(rf"^\.{name}{re.escape(TEMP_MARK)}(\d+)(\..*)?$")
    removed = []
    try:
        entries = list(folder.iterdir())
    except OSError:
        return removed
    for entry in entries:
        match = pattern.match(entry.name)
        if not match or int(match.group(1)) == os.getpid() or pid_alive(int(match.group(1))):
            continue
        with contextlib.suppress(OSError):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
            removed.append(entry)
    return removed


def resolve_destination(path: str | Path) -> Path:
    """``path`` with symbolic links followed, so that writing replaces the link's target and never
    the link itself. A dangling link or a link loop is an error."""
    path = Path(path)
    if path.is_symlink():
        try:
            target = path.resolve(strict=True)
        except (OSError, RuntimeError):
            raise FileWriteError(f"{path} is a broken symbolic link") from None
        return target
    return path.parent.resolve() / path.name if path.parent.exists() else path.absolute()


_swept: set[Path] = set()


def _default_file_mode() -> int:
    mask = os.umask(0)  # reading the umask means setting it; put it back at once
    os.umask(mask)
    return 0o666 & ~mask


_DEFAULT_FILE_MODE = _default_file_mode()


def _write_error(dest: Path, exc: BaseException) -> FileWriteError:
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return FileWriteError(f"cannot write {dest}: no space left on the device")
    return FileWriteError(f"cannot write {dest}: {first_line(exc)}")


@contextlib.contextmanager
def atomic_path(dest: str | Path, overwrite: bool = True, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``dest``; when the block succeeds it becomes ``dest``.

    With ``overwrite=False`` the final step fails, rather than replaces, if ``dest`` appeared in the
    meantime (hard link, atomic on POSIX file systems), so two runs cannot both write one file. On any
    error, Ctrl-C or SIGTERM the temporary is removed and ``dest`` is untouched. Write errors of any
    kind (``OSError``, safetensors' ``SafetensorError``, ...) become one :class:`FileWriteError`.
    ``suffix`` keeps the extension for writers that look at it (matplotlib)."""
    dest = resolve_destination(dest)
    if dest.exists() and dest.is_dir():
        raise FileWriteError(f"cannot write {dest}: it is a folder")
    if not overwrite and dest.exists():
        raise FileWriteError(f"{dest} exists (use --overwrite to replace it)")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _write_error(dest, exc) from None
    if dest.parent not in _swept:  # once per folder and process: a cache folder holds many files
        remove_stale_temps(dest.parent / "*")
        _swept.add(dest.parent)
    tmp = temp_name(dest, suffix)
    try:
        try:
            yield tmp
            # Some writers (safetensors) create their file 0600; the result gets an ordinary file's mode.
            os.chmod(tmp, _DEFAULT_FILE_MODE)
            if overwrite:
                os.replace(tmp, dest)
            else:
                try:
                    os.link(tmp, dest)
                except FileExistsError:
                    raise FileWriteError(f"{dest} was written by another process meanwhile; not replaced") from None
        except MMAdapterError:
            raise
        except Exception as exc:  # noqa: BLE001 - every writer failure is a write failure of dest
            if isinstance(exc, (OSError,)) or type(exc).__name__ == "SafetensorError":
                raise _write_error(dest, exc) from None
            raise
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


def atomic_write_bytes(dest: str | Path, data: bytes, overwrite: bool = True) -> Path:
    with atomic_path(dest, overwrite) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    return Path(dest)


def atomic_write_text(dest: str | Path, text: str, overwrite: bool = True) -> Path:
    return atomic_write_bytes(dest, text.encode("utf-8"), overwrite)


def atomic_write_with(dest: str | Path, writer: Callable[[Path], object], overwrite: bool = True,
                      suffix: str = "") -> Path:
    """``writer(tmp_path)`` writes the content; then it is moved into place as in :func:`atomic_path`."""
    with atomic_path(dest, overwrite, suffix) as tmp:
        writer(tmp)
    return Path(dest)


_unwritable_caches: set[Path] = set()  # cache folders that failed once: warned about once, not tried again


def write_cache_entry(root: Path, dest: Path, writer: Callable[[Path], object], what: str,
                      suffix: str = "") -> Path | None:
    """Write a cache entry atomically, as :func:`atomic_write_with`. A cache is ours, never the user's
    problem: a folder that cannot be written (read-only, a file in the way, a full disk) is one
    warning line on stderr, then ``None``, and is not tried again in this process."""
    root = Path(root).absolute()
    if root in _unwritable_caches:
        return None
    try:
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise FileWriteError(first_line(exc)) from None
        atomic_write_with(dest, writer, suffix=suffix)
    except FileWriteError as exc:
        _unwritable_caches.add(root)
        print(f"warning: {what} {root} is not writable ({first_line(exc)}); continuing without it", file=sys.stderr)
        return None
    return Path(dest)


__all__ = [
    "FileWriteError",
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_text",
    "atomic_write_with",
    "first_line",
    "pid_alive",
    "remove_stale_temps",
    "resolve_destination",
    "sha256_file",
    "temp_name",
    "write_cache_entry",
]


def canonical_sha256(data: dict, without: str) -> str:
    """sha256 of ``data``'s canonical JSON (sorted keys, no spaces) less its ``without`` field: the seal a
    file we write carries over itself, so that an edit is seen before its content is trusted."""
    body = {k: v for k, v in data.items() if k != without}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def read_sealed_json(path: Path, fmt: str, seal_field: str) -> dict | None:
    """The JSON object at ``path`` when it names format ``fmt``, has a ``files`` object and its seal
    holds; None for a missing, unreadable, foreign or edited file (never an exception)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    if not isinstance(data, dict) or data.get("format") != fmt or not isinstance(data.get("files"), dict):
        return None
    return data if data.get(seal_field) == canonical_sha256(data, seal_field) else None


def same_size(path: Path, size: object) -> bool:
    """Whether ``path`` is a plain file (no link) of ``size`` bytes: a file a listing names is taken for the
    one written there only while this holds."""
    try:
        return not path.is_symlink() and path.is_file() and path.stat().st_size == size
    except OSError:
        return False

