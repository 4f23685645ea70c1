"""The opt-in int8 image classifier (``export --int8``): what is quantized and what is not, its
validation (int8 cosine against torch, top-1 with near ties set aside, but enough decisive inputs left to
compare), serving it, and the errors around it. Speed is measured by benchmarks/bench_export.py, not here."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from mmadapter import cli as mmadapter_cli
from mmadapter.errors import ExportError
from mmadapter.export import cli, onnx_io, validate
from mmadapter.export.specs import TensorSpec
from mmadapter.export.validate import Case, validate_graph
from mmadapter.runtime.graphs import Tolerance
from mmadapter.runtime.manifest import GraphFiles
from mmadapter.runtime.model import PROVIDER_ORDER, ExportedModel, classify_images
from mmadapter.runtime.preprocess import preprocess_batch

from export_fixtures import ExportBundle
from tolerances import (
    EXPORT_COSINE_MIN,
    EXPORT_TIE_MARGIN,
    EXPORT_TOLERANCES,
    EXPORT_TOP1_MIN,
    assert_enough_decisive,
    decisive_rows,
)

INT8_FILE = "image_classifier.int8.ort.onnx"
QUANTIZED_OPS = {"DynamicQuantizeMatMul", "MatMulInteger", "DynamicQuantizeLinear"}


def _pixels(bundle: ExportBundle, count: int = 12) -> np.ndarray:
    spec = bundle.manifest().preprocessing
    return preprocess_batch(validate.sample_images(count, seed=33), spec)


def test_only_the_image_tower_is_quantized(exported: ExportBundle) -> None:
    m = exported.manifest()
    entry = m.graphs["image_classifier"]
    assert entry.files["int8"] == GraphFiles(ort=INT8_FILE)  # no portable int8 file: not for TensorRT
    assert INT8_FILE in m.files
    for graph in ("text_encoder", "class_bank", "adapter_head"):
        assert "int8" not in m.graphs[graph].files, graph
    model = onnx.load(str(exported.out_dir / INT8_FILE))
    ops = [n.op_type for n in model.graph.node]
    quantized = sum(op in ("DynamicQuantizeMatMul", "MatMulInteger") for op in ops)
    # Three weight MatMuls per residual block (attention in-projection, both MLP layers; the
    # attention out-projection is a Gemm and stays fp32): the tiny CLIP has 2 vision blocks.
    blocks = exported.clip.model.visual.transformer.layers
    assert quantized == entry.int8_matmuls == 3 * blocks
    int8_weights = {t.name for t in model.graph.initializer if t.data_type == onnx.TensorProto.INT8}
    assert len(int8_weights) >= quantized
    # The adapter and the folded class bank keep fp32 weights (they feed the logits directly).
    fp32 = {t.name: t for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT}
    # (the quantizer stores Gemm weights transposed, in fp32, under "<name>_Transposed")
    for name in ("adapter.up.weight", "adapter.attn.out_proj.weight", "adapter.down.weight"):
        assert name in fp32 or f"{name}_Transposed" in fp32, f"{name} was quantized or dropped"
    assert not [n for n in int8_weights if n.startswith("adapter.")]
    # The fp32 fused graph it came from has none of these ops.
    assert not QUANTIZED_OPS & {op for _, op in onnx_io.op_types(exported.out_dir / "image_classifier.ort.onnx")}


def test_int8_validation_report(exported: ExportBundle) -> None:
    reports = [r for r in exported.manifest().validation.reports if r.precision == "int8"]
    assert [r.file for r in reports] == [INT8_FILE]
    assert reports[0].passed
    r = reports[0].measures  # the validator's numbers, kept as it wrote them
    assert r["batch_sizes"] == [1, 3, 17]
    assert r["thresholds"] == {"cosine": EXPORT_COSINE_MIN["int8"], "top1": EXPORT_TOP1_MIN,
                               "tie_margin": EXPORT_TIE_MARGIN["int8"]}
    assert r["min_cosine"]["image_embedding"] >= EXPORT_COSINE_MIN["int8"]
    compared = sum(r["batch_sizes"])  # one image per row: 1 + 3 + 17
    assert isinstance(r["near_ties"], int) and 0 <= r["near_ties"] <= compared
    # Near ties are set aside, but not all of them: the top-1 rule must have had inputs to judge.
    assert_enough_decisive(compared - r["near_ties"], compared, what="int8 validation report")
    assert r["top1_agreement"] >= EXPORT_TOP1_MIN


def test_int8_serving_agrees_with_fp32(exported: ExportBundle) -> None:
    """ONNX Runtime int8 vs fp32 graphs of the same export: embedding cosine at the int8 threshold; every
    decisive top-1 (fp32 margin above the int8 tie margin) identical, on enough decisive inputs."""
    pixels = _pixels(exported)
    out32 = ExportedModel(exported.out_dir, ["cpu"]).classify_pixels(pixels)
    out8 = ExportedModel(exported.out_dir, ["cpu"], precision="int8").classify_pixels(pixels)
    a, b = out32["image_embedding"].astype(np.float64), out8["image_embedding"].astype(np.float64)
    cos = (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))
    assert cos.min() >= EXPORT_COSINE_MIN["int8"]
    assert not np.array_equal(a, b), "the int8 graph computes exactly what fp32 does: nothing was quantized"
    logits = out32["logits"]
    decisive = decisive_rows(logits, EXPORT_TIE_MARGIN["int8"])
    assert_enough_decisive(int(decisive.sum()), len(logits), what="int8 vs fp32 serving")
    np.testing.assert_array_equal(out8["logits"].argmax(-1)[decisive], logits.argmax(-1)[decisive])


def test_predict_cli_serves_int8(exported: ExportBundle, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    image = tmp_path / "img.png"
    validate.sample_images(1, seed=5)[0].save(image)
    assert mmadapter_cli.main(["predict", "--onnx", str(exported.out_dir), str(image), "--precision", "int8"]) == 0
    assert image.name in capsys.readouterr().out
    top = classify_images(exported.out_dir, [image], top_k=1, precision="int8")
    assert top[0][1][0][0] in exported.meta.label_set.class_names


def test_int8_errors_name_the_problem(exported: ExportBundle, tmp_path: Path) -> None:
    model = ExportedModel(exported.out_dir, ["cpu"], precision="int8")
    with pytest.raises(ExportError, match="int8 exists for the image classifier only"):
        model.graph_file("adapter_head")
    with pytest.raises(ExportError, match="not TensorRT"):
        model.graph_file("image_classifier", PROVIDER_ORDER[0])
    with pytest.raises(ExportError, match="no weight MatMul under"):
        onnx_io.quantize_int8(exported.out_dir / "adapter_head.ort.onnx", tmp_path / "x.onnx", ("visual.transformer",))
    assert not (tmp_path / "x.onnx").exists()


def test_int8_flag_reaches_the_pipeline(exported: ExportBundle, monkeypatch: pytest.MonkeyPatch,
                                        tmp_path: Path) -> None:
    seen = {}

    def fake_export(checkpoint, out, **kwargs):
        seen.update(kwargs)
        raise ExportError("stop here")

    monkeypatch.setattr("mmadapter.export.pipeline.export_checkpoint", fake_export)
    assert cli.main(["--checkpoint", str(exported.checkpoint), "--out", str(tmp_path / "o"), "--int8"]) == 2
    assert seen["int8"] is True and seen["fp16"] is False


class _FakeSession:
    """Just enough of an ORT session for validate_graph: fixed outputs."""

    def __init__(self, outputs: list[np.ndarray]):
        self.outputs = outputs

    def get_inputs(self):
        return [type("I", (), {"name": "x", "type": "tensor(float)", "shape": ["batch", 2]})()]

    def get_outputs(self):
        return [type("O", (), {"name": "logits", "type": "tensor(float)", "shape": ["batch", 3]})()]

    def run(self, names, feeds):
        return self.outputs


# The rule run with the tests' own numbers (test_tolerances.py pins the product's table to them).
TESTS_TOLERANCES = {precision: Tolerance(**t) for precision, t in EXPORT_TOLERANCES.items()}


@pytest.mark.parametrize("precision, ties, fails", [("int8", 1, False), ("fp32", 0, True), ("fp16", 0, True)])
def test_near_tie_rule(precision: str, ties: int, fails: bool) -> None:
    """Row 0 is a near tie in the reference (margin 0.1 of logits ~100: below int8's 0.5), row 1 is
    decisive. A graph that flips row 0 passes int8 (tie counted) but fails fp32/fp16."""
    ref = np.array([[100.0, 99.9, 10.0], [100.0, 50.0, 10.0]], dtype=np.float32)
    got = np.array([[99.9, 100.0, 10.0], [100.0, 50.0, 10.0]], dtype=np.float32)
    spec = type("S", (), {"inputs": (TensorSpec("x", "float32", ("batch", 2)),),
                          "outputs": (TensorSpec("logits", "float32", ("batch", 3)),),
                          "tolerances": TESTS_TOLERANCES})()
    case = Case("two rows", {"x": np.zeros((2, 2), np.float32)}, {"logits": ref})
    report = validate_graph(Path("g.onnx"), spec, [case], precision, lambda p: _FakeSession([got]))
    assert report.near_ties == ties
    assert any("top-1 identical on" in f for f in report.failures) == fails
    flipped = np.array([[100.0, 99.9, 10.0], [10.0, 50.0, 100.0]], dtype=np.float32)  # decisive row flips
    report = validate_graph(Path("g.onnx"), spec, [case], "int8", lambda p: _FakeSession([flipped]))
    assert any("top-1 identical on 0/1" in f for f in report.failures), report.failures


def test_validation_refuses_to_judge_top1_on_mostly_near_ties() -> None:
    """Every row a near tie at int8's margin: nothing decisive is left to compare, so the graph fails
    validation instead of passing with no top-1 evidence."""
    ref = np.array([[100.0, 99.9, 10.0], [50.0, 49.95, 10.0], [80.0, 79.9, 1.0]], dtype=np.float32)
    spec = type("S", (), {"inputs": (TensorSpec("x", "float32", ("batch", 2)),),
                          "outputs": (TensorSpec("logits", "float32", ("batch", 3)),),
                          "tolerances": TESTS_TOLERANCES})()
    case = Case("three ties", {"x": np.zeros((3, 2), np.float32)}, {"logits": ref})
    report = validate_graph(Path("g.onnx"), spec, [case], "int8", lambda p: _FakeSession([ref]))
    assert report.near_ties == 3
    assert any("only 0 of 3 inputs are decisive" in f for f in report.failures), report.failures
