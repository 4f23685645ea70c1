"""``export_checkpoint`` / ``python export.py`` end to end on the tiny random CLIP with a trained
adapter: the files, the manifest, ONNX Runtime against torch at batch sizes other than the exported
one, the graph structure (no (N+1)^2 attention, named dynamic axes), and bad input."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import mmadapter
from mmadapter.errors import ExportError
from mmadapter.export import cli, onnx_io
from mmadapter.export.validate import sample_images
from mmadapter.runtime.graphs import TOLERANCES
from mmadapter.runtime.manifest import TensorSpec

from export_fixtures import CLASS_NAMES, ExportBundle, copying_exporter
from tolerances import EXPORT_COSINE_MIN as COSINE_MIN
from tolerances import EXPORT_LOGITS_ATOL_FP32 as LOGITS_ATOL_FP32
from tolerances import min_cosine

GRAPHS = ("image_classifier", "text_encoder", "class_bank", "adapter_head")
SUFFIXES = (".onnx", ".ort.onnx", ".fp16.onnx", ".fp16.ort.onnx")
INT8_GRAPHS = ("image_classifier",)  # the image tower only (tests/test_export_int8.py)
ALL_FILES = {f"{g}{s}" for g in GRAPHS for s in SUFFIXES} | {f"{g}.int8.ort.onnx" for g in INT8_GRAPHS}
BATCHES = (1, 3, 17)  # the graphs were traced at batch 2
ROOT = Path(__file__).resolve().parents[1]
N = len(CLASS_NAMES)


ONNX_DTYPES = {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.FLOAT16: "float16", onnx.TensorProto.INT64: "int64",
               onnx.TensorProto.INT32: "int32"}


def describe_io(path: Path) -> dict[str, list[dict[str, Any]]]:
    """Names, dtypes and shapes (ints or axis names) of a graph's inputs and outputs, read from the file."""
    model = onnx.load(str(path), load_external_data=False)

    def one(v: onnx.ValueInfoProto) -> dict[str, Any]:
        t = v.type.tensor_type
        shape = [d.dim_param if d.dim_param else int(d.dim_value) for d in t.shape.dim]
        return {"name": v.name, "dtype": ONNX_DTYPES.get(t.elem_type, str(t.elem_type)), "shape": shape}

    return {"inputs": [one(v) for v in model.graph.input], "outputs": [one(v) for v in model.graph.output]}


def opset_of(path: Path) -> int:
    model = onnx.load(str(path), load_external_data=False)
    return next(int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx"))


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _pixels(bundle: ExportBundle, count: int, seed: int) -> torch.Tensor:
    return torch.stack([bundle.clip.preprocess(img) for img in sample_images(count, seed=seed)])


# 1. Files and manifest ---------------------------------------------------------------------------------

def test_export_writes_every_graph_and_manifest(exported: ExportBundle) -> None:
    expected = ALL_FILES
    on_disk = {p.name for p in exported.out_dir.iterdir()}
    assert on_disk == expected | {"manifest.json", "tokenizer.json"}
    assert set(exported.result.files) == expected | {"tokenizer.json"}
    # The export ran in a temporary folder beside the destination; nothing of it is left.
    assert not [p for p in exported.out_dir.parent.iterdir() if ".partial" in p.name or ".old" in p.name]


def test_manifest_hashes_io_versions_and_label_set(exported: ExportBundle) -> None:
    raw = exported.manifest_json()
    assert raw["format"] == "mmadapter-onnx-export" and raw["format_version"] == 2
    # The manifest's own hash: sha256 of its canonical JSON without the field, computed here independently.
    body = json.dumps({k: v for k, v in raw.items() if k != "manifest_sha256"}, sort_keys=True, separators=(",", ":"))
    assert raw["manifest_sha256"] == hashlib.sha256(body.encode()).hexdigest()
    m = exported.manifest()
    assert m.to_dict() == raw and m.manifest_sha256 == raw["manifest_sha256"]
    for name, entry in m.files.items():  # sha256 recomputed here, independently of the package
        data = (exported.out_dir / name).read_bytes()
        assert entry.sha256 == hashlib.sha256(data).hexdigest(), name
        assert entry.bytes == len(data), name
    assert m.checkpoint.sha256 == hashlib.sha256(exported.checkpoint.read_bytes()).hexdigest()
    assert m.checkpoint.file == exported.checkpoint.name
    assert m.label_set.class_names == CLASS_NAMES
    assert m.label_set.templates == tuple(exported.meta.label_set.templates)
    assert m.logit_scale == pytest.approx(exported.meta.logit_scale)
    assert m.clip["weights_sha256"] == exported.meta.clip.weights_sha256
    assert m.opset == onnx_io.DEFAULT_OPSET
    versions = m.versions
    assert versions["torch"] == torch.__version__.split("+")[0] or versions["torch"] == torch.__version__
    assert versions["onnx"] == onnx.__version__ and versions["onnxruntime"] == ort.__version__
    assert versions["tensorrt"] == "absent" and versions["mmadapter"]
    pre = m.preprocessing
    assert pre.image_size == tuple(exported.clip.image_size)
    assert pre.mean == pytest.approx(exported.clip.image_mean)
    assert pre.std == pytest.approx(exported.clip.image_std)
    assert pre.interpolation == "bicubic" and pre.resize_mode == "shortest"
    assert m.tokenizer.context_length == 77
    assert set(m.graphs) == set(GRAPHS)
    for entry in m.graphs.values():
        for precision in ("fp32", "fp16"):
            for kind in ("portable", "ort"):
                name = entry.files[precision].get(kind)
                assert name in m.files
                path = exported.out_dir / name
                assert opset_of(path) == m.opset, name
                # The recorded interface is the file's (fp16 graphs keep fp32 inputs and outputs).
                assert describe_io(path) == entry.io.to_dict(), name
    io = m.graphs["image_classifier"].io
    assert io.inputs == (TensorSpec("pixels", "float32", ("batch", 3, 64, 64)),)
    assert io.outputs[0] == TensorSpec("logits", "float32", ("batch", N))


def test_manifest_validation_results(exported: ExportBundle) -> None:
    v = exported.manifest().validation
    assert v.run is True and v.passed is True
    files = {r.file for r in v.reports}
    assert files == ALL_FILES  # every file was validated
    for report in v.reports:
        assert report.passed and not report.failures, report
        r = report.measures
        assert r["batch_sizes"] == list(BATCHES), report.file
        assert r["thresholds"]["cosine"] == COSINE_MIN[report.precision]
        assert min(r["min_cosine"].values()) >= COSINE_MIN[report.precision], r
        if "logits" in r["max_abs_diff"]:
            assert r["top1_agreement"] == 1.0, r
    assert [r.to_dict() for r in v.reports] == exported.result.validation


def test_portable_graphs_use_standard_ops_and_dtypes(exported: ExportBundle) -> None:
    """What TensorRT's ONNX parser and Triton get: the standard domain only, no float64 tensors."""
    for g in GRAPHS:
        for suffix in (".onnx", ".fp16.onnx"):
            path = exported.out_dir / f"{g}{suffix}"
            assert {d for d, _ in onnx_io.op_types(path)} == {"ai.onnx"}, path.name
            model = onnx.load(str(path))
            dtypes = {t.data_type for t in model.graph.initializer}
            assert onnx.TensorProto.DOUBLE not in dtypes, path.name
            if suffix == ".fp16.onnx":
                assert onnx.TensorProto.FLOAT16 in dtypes, f"{path.name} has no fp16 weights"


def test_fp16_graphs_keep_layernorm_and_softmax_in_fp32(exported: ExportBundle) -> None:
    for g in ("image_classifier", "text_encoder", "adapter_head"):
        model = onnx.load(str(exported.out_dir / f"{g}.fp16.onnx"))
        del model.graph.value_info[:]  # the fp16 converter leaves stale fp32 value_info; infer afresh
        model = onnx.shape_inference.infer_shapes(model)
        types = {v.name: v.type.tensor_type.elem_type for v in (*model.graph.value_info, *model.graph.input)}
        types.update({t.name: t.data_type for t in model.graph.initializer})
        checked = 0
        for node in model.graph.node:
            if node.op_type in ("LayerNormalization", "Softmax"):
                assert types.get(node.input[0]) == onnx.TensorProto.FLOAT, f"{g}: {node.op_type} {node.name} in fp16"
                checked += 1
        assert checked, g


def test_every_graph_passes_the_onnx_checker(exported: ExportBundle) -> None:
    """Topological node order and well-formed files (the fp16 converter appends its input casts
    after their consumers; export sorts them)."""
    for name in ALL_FILES:
        model = onnx.load(str(exported.out_dir / name))
        onnx.checker.check_model(model)
        produced = {t.name for t in (*model.graph.input, *model.graph.initializer)} | {""}
        for node in model.graph.node:
            assert set(node.input) <= produced, f"{name}: {node.name} comes before its inputs"
            produced.update(node.output)


def test_toposort_orders_and_rejects_cycles() -> None:
    from onnx import helper

    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])
    nodes = [helper.make_node("Neg", ["b"], ["y"], name="last"), helper.make_node("Relu", ["a"], ["b"], name="mid"),
             helper.make_node("Abs", ["x"], ["a"], name="first")]
    graph = helper.make_graph(nodes, "g", [x], [y])
    onnx_io._toposort(graph)
    assert [n.name for n in graph.node] == ["first", "mid", "last"]
    cyclic = helper.make_graph([helper.make_node("Neg", ["b"], ["a"], name="p"),
                                helper.make_node("Neg", ["a"], ["b"], name="q")], "c", [x], [y])
    with pytest.raises(ExportError, match="cycle"):
        onnx_io._toposort(cyclic)
    dangling = helper.make_graph([helper.make_node("Neg", ["nowhere"], ["y"], name="r")], "d", [x], [y])
    with pytest.raises(ExportError, match="never produced"):
        onnx_io._toposort(dangling)


# 2. ONNX Runtime against the torch model ---------------------------------------------------------------

@pytest.mark.parametrize("batch", BATCHES)
def test_image_classifier_matches_torch(exported: ExportBundle, batch: int) -> None:
    """Reference: clip.encode_images + the adapter with the checkpoint's class bank (torch fast path).
    Tolerance: embedding cosine >= COSINE_MIN per precision, logits within LOGITS_ATOL_FP32 x max |logit|
    in fp32, identical top-1."""
    clip, adapter, meta = exported.clip, exported.adapter, exported.meta
    pixels = _pixels(exported, batch, seed=100 + batch)
    with torch.no_grad():
        bank = adapter.class_bank(clip.class_embeddings(CLASS_NAMES, meta.label_set.templates), CLASS_NAMES)
        ref = adapter(clip.encode_images(pixels), bank, meta.logit_scale)
    ref_logits, ref_emb = ref.logits.numpy(), ref.image_emb.numpy()
    for suffix in SUFFIXES:
        precision = "fp16" if "fp16" in suffix else "fp32"
        logits, emb, _ = _session(exported.out_dir / f"image_classifier{suffix}").run(None,
                                                                                      {"pixels": pixels.numpy()})
        assert logits.shape == (batch, N) and emb.shape == (batch, exported.clip.embed_dim)
        assert logits.dtype == np.float32 and emb.dtype == np.float32
        cos = min_cosine(emb, ref_emb)
        assert cos >= COSINE_MIN[precision], f"{suffix}: cosine {cos:.8f}"
        assert min_cosine(logits, ref_logits) >= COSINE_MIN[precision], suffix
        np.testing.assert_array_equal(logits.argmax(-1), ref_logits.argmax(-1), err_msg=suffix)
        if precision == "fp32":
            np.testing.assert_allclose(logits, ref_logits, rtol=0, atol=LOGITS_ATOL_FP32 * np.abs(ref_logits).max())


@pytest.mark.parametrize("num_classes", [1, 11, 40])
def test_adapter_head_with_a_new_label_set(exported: ExportBundle, num_classes: int) -> None:
    """Open vocabulary without re-export: class banks of other sizes than the exported N=7, built in
    torch and by the class_bank graph, give the torch fast path's logits (fp32: atol LOGITS_ATOL_FP32 x max)."""
    clip, adapter, meta = exported.clip, exported.adapter, exported.meta
    names = [f"new thing {i}" for i in range(num_classes)]
    with torch.no_grad():
        class_emb = clip.class_embeddings(names, meta.label_set.templates)
        bank = adapter.class_bank(class_emb, names)
        image_emb = clip.encode_images(_pixels(exported, 5, seed=7))
        ref = adapter(image_emb, bank, meta.logit_scale)
    text_emb, keys, values = _session(exported.out_dir / "class_bank.onnx").run(
        None, {"class_embedding": class_emb.numpy()})
    for got, want in ((text_emb, bank.text_emb), (keys, bank.keys), (values, bank.values)):
        np.testing.assert_allclose(got, want.numpy(), rtol=0, atol=1e-5)
    for suffix in SUFFIXES:
        precision = "fp16" if "fp16" in suffix else "fp32"
        feeds = {"image_emb": image_emb.numpy(), "text_emb": text_emb, "keys": keys, "values": values}
        logits, emb = _session(exported.out_dir / f"adapter_head{suffix}").run(None, feeds)
        assert logits.shape == (5, num_classes)
        assert min_cosine(emb, ref.image_emb.numpy()) >= COSINE_MIN[precision], suffix
        np.testing.assert_array_equal(logits.argmax(-1), ref.logits.numpy().argmax(-1), err_msg=suffix)
        if precision == "fp32":
            np.testing.assert_allclose(logits, ref.logits.numpy(), rtol=0,
                                       atol=LOGITS_ATOL_FP32 * ref.logits.abs().max().item())


@pytest.mark.parametrize("batch", BATCHES)
def test_text_encoder_matches_clip(exported: ExportBundle, batch: int) -> None:
    """Reference: clip.encode_texts. Tolerance: cosine >= COSINE_MIN per precision, unit norm."""
    texts = [f"a photo of {'a very ' * (i % 3)}strange object number {i}." for i in range(batch)]
    ref = exported.clip.encode_texts(texts).numpy()
    ids = exported.clip.tokenizer(texts).numpy().astype(np.int64)
    for suffix in SUFFIXES:
        precision = "fp16" if "fp16" in suffix else "fp32"
        (emb,) = _session(exported.out_dir / f"text_encoder{suffix}").run(None, {"input_ids": ids})
        assert emb.shape == ref.shape
        assert min_cosine(emb, ref) >= COSINE_MIN[precision], suffix
        np.testing.assert_allclose(np.linalg.norm(emb, axis=-1), 1.0, atol=1e-3)


# 3./4. Graph structure ---------------------------------------------------------------------------------

def _shapes(model: onnx.ModelProto) -> dict[str, list[int | str]]:
    inferred = onnx.shape_inference.infer_shapes(model)
    out = {}
    for v in (*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output):
        out[v.name] = [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
    for t in inferred.graph.initializer:
        out[t.name] = list(t.dims)
    return out


def test_no_quadratic_class_attention(exported: ExportBundle) -> None:
    """The fast path attends from one query over N keys: no tensor anywhere has two class-sized axes
    ([N+1, N+1] or [N, N]), no attention op, and every Softmax runs over a single class axis."""
    for suffix in (".onnx", ".ort.onnx"):
        # Static N=7 in image_classifier (the ViT's own token count is 17, so 7/8 cannot clash).
        static = onnx.load(str(exported.out_dir / f"image_classifier{suffix}"))
        for name, shape in _shapes(static).items():
            assert sum(d in (N, N + 1) for d in shape) <= 1, f"image_classifier: {name} {shape}"
        # Symbolic num_classes in adapter_head and class_bank.
        for g in ("adapter_head", "class_bank"):
            model = onnx.load(str(exported.out_dir / f"{g}{suffix}"))
            shapes = _shapes(model)
            seen_class_axis = False
            for name, shape in shapes.items():
                class_axes = [d for d in shape if isinstance(d, str) and "num_classes" in d]
                assert len(class_axes) <= 1, f"{g}: {name} {shape}"
                seen_class_axis |= bool(class_axes)
            assert seen_class_axis  # the check looked at the right dims
            ops = {n.op_type for n in model.graph.node}
            assert not ops & {"Attention", "MultiHeadAttention", "GroupQueryAttention"}, (g, ops)
            for node in model.graph.node:
                if node.op_type == "Softmax":
                    shape = shapes[node.input[0]]
                    assert isinstance(shape[-1], str) and "num_classes" in shape[-1], shape


def test_dynamic_axes_are_named(exported: ExportBundle) -> None:
    expected = {
        "image_classifier": ({"pixels": ["batch", 3, 64, 64]},
                             {"logits": ["batch", N], "image_embedding": ["batch", 512],
                              "clip_image_embedding": ["batch", 512]}),
        "text_encoder": ({"input_ids": ["text_batch", 77]}, {"text_embedding": ["text_batch", 512]}),
        "class_bank": ({"class_embedding": ["num_classes", 512]},
                       {"text_emb": ["num_classes", 512], "keys": ["num_classes", 128],
                        "values": ["num_classes", 128]}),
        "adapter_head": ({"image_emb": ["batch", 512], "text_emb": ["num_classes", 512], "keys": ["num_classes", 128],
                          "values": ["num_classes", 128]},
                         {"logits": ["batch", "num_classes"], "image_embedding": ["batch", 512]}),
    }
    for g, (inputs, outputs) in expected.items():
        for suffix in SUFFIXES:
            io = describe_io(exported.out_dir / f"{g}{suffix}")
            assert {t["name"]: t["shape"] for t in io["inputs"]} == inputs, f"{g}{suffix}"
            assert {t["name"]: t["shape"] for t in io["outputs"]} == outputs, f"{g}{suffix}"
            assert {t["dtype"] for t in io["inputs"] + io["outputs"]} <= {"float32", "int64"}


# 6. Bad input: one line, an exit code, nothing left behind -----------------------------------------------

def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and "Traceback" not in err
    return lines[0]


def _no_leftovers(parent: Path) -> None:
    assert not [p.name for p in parent.iterdir() if ".partial" in p.name or ".old" in p.name or ".lock" in p.name]


def test_missing_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    assert cli.main(["--checkpoint", str(tmp_path / "nope.safetensors"), "--out", str(out), "--quiet"]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "nope.safetensors" in line and "not found" in line
    assert not out.exists()
    _no_leftovers(tmp_path)


def test_truncated_checkpoint(exported: ExportBundle, tmp_path: Path,
                              capsys: pytest.CaptureFixture[str]) -> None:
    data = exported.checkpoint.read_bytes()
    for cut in (5, len(data) // 2, len(data) - 1):
        bad = tmp_path / "truncated.safetensors"
        bad.write_bytes(data[:cut])
        out = tmp_path / "out"
        assert cli.main(["--checkpoint", str(bad), "--out", str(out), "--quiet"]) == 2
        line = _one_error_line(capsys.readouterr().err)
        assert "truncated.safetensors" in line
        assert not out.exists()
    _no_leftovers(tmp_path)


def test_non_empty_output_folder_needs_overwrite(exported: ExportBundle, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert cli.main(["--checkpoint", str(exported.checkpoint), "--out", str(out), "--quiet"]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "not empty" in line and "--overwrite" in line
    assert [p.name for p in out.iterdir()] == ["keep.txt"] and (out / "keep.txt").read_text() == "mine"
    _no_leftovers(tmp_path)
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    assert cli.main(["--checkpoint", str(exported.checkpoint), "--out", str(not_a_dir), "--quiet"]) == 2
    assert "not a folder" in _one_error_line(capsys.readouterr().err)


def test_validation_failure_leaves_old_export_untouched(exported: ExportBundle, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    export_graph, optimize = copying_exporter(exported)
    monkeypatch.setattr(onnx_io, "export_graph", export_graph)
    monkeypatch.setattr(onnx_io, "optimize_for_ort", optimize)
    impossible = dataclasses.replace(TOLERANCES["fp32"], cosine_min=1.5)  # every embedding check fails
    monkeypatch.setitem(TOLERANCES, "fp32", impossible)
    out, repo = tmp_path / "out", tmp_path / "repo"
    shutil.copytree(exported.out_dir, out)  # a previous export, which --overwrite may replace
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    argv = ["--checkpoint", str(exported.checkpoint), "--out", str(out), "--overwrite", "--quiet",
            "--serving-repo", str(repo)]
    assert cli.main(argv) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert line.startswith("error: validation failed: ") and "cosine" in line and "more)" in line
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert not repo.exists()
    _no_leftovers(tmp_path)


def test_tampered_graph_fails_validation(exported: ExportBundle, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A graph that computes something else (the adapter's weights perturbed) is caught by values."""
    export_graph, optimize = copying_exporter(exported)

    def wrong_graph(spec, path, opset=18):
        export_graph(spec, path, opset)
        if spec.name == "adapter_head":
            model = onnx.load(str(path))
            for init in model.graph.initializer:
                if init.data_type == onnx.TensorProto.FLOAT and len(init.dims) == 2:
                    arr = onnx.numpy_helper.to_array(init) * 1.5
                    init.CopyFrom(onnx.numpy_helper.from_array(arr.astype(np.float32), init.name))
            onnx.save(model, str(path))
        return path

    monkeypatch.setattr(onnx_io, "export_graph", wrong_graph)
    monkeypatch.setattr(onnx_io, "optimize_for_ort", optimize)
    from mmadapter.errors import ExportError
    from mmadapter.export.pipeline import export_checkpoint

    with pytest.raises(ExportError, match=r"validation failed: adapter_head\.onnx") as info:
        export_checkpoint(exported.checkpoint, tmp_path / "out", progress=False)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "out").exists()
    _no_leftovers(tmp_path)


def test_interrupt_half_way_leaves_nothing(exported: ExportBundle, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    export_graph, optimize = copying_exporter(exported)
    calls = []

    def interrupted(src, dst):
        calls.append(dst)
        if len(calls) == 2:  # the first graph is written, the second half-way
            assert any(Path(dst).parent.iterdir())
            raise KeyboardInterrupt
        return optimize(src, dst)

    monkeypatch.setattr(onnx_io, "export_graph", export_graph)
    monkeypatch.setattr(onnx_io, "optimize_for_ort", interrupted)
    out = tmp_path / "out"
    assert cli.main(["--checkpoint", str(exported.checkpoint), "--out", str(out), "--quiet",
                     "--serving-repo", str(tmp_path / "repo")]) == 130
    assert "interrupted" in _one_error_line(capsys.readouterr().err)
    assert len(calls) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no out, no repo, no temporary folders


def test_bad_opset_and_profile(exported: ExportBundle, tmp_path: Path,
                               capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    assert cli.main(["--checkpoint", str(exported.checkpoint), "--out", str(out), "--quiet", "--opset", "12"]) == 2
    assert "opset 12 is not supported" in _one_error_line(capsys.readouterr().err)
    assert cli.main(["--checkpoint", str(exported.checkpoint), "--out", str(out), "--quiet",
                     "--min-batch", "9", "--opt-batch", "8"]) == 2
    assert "min <= opt <= max" in _one_error_line(capsys.readouterr().err)
    assert not out.exists()
    _no_leftovers(tmp_path)


def test_root_export_script_bad_checkpoint(tmp_path: Path) -> None:
    """`python export.py` from the repository root: exit code 2, one stderr line, no traceback."""
    proc = subprocess.run([sys.executable, str(ROOT / "export.py"), "--checkpoint", str(tmp_path / "missing.st"),
                           "--out", str(tmp_path / "out")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "missing.st" in _one_error_line(proc.stderr)
    assert proc.stdout == ""
    assert sorted(tmp_path.iterdir()) == []
    assert mmadapter.__name__ == "mmadapter"
