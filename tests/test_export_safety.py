"""The export never loses, clobbers or strands a file: what ``--overwrite`` may replace, separate
``--out`` / ``--serving-repo``, one export per destination at a time, stale temporaries removed,
symbolic links followed or refused, nothing left behind on an error or an interruption.

Most tests stand in copies of the session's graphs for the ONNX export (``copying_exporter``) and
skip validation: they exercise the pipeline's file handling, not the graphs."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mmadapter.errors import ExportError, MMAdapterError
from mmadapter.export import onnx_io, pipeline
from mmadapter.export.inference_server import MARKER
from mmadapter.export.pipeline import check_destinations, check_export_arguments, export_checkpoint
from mmadapter.export.tensorrt import BatchProfile
from mmadapter.files import pid_alive
from mmadapter.runtime.manifest import read_manifest

from export_fixtures import ExportBundle, copying_exporter, make_checkpoint


@pytest.fixture
def fast(exported: ExportBundle, monkeypatch: pytest.MonkeyPatch) -> ExportBundle:
    export_graph, optimize = copying_exporter(exported)
    monkeypatch.setattr(onnx_io, "export_graph", export_graph)
    monkeypatch.setattr(onnx_io, "optimize_for_ort", optimize)
    return exported


def _export(bundle: ExportBundle, out: Path, **kwargs) -> pipeline.ExportResult:
    return export_checkpoint(bundle.checkpoint, out, validate=False, progress=False, **kwargs)


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _one_line(exc: BaseException) -> str:
    text = str(exc)
    assert text and "\n" not in text
    return text


def _strays(parent: Path) -> list[str]:
    return [p.name for p in parent.iterdir() if ".partial-" in p.name or p.name.endswith(".lock")]


def test_out_holding_the_inputs_is_refused(exported: ExportBundle, tmp_path: Path) -> None:
    """`--out D --overwrite` with the checkpoint (and its CLIP weights) in D: refused before anything
    is loaded, both files intact. Same for an --out above D and for an --out holding only the weights."""
    folder = tmp_path / "d"
    ckpt, *_ = make_checkpoint(folder)
    before = _snapshot(folder)
    assert {"adapter.safetensors", "tiny-clip.safetensors"} <= set(before)
    for out in (folder, tmp_path):
        with pytest.raises(ExportError, match="holds the checkpoint") as info:
            export_checkpoint(ckpt, out, overwrite=True, progress=False)
        assert str(ckpt.resolve()) in _one_line(info.value)
    assert _snapshot(folder) == before
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    moved = shutil.copy2(ckpt, elsewhere / "adapter.safetensors")  # its CLIP weights path stays absolute
    with pytest.raises(ExportError, match="holds the CLIP weights file"):
        export_checkpoint(moved, folder, overwrite=True, progress=False)
    assert _snapshot(folder) == before
    assert not _strays(tmp_path)


def test_foreign_file_is_not_overwritten(fast: ExportBundle, tmp_path: Path) -> None:
    out = tmp_path / "out"
    shutil.copytree(fast.out_dir, out)
    (out / "notes.txt").write_text("mine")
    before = _snapshot(out)
    with pytest.raises(ExportError, match=r"holds files that no export wrote \(e\.g\. notes\.txt\)") as info:
        _export(fast, out, overwrite=True)
    _one_line(info.value)
    assert _snapshot(out) == before
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "data.csv").write_text("1,2")
    with pytest.raises(ExportError, match="data.csv"):
        _export(fast, plain, overwrite=True)
    assert (plain / "data.csv").read_text() == "1,2"
    assert not _strays(tmp_path)


def test_reexport_over_a_previous_export(fast: ExportBundle, tmp_path: Path) -> None:
    """A previous export (with --fp16/--int8 files this one does not write) and a previous serving
    repository are replaced as a whole; nothing of either is left beside them."""
    out, repo = tmp_path / "out", tmp_path / "repo"
    shutil.copytree(fast.out_dir, out)
    shutil.copytree(fast.serving_repo, repo)
    old_created = json.loads((out / "manifest.json").read_text())["created"]
    assert (out / "image_classifier.fp16.onnx").exists() and (repo / MARKER).is_file()
    result = _export(fast, out, overwrite=True, serving_repo=repo)
    assert result.out_dir == out.resolve() and result.serving_repo == repo.resolve()
    manifest = read_manifest(out)  # schema and hash hold
    assert manifest.validation.run is False and manifest.created >= old_created
    assert {p.name for p in out.iterdir()} == set(manifest.files) | {"manifest.json"}
    assert not (out / "image_classifier.fp16.onnx").exists()
    assert (repo / "image_classifier" / "1" / "model.onnx").read_bytes() == (out / "image_classifier.onnx").read_bytes()
    assert not _strays(tmp_path)
    # Without --overwrite the same folders are refused.
    with pytest.raises(ExportError, match="not empty"):
        _export(fast, out)


@pytest.mark.parametrize("layout", ["same", "repo inside out", "out inside repo", "same via link"])
def test_serving_repo_and_out_must_be_separate(exported: ExportBundle, tmp_path: Path, layout: str) -> None:
    out = tmp_path / "out"
    repo = {"same": out, "repo inside out": out / "triton", "out inside repo": tmp_path,
            "same via link": tmp_path / "link"}[layout]
    if layout == "same via link":
        out.mkdir()
        repo.symlink_to(out, target_is_directory=True)
    with pytest.raises(ExportError, match="must be separate folders") as info:
        export_checkpoint(exported.checkpoint, out, serving_repo=repo, progress=False)
    _one_line(info.value)
    # Refused before anything is written: no --out or repository created, nothing beside them.
    assert {p.name for p in tmp_path.iterdir()} == ({"out", "link"} if layout == "same via link" else set())
    assert not out.exists() or not any(out.iterdir())


def test_concurrent_export_into_one_destination_fails_at_once(fast: ExportBundle, tmp_path: Path) -> None:
    """Another process holds the destination's lock: this export fails at once naming its pid, and
    the destination stays as it was."""
    out = tmp_path / "out"
    lock = tmp_path / ".out.lock"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, os, sys\n"
         f"fd = os.open({str(lock)!r}, os.O_RDWR | os.O_CREAT)\n"
         "fcntl.flock(fd, fcntl.LOCK_EX)\nos.write(fd, str(os.getpid()).encode())\n"
         "print('locked', flush=True)\nsys.stdin.read()\n"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(ExportError, match=rf"another export into --out .* is running \(pid {holder.pid}\)") as info:
            _export(fast, out)
        _one_line(info.value)
        assert not out.exists()
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    result = _export(fast, out)  # the lock is free again: the next run works and removes the lock file
    assert result.out_dir == out.resolve()
    assert not _strays(tmp_path)


def test_folder_filled_by_another_process_meanwhile_is_not_replaced(fast: ExportBundle, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The atomic check at the final rename: --out appears (not by an export) during the run."""
    out = tmp_path / "out"
    copy = onnx_io.optimize_for_ort

    def meanwhile(src, dst):
        out.mkdir(exist_ok=True)
        (out / "theirs.txt").write_text("written meanwhile")
        return copy(src, dst)

    monkeypatch.setattr(onnx_io, "optimize_for_ort", meanwhile)
    with pytest.raises(ExportError, match=r"filled by another process .*\(it holds theirs\.txt\)") as info:
        _export(fast, out)
    _one_line(info.value)
    assert _snapshot(out) == {"theirs.txt": b"written meanwhile"}
    assert not _strays(tmp_path)


def test_stale_temporaries_of_killed_runs_are_removed(fast: ExportBundle, tmp_path: Path) -> None:
    dead = 2**22 + 12345  # above Linux's default pid_max, so no process has it
    assert not pid_alive(dead)
    stale = [tmp_path / f".out.partial-{dead}", tmp_path / f".out.partial-{dead}.old"]
    for folder in stale:
        folder.mkdir()
        (folder / "image_classifier.onnx").write_bytes(b"half-written")
    alive = tmp_path / f".out.partial-{os.getppid()}"  # a live process's temporary is left alone
    alive.mkdir()
    _export(fast, tmp_path / "out")
    assert not any(p.exists() for p in stale)
    assert alive.is_dir()
    assert _strays(tmp_path) == [alive.name]


def test_symlinked_out_is_followed_and_dangling_link_refused(fast: ExportBundle, tmp_path: Path) -> None:
    target = tmp_path / "real"
    shutil.copytree(fast.out_dir, target)
    link = tmp_path / "link"
    link.symlink_to(target, target_is_directory=True)
    result = _export(fast, link, overwrite=True)
    assert link.is_symlink() and link.resolve() == target.resolve()
    assert result.out_dir == target.resolve()
    assert read_manifest(target).validation.run is False  # the target was replaced by the new export
    assert not (target / "image_classifier.fp16.onnx").exists()
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "nowhere")
    with pytest.raises(ExportError, match="broken symbolic link") as info:
        _export(fast, dangling)
    _one_line(info.value)
    assert dangling.is_symlink() and not (tmp_path / "nowhere").exists()
    assert not _strays(tmp_path)


class Terminated(BaseException):
    """What the CLI raises on SIGTERM."""


@pytest.mark.parametrize("interrupt", [KeyboardInterrupt, Terminated])
def test_interrupt_mid_export_leaves_nothing(fast: ExportBundle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             interrupt: type[BaseException]) -> None:
    out, repo = tmp_path / "nested" / "out", tmp_path / "repo"
    shutil.copytree(fast.serving_repo, repo)
    before = _snapshot(repo)
    copy = onnx_io.optimize_for_ort
    calls = []

    def interrupted(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise interrupt
        return copy(src, dst)

    monkeypatch.setattr(onnx_io, "optimize_for_ort", interrupted)
    with pytest.raises(interrupt):
        _export(fast, out, overwrite=True, serving_repo=repo)
    assert len(calls) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["repo"]  # no out, no nested/, no temporaries or locks
    assert _snapshot(repo) == before


def test_unwritable_parent_is_one_line(fast: ExportBundle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    parent = tmp_path / "readonly"
    parent.mkdir()
    out = parent / "out"
    if os.geteuid() != 0:
        parent.chmod(0o555)
    else:  # root writes anywhere: the check is made to see what it would on a read-only folder
        real_access = os.access
        monkeypatch.setattr(os, "access",
                            lambda p, mode: False if Path(p) == parent.resolve() else real_access(p, mode))
    try:
        with pytest.raises(ExportError, match="cannot be written") as info:
            _export(fast, out)
        assert str(parent) in _one_line(info.value)
    finally:
        parent.chmod(0o755)
    assert list(parent.iterdir()) == []


def test_read_only_file_system_at_lock_time_is_one_line(fast: ExportBundle, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    real_open = os.open

    def read_only(path, flags, *args, **kwargs):
        if Path(path).parent == tmp_path and flags & os.O_CREAT:
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", read_only)
    with pytest.raises(MMAdapterError, match="cannot write --out .*Read-only file system") as info:
        _export(fast, tmp_path / "out")
    _one_line(info.value)
    monkeypatch.undo()
    assert sorted(tmp_path.iterdir()) == []


def test_cheap_argument_checks() -> None:
    assert check_export_arguments() == BatchProfile()
    for bad, match in ((dict(opset=onnx_io.MIN_OPSET - 1), "opset"), (dict(opset=onnx_io.MAX_OPSET + 1), "opset"),
                       (dict(opset=True), "opset"), (dict(max_classes=0), "max_classes"),
                       (dict(providers=["tpu"]), "unknown execution provider"),
                       (dict(profile=BatchProfile(1, 2.5, 4)), "integers")):
        with pytest.raises(ExportError, match=match):
            check_export_arguments(**bad)
    assert check_export_arguments(opset=onnx_io.MAX_OPSET, max_classes=1, providers=["cpu"]) == BatchProfile()


def test_destination_checks_need_no_model(exported: ExportBundle, tmp_path: Path) -> None:
    """check_destinations is what the CLI can call before anything expensive."""
    (tmp_path / "file").write_text("x")
    with pytest.raises(ExportError, match="exists and is not a folder"):
        check_destinations(exported.checkpoint, tmp_path / "file")
    out, repo = check_destinations(exported.checkpoint, tmp_path / "a" / "out", tmp_path / "repo")
    assert out.path == (tmp_path / "a" / "out").resolve() and repo.what == "--serving-repo"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]  # checks write nothing
