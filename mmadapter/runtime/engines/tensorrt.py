"""The TensorRT engine: loading a serialized engine (``.plan``) after checking its sidecar against this
TensorRT and GPU, and running it by tensor name.

Written for the TensorRT 10/11 Python API only (tensor names, ``set_input_shape``/``set_tensor_address``/
``execute_async_v3``). Engines are tied to a TensorRT version and a GPU: the JSON sidecar beside each
engine records them and loading checks it. Not exercised by the CPU test suite: its tests are marked
``trt`` and need TensorRT and a GPU.
"""

from __future__ import annotations

import ctypes
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmadapter.errors import ExportError


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


class TrtEngine:
    """Load a checked engine and run it by tensor name (torch CUDA tensors as device buffers)."""

    def __init__(self, plan: Path):
        import tensorrt as trt

        gpu = cuda_gpu()
        if gpu is None:
            raise ExportError("no CUDA GPU is visible: cannot load TensorRT engines")
        self.meta = check_sidecar(plan, trt.__version__, gpu)
        self._trt = trt
        self.engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(plan.read_bytes())
        if self.engine is None:
            raise ExportError(f"TensorRT could not deserialize {plan.name} (corrupt file?)")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if n not in self.inputs]

    def run(self, feeds: dict[str, Any]) -> dict[str, Any]:
        import torch

        trt = self._trt
        keep = []
        for name in self.inputs:
            t = torch.as_tensor(feeds[name]).cuda().contiguous()
            keep.append(t)
            self.context.set_input_shape(name, tuple(t.shape))
            self.context.set_tensor_address(name, t.data_ptr())
        outs = {}
        for name in self.outputs:
            dtypes = {trt.DataType.FLOAT: torch.float32, trt.DataType.HALF: torch.float16}
            dtype = dtypes[self.engine.get_tensor_dtype(name)]
            out = torch.empty(tuple(self.context.get_tensor_shape(name)), dtype=dtype, device="cuda")
            self.context.set_tensor_address(name, out.data_ptr())
            outs[name] = out
        stream = torch.cuda.current_stream()
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise ExportError("TensorRT execution failed")
        stream.synchronize()
        return {k: v.float().cpu().numpy() for k, v in outs.items()}


