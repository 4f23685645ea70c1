"""Shared pytest setup: run Triton kernels in the interpreter on CPU-only machines, and skip
tests whose hardware or library is absent (``gpu``: CUDA; ``trt``: TensorRT)."""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None

# Triton reads TRITON_INTERPRET when it is imported, so this must run before any test module
# imports it; conftest is imported before test collection. An explicit setting is respected.
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    skip_trt = pytest.mark.skip(reason="needs TensorRT (pip install tensorrt)")
    for item in items:
        if "gpu" in item.keywords and not HAS_CUDA:
            item.add_marker(skip_gpu)
        if "trt" in item.keywords and not HAS_TENSORRT:
            item.add_marker(skip_trt)

# The export tests share one session-wide export (tests/export_fixtures.py); registered here once so
# that every test module gets the same instance instead of one export per module.
from export_fixtures import exported  # noqa: E402, F401
