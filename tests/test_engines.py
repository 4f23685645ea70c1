"""The engine contract (mmadapter.runtime.engines): every engine behind the same ``EngineSession`` Protocol,
opened only through ``open_session``, running the precision it was asked for and saying what it runs.
OpenVINO's inference precision is checked where it is decided (the configuration handed to its compiler),
so that the check fails on any CPU when the hint is gone, and read back where the CPU could run bf16."""

from __future__ import annotations

import ctypes
import json
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from mmadapter.errors import DataError, ExportError
from mmadapter.runtime.engines import ENGINES, EngineSession, open_session
from mmadapter.runtime.session import Session

WEIGHT = (np.arange(12, dtype=np.float32).reshape(4, 3) - 5.0) / 7.0


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """y = x @ W with a dynamic batch axis: the smallest graph every engine can open."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"])], "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
        [numpy_helper.from_array(WEIGHT, "W")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # readable by every onnxruntime the project supports
    path = tmp_path_factory.mktemp("tiny") / "tiny.onnx"
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def tiny_ir(tiny_onnx: Path) -> Path:
    pytest.importorskip("openvino")
    from mmadapter.export.openvino import convert_to_ir

    return convert_to_ir(tiny_onnx, tiny_onnx.with_name("tiny.openvino.xml"))


def _open(engine: str, tiny_onnx: Path, precision: str = "fp32", **kwargs) -> EngineSession:
    if engine == "openvino":
        pytest.importorskip("openvino")
        from mmadapter.export.openvino import convert_to_ir

        xml = tiny_onnx.with_name("tiny.openvino.xml")
        if not xml.is_file():
            convert_to_ir(tiny_onnx, xml)
        return open_session(xml, engine="openvino", precision=precision, **kwargs)
    return open_session(tiny_onnx, precision=precision, providers=["cpu"], **kwargs)


@pytest.mark.parametrize(("engine", "runs"), [("onnxruntime", "CPUExecutionProvider (graph precision fp32)"),
                                              ("openvino", "OpenVINO:CPU (inference precision f32)")])
def test_engines_implement_the_protocol(tiny_onnx: Path, engine: str, runs: str) -> None:
    session = _open(engine, tiny_onnx, threads=1)
    assert isinstance(session, EngineSession)
    assert session.describe() == runs
    (x_meta,), (y_meta,) = session.get_inputs(), session.get_outputs()
    assert (x_meta.name, x_meta.type, x_meta.shape[1]) == ("x", "tensor(float)", 4)
    assert (y_meta.name, y_meta.type, y_meta.shape[1]) == ("y", "tensor(float)", 3)
    assert isinstance(x_meta.shape[0], str)  # the batch axis is dynamic on every engine
    x = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    (y,) = session.run(None, {"x": x})
    np.testing.assert_allclose(y, x @ WEIGHT, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(session.run(["y"], {"x": x})[0], y)
    # The checked, batched session composes over any engine the same way.
    checked = Session(session)
    np.testing.assert_allclose(checked.run({"x": x}, batch_size=2)["y"], y, rtol=1e-6, atol=1e-6)
    assert checked.describe() == runs and checked.providers == session.providers
    with pytest.raises(DataError, match="must be a float32 array"):
        checked.run({"x": x.astype(np.float64)})
    with pytest.raises(DataError, match="empty"):
        checked.run({"x": x[:0]})


def _record_compile_configs(monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    """Every configuration handed to OpenVINO's compiler from now on (the compiler still runs)."""
    import openvino as ov

    seen: list[dict] = []
    original = ov.Core.compile_model

    def recording(self, model, device_name=None, config=None):
        seen.append(dict(config or {}))
        return original(self, model, device_name, config or {})

    monkeypatch.setattr(ov.Core, "compile_model", recording)
    return seen


@pytest.mark.parametrize(("precision", "hint"), [("fp32", "f32"), ("int8", "f32"), ("bf16", "bf16")])
def test_openvino_compiles_at_the_named_precision(tiny_ir: Path, monkeypatch: pytest.MonkeyPatch,
                                                  precision: str, hint: str) -> None:
    """Without the hint, OpenVINO's CPU plugin runs f32 IR in bf16 on AVX512_BF16/AMX CPUs: fp32 and int8
    must name f32 on every machine, and bf16 appears only when it is the precision asked for."""
    import openvino as ov

    seen = _record_compile_configs(monkeypatch)
    session = open_session(tiny_ir, engine="openvino", precision=precision)
    assert len(seen) == 1 and seen[0]["INFERENCE_PRECISION_HINT"] == hint
    assert seen[0]["PERFORMANCE_HINT"] == "LATENCY"
    if precision != "bf16":
        assert "bf16" not in json.dumps(seen[0]).lower()
        assert session.inference_precision() == "f32"  # read back from the compiled model
    if "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        # Only a CPU that can run bf16 tells the difference: there the default would have been bf16.
        assert session.inference_precision() == hint
        assert session.describe() == f"OpenVINO:CPU (inference precision {hint})"


def test_openvino_threads_reach_the_compiler(tiny_ir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = _record_compile_configs(monkeypatch)
    open_session(tiny_ir, engine="openvino", threads=1)
    assert seen[0]["INFERENCE_NUM_THREADS"] == 1


@pytest.mark.parametrize(("kwargs", "words"), [
    ({"engine": "tflite"}, ["unknown engine 'tflite'", "onnxruntime, openvino, tensorrt"]),
    ({"precision": "int4"}, ["onnxruntime runs precisions fp32, fp16, int8", "'int4'"]),
    ({"precision": "bf16"}, ["onnxruntime", "'bf16'"]),  # bf16 is OpenVINO's alone, and only by name
    ({"engine": "openvino", "precision": "fp16"}, ["openvino runs precisions fp32, int8, bf16"]),
    ({"engine": "openvino", "providers": ["cpu"]}, ["providers are ONNX Runtime's"]),
    ({"device": "GPU"}, ["device 'GPU'", "onnxruntime"]),
    ({"engine": "tensorrt", "device": "CPU"}, ["device 'CPU'", "tensorrt"]),
])
def test_open_session_refuses_what_it_does_not_know(tmp_path: Path, kwargs: dict, words: list[str]) -> None:
    with pytest.raises(ExportError) as info:
        open_session(tmp_path / "absent.onnx", **kwargs)  # refused before any file or library is touched
    message = str(info.value)
    assert "\n" not in message and all(w in message for w in words), message
    assert set(ENGINES) == {"onnxruntime", "openvino", "tensorrt", "executorch"}


def test_engine_modules_import_without_engine_libraries_or_torch() -> None:
    """Importing the contract (and the TensorRT engine's module) needs no engine library and no torch."""
    code = """
import sys
for name in ("torch", "onnxruntime", "openvino", "tensorrt", "onnx"):
    sys.modules[name] = None
import mmadapter.runtime.engines, mmadapter.runtime.engines.tensorrt, mmadapter.runtime.session
from mmadapter.runtime.engines import open_session
from mmadapter.errors import ExportError
try:
    open_session("g.onnx")
except ExportError as exc:
    print(exc)
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "onnxruntime is not installed" in proc.stdout


# TensorRT cannot run here: the engine's host/device plumbing is checked against a fake TensorRT whose
# "device" memory is host memory, so every copy and address the engine hands over is really followed.

class _FakeCudart:
    def __init__(self) -> None:
        self.live: dict[int, ctypes.Array] = {}

    def cudaStreamCreate(self, ref):  # noqa: N802 - the C names
        ref._obj.value = 1
        return 0

    def cudaMalloc(self, ref, size):  # noqa: N802
        buf = ctypes.create_string_buffer(size.value)
        self.live[ctypes.addressof(buf)] = buf
        ref._obj.value = ctypes.addressof(buf)
        return 0

    def cudaMemcpy(self, dst, src, size, kind):  # noqa: N802
        ctypes.memmove(dst.value, src.value, size.value)
        return 0

    def cudaFree(self, ptr):  # noqa: N802
        self.live.pop(ptr.value)
        return 0

    def cudaStreamSynchronize(self, stream):  # noqa: N802
        return 0


def _fake_tensorrt() -> types.ModuleType:
    trt = types.ModuleType("tensorrt")
    trt.__version__ = "10.7.0"
    trt.TensorIOMode = types.SimpleNamespace(INPUT="in", OUTPUT="out")
    trt.nptype = lambda dtype: np.float32
    trt.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda self, level: None})

    class Context:
        def __init__(self) -> None:
            self.shapes, self.addresses = {}, {}

        def set_input_shape(self, name, shape):
            self.shapes[name] = shape

        def set_tensor_address(self, name, address):
            self.addresses[name] = address

        def get_tensor_shape(self, name):
            return (self.shapes["x"][0], 3)

        def execute_async_v3(self, stream):
            n = self.shapes["x"][0]
            x = np.ctypeslib.as_array((ctypes.c_float * (n * 4)).from_address(self.addresses["x"])).reshape(n, 4)
            y = np.ctypeslib.as_array((ctypes.c_float * (n * 3)).from_address(self.addresses["y"])).reshape(n, 3)
            y[:] = x @ WEIGHT
            return True

    engine = types.SimpleNamespace(
        num_io_tensors=2, get_tensor_name=["x", "y"].__getitem__, create_execution_context=Context,
        get_tensor_mode=lambda n: "in" if n == "x" else "out", get_tensor_dtype=lambda n: "float",
        get_tensor_shape=lambda n: (-1, 4 if n == "x" else 3))
    trt.Runtime = lambda logger: types.SimpleNamespace(deserialize_cuda_engine=lambda data: engine)
    return trt


def test_tensorrt_engine_follows_the_contract(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mmadapter.runtime.engines import tensorrt as trt_engine

    gpu = trt_engine.GpuInfo("NVIDIA H100 80GB HBM3", "9.0")
    cudart = _FakeCudart()
    monkeypatch.setitem(sys.modules, "tensorrt", _fake_tensorrt())
    monkeypatch.setattr(trt_engine, "cuda_gpu", lambda: gpu)
    monkeypatch.setattr(trt_engine, "_load_cudart", lambda: cudart)
    plan = tmp_path / "tiny.plan"
    plan.write_bytes(b"engine")
    trt_engine.sidecar_path(plan).write_text(json.dumps(
        {"tensorrt_version": "10.7.0", "gpu_name": gpu.name, "compute_capability": "9.0", "precision": "fp16"}))
    with pytest.raises(ExportError, match="is a fp16 engine, not fp32"):
        open_session(plan, engine="tensorrt")
    session = open_session(plan, engine="tensorrt", precision="fp16")
    assert isinstance(session, EngineSession)
    assert session.describe() == "TensorRT:NVIDIA H100 80GB HBM3 (engine precision fp16)"
    assert [(p.name, p.type, p.shape) for p in session.get_inputs()] == [("x", "tensor(float)", ["?", 4])]
    x = np.random.default_rng(1).standard_normal((3, 4)).astype(np.float32)
    (y,) = session.run(None, {"x": x})
    np.testing.assert_allclose(y, x @ WEIGHT, rtol=1e-6)
    assert not cudart.live  # every device buffer freed
    np.testing.assert_allclose(Session(session).run({"x": x}, batch_size=2)["y"], y, rtol=1e-6)
