"""Serving an export folder without torch: ``ExportedModel`` and the engines it runs graphs on.

Everything under this package imports with the serving install alone (``pip install 'mmadapter[runtime]'``):
numpy, Pillow, tokenizers, ftfy and one engine library (ONNX Runtime, OpenVINO or TensorRT). Nothing here
imports torch, open_clip, onnx, Triton, ``mmadapter.export`` or ``mmadapter.kernels`` (tests/test_layout.py
checks it from the source).
"""

from __future__ import annotations

from mmadapter.runtime.model import ExportedModel, classify_images
from mmadapter.runtime.open_vocab import Classification

__all__ = ["Classification", "ExportedModel", "classify_images"]
