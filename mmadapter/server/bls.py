"""The pipeline's graphs run by other models of the same Triton server (business-logic scripting): each
graph of the export is the repository's per-graph model (``export --serving-repo`` writes one
``onnxruntime_onnx`` model per graph, named after it, and a ``tensorrt_plan`` model ``<graph>_trt`` per
TensorRT engine), called with ``triton_python_backend_utils.InferenceRequest(...).exec()``.

:class:`TritonModelSession` is one more :class:`~mmadapter.runtime.engines.EngineSession`, handed to
:class:`~mmadapter.runtime.model.ExportedModel` through its ``opener``: preprocessing, tokenizer, class
bank cache and the open-vocabulary path stay the runtime's, and this process needs no ONNX Runtime.
The Triton utilities are passed in (``pb``), so that this module imports without a server.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mmadapter.errors import ExportError
from mmadapter.files import first_line
from mmadapter.runtime.engines import PORT_TYPES, Port
from mmadapter.runtime.manifest import GraphEntry, Manifest

# How the pipeline runs the export's graphs (its config's ``graphs`` parameter).
IN_PROCESS = "in-process"  # ONNX Runtime in the pipeline's own process (``mmadapter serve``)
ONNXRUNTIME = "onnxruntime"  # the repository's onnxruntime_onnx model of each graph
TENSORRT = "tensorrt"  # the repository's <graph>_trt model where the export built an engine, else ONNXRUNTIME's
GRAPH_MODES = (IN_PROCESS, ONNXRUNTIME, TENSORRT)
TRT_SUFFIX = "_trt"  # the name of a graph's tensorrt_plan model: <graph>_trt (export.inference_server)


def check_mode(mode: str) -> str:
    if mode not in GRAPH_MODES:
        raise ExportError(f"graphs must be one of {', '.join(GRAPH_MODES)}, not {mode!r}")
    return mode


def model_name(manifest: Manifest, graph: str, mode: str) -> str:
    """The repository's model that serves ``graph`` in ``mode`` (onnxruntime or tensorrt)."""
    engines = manifest.tensorrt.engines if manifest.tensorrt is not None else {}
    return graph + TRT_SUFFIX if mode == TENSORRT and graph in engines else graph


class TritonModelSession:
    """One graph served by another model of this server, as an ``EngineSession``: its ports are the
    manifest's (the per-graph models are configured from them), and ``run`` is one BLS request per
    ``max_batch_size`` rows (the called model refuses a larger batch). An error of the called model is
    an ExportError naming it, which the pipeline answers as the request's error."""

    def __init__(self, pb: Any, name: str, entry: GraphEntry, max_batch_size: int):
        self.pb, self.name = pb, name
        self.path = Path(name)  # what the runtime's messages and session_runs name the graph by
        self.providers = [f"Triton:{name}"]
        self.on_gpu = False  # where the called model runs is the server's business, not this process's
        self._inputs = [Port(t.name, PORT_TYPES[t.dtype], list(t.shape)) for t in entry.io.inputs]
        self._outputs = [Port(t.name, PORT_TYPES[t.dtype], list(t.shape)) for t in entry.io.outputs]
        # Models with a batch axis take at most max_batch_size rows; the adapter head (max_batch_size 0) takes all.
        self.chunk = max_batch_size if entry.batchable else 0

    def get_inputs(self) -> list[Port]:
        return self._inputs

    def get_outputs(self) -> list[Port]:
        return self._outputs

    def describe(self) -> str:
        return f"Triton model {self.name} (business-logic scripting)"

    def run(self, output_names: Sequence[str] | None, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        names = list(output_names) if output_names else [o.name for o in self._outputs]
        rows = len(next(iter(feeds.values()))) if feeds else 0
        if not self.chunk or rows <= self.chunk:
            return self._request(names, feeds)
        parts = [self._request(names, {n: v[start:start + self.chunk] for n, v in feeds.items()})
                 for start in range(0, rows, self.chunk)]
        return [np.concatenate([p[i] for p in parts]) for i in range(len(names))]

    def _request(self, names: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        inputs = [self.pb.Tensor(n, np.ascontiguousarray(v)) for n, v in feeds.items()]
        request = self.pb.InferenceRequest(model_name=self.name, requested_output_names=names, inputs=inputs)
        response = request.exec()
        if response.has_error():
            raise ExportError(f"Triton model {self.name} failed: {first_line(response.error().message())}")
        out = []
        for n in names:
            tensor = self.pb.get_output_tensor_by_name(response, n)
            if tensor is None:
                raise ExportError(f"Triton model {self.name} gave no output {n!r}")
            out.append(tensor.as_numpy())
        return out


class TritonModels:
    """The ``opener`` of :class:`~mmadapter.runtime.model.ExportedModel` for ``mode`` onnxruntime or
    tensorrt: each graph is its model of the repository. The precision is the repository's (it was
    written with one), so the one asked for is not applied here."""

    def __init__(self, pb: Any, mode: str, max_batch_size: int):
        if check_mode(mode) == IN_PROCESS:
            raise ExportError("in-process graphs need no Triton models")
        if max_batch_size < 1:
            raise ExportError(f"graph_max_batch_size must be >= 1, got {max_batch_size}")
        self.pb, self.mode, self.max_batch_size = pb, mode, max_batch_size

    def __call__(self, manifest: Manifest, graph: str, precision: str) -> TritonModelSession:
        return TritonModelSession(self.pb, model_name(manifest, graph, self.mode), manifest.graphs[graph],
                                  self.max_batch_size)
