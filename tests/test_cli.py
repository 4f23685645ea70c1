"""The console script: subcommands over typed functions, one-line errors with exit code 2, no
tracebacks and no partial files for bad inputs."""

from __future__ import annotations

import subprocess
import sys
import types
from pathlib import Path

import pytest

from mmadapter import cli
from mmadapter.model.checkpoint import read_metadata
from tests.helpers import make_image_folder, train_with_cli

CLASSES = ["ant", "bee", "cat", "dog"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny image folder, a tiny CLIP weights file and a checkpoint trained on them with `mmadapter train`."""
    return train_with_cli(tmp_path_factory.mktemp("cli"), CLASSES, per_class=6, epochs=3)


def _error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and "Traceback" not in err
    return lines[0]


def test_train_writes_a_self_describing_checkpoint(trained: dict[str, Path]) -> None:
    meta = read_metadata(trained["checkpoint"])
    assert meta["label_set"]["class_names"] == CLASSES
    assert meta["clip"]["weights_path"] == str(trained["weights"].resolve())
    assert meta["training"]["shots"] == 2 and "test_acc" in meta["metrics"]


def test_predict_top_k(trained: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    images = trained["data"] / "cat"
    assert cli.main(["predict", "--checkpoint", str(trained["checkpoint"]), str(images), "--top-k", "2"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 6
    for line in lines:
        path, _, rest = line.partition(": ")
        assert Path(path).parent == images and len(rest.split("), ")) == 2
        assert all(name.split(" (")[0] in CLASSES for name in rest.split(", "))


def test_predict_open_vocabulary_classes(trained: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    image = trained["data"] / "dog" / "000.png"
    rc = cli.main(["predict", "--checkpoint", str(trained["checkpoint"]), str(image), "--classes", "owl,fox,emu",
                   "--top-k", "5"])
    assert rc == 0
    out = capsys.readouterr().out
    assert sorted(part.split(" (")[0] for part in out.split(": ", 1)[1].strip().split(", ")) == ["emu", "fox", "owl"]


def test_missing_checkpoint(trained: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    rc = cli.main(["predict", "--checkpoint", str(trained["root"] / "nope.safetensors"), str(trained["data"] / "ant")])
    assert rc == 2 and "nope.safetensors: file not found" in _error_line(capsys)


def test_truncated_checkpoint(trained: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "truncated.safetensors"
    bad.write_bytes(trained["checkpoint"].read_bytes()[:-1000])
    rc = cli.main(["predict", "--checkpoint", str(bad), str(trained["data"] / "ant")])
    assert rc == 2 and "truncated" in _error_line(capsys)


def test_corrupt_image(trained: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    rc = cli.main(["predict", "--checkpoint", str(trained["checkpoint"]), str(tmp_path)])
    assert rc == 2 and "broken.png" in _error_line(capsys)


def test_empty_class_list(trained: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "classes.txt"
    empty.write_text("\n  \n")
    rc = cli.main(["predict", "--checkpoint", str(trained["checkpoint"]), str(trained["data"] / "ant"),
                   "--classes", str(empty)])
    assert rc == 2 and "empty" in _error_line(capsys)


def test_train_on_bad_data_leaves_no_checkpoint(trained: dict[str, Path], tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "data").mkdir()  # no class folders: an empty class list
    out = tmp_path / "out" / "adapter.safetensors"
    base = ["train", "--clip-model", "mmadapter-tiny", "--clip-weights", str(trained["weights"]), "--out", str(out),
            "--cache-dir", str(tmp_path / "cache"), "--no-progress"]
    assert cli.main([*base, "--data", str(tmp_path / "data")]) == 2
    assert "no class folders" in _error_line(capsys)
    data = make_image_folder(tmp_path / "data2", ["x", "y"], per_class=3)
    (data / "y" / "002.png").write_bytes(b"corrupt")
    assert cli.main([*base, "--data", str(data), "--shots", "1"]) == 2
    assert "cannot read image" in _error_line(capsys)
    assert not out.exists() and not (out.parent.exists() and list(out.parent.iterdir()))
    assert not [p for p in (tmp_path / "cache").rglob("*") if "partial" in p.name]


def test_export_is_a_real_subcommand(monkeypatch: pytest.MonkeyPatch) -> None:
    from mmadapter.export import cli as export_cli
    from mmadapter.export.defaults import DEFAULT_OPSET, DEFAULT_PROFILE, DEFAULT_PROVIDERS

    seen: list[object] = []
    monkeypatch.setattr(cli.commands, "cmd_export", lambda args: seen.append(args) or 0)
    assert cli.main(["export", "--checkpoint", "a.safetensors", "--out", "x"]) == 0
    assert export_cli.main(["--checkpoint", "a.safetensors", "--out", "x"]) == 0
    via_subcommand, via_script = (vars(a) for a in seen)
    assert via_subcommand.pop("command") == "export"
    assert via_subcommand == via_script  # one parser: the same arguments and defaults
    assert via_script["opset"] == DEFAULT_OPSET and via_script["providers"] == list(DEFAULT_PROVIDERS)
    assert (via_script["min_batch"], via_script["opt_batch"], via_script["max_batch"]) == DEFAULT_PROFILE


@pytest.mark.parametrize("missing", ["torch", "onnxruntime"])
def test_export_without_an_install_names_both(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                             missing: str) -> None:
    """Export builds with torch and validates with ONNX Runtime: whichever is absent, the hint names both extras,
    as the README's install section does, through `mmadapter export` and `python export.py` alike."""
    from mmadapter.export import cli as export_cli

    def absent(args: object) -> int:
        raise ModuleNotFoundError(f"No module named '{missing}'", name=missing)

    monkeypatch.setattr(cli.commands, "cmd_export", absent)
    argv = ["--checkpoint", "a.safetensors", "--out", "x"]
    for main, command in ((lambda: cli.main(["export", *argv]), "mmadapter export"),
                          (lambda: export_cli.main(argv), "export.py")):
        assert main() == 2
        line = _error_line(capsys)
        assert line.startswith(f"error: `{command}` needs the training install and ONNX Runtime ({missing} "), line
        assert line.endswith("pip install 'mmadapter[train,runtime]'"), line


@pytest.mark.parametrize(("missing", "extras"), [("onnxruntime", "runtime"), ("torch", "train")])
def test_predict_without_an_install_names_its_extra(monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str], missing: str,
                                                   extras: str) -> None:
    """Serving (--onnx) needs only the runtime extra; --checkpoint needs the training one."""
    def absent(args: object) -> int:
        raise ModuleNotFoundError(f"No module named '{missing}'", name=missing)

    monkeypatch.setattr(cli.commands, "cmd_predict", absent)
    assert cli.main(["predict", "--onnx", "x", "img.png"]) == 2
    line = _error_line(capsys)
    assert line.startswith("error: `mmadapter predict` needs ") and line.endswith(f"'mmadapter[{extras}]'"), line


def test_predict_onnx_uses_the_runtime_and_prints_alike(trained: dict[str, Path], monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    calls = []

    def classify_images(onnx_dir: Path, image_paths: list[Path], top_k: int, precision: str, strict: bool):
        calls.append((onnx_dir, top_k, precision, strict))
        return [(p, [("ant", 0.75), ("bee", 0.25)][:top_k]) for p in image_paths]

    fake = types.ModuleType("mmadapter.runtime.model")
    fake.classify_images = classify_images
    monkeypatch.setitem(sys.modules, "mmadapter.runtime.model", fake)
    image = trained["data"] / "ant" / "001.png"
    assert cli.main(["predict", "--onnx", "exported", str(image), "--top-k", "2"]) == 0
    assert calls == [(Path("exported"), 2, "fp32", False)]
    assert capsys.readouterr().out.strip() == f"{image}: ant (0.750), bee (0.250)"
    assert cli.main(["predict", str(image)]) == 2  # neither --checkpoint nor --onnx
    assert "exactly one of" in _error_line(capsys)


def test_keyboard_interrupt_exits_130(monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli.commands, "cmd_demo", interrupted)
    assert cli.main(["demo", "--out", "unused"]) == 130


def test_sigterm_exits_143_after_cleanup(monkeypatch: pytest.MonkeyPatch) -> None:
    import os
    import signal

    cleaned = []

    def terminated(args):
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            signal.sigtimedwait([], 0) if hasattr(signal, "sigtimedwait") else None
            raise AssertionError("SIGTERM did not interrupt the command")
        finally:
            cleaned.append(True)

    monkeypatch.setattr(cli.commands, "cmd_demo", terminated)
    assert cli.main(["demo", "--out", "unused"]) == 143
    assert cleaned == [True]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is only there while a command runs


def test_console_script_prints_no_traceback(tmp_path: Path) -> None:
    exe = Path(sys.executable).with_name("mmadapter")
    command = [str(exe)] if exe.exists() else [sys.executable, "-m", "mmadapter.cli"]
    proc = subprocess.run([*command, "predict", "--checkpoint", str(tmp_path / "x.safetensors"), str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and proc.stderr.startswith("error: ")
    assert "Traceback" not in proc.stderr


FIVE = ["owl", "ant", "yak", "bee", "cat"]  # an image folder's label order is by name: ant bee cat owl yak


@pytest.mark.parametrize("split, base", [("coop", ["ant", "bee", "cat"]), ("authors", ["ant", "bee"])])
def test_train_base_only_with_split_and_template(split: str, base: list[str], trained: dict[str, Path],
                                                 tmp_path: Path) -> None:
    data = make_image_folder(tmp_path / "data", FIVE, per_class=4)
    out = tmp_path / "base.safetensors"
    rc = cli.main(["train", "--data", str(data), "--clip-model", "mmadapter-tiny", "--clip-weights",
                   str(trained["weights"]), "--shots", "1", "--epochs", "2", "--out", str(out), "--base-only",
                   "--split", split, "--template", "a drawing of a {}.", "--cache-dir", str(tmp_path / "cache"),
                   "--no-progress"])
    assert rc == 0
    meta = read_metadata(out)
    assert meta["label_set"]["class_names"] == base
    assert meta["label_set"]["templates"] == ["a drawing of a {}."]
    assert meta["training"]["split"] == split


def test_evaluate_writes_the_base_to_novel_report(trained: dict[str, Path], tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    import json

    data = make_image_folder(tmp_path / "data", FIVE, per_class=5)
    rc = cli.main(["evaluate", "--data", str(data), "--clip-model", "mmadapter-tiny", "--clip-weights",
                   str(trained["weights"]), "--shots", "2", "--epochs", "2", "--out", str(tmp_path / "report"),
                   "--cache-dir", str(tmp_path / "cache"), "--no-progress"])
    assert rc == 0
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["base_classes"] == ["ant", "bee", "cat"] and report["novel_classes"] == ["owl", "yak"]
    assert report["split"] == "coop"
    assert set(report["results"]) == {"zero-shot-clip", "clip-adapter", "mma"}
    printed = capsys.readouterr().out
    assert (tmp_path / "report" / "report.md").read_text() in printed and "report: " in printed
