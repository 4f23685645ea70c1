"""mmadapter: the Multi-Modal Adapter for CLIP (Seputis et al., arXiv 2409.02958), from few-shot
training to fused kernels and exported engines."""

from mmadapter.adapter import AdapterOutput, ClassBank, MultiModalAdapter
from mmadapter.config import AdapterConfig, ClipSpec, TrainConfig, get_adapter_config
from mmadapter.errors import CheckpointError, ConfigError, DataError, ExportError, MMAdapterError

__version__ = "0.1.0"

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
