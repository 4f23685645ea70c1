"""``MultiModalAdapter``: the trainable head on a frozen CLIP, computed with the exact fast path.

Parameter names are those of the reference (``down``, ``attn`` as ``nn.MultiheadAttention``,
``up``), so a state dict of either loads into the other unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from mmadapter.errors import ConfigError
from mmadapter.model import functional
from mmadapter.model.config import AdapterConfig

BACKENDS = ("torch", "triton", "auto")


@dataclass
class ClassBank:
    """Everything the adapter needs of a label set, computed once: the unit-norm text embeddings
    [N, C] and the class keys and values [N, D] of the attention."""

    text_emb: torch.Tensor
    keys: torch.Tensor
    values: torch.Tensor
    class_names: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        n = self.text_emb.shape[0]
        if n == 0:
            raise ConfigError("a class bank needs at least one class")
        if self.keys.shape[0] != n or self.values.shape[0] != n:
            raise ConfigError(
                f"class bank rows disagree: text {n}, keys {self.keys.shape[0]}, values {self.values.shape[0]}"
            )
        if self.class_names and len(self.class_names) != n:
            raise ConfigError(f"class bank has {n} embeddings but {len(self.class_names)} class names")

    @property
    def num_classes(self) -> int:
        return self.text_emb.shape[0]

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> ClassBank:
        return ClassBank(
            self.text_emb.to(device=device, dtype=dtype),
            self.keys.to(device=device, dtype=dtype),
            self.values.to(device=device, dtype=dtype),
            self.class_names,
        )


class AdapterOutput(NamedTuple):
    logits: torch.Tensor  # [B, N], already multiplied by CLIP's logit scale
    image_emb: torch.Tensor  # [B, C] adapted, unit-norm image embeddings v'
    text_shift: torch.Tensor  # [B, C] unit-norm s_b: adapted text i is normalize((1-l) t_i + l s_b)


class MultiModalAdapter(nn.Module):
    """The Multi-Modal Adapter (Seputis et al., 2024) with an O(N * C) per-image cost."""

    def __init__(self, config: AdapterConfig | None = None, backend: str = "auto") -> None:
        super().__init__()
        self.config = config or AdapterConfig()
        if backend not in BACKENDS:
            raise ConfigError(f"unknown backend {backend!r}; choose one of {BACKENDS}")
        self.backend = backend
        c, d = self.config.embed_dim, self.config.bottleneck_dim
        self.down = nn.Linear(c, d)
        self.attn = nn.MultiheadAttention(d, self.config.num_heads, batch_first=True)
        self.up = nn.Linear(d, c)

    def params(self) -> functional.AdapterParams:
        return functional.AdapterParams(
            self.down.weight,
            self.down.bias,
            self.attn.in_proj_weight,
            self.attn.in_proj_bias,
            self.attn.out_proj.weight,
            self.attn.out_proj.bias,
            self.up.weight,
            self.up.bias,
        )

    def _check_width(self, what: str, emb: torch.Tensor) -> None:
        if emb.ndim != 2 or emb.shape[1] != self.config.embed_dim:
            raise ConfigError(
                f"{what} must be [rows, {self.config.embed_dim}] for this adapter, got {list(emb.shape)}"
            )

    def class_bank(self, text_emb: torch.Tensor, class_names: tuple[str, ...] | list[str] = ()) -> ClassBank:
        """Cache a label set: unit-norm text embeddings plus the attention keys and values.
        Built with the current weights and detached: for inference, not for training."""
        self._check_width("text embeddings", text_emb)
        with torch.no_grad():
            keys, values = functional.class_keys_values(text_emb, self.params())
            return ClassBank(F.normalize(text_emb, dim=-1), keys, values, tuple(class_names))

    def resolved_backend(self, device: torch.device) -> str:
        if self.backend == "auto":
            return "triton" if device.type == "cuda" and _triton_available() else "torch"
        return self.backend

    def forward(
        self, image_emb: torch.Tensor, classes: torch.Tensor | ClassBank, logit_scale: float = 100.0
    ) -> AdapterOutput:
        """image_emb [B, C] and either text embeddings [N, C] (keys/values recomputed, so gradients
        reach every weight: training) or a cached :class:`ClassBank` (inference)."""
        self._check_width("image embeddings", image_emb)
        if isinstance(classes, ClassBank):
            text_emb, keys, values = classes.text_emb, classes.keys, classes.values
        else:
            self._check_width("text embeddings", classes)
            text_emb = classes
            keys, values = functional.class_keys_values(text_emb, self.params())
        cfg = self.config
        if self.resolved_backend(image_emb.device) == "triton":
            from mmadapter.kernels import triton_adapter_head  # lazy: the package works without Triton

            out = triton_adapter_head(
                image_emb, text_emb, keys, values, self.params(), cfg.num_heads, cfg.blend, logit_scale
            )
        else:
            out = functional.adapter_head(
                image_emb, text_emb, keys, values, self.params(), cfg.num_heads, cfg.blend, logit_scale
            )
        return AdapterOutput(*out)

    def num_trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)


def _triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True
