"""TensorRT engines built from the validated (portable, standard-op) ONNX graphs.

Written for the TensorRT 10/11 Python API only (docs/design.md §6.6: the API changed across majors):
explicit batch is the only mode, memory pools instead of ``max_workspace_size``. Precision comes from the
graph: an fp16 engine is built from the fp16 ONNX (fp32 LayerNorm/softmax islands included) as a strongly
typed network, which TensorRT 10 and 11 both accept (11 has no FP16 builder flag).

Engines are tied to a TensorRT version and a GPU (docs/design.md §6.6: an engine runs only where it was
built): the file name carries the ONNX hash, TensorRT version and GPU, and a JSON sidecar records
them (:mod:`mmadapter.runtime.engines.tensorrt` checks it when loading).
Not exercised by the CPU test suite: its tests are marked ``trt`` and need TensorRT and a GPU.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmadapter.errors import ExportError
from mmadapter.export.defaults import DEFAULT_PROFILE
from mmadapter.files import atomic_write_bytes, atomic_write_text
from mmadapter.runtime.engines.tensorrt import GpuInfo, check_sidecar, cuda_gpu, sidecar_path
from mmadapter.runtime.graphs import NUM_CLASSES
from mmadapter.runtime.manifest import Engine, GraphEntry, TensorSpec


@dataclass(frozen=True)
class BatchProfile:
    min: int = DEFAULT_PROFILE[0]
    opt: int = DEFAULT_PROFILE[1]
    max: int = DEFAULT_PROFILE[2]

    def __post_init__(self) -> None:
        if not 1 <= self.min <= self.opt <= self.max:
            raise ExportError(
                f"TensorRT batch profile needs 1 <= min <= opt <= max, got {self.min}/{self.opt}/{self.max}"
            )


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()


def engine_filename(graph: str, onnx_sha256: str, trt_version: str, gpu_name: str, profile: BatchProfile) -> str:
    """Cache key as a file name: the same ONNX, TensorRT and GPU give the same name, any change a new one."""
    return (f"{graph}.{onnx_sha256[:16]}.trt{_slug(trt_version)}.{_slug(gpu_name)}"
            f".b{profile.min}-{profile.opt}-{profile.max}.plan")


def make_sidecar(
    onnx_sha256: str, trt_version: str, gpu: GpuInfo, profile: BatchProfile, precision: str
) -> dict[str, Any]:
    return {"tensorrt_version": trt_version, "gpu_name": gpu.name, "compute_capability": gpu.compute_capability,
            "onnx_sha256": onnx_sha256, "profile": vars(profile), "precision": precision}


def _profile_shapes(inputs: Sequence[TensorSpec], profile: BatchProfile, class_range: tuple[int, int, int]):
    """min/opt/max shape per input: batch axes from the profile, the class axis from class_range."""
    for spec in inputs:
        mins, opts, maxs = [], [], []
        for dim in spec.shape:
            if isinstance(dim, int):
                mins.append(dim), opts.append(dim), maxs.append(dim)
            elif dim == NUM_CLASSES:
                mins.append(class_range[0]), opts.append(class_range[1]), maxs.append(class_range[2])
            else:
                mins.append(profile.min), opts.append(profile.opt), maxs.append(profile.max)
        yield spec.name, tuple(mins), tuple(opts), tuple(maxs)


def build_engine(onnx_path: Path, plan_path: Path, inputs: Sequence[TensorSpec], profile: BatchProfile,
                 class_range: tuple[int, int, int], precision: str, timing_cache: Path,
                 workspace_bytes: int = 4 << 30) -> Path:
    """Build and serialise one engine (plus its sidecar); reuse it when the cached file exists."""
    import tensorrt as trt

    from mmadapter.runtime.manifest import sha256_file

    gpu = cuda_gpu()
    if gpu is None:
        raise ExportError("no CUDA GPU is visible: cannot build TensorRT engines")
    if plan_path.is_file() and sidecar_path(plan_path).is_file():
        check_sidecar(plan_path, trt.__version__, gpu)
        return plan_path  # cached: same ONNX hash, TensorRT version and GPU (all in the name)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    # Strongly typed: layer precisions follow the ONNX graph's types (TensorRT 11's only mode).
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    network = builder.create_network(0 if flag is None else 1 << int(flag))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ExportError(f"TensorRT cannot parse {onnx_path.name}: {errors or 'unknown parser error'}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    opt_profile = builder.create_optimization_profile()
    for name, lo, mid, hi in _profile_shapes(inputs, profile, class_range):
        opt_profile.set_shape(name, lo, mid, hi)
    config.add_optimization_profile(opt_profile)
    cache_bytes = timing_cache.read_bytes() if timing_cache.is_file() else b""
    cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(cache, ignore_mismatch=True)  # a stale cache only costs build time
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ExportError(f"TensorRT failed to build an engine from {onnx_path.name} (see the log above)")
    atomic_write_bytes(timing_cache, bytes(config.get_timing_cache().serialize()))
    atomic_write_bytes(plan_path, bytes(serialized))
    meta = make_sidecar(sha256_file(onnx_path), trt.__version__, gpu, profile, precision)
    atomic_write_text(sidecar_path(plan_path), json.dumps(meta, indent=2) + "\n")
    return plan_path


def build_int8_engines(folder: Path, graphs: Mapping[str, GraphEntry], profile: BatchProfile, gpu_name: str,
                       trt_version: str) -> dict[str, Engine]:
    """Explicit-quantization int8 engines from the calibrated Q/DQ graphs (``files.int8.portable``, written
    with calibration images). **Untested here** (no TensorRT or GPU on the project's machines).

    TensorRT 10/11 read the QuantizeLinear/DequantizeLinear pairs as the network's int8 precision: a
    strongly typed network (what :func:`build_engine` creates) takes its precisions from the graph, so no
    INT8 builder flag and no calibrator (TensorRT's implicit-quantization calibrators are deprecated since
    10.1). The Q/DQ graph is symmetric int8 with zero points 0, TensorRT's only mode; its weights are 7-bit
    (chosen for CPUs without VNNI), which costs TensorRT a little resolution and nothing else."""
    from mmadapter.runtime.manifest import sha256_file

    engines = {}
    for graph, entry in graphs.items():
        qdq = entry.files["int8"].portable if "int8" in entry.files else None
        if qdq is None:
            continue
        name = engine_filename(f"{graph}.int8", sha256_file(folder / qdq), trt_version, gpu_name, profile)
        n = entry.io.outputs[0].shape[-1]
        classes = (n, n, n) if isinstance(n, int) else (1, 1, 1)
        build_engine(folder / qdq, folder / name, entry.io.inputs, profile, classes, "int8",
                     folder / "timing.cache")
        engines[f"{graph}.int8"] = Engine(name, sidecar_path(Path(name)).name, "int8")
    return engines
