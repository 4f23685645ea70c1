"""ONNX Runtime's mobile format (``export --ort-mobile``): every served ONNX graph converted to ``.ort`` by
ONNX Runtime's own converter, the reduced-operator configuration a minimal ONNX Runtime build is compiled
from, and the check that each ``.ort`` file gives the outputs of the ONNX graph it came from.

The source of each ``.ort`` is the graph ONNX Runtime serves on a CPU (the ``ort`` kind: fused, and for int8
dynamically quantized), one per precision. The converter optimizes for "arm", which only leaves out the x86
NCHWc layout transform, so the same file runs on phones and on this machine, where it is checked.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from mmadapter.errors import ExportError
from mmadapter.files import first_line
from mmadapter.runtime.manifest import GraphEntry

# The converter names its configuration after the optimization style and level: Fixed style at level "all".
CONFIG = "required_operators.config"
# An .ort file is its source graph after the optimizations ONNX Runtime would apply at load anyway, so it is
# held to its source far tighter than to torch: 1e-5 relative to the outputs' scale in fp32. The converter's
# extra fusions reorder arithmetic, which fp16 rounding (measured 3e-4 on the tiny model) and int8's dynamic
# activation scales (4.6e-5) amplify, so those bounds are a few times what was measured.
SOURCE_ATOL = {"fp32": 1e-5, "fp16": 2e-3, "int8": 2e-4}
SOURCE_COSINE_MIN = 0.99999


def mobile_name(graph: str, precision: str) -> str:
    """``image_classifier.ort`` for fp32, ``image_classifier.int8.ort`` otherwise."""
    return f"{graph}.ort" if precision == "fp32" else f"{graph}.{precision}.ort"


def write_ort_mobile(folder: Path, graphs: dict[str, GraphEntry]) -> dict[str, GraphEntry]:
    """The ``.ort`` file of every ``ort`` graph in ``folder`` and :data:`CONFIG` beside them; returns the
    entries with their ``ort_mobile`` files added. One ExportError line when the converter fails."""
    from onnxruntime.tools.convert_onnx_models_to_ort import OptimizationStyle, convert_onnx_models_to_ort

    sources = {(graph, precision): files.ort for graph, entry in graphs.items()
               for precision, files in entry.files.items() if files.ort is not None}
    # The converter takes a folder and names each output after its input's stem: the sources are linked into a
    # scratch folder under the names the .ort files should have, and it writes one config for all of them.
    with tempfile.TemporaryDirectory(dir=folder, prefix=".ort-mobile-") as scratch:
        for (graph, precision), name in sources.items():
            os.link(folder / name, Path(scratch) / (mobile_name(graph, precision)[:-4] + ".onnx"))
        quiet = logging.getLogger("ort_format_model.utils")  # it logs the config's path at INFO
        level = quiet.level
        quiet.setLevel(logging.WARNING)
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # a line per model; the export has its progress bar
                convert_onnx_models_to_ort(Path(scratch), output_dir=folder,
                                           optimization_styles=[OptimizationStyle.Fixed], target_platform="arm")
        except Exception as exc:  # noqa: BLE001 - the converter raises whatever ONNX Runtime raised
            raise ExportError(f"--ort-mobile: ONNX Runtime's converter failed: {first_line(exc)}") from None
        finally:
            quiet.setLevel(level)
    config = folder / CONFIG
    if not config.is_file():
        raise ExportError(f"--ort-mobile: ONNX Runtime's converter wrote no {CONFIG}")
    # Its header names the models by their path here, a temporary folder: file names are what ship.
    config.write_text("".join(f"# - {Path(line[4:].strip()).name}\n" if line.startswith("# - ") else line
                              for line in config.read_text().splitlines(keepends=True)))
    out = dict(graphs)
    for (graph, precision), _ in sources.items():
        entry = out[graph]
        files = {**entry.files, precision: replace(entry.files[precision], ort_mobile=mobile_name(graph, precision))}
        out[graph] = replace(entry, files=files)
    return out


def config_operators(path: Path) -> dict[str, set[str]]:
    """The reduced-operator configuration as ``{domain: {op, ...}}`` (its lines: ``domain;opsets;Op1,Op2``)."""
    ops: dict[str, set[str]] = {}
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        domain, _opsets, names = line.split(";", 2)
        ops.setdefault(domain, set()).update(n.strip() for n in names.split(",") if n.strip())
    return ops


def compare_to_source(mobile: Path, source: Path, feeds: Sequence[dict[str, np.ndarray]],
                      opener: Callable[[Path], Any], precision: str = "fp32") -> tuple[list[str], float]:
    """Run ``mobile`` and its ONNX ``source`` on every feed; the failures (outputs further apart than
    :data:`SOURCE_ATOL` at ``precision``, relative to their scale, or below :data:`SOURCE_COSINE_MIN`) and the largest
    scaled difference seen."""
    failures: list[str] = []
    worst = 0.0
    try:
        a, b = opener(mobile), opener(source)
    except ExportError as exc:
        return [f"{mobile.name}: {exc}"], worst
    names = [o.name for o in b.get_outputs()]
    for feed in feeds:
        for name, got, ref in zip(names, a.run(names, feed), b.run(names, feed)):
            got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
            diff = float(np.abs(got - ref).max()) / max(1.0, float(np.abs(ref).max()))
            worst = max(worst, diff)
            cosine = float((got * ref).sum() / max(np.linalg.norm(got) * np.linalg.norm(ref), 1e-30))
            if diff > SOURCE_ATOL[precision] or cosine < SOURCE_COSINE_MIN:
                failures.append(f"{mobile.name}: {name} differs from {source.name} by {diff:.3g} (scaled), "
                                f"cosine {cosine:.7f}")
    return failures, worst
