"""ExecuTorch programs (``export --executorch``): each graph spec's torch module through ``torch.export``,
lowered to the XNNPACK delegate and serialized as a ``.pte`` program, with the sidecar that names its
tensors (a ``.pte`` knows its inputs by position only).

Dynamic axes stay dynamic, but ExecuTorch plans memory for the largest shape up front, so every axis gets
an upper bound (:data:`MAX_BATCH` for request batches, ``--max-classes`` for class banks), recorded in the
manifest (``executorch_max``) and the sidecar; the runtime's session splits larger batches.

With ``--int8`` the image classifier also gets ``image_classifier.int8.pte``: PT2E int8 (:func:`quantize`)
with int8 weights per output channel, then the same lowering. Its activations follow one of two schemes
(:data:`INT8_SCHEMES`, ``--executorch-int8``): ``dynamic`` (the default: XNNPACK's qd8 kernels compute
ranges at run time, the analogue of ONNX Runtime's dynamic int8 graph; nothing is calibrated, and the
pipeline holds the program to every int8 rule on the synthetic and the held-out real images) or ``static``
(ranges observed on the export's real calibration images, never on noise: the fully integer program that
phone NPU delegates expect; validated like the calibrated ONNX graph, ``validate_static``). A program that
misses its rules fails the export like any other graph, so no unvalidated program is written.

Attention is lowered as ``softmax(q kᵀ · scale + mask) v`` (:func:`plain_attention`), not through ATen's
decomposition of ``scaled_dot_product_attention``: that one guards fully masked rows with
eq/any/logical_not/where/full_like and scales q and k by scalar multiplications, operators the XNNPACK
delegate does not take, so they ran in ExecuTorch's portable kernels between delegate calls (measured on
ViT-B-16 with ETDump: a fifth of the int8 program's time).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mmadapter.errors import ExportError
from mmadapter.runtime.graphs import NUM_CLASSES

MISSING = ("--executorch needs ExecuTorch: pip install 'mmadapter[mobile]' (executorch, with torch "
           "{torch})")
# The largest request batch a program takes: memory is planned for it (predict's default batch size).
MAX_BATCH = 32


def require_executorch() -> None:
    """One ExportError line when the ``mobile`` extra is not installed."""
    import importlib.util

    if importlib.util.find_spec("executorch") is None:
        import torch

        raise ExportError(MISSING.format(torch=torch.__version__.split("+")[0]))


def pte_name(graph: str, precision: str) -> str:
    return f"{graph}.pte" if precision == "fp32" else f"{graph}.{precision}.pte"


def sidecar(pte: str) -> str:
    """The JSON beside a program naming its inputs and outputs, e.g. ``image_classifier.pte.json``."""
    return f"{pte}.json"


def axis_bounds(spec: Any, max_classes: int) -> dict[str, int]:
    """The upper bound of every dynamic axis of the spec's inputs."""
    return {axis: max_classes if axis == NUM_CLASSES else MAX_BATCH for axis in sorted(spec.axis_names())}


def _dynamic_shapes(spec: Any, bounds: dict[str, int]) -> tuple[dict[int, Any], ...]:
    import torch

    dims = {axis: torch.export.Dim(axis, min=1, max=bound) for axis, bound in bounds.items()}
    return tuple({i: dims[s] for i, s in enumerate(t.shape) if s in dims} for t in spec.inputs)


def in_scopes(node: Any, scopes: tuple[str, ...]) -> bool:
    """Whether a node of an exported graph was traced inside one of the torch module ``scopes`` (the
    module path torch.export records for it), the same test the ONNX int8 graphs make on their scopes."""
    stack = node.meta.get("nn_module_stack") or {}
    return any(path == scope or path.startswith(scope + ".") for path, _ in stack.values() for scope in scopes)


# The int8 schemes of the int8 programs (--executorch-int8), each recorded in its program's sidecar.
DYNAMIC, STATIC = "dynamic", "static"
_WEIGHTS = "int8, symmetric, per output channel"
_QUANTIZED = "linear layers under the graph's int8 scopes"
INT8_SCHEMES = {
    DYNAMIC: {"weights": _WEIGHTS, "quantized": _QUANTIZED,
              "activations": "int8, dynamic: ranges computed per inference (XNNPACK qd8), not calibrated"},
    STATIC: {"weights": _WEIGHTS, "quantized": _QUANTIZED,
             "activations": "int8, static per tensor: ranges observed on the export's real calibration images"},
}


def plain_attention(q: Any, k: Any, v: Any, attn_mask: Any = None, dropout_p: float = 0.0, is_causal: bool = False,
                    scale: float | None = None, enable_gqa: bool = False) -> Any:
    """``scaled_dot_product_attention`` (inference: no dropout) as matmul, softmax, matmul, which the XNNPACK
    delegate takes whole. Unlike ATen's own decomposition it does not zero rows whose every key is masked
    (they come out NaN); the masks of these graphs (none, or CLIP's causal text mask) never mask a whole row."""
    import torch

    if enable_gqa and q.shape[-3] != k.shape[-3]:
        raise ExportError("--executorch: grouped-query attention is not supported")
    scores = torch.matmul(q, k.transpose(-2, -1)) * (q.shape[-1] ** -0.5 if scale is None else scale)
    if is_causal:
        attn_mask = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool, device=q.device).tril()
    if attn_mask is not None:
        scores = scores.masked_fill(~attn_mask, float("-inf")) if attn_mask.dtype == torch.bool else scores + attn_mask
    return torch.matmul(torch.softmax(scores, -1), v)


def quantize(program: Any, spec: Any, sample: tuple[Any, ...], calibration: Any = None) -> Any:
    """``program`` (a torch.export program) with PT2E int8: XNNPACK's quantizer with int8 weights per output
    channel, restricted to the linear layers under ``spec.int8_scopes`` as in the ONNX int8 graphs
    (:data:`INT8_SCHEMES`). Without ``calibration``, dynamic int8 activations: the one call on ``sample`` lets
    the weight observers see the weights, and activation ranges are computed at run time. With it (real
    preprocessed images [N, 3, H, W]), static per-tensor activations whose ranges the observers record over
    those images, run one at a time.

    Measured on ViT-B-16 (2-vCPU AMD EPYC Zen 3, AVX2), batch 1: dynamic activations 229 ms against 274 ms for
    static per-tensor activations calibrated on real images, at a higher cosine to torch (0.99995 against
    0.99989); XNNPACK's qd8 GEMMs are simply faster than its qs8 ones on this CPU. Only linears: the config is
    given for the linear operator, not globally: a global config with a filter that accepts nothing still
    left activation observers in ViT-B-16 (an int8 round trip in the image tower that alone cost the
    embedding cosine 0.991 against torch)."""
    import torch
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    config = get_symmetric_quantization_config(is_per_channel=True, is_dynamic=calibration is None)
    quantizer = XNNPACKQuantizer().set_operator_type(torch.ops.aten.linear.default, config)
    quantizer.set_filter_function(lambda n: in_scopes(n, spec.int8_scopes))
    prepared = prepare_pt2e(program.module(), quantizer)
    with torch.no_grad():
        if calibration is None:
            prepared(*sample)
        for image in calibration if calibration is not None else ():
            prepared(torch.from_numpy(image[None]))
    return convert_pt2e(prepared)


def lower(spec: Any, bounds: dict[str, int], precision: str = "fp32", calibration: Any = None) -> Any:
    """The spec's module as an ExecuTorch program lowered to XNNPACK, fp32 or int8 (:func:`quantize`; static
    activations calibrated on ``calibration``'s images when given), its attention as :func:`plain_attention`."""
    import torch
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    # Traced at batch 2 and 3 classes: torch.export would specialize an axis traced at 1. A bound of 1 is a
    # fixed axis (no Dim), which the engine runs a row at a time.
    sizes = {axis: min(2, bound) if axis != NUM_CLASSES else min(3, bound) for axis, bound in bounds.items()}
    dynamic = _dynamic_shapes(spec, {axis: bound for axis, bound in bounds.items() if bound > 1})
    attention = {torch.ops.aten.scaled_dot_product_attention.default: plain_attention}
    with torch.no_grad():
        sample = spec.sample_inputs(sizes)
        program = torch.export.export(spec.module.eval(), sample, dynamic_shapes=dynamic)
        if precision == "int8":  # quantized, then exported again for the lowering
            program = torch.export.export(quantize(program, spec, sample, calibration), sample,
                                          dynamic_shapes=dynamic)
        program = program.run_decompositions(attention)
    return to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()]).to_executorch()


def write_program(spec: Any, folder: Path, precision: str, max_classes: int,
                  calibration: Any = None) -> tuple[str, dict[str, int]]:
    """``<graph>.pte`` (``<graph>.int8.pte`` for int8: static activations calibrated on ``calibration``'s
    images when given, else dynamic) and its sidecar in ``folder``; returns the program's name and its axis
    bounds."""
    bounds = axis_bounds(spec, max_classes)
    try:
        try:
            program = lower(spec, bounds, precision, calibration)
        except Exception as exc:  # noqa: BLE001 - retried below, or reported
            # XNNPACK reshapes take one dynamic dimension: adapter_head's [batch, classes] gets a fixed batch.
            if "only supports 1 dynamic dimension" not in str(exc) or NUM_CLASSES not in bounds:
                raise
            bounds = {axis: bound if axis == NUM_CLASSES else 1 for axis, bound in bounds.items()}
            program = lower(spec, bounds, precision, calibration)
    except Exception as exc:  # noqa: BLE001 - torch.export and ExecuTorch raise many types; one line names the graph
        from mmadapter.files import first_line

        raise ExportError(f"--executorch: {spec.name} could not be lowered to XNNPACK: {first_line(exc)}") from None
    name = pte_name(spec.name, precision)
    (folder / name).write_bytes(program.buffer)
    io = {kind: [t.to_dict() for t in tensors] for kind, tensors in (("inputs", spec.inputs),
                                                                      ("outputs", spec.outputs))}
    scheme = {"int8_scheme": INT8_SCHEMES[DYNAMIC if calibration is None else STATIC]} if precision == "int8" else {}
    (folder / sidecar(name)).write_text(json.dumps({**io, "max": bounds, "precision": precision, **scheme},
                                                   indent=1) + "\n")
    return name, bounds


def write_programs(specs: Any, folder: Path, graphs: dict[str, Any], max_classes: int,
                   int8: bool = False, calibration: Any = None) -> dict[str, Any]:
    """The fp32 program of every graph and, with ``int8``, the int8 program of every graph that names
    ``int8_scopes`` (the image classifier): static activations calibrated on ``calibration`` (a
    CalibrationSet) when given, else dynamic; returns the manifest entries with their ``executorch`` files and
    bounds added."""
    from dataclasses import replace

    from mmadapter.runtime.manifest import GraphFiles

    out = dict(graphs)
    for spec in specs:
        name, bounds = write_program(spec, folder, "fp32", max_classes)
        entry = out[spec.name]
        files = {**entry.files, "fp32": replace(entry.files["fp32"], executorch=name)}
        if int8 and spec.int8_scopes:
            images = calibration.calibration if calibration is not None else None
            name, _ = write_program(spec, folder, "int8", max_classes, images)
            files["int8"] = replace(files.get("int8", GraphFiles()), executorch=name)
        out[spec.name] = replace(entry, files=files, executorch_max=bounds)
    return out
