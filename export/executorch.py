"""ExecuTorch programs (``export --executorch``): each graph spec's torch module through ``torch.export``,
lowered to the XNNPACK delegate and serialized as a ``.pte`` program, with the sidecar that names its
tensors (a ``.pte`` knows its inputs by position only).

Dynamic axes stay dynamic, but ExecuTorch plans memory for the largest shape up front, so every axis gets
an upper bound (:data:`MAX_BATCH` for request batches, ``--max-classes`` for class banks), recorded in the
manifest (``executorch_max``) and the sidecar; the runtime's session splits larger batches.

With ``--int8`` the image classifier also gets ``image_classifier.int8.pte``: PT2E int8 (:func:`quantize`)
calibrated on the export's real calibration images, never on noise, then the same lowering. The pipeline
validates it like the calibrated ONNX graph (``validate_static``: int8 thresholds on the held-out images);
a program that misses them fails the export like any other graph, so no unvalidated program is written.
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


def quantize(program: Any, spec: Any, calibration: Any) -> Any:
    """``program`` (a torch.export program) with PT2E int8: XNNPACK's quantizer (int8 symmetric, weights per
    output channel, activations per tensor with ranges observed on ``calibration``, real preprocessed images
    run one at a time), restricted to the linear layers under ``spec.int8_scopes`` as in the ONNX int8
    graphs. Only linears: each quantized one is a whole dequantize -> linear -> quantize group that XNNPACK
    takes into its delegate. The config is given for the linear operator, not globally: a global config
    with a filter that accepts nothing still left three activation observers in ViT-B-16 (measured: an int8
    round trip in the image tower that alone cost the embedding cosine 0.991 against torch), and the
    quantizer's other patterns leave per-channel dequantize nodes that the delegate does not take."""
    import torch
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    quantizer = XNNPACKQuantizer().set_operator_type(torch.ops.aten.linear.default,
                                                     get_symmetric_quantization_config(is_per_channel=True))
    quantizer.set_filter_function(lambda n: in_scopes(n, spec.int8_scopes))
    prepared = prepare_pt2e(program.module(), quantizer)
    with torch.no_grad():
        for image in calibration:
            prepared(torch.from_numpy(image[None]))
    return convert_pt2e(prepared)


def lower(spec: Any, bounds: dict[str, int], calibration: Any = None) -> Any:
    """The spec's module as an ExecuTorch program lowered to XNNPACK: fp32, or int8 (:func:`quantize`)
    calibrated on ``calibration``'s images when given."""
    import torch
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    # Traced at batch 2 and 3 classes: torch.export would specialize an axis traced at 1. A bound of 1 is a
    # fixed axis (no Dim), which the engine runs a row at a time.
    sizes = {axis: min(2, bound) if axis != NUM_CLASSES else min(3, bound) for axis, bound in bounds.items()}
    dynamic = _dynamic_shapes(spec, {axis: bound for axis, bound in bounds.items() if bound > 1})
    with torch.no_grad():
        program = torch.export.export(spec.module.eval(), spec.sample_inputs(sizes), dynamic_shapes=dynamic)
        if calibration is not None:  # quantized, then exported again for the lowering
            program = torch.export.export(quantize(program, spec, calibration), spec.sample_inputs(sizes),
                                          dynamic_shapes=dynamic)
    return to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()]).to_executorch()


def write_program(spec: Any, folder: Path, precision: str, max_classes: int,
                  calibration: Any = None) -> tuple[str, dict[str, int]]:
    """``<graph>.pte`` (``<graph>.int8.pte`` when ``calibration`` images are given) and its sidecar in
    ``folder``; returns the program's name and its axis bounds."""
    bounds = axis_bounds(spec, max_classes)
    try:
        try:
            program = lower(spec, bounds, calibration)
        except Exception as exc:  # noqa: BLE001 - retried below, or reported
            # XNNPACK reshapes take one dynamic dimension: adapter_head's [batch, classes] gets a fixed batch.
            if "only supports 1 dynamic dimension" not in str(exc) or NUM_CLASSES not in bounds:
                raise
            bounds = {axis: bound if axis == NUM_CLASSES else 1 for axis, bound in bounds.items()}
            program = lower(spec, bounds, calibration)
    except Exception as exc:  # noqa: BLE001 - torch.export and ExecuTorch raise many types; one line names the graph
        from mmadapter.files import first_line

        raise ExportError(f"--executorch: {spec.name} could not be lowered to XNNPACK: {first_line(exc)}") from None
    name = pte_name(spec.name, precision)
    (folder / name).write_bytes(program.buffer)
    io = {kind: [t.to_dict() for t in tensors] for kind, tensors in (("inputs", spec.inputs),
                                                                      ("outputs", spec.outputs))}
    (folder / sidecar(name)).write_text(json.dumps({**io, "max": bounds, "precision": precision}, indent=1) + "\n")
    return name, bounds


def write_programs(specs: Any, folder: Path, graphs: dict[str, Any], max_classes: int,
                   calibration: Any = None) -> dict[str, Any]:
    """The fp32 program of every graph and, with ``calibration`` (a CalibrationSet), the int8 program of
    every graph that names ``int8_scopes`` (the image classifier), calibrated on its calibration images;
    returns the manifest entries with their ``executorch`` files and bounds added."""
    from dataclasses import replace

    from mmadapter.runtime.manifest import GraphFiles

    out = dict(graphs)
    for spec in specs:
        name, bounds = write_program(spec, folder, "fp32", max_classes)
        entry = out[spec.name]
        files = {**entry.files, "fp32": replace(entry.files["fp32"], executorch=name)}
        if calibration is not None and spec.int8_scopes:
            int8, _ = write_program(spec, folder, "int8", max_classes, calibration.calibration)
            files["int8"] = replace(files.get("int8", GraphFiles()), executorch=int8)
        out[spec.name] = replace(entry, files=files, executorch_max=bounds)
    return out
