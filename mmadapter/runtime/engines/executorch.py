"""The ExecuTorch engine: a ``.pte`` program (XNNPACK delegate) run by ExecuTorch's Python runtime, as an
:class:`~mmadapter.runtime.engines.EngineSession`, so that the programs a phone app ships can be checked on a
desktop with the same preprocessing, tokenizer and open vocabulary as every other engine.

Unlike the other engines this one is not torch-free: ``executorch.runtime``'s bindings are built against
libtorch and import torch themselves (measured with executorch 1.5.1: ~8 s, all of torch), and its methods
take and return torch tensors. It is imported only when asked for (``--engine executorch``), never by the rest
of the runtime; on a phone the same program runs in ExecuTorch's C++ runtime, which has no torch.

A ``.pte`` knows its inputs by position only; the sidecar ``<program>.pte.json`` written beside it by the
export names them, and gives the bound of each dynamic axis. Batches larger than the program's bound are
run in pieces and joined here.

Threads: XNNPACK runs on ExecuTorch's one thread pool, which is process-wide (every program open in the
process shares it). ``threads`` resets that pool when a program is opened (``_unsafe_reset_threadpool``:
"unsafe" because it must not happen while another program is running, which a session opening never
overlaps here); None leaves it at ExecuTorch's default (the CPU's performance cores). ``describe()`` reads
the pool's size back, so it says what runs now, whoever set it last.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mmadapter.errors import DataError, ExportError
from mmadapter.files import first_line
from mmadapter.runtime.engines import NUMPY_DTYPES, PORT_TYPES, Port
from mmadapter.runtime.graphs import BATCH_AXES

MISSING = "--engine executorch needs ExecuTorch: pip install 'mmadapter[mobile]'"


def executorch_unavailable_reason() -> str | None:
    import importlib.util

    return None if importlib.util.find_spec("executorch") is not None else MISSING


def thread_pool_size() -> int:
    """The threads of ExecuTorch's process-wide thread pool, which XNNPACK's kernels run on."""
    from executorch.extension.pybindings.portable_lib import _threadpool_get_thread_count

    return int(_threadpool_get_thread_count())


def set_thread_pool_size(threads: int) -> None:
    """Resize ExecuTorch's process-wide thread pool (every open program uses the new size); one ExportError
    line for a count that is not a positive integer."""
    from executorch.extension.pybindings.portable_lib import _unsafe_reset_threadpool

    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ExportError(f"threads must be a positive integer, got {threads!r}")
    _unsafe_reset_threadpool(threads)


class PteProgram:
    """One ``.pte`` program's ``forward`` method, run by tensor name."""

    def __init__(self, path: Path, precision: str = "fp32", threads: int | None = None):
        self.path, self.precision = Path(path), precision
        reason = executorch_unavailable_reason()
        if reason is not None:
            raise ExportError(reason)
        try:
            io = json.loads(self.path.with_name(self.path.name + ".json").read_text())
            self.inputs = [Port(t["name"], PORT_TYPES[t["dtype"]], list(t["shape"])) for t in io["inputs"]]
            self.outputs = [Port(t["name"], PORT_TYPES[t["dtype"]], list(t["shape"])) for t in io["outputs"]]
            self.bounds: dict[str, int] = {str(k): int(v) for k, v in io["max"].items()}
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ExportError(f"{self.path.name}: its sidecar {self.path.name}.json is missing or unreadable "
                              f"({first_line(exc)})") from None
        try:
            from executorch.runtime import Runtime

            if threads is not None:
                set_thread_pool_size(threads)
            self.method = Runtime.get().load_program(self.path).load_method("forward")
        except ExportError:
            raise
        except Exception as exc:  # noqa: BLE001 - ExecuTorch raises RuntimeError and others: all "cannot load"
            raise ExportError(f"ExecuTorch cannot load {self.path.name}: {first_line(exc)}") from None
        self.providers = ["ExecuTorch:XNNPACK"]

    def get_inputs(self) -> list[Port]:
        return self.inputs

    def get_outputs(self) -> list[Port]:
        return self.outputs

    def describe(self) -> str:
        threads = thread_pool_size()
        return f"ExecuTorch:XNNPACK (program precision {self.precision}, {threads} thread{'s' * (threads != 1)})"

    def _batched(self) -> tuple[list[str], int]:
        """The inputs led by a request batch axis (not the class axis: a class bank goes whole to every
        call), and how many rows of it one call takes (the axis's bound)."""
        names = [p.name for p in self.inputs if p.shape and p.shape[0] in BATCH_AXES and p.shape[0] in self.bounds]
        piece = min((self.bounds[p.shape[0]] for p in self.inputs if p.name in names), default=0)
        return names, piece

    def run(self, output_names: Sequence[str] | None, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        names = list(output_names) if output_names else [o.name for o in self.outputs]
        missing = [p.name for p in self.inputs if p.name not in feeds]
        if missing:
            raise DataError(f"{self.path.name}: missing inputs {missing}")
        for p in self.inputs:  # axes that are not split (class counts) must fit the planned memory
            for dim, size in zip(p.shape, np.shape(feeds[p.name])):
                if isinstance(dim, str) and dim in self.bounds and size > self.bounds[dim] and dim not in BATCH_AXES:
                    raise DataError(f"{self.path.name}: {p.name} has {size} along {dim}; the program was exported "
                                    f"for at most {self.bounds[dim]} (export --max-classes)")
        batched, piece = self._batched()
        total = np.shape(feeds[batched[0]])[0] if batched else 0
        if not batched or total <= piece:
            return self._select(self._execute(feeds), names)
        parts = [self._execute({k: v[s:s + piece] if k in batched else v for k, v in feeds.items()})
                 for s in range(0, total, piece)]
        joined = [np.concatenate([p[i] for p in parts]) for i in range(len(self.outputs))]
        return self._select(joined, names)

    def _select(self, outputs: list[np.ndarray], names: list[str]) -> list[np.ndarray]:
        by_name = {o.name: out for o, out in zip(self.outputs, outputs)}
        unknown = [n for n in names if n not in by_name]
        if unknown:
            raise DataError(f"{self.path.name}: no outputs {unknown}")
        return [by_name[n] for n in names]

    def _execute(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        # torch was loaded by executorch.runtime already (see the module docstring): its tensors are what
        # ExecuTorch's Python methods take. from_numpy shares the memory: no copy. tests/test_layout.py
        # allows torch here, and only here.
        from torch import from_numpy

        args = [from_numpy(np.ascontiguousarray(feeds[p.name], dtype=NUMPY_DTYPES[p.type])) for p in self.inputs]
        try:
            outs = self.method.execute(args)
        except Exception as exc:  # noqa: BLE001 - a shape beyond the plan or a kernel failure: one line
            raise ExportError(f"ExecuTorch cannot run {self.path.name}: {first_line(exc)}") from None
        return [np.asarray(o.numpy(), dtype=np.float32) for o in outs]

