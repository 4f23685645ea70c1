"""Hostile inputs and faults against ``mmadapter`` and ``python export.py``, one test (at least) per
class of the error contract: every case ends in ONE stderr line ``error: ...`` with exit status 2 (or
a correct result), no traceback, and a file system where the inputs are intact and nothing is
half-written, clobbered or stranded.

A case lives here when it is about the CLI contract itself; an attack on one component is tested once, at
that component: the export's destinations (--overwrite, --out / --serving-repo, locks, stale temporaries,
links) in tests/test_export_safety.py, and the full matrix of tampered checkpoints and failing writes in
tests/test_checkpoint_integrity.py; this file keeps one case per refusal path through the CLI.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mmadapter import cli

from export_fixtures import ExportBundle
from helpers import make_image_folder, train_with_cli

ROOT = Path(__file__).resolve().parents[1]
LEFTOVER_MARKS = (".partial", ".old-", ".lock")


# -- helpers ---------------------------------------------------------------------------------------------


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (relative path -> sha256), links not followed."""
    out = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and not path.is_symlink():
            out[str(path.relative_to(folder))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def leftovers(folder: Path) -> list[str]:
    return [str(p.relative_to(folder)) for p in folder.rglob("*") if any(m in p.name for m in LEFTOVER_MARKS)]


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    rc = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def assert_user_error(rc: int, err: str, *words: str, code: int = 2) -> str:
    """Exit status ``code`` (2: a user error) and exactly one stderr line ``error: ...`` (no traceback)
    holding ``words``."""
    lines = err.strip().splitlines()
    assert rc == code, f"exit {rc}: {err}"
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for word in words:
        assert word.lower() in lines[0].lower(), lines[0]
    return lines[0]


@pytest.fixture()
def work(exported: ExportBundle, tmp_path: Path) -> dict[str, Path]:
    """A private copy of the session's checkpoint (it refers to the CLIP weights by absolute path)
    and a few images."""
    ckpt = tmp_path / "adapter.safetensors"
    shutil.copyfile(exported.checkpoint, ckpt)
    images = make_image_folder(tmp_path / "data", ["x"], per_class=3, size=40) / "x"
    return {"root": tmp_path, "checkpoint": ckpt, "images": images}


# 1. One CLI, one contract ---------------------------------------------------------------------------------


@pytest.mark.parametrize("argv, words", [
    (["bogus"], ["invalid choice"]),
    (["train", "--out", "x.safetensors"], ["required", "--data"]),
    (["train", "--data", ".", "--out", "o.st", "--lr", "nan"], ["--lr", "nan"]),
    (["train", "--data", ".", "--out", "o.st", "--lr", "inf"], ["--lr", "inf"]),
    (["train", "--data", ".", "--out", "o.st", "--lr", "-0.1"], ["--lr"]),
    (["train", "--data", ".", "--out", "o.st", "--seed", "-1"], ["--seed"]),
    (["train", "--data", ".", "--out", "o.st", "--seed", str(2**32)], ["--seed"]),
    (["train", "--data", ".", "--out", "o.st", "--shots", "0"], ["--shots"]),
    (["train", "--data", ".", "--out", "o.st", "--template", "a {} of {}"], ["--template", "exactly one"]),
    (["train", "--data", ".", "--out", "o.st", "--template", "a {0}"], ["--template"]),
    (["train", "--data", ".", "--out", "o.st", "--template", "a {name}"], ["--template"]),
    (["train", "--data", ".", "--out", "o.st", "--template", "no field"], ["--template"]),
    (["train", "--data", ".", "--out", "o.st", "--device", "gpu"], ["--device"]),
    (["predict", "--top-k", "0", "--onnx", "d", "x.png"], ["--top-k"]),
    (["predict", "x.png"], ["--checkpoint", "--onnx"]),
    (["export", "--checkpoint", "c.st"], ["--out"]),
    (["export", "--checkpoint", "c.st", "--out", "o", "--max-batch", "zero"], ["--max-batch"]),
])
def test_bad_arguments_are_one_line(argv: list[str], words: list[str], tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    rc, out, err = run_cli(argv, capsys)
    assert_user_error(rc, err, *words)
    assert out == "" and list(tmp_path.iterdir()) == []


def test_export_arguments_checked_before_any_work(work: dict[str, Path], capsys: pytest.CaptureFixture[str],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import mmadapter.model.checkpoint

    def no_loading(*args: object, **kwargs: object) -> None:
        raise AssertionError("the checkpoint was loaded before the arguments were checked")

    monkeypatch.setattr(mmadapter.model.checkpoint, "load_checkpoint", no_loading)
    base = ["export", "--checkpoint", work["checkpoint"], "--out", work["root"] / "out", "--quiet"]
    for extra, word in ((["--opset", "12"], "opset"), (["--opset", "99"], "opset"),
                        (["--providers", "quantum"], "quantum"),
                        (["--min-batch", "9", "--opt-batch", "8"], "min <= opt <= max")):
        rc, _, err = run_cli(base + extra, capsys)
        assert_user_error(rc, err, word)
    assert not (work["root"] / "out").exists()


def test_python_export_py_is_the_same_command(tmp_path: Path) -> None:
    """`python export.py` parses with the export subcommand's parser: same errors, exit status 2."""
    proc = subprocess.run([sys.executable, str(ROOT / "export.py"), "--checkpoint", str(tmp_path / "none.st"),
                           "--out", str(tmp_path / "out"), "--opset", "18"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert_user_error(proc.returncode, proc.stderr, "none.st")
    assert proc.stdout == "" and list(tmp_path.iterdir()) == []
    helps = [subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120).stdout
             for cmd in ([sys.executable, "export.py", "--help"], [sys.executable, "-m", "mmadapter.cli", "export",
                                                                   "--help"])]
    options = [sorted(word for word in text.split() if word.startswith("--")) for text in helps]
    assert options[0] == options[1] and "--serving-repo" in options[0]


_SLOW_EXPORT = """
import signal, sys, time, shutil
from pathlib import Path
# A foreground run's Ctrl-C: a test runner started in the background inherits SIGINT ignored, and Python
# then installs no KeyboardInterrupt handler, so the signal would be lost whatever the export does.
signal.signal(signal.SIGINT, signal.default_int_handler)
from mmadapter.export import onnx_io
from mmadapter import cli
graphs = Path(sys.argv[1])
def export_graph(spec, path, opset=18):
    shutil.copyfile(graphs / f"{spec.name}.onnx", path)
    return path
def optimize_for_ort(src, dst):
    Path(sys.argv[2]).write_text("started")
    time.sleep(60)
onnx_io.export_graph, onnx_io.optimize_for_ort = export_graph, optimize_for_ort
sys.exit(cli.main(["export", "--checkpoint", sys.argv[3], "--out", sys.argv[4], "--quiet"]))
"""


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_half_way_cleans_up_and_blocks_a_second_run(sig: int, code: int, exported: ExportBundle,
                                                            work: dict[str, Path],
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """A second export into the same --out while the first runs fails at once; SIGTERM / Ctrl-C of the
    first one leaves no temporary folder, lock or half export behind."""
    root, out, started = work["root"], work["root"] / "out", work["root"] / "started"
    before = snapshot(root)
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_EXPORT, str(exported.out_dir), str(started),
                             str(work["checkpoint"]), str(out)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not started.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert started.exists(), proc.communicate()[1]
        started.unlink()
        rc, _, err = run_cli(["export", "--checkpoint", work["checkpoint"], "--out", out, "--quiet"], capsys)
        assert_user_error(rc, err, "another")
        proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert_user_error(proc.returncode, stderr, code=code)
    assert snapshot(root) == before and not out.exists() and leftovers(root) == []


# 2. No file lost, clobbered or stranded (the export's destinations: tests/test_export_safety.py) ---------


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A user-trained checkpoint (`mmadapter train` with a local CLIP weights file)."""
    return train_with_cli(tmp_path_factory.mktemp("hostile-train"), ["ant", "bee", "cat"], per_class=5, epochs=2)


def _train_argv(trained: dict[str, Path], out: Path, *extra: object) -> list[object]:
    return ["train", "--data", trained["data"], "--clip-model", "mmadapter-tiny", "--clip-weights",
            trained["weights"], "--shots", "2", "--epochs", "2", "--out", out, "--cache-dir",
            trained["root"] / "cache", "--no-progress", *extra]


def test_train_never_replaces_a_checkpoint_without_overwrite(trained: dict[str, Path], tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "mine.safetensors"
    out.write_bytes(b"precious")
    out.chmod(0o444)
    rc, _, err = run_cli(_train_argv(trained, out), capsys)
    assert_user_error(rc, err, "--overwrite")
    assert out.read_bytes() == b"precious" and leftovers(tmp_path) == []
    rc, _, err = run_cli(_train_argv(trained, out, "--overwrite"), capsys)
    assert rc == 0, err
    assert out.read_bytes()[:8] != b"precious" and leftovers(tmp_path) == []


def test_unwritable_cache_is_a_warning_not_an_error(trained: dict[str, Path], tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "cache-is-a-file"
    blocker.write_text("not a folder")
    out = tmp_path / "a.safetensors"
    argv = _train_argv(trained, out)
    argv[argv.index("--cache-dir") + 1] = blocker
    rc, stdout, err = run_cli(argv, capsys)
    assert rc == 0, err
    assert out.is_file() and "Traceback" not in err
    assert any(line.startswith("warning: ") and "cache" in line for line in err.splitlines()), err
    assert blocker.read_text() == "not a folder"


# 3. No silent wrong answer ---------------------------------------------------------------------------------


def _header(path: Path) -> tuple[int, dict]:
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    return n, json.loads(data[8:8 + n])


def _rewrite_header(src: Path, dst: Path, edit) -> None:
    data = src.read_bytes()
    n, header = _header(src)
    edit(header)
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    dst.write_bytes(struct.pack("<Q", len(blob)) + blob + data[8 + n:])


def _edit_meta(fn):
    def edit(header: dict) -> None:
        meta = json.loads(header["__metadata__"]["mmadapter"])
        fn(meta)
        header["__metadata__"]["mmadapter"] = json.dumps(meta)
    return edit


def _flip_bit_in(path: Path, tensor: str) -> None:
    n, header = _header(path)
    start = 8 + n + header[tensor]["data_offsets"][0]
    data = bytearray(path.read_bytes())
    data[start + 1] ^= 0x01  # a low mantissa bit of the first value: still a finite float
    path.write_bytes(bytes(data))


# One case per check that refuses a tampered checkpoint (content hash, metadata types, tensor dtypes), here
# through the CLI; the full matrix of edits is tests/test_checkpoint_integrity.py's, at the loader.
@pytest.mark.parametrize("case", ["bit_flip", "width_float", "int_tensor"])
def test_tampered_checkpoints_are_refused(case: str, work: dict[str, Path],
                                          capsys: pytest.CaptureFixture[str]) -> None:
    ckpt = work["checkpoint"]
    bad = work["root"] / "bad.safetensors"
    if case == "bit_flip":
        shutil.copyfile(ckpt, bad)
        _flip_bit_in(bad, "down.weight")
    elif case == "int_tensor":
        def to_int(h: dict) -> None:
            h["down.bias"]["dtype"] = "I32"
        _rewrite_header(ckpt, bad, to_int)
    else:
        def width_float(m: dict) -> None:
            m["adapter"]["embed_dim"] = float(m["adapter"]["embed_dim"])
        _rewrite_header(ckpt, bad, _edit_meta(width_float))
    before = snapshot(work["root"])
    rc, out, err = run_cli(["predict", "--checkpoint", bad, work["images"]], capsys)
    assert_user_error(rc, err, "bad.safetensors")
    assert out == "" and snapshot(work["root"]) == before


def test_clip_weights_that_do_not_fit_the_model(trained: dict[str, Path], tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    argv = _train_argv(trained, tmp_path / "o.safetensors")
    argv[argv.index("--clip-model") + 1] = "RN50"
    rc, _, err = run_cli(argv, capsys)
    assert_user_error(rc, err, "RN50", trained["weights"].name)
    assert list(tmp_path.iterdir()) == []


def test_overflowing_weights_never_print_nan(exported: ExportBundle, work: dict[str, Path],
                                             capsys: pytest.CaptureFixture[str]) -> None:
    from mmadapter.model.checkpoint import load_checkpoint, save_checkpoint

    adapter, meta = load_checkpoint(work["checkpoint"], backend="torch")
    with torch.no_grad():
        adapter.up.weight.fill_(3e38)  # finite, but every product overflows
    bad = save_checkpoint(work["root"] / "overflow.safetensors", adapter, meta)
    rc, out, err = run_cli(["predict", "--checkpoint", bad, work["images"]], capsys)
    assert_user_error(rc, err)
    assert "nan" not in out.lower()


def test_training_that_diverges_writes_nothing(trained: dict[str, Path], tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "diverged.safetensors"
    rc, stdout, err = run_cli(_train_argv(trained, out, "--lr", "1e30"), capsys)
    assert_user_error(rc, err)
    assert not out.exists() and "nan" not in stdout.lower() and leftovers(tmp_path) == []


@pytest.mark.parametrize("edit", ["reordered", "missing_label_set", "classes_not_list", "std_zero"])
def test_edited_manifest_is_refused(edit: str, exported: ExportBundle, work: dict[str, Path],
                                    capsys: pytest.CaptureFixture[str]) -> None:
    folder = work["root"] / "onnx"
    shutil.copytree(exported.out_dir, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    if edit == "reordered":
        manifest["label_set"]["class_names"].reverse()
    elif edit == "missing_label_set":
        del manifest["label_set"]
    elif edit == "classes_not_list":
        manifest["label_set"]["class_names"] = {"a": 1}
    else:
        manifest["preprocessing"]["std"] = [0.0, 0.0, 0.0]
    (folder / "manifest.json").write_text(json.dumps(manifest))
    rc, out, err = run_cli(["predict", "--onnx", folder, work["images"]], capsys)
    assert_user_error(rc, err, "manifest")
    assert out == ""


def test_unreadable_images_are_passed_over_and_counted(exported: ExportBundle, work: dict[str, Path],
                                            capsys: pytest.CaptureFixture[str]) -> None:
    folder = work["images"]
    good = sorted(p.name for p in folder.iterdir())
    Image.new("L", (1, 100000), 128).save(folder / "thin.png")  # a few hundred bytes, huge when resized
    bomb = folder / "bomb.png"
    Image.new("L", (8, 8)).save(bomb)
    data = bytearray(bomb.read_bytes())
    data[16:24] = struct.pack(">II", 20000, 20000)  # the IHDR claims 20000 x 20000
    bomb.write_bytes(bytes(data))
    (folder / "truncated.png").write_bytes((folder / good[0]).read_bytes()[:60])
    for mode in (["--onnx", exported.out_dir], ["--checkpoint", work["checkpoint"]]):
        rc, out, err = run_cli(["predict", *mode, folder], capsys)
        assert rc == 0, err
        lines = out.strip().splitlines()
        assert len(lines) == len(good) + 3, out
        skipped = [line for line in lines if ": skipped (" in line]
        assert sorted(Path(line.split(": ")[0]).name for line in lines if line not in skipped) == good, out
        assert sorted(Path(line.split(": ")[0]).name for line in skipped) == ["bomb.png", "thin.png",
                                                                               "truncated.png"]
        assert "nan" not in out.lower()
        warning = [line for line in err.splitlines() if line.startswith("warning: ")]
        assert len(warning) == 1 and "3 of" in warning[0] and "Traceback" not in err
        rc, out, err = run_cli(["predict", *mode, folder, "--strict"], capsys)
        assert_user_error(rc, err)


@pytest.mark.parametrize("classes, words", [("my_clases.txt", ["my_clases.txt"]),
                                            ("lists/classes", ["lists/classes"]),
                                            ("a b,a_b", ["a b", "a_b"]),
                                            ("cat,Cat", ["cat"]),
                                            (",,", ["empty"])])
def test_bad_class_lists(classes: str, words: list[str], work: dict[str, Path],
                         capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(work["root"])
    rc, out, err = run_cli(["predict", "--checkpoint", work["checkpoint"], "--classes", classes, work["images"]],
                           capsys)
    assert_user_error(rc, err, *words)
    assert out == ""


def test_folders_that_give_the_same_prompt(trained: dict[str, Path], tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    data = make_image_folder(tmp_path / "data", ["a b", "a_b", "c"], per_class=3)
    argv = _train_argv(trained, tmp_path / "o.safetensors")
    argv[argv.index("--data") + 1] = data
    rc, _, err = run_cli(argv, capsys)
    assert_user_error(rc, err, "a b", "a_b")
    assert not (tmp_path / "o.safetensors").exists()


def test_broken_pipe_is_not_a_traceback(work: dict[str, Path], exported: ExportBundle) -> None:
    """`mmadapter predict ... | head -1`: the reader stops early; no traceback on stderr."""
    many = [str(work["images"])] * 30
    proc = subprocess.run(f"{sys.executable} -m mmadapter.cli predict --onnx {exported.out_dir} "
                          f"{' '.join(many)} | head -1", shell=True, cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert len(proc.stdout.splitlines()) == 1
    assert "Traceback" not in proc.stderr


def test_random_pixels_give_finite_probabilities(exported: ExportBundle, work: dict[str, Path],
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """The ordinary path after all the refusals: probabilities are finite, sum to <= 1 and are sorted."""
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (50, 70, 3), dtype=np.uint8)).save(work["images"] / f"r{i}.png")
    rc, out, err = run_cli(["predict", "--onnx", exported.out_dir, work["images"], "--top-k", "3"], capsys)
    assert rc == 0, err
    for line in out.strip().splitlines():
        probs = [float(part.rsplit("(", 1)[1].rstrip(")")) for part in line.split(": ", 1)[1].split(", ")]
        assert all(np.isfinite(probs)) and probs == sorted(probs, reverse=True) and sum(probs) <= 1 + 1e-6
    assert os.environ.get("MMADAPTER_DEBUG") is None
