"""OpenVINO IR files of the export's graphs: conversion from ONNX, and NNCF's quantization for the
benchmark's anchor.

Files, beside the ONNX graphs of the same export:
- ``<name>.openvino.xml``/``.bin``: fp32 IR converted from the portable ``<name>.onnx`` (weights kept in
  fp32: ``save_model`` would halve them by default);
- ``image_classifier.int8.openvino.xml``/``.bin``: the int8 image classifier, converted from the
  calibrated Q/DQ graph (``image_classifier.int8.onnx``). OpenVINO runs Q/DQ pairs as int8 kernels, so
  it serves the same calibration, the same quantized layers (the image tower's blocks; adapter and class
  bank fp32) and the same 7-bit weights as ONNX Runtime and TensorRT.

Why not NNCF's own quantization of the fp32 IR: with default settings, on a CPU without VNNI (an AMD
EPYC here), NNCF's int8 ViT-B-16 image embedding has cosine 0.973 to torch (0.996 with the
transformer preset, 0.997 with its overflow fix on every layer), below the 0.999 every int8 graph
of this project must reach; it quantizes the attention's activation products and the adapter too.
:func:`quantize_nncf` is kept for the benchmark's anchor and for callers who want it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mmadapter.errors import ExportError
from mmadapter.files import first_line
from mmadapter.runtime.engines.openvino import XML_SUFFIX, import_openvino


def ir_name(onnx_name: str) -> str:
    """``image_classifier.int8.onnx`` -> ``image_classifier.int8.openvino.xml``."""
    return onnx_name[: -len(".onnx")] + XML_SUFFIX


def convert_to_ir(onnx_path: Path, xml_path: Path) -> Path:
    """OpenVINO IR of an ONNX graph, weights as they are (fp32 stays fp32, Q/DQ stays int8)."""
    ov = import_openvino()
    try:
        model = ov.convert_model(str(onnx_path))
        ov.save_model(model, str(xml_path), compress_to_fp16=False)
    except Exception as exc:  # noqa: BLE001 - the converter raises many types; all mean "does not convert"
        raise ExportError(f"OpenVINO cannot convert {onnx_path.name}: {first_line(exc)}") from None
    return xml_path


def quantize_nncf(onnx_path: Path, xml_path: Path, feeds: Sequence[dict[str, np.ndarray]], **options: Any) -> Path:
    """NNCF post-training int8 of an ONNX graph read into OpenVINO, calibrated on ``feeds``; ``options`` go
    to ``nncf.quantize`` (none: NNCF's defaults, the benchmark's anchor). See the module docstring for why
    the export does not use it."""
    ov = import_openvino()
    try:
        import nncf
    except ImportError:
        raise ExportError("NNCF is not installed: pip install 'mmadapter[openvino]'") from None
    model = ov.Core().read_model(str(onnx_path))
    inputs = [f[model.inputs[0].get_any_name()] for f in feeds]
    quantized = nncf.quantize(model, nncf.Dataset(inputs), subset_size=len(inputs), **options)
    ov.save_model(quantized, str(xml_path), compress_to_fp16=False)
    return xml_path
