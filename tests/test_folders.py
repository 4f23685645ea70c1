"""``mmadapter.folders``: the one helper behind every folder a command owns (export, serving
repository, web page, demo). Lock contention from another process, refusal of folders that are not
ours or hold protected inputs, the swap-time check, clean-up after an error and after SIGTERM, and
markers (or manifests) edited to claim someone else's files."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from mmadapter.errors import MMAdapterError
from mmadapter.folders import FolderError, Owner, destination, owned_folder, read_listing, write_listing

ROOT = Path(__file__).resolve().parents[1]
MARKER = ".ours.json"
FORMAT = "test-folder"


def _listing(folder: Path) -> set[str] | None:
    return read_listing(folder, MARKER, FORMAT)


def _write_marker(folder: Path) -> None:
    files = [p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() and p.name != MARKER]
    write_listing(folder, MARKER, FORMAT, files)


OWNER = Owner("build", MARKER, _listing, "holds files that no build wrote", write_marker=_write_marker)


def _build(dest: Path, files: dict[str, str], overwrite: bool = True, **kwargs) -> None:
    with owned_folder(destination(dest, "--out", OWNER), overwrite=overwrite, **kwargs) as tmp:
        for name, text in files.items():
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp / name).write_text(text)


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _strays(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if ".partial-" in p.name or p.name.endswith(".lock"))


def test_build_then_replace_only_what_we_wrote(tmp_path: Path) -> None:
    out = tmp_path / "out"
    _build(out, {"a.txt": "1", "sub/b.txt": "2"})
    assert _listing(out) == {"a.txt", "sub/b.txt"}
    _build(out, {"c.txt": "3"})  # an earlier build of ours: replaced as a whole
    assert _snapshot(out) == {"c.txt": b"3", MARKER: (out / MARKER).read_bytes()}
    (out / "notes.txt").write_text("mine")
    before = _snapshot(out)
    with pytest.raises(FolderError, match=r"holds files that no build wrote \(e\.g\. notes\.txt\)"):
        _build(out, {"d.txt": "4"})
    with pytest.raises(FolderError, match="is not empty"):
        _build(out, {"d.txt": "4"}, overwrite=False)
    assert _snapshot(out) == before and _strays(tmp_path) == []


def test_folder_without_marker_or_with_an_edited_one_is_refused(tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "data.csv").write_text("1,2")
    with pytest.raises(FolderError, match=r"\(e\.g\. data\.csv\)"):
        _build(plain, {"a.txt": "1"})
    out = tmp_path / "out"
    _build(out, {"a.txt": "1"})
    (out / "notes.txt").write_text("mine")
    marker = json.loads((out / MARKER).read_text())
    marker["files"]["notes.txt"] = 4  # the list edited to claim the user's file, its size right
    (out / MARKER).write_text(json.dumps(marker))
    assert _listing(out) is None
    with pytest.raises(FolderError, match="does not prove the folder ours") as info:
        _build(out, {"b.txt": "2"})
    assert "\n" not in str(info.value)
    assert (out / "notes.txt").read_text() == "mine" and (out / "a.txt").read_text() == "1"


def test_a_listed_file_changed_since_is_not_replaced(tmp_path: Path) -> None:
    out = tmp_path / "out"
    _build(out, {"config.txt": "as written"})
    (out / "config.txt").write_text("tuned by hand, longer")
    with pytest.raises(FolderError, match="config.txt"):
        _build(out, {"config.txt": "new"})
    assert (out / "config.txt").read_text() == "tuned by hand, longer"


def test_edited_export_manifest_never_deletes_a_listed_user_file(tmp_path: Path) -> None:
    """The known bug: a manifest edited to list the user's notes.txt let --overwrite delete it.
    A manifest is trusted only when its own sha256 holds."""
    from mmadapter.export.pipeline import EXPORT_FOLDER
    from mmadapter.runtime.manifest import FORMAT_NAME, HASH_FIELD, MANIFEST, file_entry, listed_files, manifest_hash

    def sealed(files: dict[str, object]) -> str:
        data = {"format": FORMAT_NAME, "files": {n: e.to_dict() for n, e in files.items()}}
        return json.dumps({**data, HASH_FIELD: manifest_hash(data)})

    out = tmp_path / "out"
    out.mkdir()
    (out / "graph.onnx").write_bytes(b"graph")
    (out / "notes.txt").write_text("mine")
    listed = {"graph.onnx": file_entry(out, "graph.onnx")}
    (out / MANIFEST).write_text(sealed(listed))
    assert listed_files(out) == {"graph.onnx", MANIFEST, "timing.cache"}
    manifest = json.loads(sealed(listed))
    manifest["files"]["notes.txt"] = file_entry(out, "notes.txt").to_dict()  # edited, not sealed again
    (out / MANIFEST).write_text(json.dumps(manifest))
    assert listed_files(out) is None
    with pytest.raises(MMAdapterError, match="no export wrote"):
        with owned_folder(destination(out, "--out", EXPORT_FOLDER), overwrite=True) as tmp:
            (tmp / MANIFEST).write_text("{}")
    assert (out / "notes.txt").read_text() == "mine"


def test_folder_holding_a_protected_input_is_refused(tmp_path: Path) -> None:
    ckpt = tmp_path / "data" / "adapter.safetensors"
    ckpt.parent.mkdir()
    ckpt.write_bytes(b"weights")
    for out in (ckpt.parent, tmp_path):
        with pytest.raises(FolderError, match="holds the checkpoint .*adapter.safetensors"):
            _build(out, {"a.txt": "1"}, protected=[("checkpoint", ckpt.resolve())])
    assert ckpt.read_bytes() == b"weights" and _strays(tmp_path) == []


def test_lock_held_by_another_process_fails_at_once_naming_it(tmp_path: Path) -> None:
    out = tmp_path / "out"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys\nimport tests.test_folders as t\n"
         f"with t.owned_folder(t.destination({str(out)!r}, '--out', t.OWNER), overwrite=True):\n"
         "    print('locked', flush=True)\n    sys.stdin.read()\n"],
        cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(FolderError, match=rf"another build into --out .* is running \(pid {holder.pid}\)"):
            _build(out, {"a.txt": "1"})
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
    assert holder.returncode == 0
    _build(out, {"a.txt": "1"})  # free again
    assert (out / "a.txt").read_text() == "1" and _strays(tmp_path) == []


def test_destination_changed_during_the_build_is_not_replaced(tmp_path: Path) -> None:
    out = tmp_path / "out"
    _build(out, {"a.txt": "old"})
    with pytest.raises(FolderError, match=r"filled by another process .*\(it holds theirs\.txt\)"):
        with owned_folder(destination(out, "--out", OWNER), overwrite=True) as tmp:
            (tmp / "a.txt").write_text("new")
            (out / "theirs.txt").write_text("meanwhile")
    assert (out / "a.txt").read_text() == "old" and (out / "theirs.txt").is_file()
    (out / "theirs.txt").unlink()
    with pytest.raises(FolderError, match="replaced by another process"):
        with owned_folder(destination(out, "--out", OWNER), overwrite=True) as tmp:
            (tmp / "a.txt").write_text("new")
            os.rename(out, tmp_path / "moved")  # someone swapped in another folder, ours by its marker
            _build(tmp_path / "other", {"a.txt": "theirs"})
            os.rename(tmp_path / "other", out)
    assert (out / "a.txt").read_text() == "theirs" and _strays(tmp_path) == []


class Terminated(BaseException):
    """What the CLI raises on SIGTERM."""


@pytest.mark.parametrize("interrupt", [RuntimeError, KeyboardInterrupt, Terminated])
def test_error_or_interrupt_leaves_the_destination_and_nothing_beside_it(tmp_path: Path,
                                                                         interrupt: type[BaseException]) -> None:
    out = tmp_path / "nested" / "out"
    with pytest.raises(interrupt):
        with owned_folder(destination(out, "--out", OWNER), overwrite=True) as tmp:
            (tmp / "half.txt").write_text("half")
            raise interrupt()
    assert list(tmp_path.iterdir()) == []  # no out, no nested/ made for it, no temporary, no lock
    _build(out, {"a.txt": "1"})
    before = _snapshot(out)
    with pytest.raises(interrupt):
        with owned_folder(destination(out, "--out", OWNER), overwrite=True) as tmp:
            raise interrupt()
    assert _snapshot(out) == before and _strays(out.parent) == []


_SIGTERM_CHILD = """
import signal, sys, time
from pathlib import Path
import tests.test_folders as t

def terminated(signum, frame):
    raise t.Terminated()

signal.signal(signal.SIGTERM, terminated)
try:
    with t.owned_folder(t.destination(sys.argv[1], "--out", t.OWNER), overwrite=True) as tmp:
        (tmp / "half.txt").write_text("half")
        print("building", flush=True)
        time.sleep(60)
except t.Terminated:
    sys.exit(143)
"""


def test_sigterm_in_a_subprocess_cleans_up(tmp_path: Path) -> None:
    out = tmp_path / "out"
    _build(out, {"a.txt": "1"})
    before = _snapshot(out)
    child = subprocess.Popen([sys.executable, "-c", _SIGTERM_CHILD, str(out)], cwd=ROOT, stdout=subprocess.PIPE,
                             text=True)
    try:
        assert child.stdout.readline().strip() == "building"
        assert any(".partial-" in p.name for p in tmp_path.iterdir())
        child.send_signal(signal.SIGTERM)
        child.wait(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == 143
    assert _snapshot(out) == before and _strays(tmp_path) == []


def test_mount_point_is_one_clear_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A mount point cannot be renamed over: refused before any work, and a rename that fails with
    EBUSY at the end is the same clear line, the destination and its parent left as they were."""
    out = tmp_path / "out"
    out.mkdir()
    real_ismount = os.path.ismount
    monkeypatch.setattr(os.path, "ismount", lambda p: Path(p) == out.resolve() or real_ismount(p))
    with pytest.raises(FolderError, match="is a mount point, which cannot be replaced by a rename") as info:
        _build(out, {"a.txt": "1"})
    assert "\n" not in str(info.value)
    monkeypatch.undo()
    real_rename = os.rename

    def busy(src, dst):
        if Path(dst) == out.resolve() and ".partial-" in Path(src).name and not Path(src).name.endswith(".old"):
            raise OSError(errno.EBUSY, "Device or resource busy", str(dst))
        return real_rename(src, dst)

    monkeypatch.setattr(os, "rename", busy)
    with pytest.raises(FolderError, match="cannot be replaced by a rename .*mount point"):
        _build(out, {"a.txt": "1"})
    monkeypatch.undo()
    assert out.is_dir() and list(out.iterdir()) == [] and _strays(tmp_path) == []


def test_in_place_marks_first_and_keeps_the_folder(tmp_path: Path) -> None:
    """The demo's mode: the folder itself, marked before anything is written, never swapped."""
    out = tmp_path / "out"
    with owned_folder(destination(out, "--out", OWNER), overwrite=True, in_place=True) as folder:
        assert folder == out.resolve() and (out / MARKER).is_file()
        (folder / "a.txt").write_text("1")
    assert (out / "a.txt").read_text() == "1" and _strays(tmp_path) == []
