"""export --int8 --openvino --calibration: the calibrated Q/DQ graph, the OpenVINO IR files, their
validation on held-out images, serving them through ExportedModel and the CLI, `evaluate --onnx` on
the digits, and the errors around them. Speed is benchmarks/bench_export.py's business, not tested."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("openvino")
from mmadapter import cli  # noqa: E402
from mmadapter.data.digits import DIGIT_NAMES, DIGITS_TEMPLATE, write_digits_folder  # noqa: E402
from mmadapter.export import onnx_io  # noqa: E402
from mmadapter.model.checkpoint import CheckpointMeta, LabelSet, save_checkpoint  # noqa: E402
from mmadapter.runtime.manifest import (  # noqa: E402
    GraphFiles,
    Manifest,
    check_manifest,
    read_manifest,
    write_manifest,
)
from mmadapter.runtime.model import ExportedModel  # noqa: E402

from export_fixtures import make_checkpoint  # noqa: E402
from tolerances import (  # noqa: E402
    EXPORT_COSINE_MIN,
    EXPORT_TIE_MARGIN,
    EXPORT_TOP1_MIN,
    assert_enough_decisive,
    decisive_rows,
)

# OpenVINO fp32 is held to the fp32 rule against ONNX Runtime fp32, OpenVINO int8 to the int8 rule.
COSINE_FP32 = EXPORT_COSINE_MIN["fp32"]
COSINE_INT8 = EXPORT_COSINE_MIN["int8"]


@pytest.fixture(scope="module")
def ov_export(tmp_path_factory: pytest.TempPathFactory):
    from mmadapter.export.pipeline import export_checkpoint

    root = tmp_path_factory.mktemp("openvino")
    ckpt, clip, adapter, meta = make_checkpoint(root)
    digits_meta = CheckpointMeta(meta.adapter, meta.clip, meta.logit_scale, LabelSet(DIGIT_NAMES, (DIGITS_TEMPLATE,)))
    ckpt = save_checkpoint(root / "digits.safetensors", adapter, digits_meta)
    digits = write_digits_folder(root / "digits", per_class=12)
    result = export_checkpoint(ckpt, root / "onnx", int8=True, openvino=True, calibration=digits, progress=False)
    return root, ckpt, digits, result


def _manifest(root: Path) -> Manifest:
    return read_manifest(root / "onnx")


def _manifest_json(root: Path) -> dict:
    return json.loads((root / "onnx" / "manifest.json").read_text())


def test_files_and_manifest(ov_export) -> None:
    root, _, digits, _ = ov_export
    m = _manifest(root)
    for graph, entry in m.graphs.items():
        xml = entry.files["fp32"].openvino
        assert xml == f"{graph}.openvino.xml" and xml in m.files and f"{graph}.openvino.bin" in m.files
    files = m.graphs["image_classifier"].files["int8"]
    assert files == GraphFiles(ort="image_classifier.int8.ort.onnx", portable="image_classifier.int8.onnx",
                               openvino="image_classifier.int8.openvino.xml")
    cal = m.calibration
    assert cal["source"] == str(digits) and cal["calibration_images"] == 64 and cal["holdout_images"] == 30
    m = _manifest_json(root)
    assert check_manifest(m) == []
    # The schema refuses an IR whose weights file is not listed.
    broken = json.loads(json.dumps(m))
    del broken["files"]["image_classifier.openvino.bin"]
    assert any("openvino" in p and ".bin" in p for p in check_manifest(broken))


def test_qdq_graph_is_standard_and_quantizes_the_tower(ov_export) -> None:
    root, *_ = ov_export
    m = _manifest(root)
    path = root / "onnx" / "image_classifier.int8.onnx"
    ops = onnx_io.op_types(path)
    assert all(domain == "ai.onnx" for domain, _ in ops)  # TensorRT's parser reads only these
    assert {("ai.onnx", "QuantizeLinear"), ("ai.onnx", "DequantizeLinear")} <= ops
    import onnx

    model = onnx.load(str(path))
    quantized_weights = [t for t in model.graph.initializer if t.data_type == onnx.TensorProto.INT8]
    # 4 weight ops per tiny-CLIP block (in-projection, out-projection Gemm, both MLP layers), 2 blocks.
    assert m.graphs["image_classifier"].int8_static_ops == 8 <= len(quantized_weights)
    assert not [t.name for t in quantized_weights if t.name.startswith("adapter.")]


def test_validation_reports(ov_export) -> None:
    root, *_ = ov_export
    reports = {r.file: r for r in _manifest(root).validation.reports}
    for name in ("image_classifier.int8.onnx", "image_classifier.int8.openvino.xml"):
        assert reports[name].passed
        r = reports[name].measures
        assert r["calibrated"] and r["batch_sizes"] == [1, 3, 17, 30]
        assert r["min_cosine"]["image_embedding"] >= COSINE_INT8  # on the 30 held-out digits
        assert r["top1_agreement"] >= EXPORT_TOP1_MIN
    for graph in ("image_classifier", "text_encoder", "class_bank", "adapter_head"):
        assert reports[f"{graph}.openvino.xml"].passed


def _pixels(root: Path, digits: Path) -> np.ndarray:
    from mmadapter.runtime.images import read_images
    from mmadapter.runtime.preprocess import preprocess_batch

    paths = sorted(digits.rglob("*.png"))[::7]
    spec = _manifest(root).preprocessing
    return preprocess_batch(read_images(paths, max(spec.image_size)), spec)


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def test_openvino_serving_agrees_with_onnxruntime(ov_export) -> None:
    root, _, digits, _ = ov_export
    pixels = _pixels(root, digits)
    ref = ExportedModel(root / "onnx", ["cpu"]).classify_pixels(pixels)
    ov32 = ExportedModel(root / "onnx", engine="openvino").classify_pixels(pixels)
    ov8_model = ExportedModel(root / "onnx", precision="int8", engine="openvino", device="CPU")
    ov8 = ov8_model.classify_pixels(pixels, batch_size=5)
    assert ov8_model.session_providers() == {"image_classifier.int8.openvino.xml": ["OpenVINO:CPU"]}
    assert _cos(ov32["image_embedding"], ref["image_embedding"]).min() >= COSINE_FP32
    assert _cos(ov8["image_embedding"], ref["image_embedding"]).min() >= COSINE_INT8
    assert not np.array_equal(ov8["image_embedding"], ov32["image_embedding"])  # int8 really ran
    logits = ref["logits"]
    decisive = decisive_rows(logits, EXPORT_TIE_MARGIN["int8"])
    assert_enough_decisive(int(decisive.sum()), len(logits), what="OpenVINO int8 vs ONNX Runtime fp32")
    np.testing.assert_array_equal(ov8["logits"].argmax(-1)[decisive], logits.argmax(-1)[decisive])


def test_cli_predict_and_evaluate(ov_export, capsys: pytest.CaptureFixture[str]) -> None:
    root, _, digits, _ = ov_export
    assert cli.main(["predict", "--onnx", str(root / "onnx"), "--engine", "openvino", "--precision", "int8",
                     "--top-k", "2", str(digits / "one"), "--verbose"]) == 0
    captured = capsys.readouterr()
    out = captured.out.strip().splitlines()
    assert len(out) == 12 and all(line.count("(") == 2 for line in out)
    # The int8 IR's layers that are not quantized run in f32 (never the CPU plugin's bf16), read back.
    assert captured.err.strip() == ("providers: image_classifier.int8.openvino.xml: OpenVINO:CPU "
                                    "(inference precision f32)")
    assert cli.main(["evaluate", "--onnx", str(root / "onnx"), "--data", str(digits)]) == 0
    table = capsys.readouterr().out
    rows = [line for line in table.splitlines() if line.startswith("| ") and "%" in line]
    assert [r.split("|")[1].strip() for r in rows] == [
        "onnxruntime fp32", "onnxruntime int8 dynamic", "onnxruntime int8 static (Q/DQ)", "openvino fp32",
        "openvino int8 (Q/DQ)"]
    for r in rows[1:]:
        assert float(r.split("|")[3].strip().rstrip("%")) >= 99.0, r  # agreement with fp32, decisive inputs


def test_errors_are_one_line(ov_export, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root, ckpt, digits, _ = ov_export

    def fails(argv: list[str], *words: str) -> None:
        assert cli.main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and all(w in err[0] for w in words), err

    # The checkpoint records no image folder: OpenVINO int8 refuses rather than calibrating on noise.
    fails(["export", "--checkpoint", str(ckpt), "--out", str(tmp_path / "a"), "--int8", "--openvino"],
          "--calibration", "real images")
    fails(["export", "--checkpoint", str(ckpt), "--out", str(tmp_path / "b"), "--calibration", str(digits)],
          "--int8")
    empty = tmp_path / "empty"
    empty.mkdir()
    fails(["export", "--checkpoint", str(ckpt), "--out", str(tmp_path / "c"), "--int8", "--calibration",
           str(empty)], "at least")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists() and not (tmp_path / "c").exists()
    fails(["predict", "--onnx", str(root / "onnx"), "--engine", "openvino", "--openvino-device", "NPU.7",
           str(digits / "one")], "NPU.7", "not available")
    fails(["evaluate", "--onnx", str(root / "onnx"), "--data", str(tmp_path)], "not classes of the export")
    # An export without IR files named as such.
    plain = tmp_path / "plain"
    shutil.copytree(root / "onnx", plain)
    m = read_manifest(plain)
    graphs = {name: replace(entry, files={p: replace(f, openvino=None) for p, f in entry.files.items()})
              for name, entry in m.graphs.items()}
    write_manifest(plain, replace(m, graphs=graphs))
    fails(["predict", "--onnx", str(plain), "--engine", "openvino", str(digits / "one")], "--openvino")
