"""The export's defaults, defined once and importable without onnx or torch (the CLI's help text,
the pipeline's signature and the runtime all read them from here)."""

from __future__ import annotations

DEFAULT_OPSET = 18
# LayerNormalization needs opset 17; the exporter and ONNX Runtime were checked up to 23.
SUPPORTED_OPSETS = range(17, 24)
DEFAULT_PROFILE = (1, 8, 64)  # TensorRT optimisation profile: min, opt, max batch
DEFAULT_PROVIDERS = ("cpu",)  # ONNX Runtime providers that validate an export
DEFAULT_MAX_CLASSES = 4096  # the largest class bank an adapter_head engine is built for
