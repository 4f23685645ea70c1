"""The ONNX Runtime engine: ``OrtSession`` over an ``.onnx`` graph, with provider choice and reporting.

- Execution providers are tried in the order TensorRT, CUDA, CPU (or as asked); the providers a
  session really got are reported, with a warning when a GPU provider was asked for and dropped
  (onnxruntime-gpu silently falls back to CPU when CUDA fails to load).
- On CUDA, outputs are bound to device memory with IO binding and copied once per call.
- ONNX Runtime runs a graph in the precision it was exported in: the precision given is reported, not
  applied. Opened through :func:`mmadapter.runtime.engines.open_session` only.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mmadapter.errors import DataError, ExportError
from mmadapter.files import first_line

PROVIDER_ORDER = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
_SHORT = {"tensorrt": PROVIDER_ORDER[0], "trt": PROVIDER_ORDER[0], "cuda": PROVIDER_ORDER[1], "cpu": PROVIDER_ORDER[2]}
_GPU = set(PROVIDER_ORDER[:2])


def _ort() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise ExportError("onnxruntime is not installed: pip install 'mmadapter[runtime]'") from None
    return onnxruntime


def resolve_providers(requested: Sequence[str] | None = None) -> list[str]:
    """Full provider names, available ones only, in preference order. ``None``: all of
    TensorRT, CUDA, CPU that this onnxruntime build has. CPU is always appended as a last resort."""
    available = set(_ort().get_available_providers())
    if requested is None:
        wanted = list(PROVIDER_ORDER)
    else:
        wanted = []
        if isinstance(requested, str):
            requested = [requested]
        for name in requested:
            if not isinstance(name, str):
                raise ExportError(f"execution provider names are strings, got {name!r}")
            full = _SHORT.get(name.lower(), name)
            if full not in PROVIDER_ORDER and full not in available:
                raise ExportError(f"unknown execution provider {name!r}; choose from tensorrt, cuda, cpu")
            wanted.append(full)
    chosen = [p for p in wanted if p in available]
    missing = [p for p in wanted if p not in available and p in _GPU]
    if requested is not None and missing:
        warnings.warn(f"onnxruntime here has no {', '.join(missing)}; using {chosen or ['CPUExecutionProvider']}",
                      RuntimeWarning, stacklevel=2)
    if "CPUExecutionProvider" not in chosen:
        chosen.append("CPUExecutionProvider")
    return chosen


def session_options(intra_op_threads: int | None = None) -> Any:
    ort = _ort()
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # One request at a time per session: sequential execution, all threads on the operators.
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if intra_op_threads:
        opts.intra_op_num_threads = intra_op_threads
    opts.log_severity_level = 3  # warnings about unused initializers etc. are not the user's concern
    return opts


class OrtSession:
    """An ONNX Runtime ``InferenceSession`` over one graph file, as an :class:`EngineSession`."""

    def __init__(self, path: Path, precision: str = "fp32", providers: Sequence[str] | None = None,
                 threads: int | None = None):
        ort = _ort()
        self.path, self.precision = Path(path), precision
        self.requested = resolve_providers(providers)
        try:
            self.sess = ort.InferenceSession(str(self.path), session_options(threads), providers=self.requested)
        except Exception as exc:  # noqa: BLE001 - ORT raises its own exception types; all mean "cannot load"
            raise ExportError(f"ONNX Runtime cannot load {self.path.name}: {first_line(exc)}") from None
        self.providers: list[str] = list(self.sess.get_providers())
        dropped = [p for p in self.requested if p in _GPU and p not in self.providers]
        if dropped:
            warnings.warn(f"{self.path.name}: asked for {', '.join(dropped)} but ONNX Runtime fell back to "
                          f"{self.providers} (check the CUDA/cuDNN/TensorRT libraries)", RuntimeWarning, stacklevel=3)
        self.on_gpu = self.providers[0] in _GPU

    def get_inputs(self) -> list[Any]:
        return self.sess.get_inputs()

    def get_outputs(self) -> list[Any]:
        return self.sess.get_outputs()

    def describe(self) -> str:
        return f"{', '.join(self.providers)} (graph precision {self.precision})"

    def run(self, output_names: Sequence[str] | None, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        names = list(output_names) if output_names else [o.name for o in self.sess.get_outputs()]
        try:
            return self._run(names, feeds)
        except MemoryError:
            raise
        except Exception as exc:  # noqa: BLE001 - ORT raises its own types; InvalidArgument is about the inputs
            error = DataError if type(exc).__name__ == "InvalidArgument" else ExportError
            raise error(f"ONNX Runtime cannot run {self.path.name}: {first_line(exc)}") from None

    def _run(self, names: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        if not self.on_gpu:
            return self.sess.run(names, feeds)
        # IO binding: inputs copied to the device once, outputs left there until the final copy.
        binding = self.sess.io_binding()
        for name, value in feeds.items():
            binding.bind_cpu_input(name, np.ascontiguousarray(value))
        for name in names:
            binding.bind_output(name, "cuda")
        self.sess.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()
