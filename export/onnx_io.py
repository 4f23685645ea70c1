"""Turning a :class:`GraphSpec` into ONNX files: dynamo export, fp16 conversion with fp32 islands,
ONNX Runtime's transformer fusions, and reading a graph's I/O back for checks and the manifest.

Files per graph (``<name>`` from the spec):
- ``<name>.onnx``: standard ONNX ops only (portable: TensorRT's parser, Triton, other runtimes);
- ``<name>.ort.onnx``: the same graph after ONNX Runtime's transformer fusions (contrib ops such
  as BiasGelu), the file :mod:`mmadapter.runtime.model` serves;
- with fp16, ``<name>.fp16.onnx`` and ``<name>.fp16.ort.onnx`` likewise;
- with int8, ``<name>.int8.ort.onnx`` for graphs whose spec names ``int8_scopes`` (the image
  classifier): the image tower's transformer-block weights in int8 (ONNX Runtime dynamic
  quantization), for CPU serving only;
- with int8 and calibration images, ``<name>.int8.onnx``: the same blocks calibrated (static) int8 in
  the standard Q/DQ form, for ONNX Runtime, OpenVINO and TensorRT's explicit int8 engines.
"""

from __future__ import annotations

import ast
import contextlib
import heapq
import io
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import onnx
import torch

from mmadapter.errors import ExportError
from mmadapter.export.defaults import DEFAULT_OPSET, SUPPORTED_OPSETS
from mmadapter.export.specs import EXPORT_BATCH, GraphSpec
from mmadapter.files import first_line
from mmadapter.runtime.graphs import NUM_CLASSES

# The range is defined in defaults.py (the CLI reads it without torch). Checked on torch 2.14 / onnx
# 1.23 / onnxruntime 1.32: below 17 the exporter silently writes opset 18 (LayerNormalization needs
# 17); 24-25 export and load but the fusion, fp16 and int8 passes were checked up to 23 only; 26 fails.
MIN_OPSET = SUPPORTED_OPSETS.start
MAX_OPSET = SUPPORTED_OPSETS.stop - 1

# Ops kept in fp32 in fp16 graphs, because fp16 drifts in them (docs/design.md §6.3): normalisations, softmax
# accumulation and the final L2 normalisations; the casts around them are inserted by the converter.
FP32_OPS = [
    "LayerNormalization",
    "SkipLayerNormalization",
    "Softmax",
    "ReduceL2",
    "ReduceSum",
    "ReduceMean",
    "Div",
    "Sqrt",
    "Reciprocal",
    "Pow",
    "Clip",
]


def export_graph(spec: GraphSpec, path: Path, opset: int = DEFAULT_OPSET) -> Path:
    """Export ``spec.module`` with torch's dynamo exporter and named dynamic axes, at batch
    :data:`EXPORT_BATCH` (validation checks other sizes)."""
    if isinstance(opset, bool) or opset not in SUPPORTED_OPSETS:
        raise ExportError(f"opset {opset} is not supported; choose {MIN_OPSET}-{MAX_OPSET}")
    sizes = {axis: EXPORT_BATCH for axis in spec.axis_names()}
    sizes[NUM_CLASSES] = 7  # any size that no other axis has, so shapes are not tied by accident
    args = spec.sample_inputs(sizes)
    # The exporter prints progress lines and deprecation chatter; the export steps have their own bar.
    with torch.no_grad(), _quiet():
        try:
            program = torch.onnx.export(
                spec.module,
                args,
                dynamo=True,
                dynamic_shapes=spec.dynamic_shapes(),
                input_names=[t.name for t in spec.inputs],
                output_names=[t.name for t in spec.outputs],
                opset_version=opset,
                verbose=False,
            )
        except Exception as exc:  # noqa: BLE001 - the exporter raises many types; all are one export failure
            raise ExportError(f"ONNX export of {spec.name} failed: {first_line(exc)}") from None
    if program is None:
        raise ExportError(f"ONNX export of {spec.name} returned no program")
    program.save(str(path))
    return path


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the exporter's progress prints and the warnings of onnxscript and the fusion tools
    (failed symbolic shape inference on dynamo graphs, skipped constant folding: both harmless)."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(previous)


def to_fp16(src: Path, dst: Path) -> Path:
    """fp16 weights and compute with the :data:`FP32_OPS` islands, fp32 inputs and outputs."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(src))
    with _quiet():
        half = convert_float_to_float16(model, keep_io_types=True, op_block_list=FP32_OPS)
    # The converter appends the input casts after their consumers; ONNX requires topological order
    # (onnx.checker rejects the file otherwise). Its stale fp32 value_info entries are kept on
    # purpose: with them corrected, ONNX Runtime 1.32's NchwcTransformer segfaults while loading the
    # fp16 text encoder (ORT_ENABLE_ALL), and the runtimes infer types themselves anyway.
    _toposort(half.graph)
    onnx.save(half, str(dst))
    return dst


def _toposort(graph: onnx.GraphProto) -> None:
    """Reorder ``graph.node`` so every node follows the producers of its inputs (Kahn's algorithm,
    ties kept in file order)."""
    available = {t.name for t in graph.input} | {t.name for t in graph.initializer} | {""}
    nodes = list(graph.node)
    producer = {out: i for i, n in enumerate(nodes) for out in n.output}
    missing = [0] * len(nodes)
    consumers: dict[int, list[int]] = {}
    for i, n in enumerate(nodes):
        for name in set(n.input) - available:
            if name not in producer:
                raise ExportError(f"graph {graph.name!r}: input {name!r} of node {n.name!r} is never produced")
            missing[i] += 1
            consumers.setdefault(producer[name], []).append(i)
    ready = [i for i, m in enumerate(missing) if m == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        i = heapq.heappop(ready)
        order.append(nodes[i])
        for j in consumers.get(i, []):
            missing[j] -= 1
            if missing[j] == 0:
                heapq.heappush(ready, j)
    if len(order) != len(nodes):
        raise ExportError(f"graph {graph.name!r} has a cycle")
    del graph.node[:]
    graph.node.extend(order)


def optimize_for_ort(src: Path, dst: Path) -> dict[str, int]:
    """ONNX Runtime's transformer fusions (offline, provider-independent: opt_level 0 runs only the
    Python fusion passes, so the file carries no CPU-specific layout). Returns fusion counts."""
    from onnxruntime.transformers.optimizer import optimize_model

    with _quiet():
        # model_type "vit" enables LayerNorm/Gelu/BiasGelu fusions; attention is not matched in
        # dynamo graphs (seen here), so num_heads/hidden_size stay 0 (auto).
        opt = optimize_model(str(src), model_type="vit", num_heads=0, hidden_size=0, opt_level=0)
        opt.save_model_to_file(str(dst))
    return {k: int(v) for k, v in opt.get_fused_operator_statistics().items() if v}


def quantize_int8(src: Path, dst: Path, scopes: tuple[str, ...]) -> int:
    """Dynamic int8 quantization (int8 per-channel weights, uint8 activations quantized per call) of
    the weight MatMuls that the exporter placed under one of the module ``scopes``; returns how many.

    Only the image tower's transformer blocks are quantized: they carry >95% of the FLOPs, so this
    is where the int8 GEMMs (VNNI/AMX on x86) pay off. The patch embedding, the projections, the
    adapter and the folded class bank stay fp32: the logits are a rescaled difference of dot
    products (docs/design.md §3.2) and would lose more than the small time they cost.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model = onnx.load(str(src))
    weights = {init.name for init in model.graph.initializer}
    chosen = [n.name for n in model.graph.node
              if n.op_type == "MatMul" and len(n.input) == 2 and n.input[1] in weights
              and _in_scopes(n, scopes)]
    if not chosen:
        raise ExportError(f"int8: no weight MatMul under {list(scopes)} in {src.name}")
    with _quiet():
        # reduce_range: 7-bit weights. On x86 CPUs without VNNI (AVX2 and AVX-512 without VNNI, many AMD
        # EPYCs) the u8 x s8 GEMM sums pairs in saturating int16; full-range weights overflow there and
        # the embedding drifts (cosine 0.994 to torch seen on such a CPU, below the 0.999 rule). 7-bit
        # weights cannot saturate, cost nothing in speed, and the export runs the same everywhere.
        quantize_dynamic(model, dst, op_types_to_quantize=["MatMul"], nodes_to_quantize=chosen,
                         per_channel=True, reduce_range=True, weight_type=QuantType.QInt8)
    return len(chosen)


def quantize_static_int8(src: Path, dst: Path, scopes: tuple[str, ...], feeds: list[dict[str, Any]]) -> int:
    """Calibrated (static) int8 of the weight MatMuls and Gemms under ``scopes``, in the standard Q/DQ
    form (QuantizeLinear/DequantizeLinear pairs around fp32 ops): activation ranges fixed from ``feeds``
    (real images, :mod:`mmadapter.export.calibration`), so nothing is measured per call. Returns how many
    ops were quantized.

    The Q/DQ form is what TensorRT builds explicit int8 engines from, hence its choices: int8 activations
    and weights, both symmetric (zero point 0, TensorRT's only mode), per-channel weights. 7-bit weights
    (reduce_range) as in :func:`quantize_int8`: ONNX Runtime on x86 without VNNI turns s8 activations into
    u8 and sums u8 x s8 pairs in saturating int16; full-range weights overflow there (embedding cosine
    0.988 to torch measured on an AMD EPYC without VNNI, far below the 0.999 rule).
    """
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    if not feeds:
        raise ExportError(f"static int8 of {src.name}: no calibration inputs")

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._feeds = iter(feeds)

        def get_next(self) -> dict[str, Any] | None:
            return next(self._feeds, None)

    model = onnx.load(str(src))
    weights = {init.name for init in model.graph.initializer}
    chosen = [n.name for n in model.graph.node
              if n.op_type in ("MatMul", "Gemm") and len(n.input) >= 2 and n.input[1] in weights
              and _in_scopes(n, scopes)]
    if not chosen:
        raise ExportError(f"static int8: no weight MatMul or Gemm under {list(scopes)} in {src.name}")
    with _quiet():
        quantize_static(str(src), str(dst), _Reader(), quant_format=QuantFormat.QDQ, op_types_to_quantize=["MatMul",
                        "Gemm"], nodes_to_quantize=chosen, per_channel=True, reduce_range=True,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                        extra_options={"ActivationSymmetric": True, "WeightSymmetric": True})
    return len(chosen)


def _in_scopes(node: onnx.NodeProto, scopes: tuple[str, ...]) -> bool:
    """Whether the torch module path the dynamo exporter recorded for ``node`` lies under a scope."""
    for prop in node.metadata_props:
        if prop.key == "pkg.torch.onnx.name_scopes":
            return any(s == scope or s.startswith(scope + ".") for s in ast.literal_eval(prop.value)
                       for scope in scopes)
    return False


def op_types(path: Path) -> set[tuple[str, str]]:
    """(domain, op_type) of every node, functions included."""
    model = onnx.load(str(path), load_external_data=False)
    ops = {(n.domain or "ai.onnx", n.op_type) for n in model.graph.node}
    for fn in model.functions:
        ops |= {(n.domain or "ai.onnx", n.op_type) for n in fn.node}
    return ops
