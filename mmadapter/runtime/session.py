"""``Session``: feed checks, batching and one-line errors over any engine's session (ONNX Runtime,
OpenVINO, TensorRT), which is what the runtime and the accuracy report run graphs through.

Feeds are checked against the graph before the engine sees them, so that a wrong input is one DataError
naming it instead of an engine's multi-line message. Inputs with a batch axis are split into batches of
``batch_size``; inputs without one (the class bank of ``adapter_head``) go whole with every batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mmadapter.errors import DataError, ExportError
from mmadapter.runtime.engines import NUMPY_DTYPES, EngineSession, open_session


def check_batch_size(batch_size: object) -> int:
    """``batch_size`` as a whole number >= 1, else a DataError: a batch of 0 rows would run nothing and
    return empty results that look like an answer."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise DataError(f"batch size must be a whole number >= 1, got {batch_size!r}")
    return int(batch_size)


class Session:
    """Checked, batched runs of one graph on one engine session.

    ``graph`` is an open :class:`~mmadapter.runtime.engines.EngineSession`, or a path that is opened with
    :func:`~mmadapter.runtime.engines.open_session` (``providers``, ``intra_op_threads`` and ``open_args``,
    e.g. ``engine``, ``precision``, ``device``, passed on)."""

    def __init__(self, graph: EngineSession | str | Path, providers: Sequence[str] | None = None,
                 intra_op_threads: int | None = None, batch_axis_inputs: Sequence[str] | None = None,
                 **open_args: Any):
        if isinstance(graph, (str, Path)):
            graph = open_session(graph, providers=providers, threads=intra_op_threads, **open_args)
        self.graph = graph
        self.path = Path(graph.path)
        self.input_names = [i.name for i in graph.get_inputs()]
        self.output_names = [o.name for o in graph.get_outputs()]
        batch_inputs = list(batch_axis_inputs) if batch_axis_inputs is not None else self.input_names
        unknown = [n for n in batch_inputs if n not in self.input_names]
        if unknown:
            raise ExportError(f"{self.path.name} has no inputs {unknown} (it takes {self.input_names})")
        self.batch_inputs = batch_inputs

    @property
    def providers(self) -> list[str]:
        return list(self.graph.providers)

    @property
    def on_gpu(self) -> bool:
        return bool(getattr(self.graph, "on_gpu", False))

    def describe(self) -> str:
        return self.graph.describe()

    def check_feeds(self, feeds: dict[str, Any]) -> dict[str, np.ndarray]:
        """Feeds as arrays after checking names, dtypes, ranks and fixed dims against the graph."""
        name = self.path.name
        if not isinstance(feeds, dict):
            raise DataError(f"{name}: inputs must be a dict of arrays by name")
        missing = sorted(set(self.input_names) - set(feeds))
        if missing:
            raise ExportError(f"{name}: missing inputs {missing}")
        unknown = sorted(set(feeds) - set(self.input_names))
        if unknown:
            raise DataError(f"{name}: unknown inputs {unknown}; the graph takes {self.input_names}")
        out = {}
        for meta in self.graph.get_inputs():
            value = feeds[meta.name]
            want = NUMPY_DTYPES.get(meta.type)
            if not isinstance(value, np.ndarray) or (want is not None and value.dtype != want):
                got = value.dtype if isinstance(value, np.ndarray) else type(value).__name__
                want_name = np.dtype(want).name if want is not None else meta.type
                raise DataError(f"{name}: input {meta.name} must be a {want_name} array, got {got}")
            if value.ndim != len(meta.shape):
                raise DataError(f"{name}: input {meta.name} needs {len(meta.shape)} dims "
                                f"{list(meta.shape)}, got shape {list(value.shape)}")
            for axis, (dim, size) in enumerate(zip(meta.shape, value.shape)):
                if (isinstance(dim, int) and dim != size) or size == 0:
                    raise DataError(f"{name}: input {meta.name} has shape {list(value.shape)}, the graph "
                                    f"takes {list(meta.shape)} (axis {axis})")
            out[meta.name] = value
        return out

    def run(self, feeds: dict[str, np.ndarray], batch_size: int = 64) -> dict[str, np.ndarray]:
        """Outputs by name; inputs with a batch axis are processed ``batch_size`` rows at a time."""
        batch_size = check_batch_size(batch_size)
        if isinstance(feeds, dict) and any(getattr(feeds.get(n), "shape", (1,))[:1] == (0,)
                                           for n in self.batch_inputs):
            raise DataError("nothing to run: the batch is empty")
        feeds = self.check_feeds(feeds)
        sizes = {feeds[n].shape[0] for n in self.batch_inputs}
        if len(sizes) > 1:
            raise DataError(f"{self.path.name}: inputs {self.batch_inputs} have different batch sizes {sorted(sizes)}")
        total = sizes.pop() if sizes else 1
        chunks: list[list[np.ndarray]] = []
        for start in range(0, total, batch_size):
            part = {n: (v[start:start + batch_size] if n in self.batch_inputs else v) for n, v in feeds.items()}
            chunks.append(self.graph.run(self.output_names, part))  # engines raise one-line errors themselves
        return {name: np.concatenate([c[i] for c in chunks]) for i, name in enumerate(self.output_names)}
