"""OpenVINO's bf16 as a named precision (export --openvino --bf16, predict --precision bf16 --engine openvino).

This machine's CPU may or may not compute bf16 natively, so the CPU's answer is forced both ways: where it
"has" bf16 the export validates the fp32 IR compiled with the bf16 hint at bf16's thresholds, and the
configuration handed to OpenVINO is checked; where it has not, the manifest records that bf16 itself was
not measured. Whatever the CPU, serving says what OpenVINO really computes (read back, never assumed)."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("openvino")
import openvino as ov  # noqa: E402

from mmadapter import cli  # noqa: E402
from mmadapter.errors import ExportError  # noqa: E402
from mmadapter.runtime.engines import openvino as ov_engine  # noqa: E402
from mmadapter.runtime.manifest import read_manifest  # noqa: E402
from mmadapter.runtime.model import ExportedModel  # noqa: E402

from export_fixtures import make_checkpoint  # noqa: E402
from helpers import write_sample_images  # noqa: E402
from tolerances import EXPORT_COSINE_MIN  # noqa: E402


@pytest.fixture(scope="module")
def bf16_export(tmp_path_factory: pytest.TempPathFactory):
    """An --openvino --bf16 export made as on a CPU with native bf16, recording every compile config."""
    from mmadapter.export.pipeline import export_checkpoint

    root = tmp_path_factory.mktemp("bf16")
    ckpt, *_ = make_checkpoint(root)
    configs: list[dict] = []
    original = ov.Core.compile_model
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ov_engine, "native_bf16", lambda device="CPU": True)
        mp.setattr(ov_engine, "optimization_capabilities", lambda device="CPU": ["FP32", "INT8", "BF16"])

        def recording(self, model, device=None, config=None):
            configs.append(dict(config or {}))
            return original(self, model, device, config)

        mp.setattr(ov.Core, "compile_model", recording)
        result = export_checkpoint(ckpt, root / "onnx", openvino=True, bf16=True, progress=False)
    return root, ckpt, result, configs


def test_export_validates_the_ir_in_bf16_where_the_cpu_has_it(bf16_export) -> None:
    root, _, _, configs = bf16_export
    m = read_manifest(root / "onnx")
    assert m.bf16 is not None and m.bf16.measured and "BF16" in m.bf16.cpu
    bf16_reports = [r for r in m.validation.reports if r.precision == "bf16"]
    # One per graph, on the fp32 IR, held to bf16's own (fp16's) thresholds.
    assert sorted(r.file for r in bf16_reports) == sorted(e.files["fp32"].openvino for e in m.graphs.values())
    for r in bf16_reports:
        assert r.passed and r.measures["thresholds"]["cosine"] == EXPORT_COSINE_MIN["bf16"]
    hints = [c.get("INFERENCE_PRECISION_HINT") for c in configs]
    assert hints.count("bf16") == len(bf16_reports)  # bf16 only where it was named
    assert set(hints) == {"f32", "bf16"}


def test_a_cpu_without_bf16_records_it_as_not_measured(monkeypatch: pytest.MonkeyPatch) -> None:
    from mmadapter.export.pipeline import _bf16_record

    monkeypatch.setattr(ov_engine, "optimization_capabilities", lambda device="CPU": ["FP32", "INT8"])
    monkeypatch.setattr(ov_engine, "native_bf16", lambda device="CPU": False)
    record = _bf16_record()
    assert not record.measured and record.cpu == "FP32 INT8"


def test_serving_bf16_says_what_openvino_really_computes(bf16_export, tmp_path: Path) -> None:
    root = bf16_export[0]
    images = sorted(write_sample_images(tmp_path / "images", 3, seed=2).iterdir())
    model = ExportedModel(root / "onnx", engine="openvino", precision="bf16")
    result = model.classify(images)
    assert result.logits.shape == (3, len(model.class_names))
    runs = model.session_runs()
    really = "bf16" if ov_engine.native_bf16() else "f32"  # this machine's own answer, read back by OpenVINO
    assert runs and all(f"inference precision {really}" in text for text in runs.values()), runs


def test_bf16_errors_are_one_line(bf16_export, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root, ckpt, _, _ = bf16_export
    images = write_sample_images(tmp_path / "images", 1, seed=2)
    assert cli.main(["predict", "--onnx", str(root / "onnx"), "--precision", "bf16", str(images)]) == 2
    assert "--engine openvino" in capsys.readouterr().err
    assert cli.main(["export", "--checkpoint", str(ckpt), "--out", str(tmp_path / "x"), "--bf16"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "add --openvino" in err and not (tmp_path / "x").exists()


def test_an_export_without_bf16_does_not_offer_it(bf16_export, tmp_path: Path) -> None:
    """The folder must say bf16 was exported (validated or recorded as not measured) before it is served."""
    import json
    import shutil

    from mmadapter.runtime.manifest import HASH_FIELD, manifest_hash

    folder = Path(shutil.copytree(bf16_export[0] / "onnx", tmp_path / "onnx"))
    data = json.loads((folder / "manifest.json").read_text())
    del data["bf16"]
    data[HASH_FIELD] = manifest_hash(data)
    (folder / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ExportError, match="does not offer bf16"):
        ExportedModel(folder, engine="openvino", precision="bf16").classify(
            sorted(write_sample_images(tmp_path / "i", 1, seed=2).iterdir()))
