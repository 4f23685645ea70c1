"""The engine contract: the ``EngineSession`` Protocol every engine implements, and ``open_session``, the one
place that turns a graph file, a precision and where to run it into a running session.

The Protocol is shaped like an ONNX Runtime ``InferenceSession`` (``get_inputs``/``get_outputs`` give objects
with ``name``, ``type`` and ``shape``; ``run(output_names, feeds)`` gives a list of arrays) so that validation,
calibration, accuracy, the benchmarks and the runtime's checked :class:`~mmadapter.runtime.session.Session` use
any engine unchanged. Each engine also says what it really executes (``describe()``): the providers or device,
and the precision it runs, read back from the engine where the engine reports it.

The engine modules are imported only by :func:`open_session`, so importing this package needs none of
onnxruntime, openvino, tensorrt or executorch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from mmadapter.errors import ExportError

ENGINES = ("onnxruntime", "openvino", "tensorrt", "executorch")
# The precisions each engine can be asked for. ONNX Runtime and TensorRT run the graph or engine as it was
# built; OpenVINO also takes bf16 by name (never by default): it computes an fp32 IR in bfloat16.
PRECISIONS = {"onnxruntime": ("fp32", "fp16", "int8"), "openvino": ("fp32", "int8", "bf16"),
              "tensorrt": ("fp32", "fp16", "int8"), "executorch": ("fp32", "int8")}
# Tensor element types as ONNX Runtime names them, the vocabulary of ``Port.type``.
NUMPY_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int64)": np.int64,
                "tensor(int32)": np.int32, "tensor(double)": np.float64}
# The same types by the names the manifest and the graph specs give them ("float32", ...).
PORT_TYPES = {np.dtype(numpy_type).name: port_type for port_type, numpy_type in NUMPY_DTYPES.items()}


@dataclass(frozen=True)
class Port:
    """An input or output as ONNX Runtime's ``NodeArg`` describes it; dynamic dims are strings."""

    name: str
    type: str  # "tensor(float)", ...
    shape: list[int | str]


@runtime_checkable
class EngineSession(Protocol):
    """A graph open on one engine, run by tensor name."""

    path: Path
    providers: list[str]  # ONNX Runtime's providers really in use, or ["OpenVINO:CPU"], ["TensorRT:<gpu>"]

    def get_inputs(self) -> Sequence[Any]: ...

    def get_outputs(self) -> Sequence[Any]: ...

    def run(self, output_names: Sequence[str] | None, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """The outputs named (all of them for None), in that order; failures are one-line
        DataError (the inputs) or ExportError (the engine)."""
        ...

    def describe(self) -> str:
        """What really runs, e.g. ``OpenVINO:CPU (inference precision f32)``."""
        ...


def check_choice(engine: str, precision: str) -> None:
    """One ExportError line for an engine or a precision that :func:`open_session` does not know."""
    if engine not in ENGINES:
        raise ExportError(f"unknown engine {engine!r}; choose from {', '.join(ENGINES)}")
    if precision not in PRECISIONS[engine]:
        raise ExportError(f"{engine} runs precisions {', '.join(PRECISIONS[engine])}, not {precision!r}")


def open_session(path: str | Path, *, engine: str = "onnxruntime", precision: str = "fp32",
                 providers: Sequence[str] | None = None, device: str | None = None,
                 threads: int | None = None) -> EngineSession:
    """A running session over ``path`` on ``engine`` at ``precision``: the graph's own precision for ONNX
    Runtime (``providers`` as :func:`~mmadapter.runtime.engines.onnxruntime.resolve_providers` takes them) and
    TensorRT (checked against the engine's sidecar); for OpenVINO (``device``: CPU, GPU, ...) the inference
    precision it compiles for. ``threads``: CPU threads per inference (None: the engine's default)."""
    check_choice(engine, precision)
    path = Path(path)
    # Where a graph runs is said one way per engine: a second way would be silently ignored.
    if providers is not None and engine != "onnxruntime":
        raise ExportError(f"execution providers are ONNX Runtime's, not {engine}'s")
    if device is not None and engine != "openvino":
        where = "execution providers" if engine == "onnxruntime" else "the GPU its engine was built on"
        raise ExportError(f"device {device!r} is an OpenVINO choice; {engine} runs on {where}")
    if engine == "openvino":
        from mmadapter.runtime.engines.openvino import CompiledGraph

        return CompiledGraph(path, precision, device, threads)
    if engine == "executorch":  # the one engine that brings torch: executorch.runtime imports it
        from mmadapter.runtime.engines.executorch import PteProgram

        return PteProgram(path, precision, threads)
    if engine == "tensorrt":
        from mmadapter.runtime.engines.tensorrt import TrtEngine

        return TrtEngine(path, precision)
    from mmadapter.runtime.engines.onnxruntime import OrtSession

    return OrtSession(path, precision, providers, threads)
