"""The TensorRT engine: ``TrtEngine`` loads a serialized engine (``.plan``) after checking its sidecar
against this TensorRT and GPU, and runs it by tensor name as an ``EngineSession``. No torch: device memory
and the stream come from the CUDA runtime library through ctypes.

Written for the TensorRT 10/11 Python API only (tensor names, ``set_input_shape``/``set_tensor_address``/
``execute_async_v3``). Engines are tied to a TensorRT version and a GPU: the JSON sidecar beside each
engine records them and loading checks it. Not exercised by the CPU test suite: its tests are marked
``trt`` and need TensorRT and a GPU.
"""

from __future__ import annotations

import ctypes
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mmadapter.errors import ExportError
from mmadapter.runtime.engines import NUMPY_DTYPES, Port


@dataclass(frozen=True)
class GpuInfo:
    name: str
    compute_capability: str  # "9.0"


def cuda_gpu() -> GpuInfo | None:
    """The first CUDA GPU from the driver API (no torch or cuda-python needed); None without one."""
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return None
    count, dev = ctypes.c_int(0), ctypes.c_int(0)
    if cuda.cuInit(0) != 0 or cuda.cuDeviceGetCount(ctypes.byref(count)) != 0 or count.value < 1:
        return None
    cuda.cuDeviceGet(ctypes.byref(dev), 0)
    name = ctypes.create_string_buffer(256)
    cuda.cuDeviceGetName(name, 256, dev)
    major, minor = ctypes.c_int(0), ctypes.c_int(0)
    cuda.cuDeviceGetAttribute(ctypes.byref(major), 75, dev)  # CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR
    cuda.cuDeviceGetAttribute(ctypes.byref(minor), 76, dev)  # ..._MINOR
    return GpuInfo(name.value.decode(errors="replace"), f"{major.value}.{minor.value}")


def tensorrt_unavailable_reason() -> str | None:
    """None when engines can be built here, else one line saying why not."""
    try:
        import tensorrt as trt
    except ImportError:
        return "TensorRT is not installed (pip install tensorrt on a machine with an NVIDIA GPU)"
    if not hasattr(trt, "Builder"):
        return "the installed 'tensorrt' package is a stub without the TensorRT libraries"
    if cuda_gpu() is None:
        return "no CUDA GPU is visible, and TensorRT engines are built on the GPU they run on"
    return None


def sidecar_path(plan: Path) -> Path:
    return plan.with_suffix(".json")


def check_sidecar(plan: Path, trt_version: str, gpu: GpuInfo) -> dict[str, Any]:
    """The sidecar of an engine, after checking that this TensorRT and GPU can load the engine."""
    side = sidecar_path(plan)
    try:
        meta = json.loads(side.read_text())
    except FileNotFoundError:
        raise ExportError(
            f"{plan.name} has no sidecar {side.name}: cannot tell which TensorRT and GPU built it"
        ) from None
    except (OSError, json.JSONDecodeError) as exc:
        raise ExportError(f"{side} is unreadable: {exc}") from None
    problems = []
    if meta.get("tensorrt_version") != trt_version:
        problems.append(f"built with TensorRT {meta.get('tensorrt_version')}, this is TensorRT {trt_version}")
    if meta.get("gpu_name") != gpu.name or meta.get("compute_capability") != gpu.compute_capability:
        problems.append(f"built on {meta.get('gpu_name')} (sm {meta.get('compute_capability')}), this GPU is "
                        f"{gpu.name} (sm {gpu.compute_capability})")
    if problems:
        raise ExportError(f"engine {plan.name} cannot be used here: {'; '.join(problems)}; rebuild it with --tensorrt")
    return meta


class _CudaRuntime:
    """The five CUDA runtime calls an engine run needs, through ctypes on libcudart (no torch, no
    cuda-python). Every call is checked: a failed copy would otherwise hand back stale memory."""

    HOST_TO_DEVICE, DEVICE_TO_HOST = 1, 2  # cudaMemcpyKind

    def __init__(self) -> None:
        self.lib = _load_cudart()
        self.stream = ctypes.c_void_p()
        self._check(self.lib.cudaStreamCreate(ctypes.byref(self.stream)), "cudaStreamCreate")

    @staticmethod
    def _check(code: int, call: str) -> None:
        if code != 0:
            raise ExportError(f"CUDA {call} failed with error {code}")

    def malloc(self, nbytes: int) -> int:
        ptr = ctypes.c_void_p()
        self._check(self.lib.cudaMalloc(ctypes.byref(ptr), ctypes.c_size_t(max(nbytes, 1))), "cudaMalloc")
        return int(ptr.value)

    def free(self, ptr: int) -> None:
        self.lib.cudaFree(ctypes.c_void_p(ptr))

    def copy(self, dst: int, src: int, nbytes: int, kind: int) -> None:
        # Synchronous copies on the legacy default stream, which orders them with this blocking stream.
        self._check(self.lib.cudaMemcpy(ctypes.c_void_p(dst), ctypes.c_void_p(src), ctypes.c_size_t(nbytes), kind),
                    "cudaMemcpy")

    def synchronize(self) -> None:
        self._check(self.lib.cudaStreamSynchronize(self.stream), "cudaStreamSynchronize")


def _load_cudart() -> Any:
    """libcudart from the loader path, else from the nvidia-cuda-runtime wheel TensorRT's wheel installs."""
    names = ["libcudart.so", "libcudart.so.13", "libcudart.so.12"]
    try:
        import nvidia.cuda_runtime as wheel  # type: ignore[import-not-found]

        names += [str(p) for folder in wheel.__path__ for p in sorted(Path(folder, "lib").glob("libcudart.so*"))]
    except ImportError:
        pass
    for name in names:
        try:
            return ctypes.CDLL(name)
        except OSError:
            continue
    raise ExportError("the CUDA runtime library (libcudart) is not found: TensorRT engines cannot run")


class TrtEngine:
    """A checked TensorRT engine as an :class:`~mmadapter.runtime.engines.EngineSession`: host arrays in,
    host arrays out, device buffers allocated per call."""

    def __init__(self, plan: Path, precision: str = "fp32"):
        import tensorrt as trt

        gpu = cuda_gpu()
        if gpu is None:
            raise ExportError("no CUDA GPU is visible: cannot load TensorRT engines")
        self.path, self._trt, self.gpu = Path(plan), trt, gpu
        self.meta = check_sidecar(self.path, trt.__version__, gpu)
        if self.meta.get("precision", precision) != precision:
            raise ExportError(f"{self.path.name} is a {self.meta['precision']} engine, not {precision}")
        self.precision = self.meta.get("precision", precision)
        self.engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(self.path.read_bytes())
        if self.engine is None:
            raise ExportError(f"TensorRT could not deserialize {self.path.name} (corrupt file?)")
        self.context = self.engine.create_execution_context()
        self.cuda = _CudaRuntime()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if n not in self.inputs]
        self.providers = [f"TensorRT:{gpu.name}"]

    def _port(self, name: str) -> Port:
        dtype = np.dtype(self._trt.nptype(self.engine.get_tensor_dtype(name)))
        kind = next((k for k, v in NUMPY_DTYPES.items() if np.dtype(v) == dtype), str(dtype))
        return Port(name, kind, [d if d >= 0 else "?" for d in self.engine.get_tensor_shape(name)])

    def get_inputs(self) -> list[Port]:
        return [self._port(n) for n in self.inputs]

    def get_outputs(self) -> list[Port]:
        return [self._port(n) for n in self.outputs]

    def describe(self) -> str:
        return f"TensorRT:{self.gpu.name} (engine precision {self.precision})"

    def run(self, output_names: Sequence[str] | None, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        trt, cuda, buffers = self._trt, self.cuda, []
        try:
            for name in self.inputs:
                host = np.ascontiguousarray(feeds[name], dtype=trt.nptype(self.engine.get_tensor_dtype(name)))
                buffers.append(cuda.malloc(host.nbytes))
                cuda.copy(buffers[-1], host.ctypes.data, host.nbytes, cuda.HOST_TO_DEVICE)
                self.context.set_input_shape(name, tuple(host.shape))
                self.context.set_tensor_address(name, buffers[-1])
            outs = {}
            for name in self.outputs:
                shape = tuple(self.context.get_tensor_shape(name))  # known once every input shape is set
                outs[name] = np.empty(shape, dtype=trt.nptype(self.engine.get_tensor_dtype(name)))
                buffers.append(cuda.malloc(outs[name].nbytes))
                self.context.set_tensor_address(name, buffers[-1])
            if not self.context.execute_async_v3(cuda.stream.value or 0):
                raise ExportError(f"TensorRT could not run {self.path.name}")
            cuda.synchronize()
            for name, ptr in zip(self.outputs, buffers[len(self.inputs):]):
                cuda.copy(outs[name].ctypes.data, ptr, outs[name].nbytes, cuda.DEVICE_TO_HOST)
        finally:
            for ptr in buffers:
                cuda.free(ptr)
        return [outs[n] for n in (output_names or self.outputs)]
