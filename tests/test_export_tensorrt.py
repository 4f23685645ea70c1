"""The code around TensorRT (which cannot be installed here): engine cache names, sidecar checks,
batch profiles, ``--tensorrt`` without TensorRT; the engine build itself is marked ``trt``."""

from __future__ import annotations

import ast
import json
import re
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from mmadapter.errors import ExportError
from mmadapter.export import cli, onnx_io
from mmadapter.export import tensorrt as trt_mod
from mmadapter.export.tensorrt import BatchProfile, engine_filename, make_sidecar
from mmadapter.runtime.engines import open_session
from mmadapter.runtime.engines import tensorrt as trt_engine
from mmadapter.runtime.engines.tensorrt import GpuInfo, check_sidecar, sidecar_path, tensorrt_unavailable_reason
from mmadapter.runtime.manifest import TensorSpec, read_manifest, sha256_file

from export_fixtures import ExportBundle, copying_exporter
from tolerances import EXPORT_COSINE_MIN

H100 = GpuInfo("NVIDIA H100 80GB HBM3", "9.0")
L4 = GpuInfo("NVIDIA L4", "8.9")
SHA = "ab" * 32


def test_engine_filename_is_a_cache_key() -> None:
    p = BatchProfile(1, 8, 64)
    name = engine_filename("image_classifier", SHA, "10.7.0.post1", H100.name, p)
    assert name == engine_filename("image_classifier", SHA, "10.7.0.post1", H100.name, p)  # stable
    assert name.startswith("image_classifier.") and name.endswith(".plan")
    assert SHA[:16] in name and "10-7-0-post1" in name and "nvidia-h100-80gb-hbm3" in name
    assert re.fullmatch(r"[A-Za-z0-9._-]+", name), name  # safe as a file name (no spaces, no slashes)
    others = {
        engine_filename("image_classifier", "cd" * 32, "10.7.0.post1", H100.name, p),  # other ONNX
        engine_filename("image_classifier", SHA, "11.0.0", H100.name, p),  # other TensorRT
        engine_filename("image_classifier", SHA, "10.7.0.post1", L4.name, p),  # other GPU
        engine_filename("image_classifier", SHA, "10.7.0.post1", H100.name, BatchProfile(1, 4, 32)),  # profile
        engine_filename("text_encoder", SHA, "10.7.0.post1", H100.name, p),  # other graph
    }
    assert name not in others and len(others) == 5


def _plan(tmp_path: Path, trt_version: str = "10.7.0", gpu: GpuInfo = H100) -> Path:
    plan = tmp_path / engine_filename("adapter_head", SHA, trt_version, gpu.name, BatchProfile())
    plan.write_bytes(b"engine")
    sidecar_path(plan).write_text(json.dumps(make_sidecar(SHA, trt_version, gpu, BatchProfile(), "fp16")))
    return plan


def test_sidecar_accepts_the_same_tensorrt_and_gpu(tmp_path: Path) -> None:
    plan = _plan(tmp_path)
    assert sidecar_path(plan) == plan.with_suffix(".json")
    meta = check_sidecar(plan, "10.7.0", H100)
    assert meta["onnx_sha256"] == SHA and meta["precision"] == "fp16"
    assert meta["profile"] == {"min": 1, "opt": 8, "max": 64}


@pytest.mark.parametrize(("version", "gpu", "words"), [
    ("11.0.0", H100, ["TensorRT 10.7.0", "TensorRT 11.0.0"]),
    ("10.7.0", L4, ["NVIDIA H100 80GB HBM3", "NVIDIA L4", "sm 8.9"]),
    ("11.0.0", L4, ["TensorRT 11.0.0", "NVIDIA L4"]),
    ("10.7.0", GpuInfo("NVIDIA H100 80GB HBM3", "9.1"), ["sm 9.0", "sm 9.1"]),
])
def test_sidecar_mismatch_is_one_line(tmp_path: Path, version: str, gpu: GpuInfo, words: list[str]) -> None:
    plan = _plan(tmp_path)
    with pytest.raises(ExportError) as info:
        check_sidecar(plan, version, gpu)
    msg = str(info.value)
    assert "\n" not in msg and plan.name in msg and "rebuild" in msg
    for word in words:
        assert word in msg, msg


def test_missing_or_corrupt_sidecar(tmp_path: Path) -> None:
    plan = _plan(tmp_path)
    sidecar_path(plan).write_text("{broken")
    with pytest.raises(ExportError, match="unreadable") as info:
        check_sidecar(plan, "10.7.0", H100)
    assert "\n" not in str(info.value)
    sidecar_path(plan).unlink()
    with pytest.raises(ExportError, match="no sidecar") as info:
        check_sidecar(plan, "10.7.0", H100)
    assert "\n" not in str(info.value)


def test_batch_profile_and_profile_shapes() -> None:
    for bad in ((0, 1, 1), (2, 1, 4), (1, 8, 4)):
        with pytest.raises(ExportError, match="min <= opt <= max"):
            BatchProfile(*bad)
    inputs = [TensorSpec("image_emb", "float32", ("batch", 512)), TensorSpec("keys", "float32", ("num_classes", 128)),
              TensorSpec("pixels", "float32", ("batch", 3, 224, 224))]
    shapes = list(trt_mod._profile_shapes(inputs, BatchProfile(2, 8, 32), (1, 100, 4096)))
    assert shapes == [("image_emb", (2, 512), (8, 512), (32, 512)),
                      ("keys", (1, 128), (100, 128), (4096, 128)),
                      ("pixels", (2, 3, 224, 224), (8, 3, 224, 224), (32, 3, 224, 224))]


def test_unavailable_reasons(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import raises ImportError
    assert "TensorRT is not installed" in tensorrt_unavailable_reason()
    monkeypatch.setitem(sys.modules, "tensorrt", types.ModuleType("tensorrt"))  # the index's stub package
    assert "stub" in tensorrt_unavailable_reason()
    fake = types.ModuleType("tensorrt")
    fake.Builder = object
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    monkeypatch.setattr(trt_engine, "cuda_gpu", lambda: None)
    assert "no CUDA GPU" in tensorrt_unavailable_reason()
    monkeypatch.setattr(trt_engine, "cuda_gpu", lambda: H100)
    assert tensorrt_unavailable_reason() is None


def test_module_uses_only_current_tensorrt_api() -> None:
    """TensorRT 10 removed these; the module must not call them (it cannot be run here)."""
    used = set()
    for module in (trt_mod, trt_engine):  # the builder and the loader; code only: docstrings name them on purpose
        tree = ast.parse(Path(module.__file__).read_text())
        used |= {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    removed = {"max_workspace_size", "set_binding_shape", "execute_async_v2", "execute_v2", "get_binding_index",
               "get_binding_shape", "num_bindings", "build_engine", "build_cuda_engine", "EXPLICIT_BATCH",
               "binding_is_input", "set_flag"}  # set_flag: FP16 builder flags are gone in TensorRT 11
    assert not used & removed, used & removed
    current = {"set_memory_pool_limit", "set_input_shape", "set_tensor_address", "execute_async_v3",
               "build_serialized_network", "num_io_tensors", "get_tensor_name", "create_timing_cache"}
    assert current <= used, current - used


@pytest.mark.skipif(trt_mod.cuda_gpu() is not None and tensorrt_unavailable_reason() is None,
                    reason="TensorRT and a GPU are present: --tensorrt builds engines here")
def test_tensorrt_flag_without_tensorrt_writes_onnx_and_fails(exported: ExportBundle, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    export_graph, optimize = copying_exporter(exported)
    monkeypatch.setattr(onnx_io, "export_graph", export_graph)
    monkeypatch.setattr(onnx_io, "optimize_for_ort", optimize)
    out = tmp_path / "out"
    rc = cli.main(["--checkpoint", str(exported.checkpoint), "--out", str(out), "--tensorrt", "--quiet"])
    captured = capsys.readouterr()
    assert rc == 2
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in captured.err, captured.err
    assert lines[0].startswith("error: --tensorrt: ") and ("TensorRT" in lines[0] or "GPU" in lines[0])
    assert str(out) in lines[0]
    manifest = read_manifest(out)  # the ONNX files were written, validated
    assert manifest.validation.passed and manifest.tensorrt is None
    assert {f"{g}.onnx" for g in manifest.graphs} <= set(manifest.files)
    assert not list(out.glob("*.plan"))


@pytest.mark.trt
@pytest.mark.gpu
def test_engines_match_onnx_runtime(exported: ExportBundle, tmp_path: Path) -> None:
    """Build fp32 engines from the portable graphs, load them through the sidecar check and compare
    with ONNX Runtime at batch 3 (the fp32 cosine rule on the embeddings, identical top-1); a second
    build with the same inputs is a cache hit."""
    import tensorrt as trt

    reason = tensorrt_unavailable_reason()
    if reason:
        pytest.skip(reason)
    gpu = trt_mod.cuda_gpu()
    profile = BatchProfile(1, 4, 8)
    manifest = exported.manifest()
    rng = np.random.default_rng(0)
    for graph in ("image_classifier", "adapter_head"):
        onnx_path = exported.out_dir / f"{graph}.onnx"
        inputs = manifest.graphs[graph].io.inputs
        plan = tmp_path / engine_filename(graph, sha256_file(onnx_path), trt.__version__, gpu.name, profile)
        trt_mod.build_engine(onnx_path, plan, inputs, profile, (1, 7, 64), "fp32", tmp_path / "timing.cache")
        assert plan.is_file() and sidecar_path(plan).is_file() and (tmp_path / "timing.cache").is_file()
        mtime = plan.stat().st_mtime_ns
        trt_mod.build_engine(onnx_path, plan, inputs, profile, (1, 7, 64), "fp32", tmp_path / "timing.cache")
        assert plan.stat().st_mtime_ns == mtime  # cached
        feeds = {}
        for t in inputs:
            shape = [3 if d == "batch" else 5 if d == "num_classes" else d for d in t.shape]
            feeds[t.name] = rng.standard_normal(shape).astype(np.float32)
        ref = dict(zip([o.name for o in manifest.graphs[graph].io.outputs],
                       open_session(onnx_path, providers=["cpu"]).run(None, feeds)))
        engine = open_session(plan, engine="tensorrt")  # the contract's TensorRT side, as served
        assert "engine precision fp32" in engine.describe()
        got = dict(zip([o.name for o in engine.get_outputs()], engine.run(None, feeds)))
        a, b = got["image_embedding"].astype(np.float64), ref["image_embedding"].astype(np.float64)
        cos = (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))
        assert cos.min() >= EXPORT_COSINE_MIN["fp32"], graph
        np.testing.assert_array_equal(got["logits"].argmax(-1), ref["logits"].argmax(-1))
