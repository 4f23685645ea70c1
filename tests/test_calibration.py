"""Calibration images: which are used, which are held out, and the one-line errors when there are none."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mmadapter.errors import ExportError
from mmadapter.export import calibration as cal
from mmadapter.runtime.preprocess import Preprocessing

from export_fixtures import make_checkpoint
from helpers import make_image_folder

PRE = Preprocessing((32, 32), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


@pytest.mark.parametrize("count", [4, 5, 37, 200, 1000])
def test_split_is_disjoint_seeded_and_capped(count: int) -> None:
    c, h = cal.split_order(count)
    assert not set(c) & set(h) and set(c) | set(h) <= set(range(count))
    assert len(h) == min(cal.MAX_HOLDOUT_IMAGES, -(-count // cal.HOLDOUT_EVERY))
    assert len(c) == min(cal.MAX_CALIBRATION_IMAGES, count - len(h))
    assert (c, h) == cal.split_order(count)  # the same images on every export


def test_load_calibration_skips_unreadable(tmp_path: Path) -> None:
    folder = make_image_folder(tmp_path / "imgs", ["a", "b"], per_class=6, size=40)
    (folder / "a" / "000.png").write_bytes(b"not a png")
    got = cal.load_calibration(folder, PRE)
    assert got.skipped == 1 and len(got.calibration) + len(got.holdout) == 11
    assert got.calibration.shape[1:] == (3, 32, 32) and got.calibration.dtype == np.float32
    assert got.to_dict()["holdout_images"] == len(got.holdout) >= 1


def test_folders_and_errors(tmp_path: Path) -> None:
    ckpt, *_ = make_checkpoint(tmp_path)
    with pytest.raises(ExportError, match="records no training images"):
        cal.resolve_calibration_folder(None, ckpt)
    with pytest.raises(ExportError, match="folder not found"):
        cal.resolve_calibration_folder(tmp_path / "nope", ckpt)
    few = make_image_folder(tmp_path / "few", ["a"], per_class=3)
    with pytest.raises(ExportError, match="at least 4"):
        cal.resolve_calibration_folder(few, ckpt)
    assert cal.training_data_folder({"data_root": str(few)}, ckpt) == few
    assert cal.training_data_folder({"data_root": str(tmp_path / "gone"), "dataset": "x"}, ckpt) is None
    # A relative folder is the checkpoint's neighbour (the demo's digits), wherever the command runs.
    assert cal.training_data_folder({"data_root": "few"}, tmp_path / "adapter.safetensors") == tmp_path / "few"
    assert cal.training_data_folder({"data_root": "few"}, tmp_path / "elsewhere" / "a.safetensors") is None
    # Dynamic int8 alone needs no images; OpenVINO int8 does.
    assert cal.calibration_folder_for(int8=True, openvino=False, calibration=None, checkpoint=ckpt) is None
    with pytest.raises(ExportError, match="--calibration DIR"):
        cal.calibration_folder_for(int8=True, openvino=True, calibration=None, checkpoint=ckpt)
