"""mmadapter: the Multi-Modal Adapter for CLIP (Seputis et al., arXiv 2409.02958), from few-shot
training to fused kernels and exported engines."""

from __future__ import annotations

from typing import Any

from mmadapter.errors import CheckpointError, ConfigError, DataError, ExportError, MMAdapterError

__version__ = "0.1.0"

# Torch-backed names are imported on first use (PEP 562), so that ``mmadapter.runtime.model``
# and ``mmadapter.errors`` import on a serving machine that has no torch.
_LAZY = {
    "AdapterOutput": "mmadapter.model.adapter",
    "ClassBank": "mmadapter.model.adapter",
    "MultiModalAdapter": "mmadapter.model.adapter",
    "AdapterConfig": "mmadapter.model.config",
    "ClipSpec": "mmadapter.model.config",
    "TrainConfig": "mmadapter.model.config",
    "get_adapter_config": "mmadapter.model.config",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'mmadapter' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    "AdapterConfig",
    "AdapterOutput",
    "CheckpointError",
    "ClassBank",
    "ClipSpec",
    "ConfigError",
    "DataError",
    "ExportError",
    "MMAdapterError",
    "MultiModalAdapter",
    "TrainConfig",
    "get_adapter_config",
]
