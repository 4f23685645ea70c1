"""The ONNX Runtime engine: sessions over ``.onnx`` graphs, with provider choice and reporting.

- Execution providers are tried in the order TensorRT, CUDA, CPU (or as asked); the providers a
  session really got are reported, with a warning when a GPU provider was asked for and dropped
  (onnxruntime-gpu silently falls back to CPU when CUDA fails to load).
- On CUDA, outputs are bound to device memory with IO binding and copied once per batch.
- Inputs with a batch axis are split into batches of ``batch_size``.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mmadapter.errors import DataError, ExportError
from mmadapter.files import first_line

_NUMPY_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int64)": np.int64,
                 "tensor(int32)": np.int32, "tensor(double)": np.float64}

ENGINES = ("onnxruntime", "openvino")
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


class Session:
    """An ONNX Runtime session over one graph file, with batching and provider reporting."""

    def __init__(self, path: Path, providers: Sequence[str] | None = None, intra_op_threads: int | None = None,
                 batch_axis_inputs: Sequence[str] | None = None):
        ort = _ort()
        self.path = Path(path)
        self.requested = resolve_providers(providers)
        try:
            self.sess = ort.InferenceSession(str(self.path), session_options(intra_op_threads),
                                             providers=self.requested)
        except Exception as exc:  # noqa: BLE001 - ORT raises its own exception types; all mean "cannot load"
            raise ExportError(f"ONNX Runtime cannot load {self.path.name}: {first_line(exc)}") from None
        self.providers: list[str] = list(self.sess.get_providers())
        dropped = [p for p in self.requested if p in _GPU and p not in self.providers]
        if dropped:
            warnings.warn(f"{self.path.name}: asked for {', '.join(dropped)} but ONNX Runtime fell back to "
                          f"{self.providers} (check the CUDA/cuDNN/TensorRT libraries)", RuntimeWarning, stacklevel=2)
        self._bind_io(batch_axis_inputs)
        self.on_gpu = self.providers[0] in _GPU

    def _bind_io(self, batch_axis_inputs: Sequence[str] | None) -> None:
        """Input/output names from the open graph, and the inputs whose first axis is the request batch
        (the class bank of adapter_head is not); shared with the OpenVINO session."""
        self.input_names = [i.name for i in self.sess.get_inputs()]
        self.output_names = [o.name for o in self.sess.get_outputs()]
        batch_inputs = list(batch_axis_inputs) if batch_axis_inputs is not None else self.input_names
        unknown = [n for n in batch_inputs if n not in self.input_names]
        if unknown:
            raise ExportError(f"{self.path.name} has no inputs {unknown} (it takes {self.input_names})")
        self.batch_inputs = batch_inputs

    def check_feeds(self, feeds: dict[str, Any]) -> dict[str, np.ndarray]:
        """Feeds as arrays after checking names, dtypes, ranks and fixed dims against the graph, so
        that a wrong input is one DataError naming it rather than ONNX Runtime's multi-line message."""
        if not isinstance(feeds, dict):
            raise DataError(f"{self.path.name}: inputs must be a dict of arrays by name")
        missing = sorted(set(self.input_names) - set(feeds))
        if missing:
            raise ExportError(f"{self.path.name}: missing inputs {missing}")
        unknown = sorted(set(feeds) - set(self.input_names))
        if unknown:
            raise DataError(f"{self.path.name}: unknown inputs {unknown}; the graph takes {self.input_names}")
        out = {}
        for meta in self.sess.get_inputs():
            value = feeds[meta.name]
            want = _NUMPY_DTYPES.get(meta.type)
            if not isinstance(value, np.ndarray) or (want is not None and value.dtype != want):
                got = value.dtype if isinstance(value, np.ndarray) else type(value).__name__
                want_name = np.dtype(want).name if want is not None else meta.type
                raise DataError(f"{self.path.name}: input {meta.name} must be a {want_name} array, got {got}")
            if value.ndim != len(meta.shape):
                raise DataError(f"{self.path.name}: input {meta.name} needs {len(meta.shape)} dims "
                                f"{list(meta.shape)}, got shape {list(value.shape)}")
            for axis, (dim, size) in enumerate(zip(meta.shape, value.shape)):
                if (isinstance(dim, int) and dim != size) or size == 0:
                    raise DataError(f"{self.path.name}: input {meta.name} has shape {list(value.shape)}, the graph "
                                    f"takes {list(meta.shape)} (axis {axis})")
            out[meta.name] = value
        return out

    def _run_once(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        try:
            return self._run_unchecked(feeds)
        except MemoryError:
            raise
        except Exception as exc:  # noqa: BLE001 - ORT raises its own types; feeds were checked already
            error = DataError if type(exc).__name__ == "InvalidArgument" else ExportError
            raise error(f"ONNX Runtime cannot run {self.path.name}: {first_line(exc)}") from None

    def _run_unchecked(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        if not self.on_gpu:
            return self.sess.run(self.output_names, feeds)
        # IO binding: inputs copied to the device once, outputs left there until the final copy.
        binding = self.sess.io_binding()
        for name, value in feeds.items():
            binding.bind_cpu_input(name, np.ascontiguousarray(value))
        for name in self.output_names:
            binding.bind_output(name, "cuda")
        self.sess.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()

    def run(self, feeds: dict[str, np.ndarray], batch_size: int = 64) -> dict[str, np.ndarray]:
        """Outputs by name; inputs with a batch axis are processed ``batch_size`` rows at a time."""
        if isinstance(feeds, dict) and any(getattr(feeds.get(n), "shape", (1,))[:1] == (0,)
                                           for n in self.batch_inputs):
            raise DataError("nothing to run: the batch is empty")
        feeds = self.check_feeds(feeds)
        sizes = {feeds[n].shape[0] for n in self.batch_inputs}
        if len(sizes) > 1:
            raise DataError(f"{self.path.name}: inputs {self.batch_inputs} have different batch sizes {sorted(sizes)}")
        total = sizes.pop() if sizes else 1
        chunks: list[list[np.ndarray]] = []
        for start in range(0, total, max(1, batch_size)):
            part = {n: (v[start:start + batch_size] if n in self.batch_inputs else v) for n, v in feeds.items()}
            chunks.append(self._run_once(part))
        return {name: np.concatenate([c[i] for c in chunks]) for i, name in enumerate(self.output_names)}
