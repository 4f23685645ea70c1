"""`mmadapter demo` end to end: offline, fast, and every promised file is there and usable."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from mmadapter import cli
from mmadapter.cli.demo import RANDOM_WEIGHTS_NOTICE
from mmadapter.model.backbone import sha256_file
from mmadapter.model.checkpoint import load_checkpoint
from mmadapter.runtime.manifest import read_manifest


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """One demo run for the module: its folder and what it printed."""
    import contextlib
    import io

    out = tmp_path_factory.mktemp("demo") / "demo"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert cli.main(["demo", "--out", str(out), "--no-progress"]) == 0
    return out, printed.getvalue()


def test_demo_end_to_end(demo: tuple[Path, str]) -> None:
    out, stdout = demo
    assert RANDOM_WEIGHTS_NOTICE in stdout and "RANDOM" in stdout

    adapter, meta = load_checkpoint(out / "adapter.safetensors", clip_embed_dim=512)
    weights = out / "clip-weights.safetensors"
    assert meta.clip.model_name == "mmadapter-tiny" and meta.clip.pretrained is None
    assert Path(str(meta.clip.weights_path)) == weights.resolve()
    assert meta.clip.weights_sha256 == sha256_file(weights)
    # Base classes: the first ceil(10/2) labels in the dataset's label order (an image folder's is by name).
    assert meta.label_set.class_names == ("eight", "five", "four", "nine", "one")
    assert adapter.num_trainable_parameters() == 197_760

    report = json.loads((out / "report.json").read_text())
    assert set(report["results"]) == {"zero-shot-clip", "clip-adapter", "mma"}
    assert report["novel_classes"] == ["seven", "six", "three", "two", "zero"]
    assert report["shots"] == 16 and report["counts"]["train"] == 80
    assert (out / "report.md").is_file() and (out / "report.png").read_bytes()[:4] == b"\x89PNG"

    images = sorted((out / "images").iterdir())
    assert len(images) == 10 and all(p.read_bytes()[:4] == b"\x89PNG" for p in images)
    for image in images:  # one top-3 line per image, classes from the checkpoint's label set
        line = next(line for line in stdout.splitlines() if line.startswith(f"{image}: "))
        assert len(line.split(": ", 1)[1].split(", ")) == 3
    assert not [p for p in out.rglob("*") if "partial" in p.name]

    # The main job: the checkpoint exported, validated against torch, and served by ONNX Runtime.
    manifest = read_manifest(out / "onnx")
    assert manifest.validation.run and manifest.validation.passed
    assert "ONNX Runtime and torch agree on top-1 for 10/10 images" in stdout


def test_demo_folder_can_move(demo: tuple[Path, str], tmp_path: Path) -> None:
    """The demo checkpoint refers to its CLIP weights relative to itself, so the folder can move."""
    moved = Path(shutil.copytree(demo[0], tmp_path / "moved", symlinks=True))
    _, meta = load_checkpoint(moved / "adapter.safetensors")
    assert Path(str(meta.clip.weights_path)) == (moved / "clip-weights.safetensors").resolve()
    assert cli.main(["predict", "--checkpoint", str(moved / "adapter.safetensors"), str(moved / "images")]) == 0
    # Its training images move with it: an int8 OpenVINO export calibrates on them without --calibration.
    from mmadapter.export.calibration import calibration_folder_for

    found = calibration_folder_for(int8=True, openvino=True, calibration=None, checkpoint=moved / "adapter.safetensors")
    assert found == moved / "digits"


def test_demo_refuses_a_folder_it_did_not_write(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The demo rewrites images/, onnx/, the checkpoint and the report: never in someone else's folder."""
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "holiday.jpg").write_bytes(b"precious")
    assert cli.main(["demo", "--out", str(tmp_path), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "did not write" in err[0]
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["holiday.jpg", "images"]
