"""The heads compared with the Multi-Modal Adapter, on the same cached embeddings:

- zero-shot CLIP: cosine similarity of image and class-prompt embeddings, scaled by CLIP's logit scale;
- CLIP-Adapter (Gao et al., 2021): an image-side bottleneck MLP (C -> C/4 -> C, ReLU after each
  layer, no biases) blended into the image embedding with residual ratio 0.2.

Every head maps (image embeddings [B, C], class text embeddings [N, C], logit scale) to logits
[B, N], so the training loop and the evaluation treat all of them alike (:func:`head_logits`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mmadapter.model.adapter import MultiModalAdapter
from mmadapter.model.config import AdapterConfig

HEAD_KINDS = ("zero-shot-clip", "clip-adapter", "mma")


class ZeroShotClip(nn.Module):
    """No parameters: CLIP's own classifier."""

    def forward(self, image_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale: float = 100.0) -> torch.Tensor:
        return logit_scale * F.normalize(image_emb, dim=-1) @ F.normalize(text_emb, dim=-1).T


class ClipAdapter(nn.Module):
    """CLIP-Adapter's visual adapter; the text side stays CLIP's."""

    def __init__(self, embed_dim: int = 512, reduction: int = 4, ratio: float = 0.2) -> None:
        super().__init__()
        self.ratio = ratio
        self.fc = nn.Sequential(
            nn.Linear(embed_dim, embed_dim // reduction, bias=False),
            nn.ReLU(),
            nn.Linear(embed_dim // reduction, embed_dim, bias=False),
            nn.ReLU(),
        )

    def forward(self, image_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale: float = 100.0) -> torch.Tensor:
        v = F.normalize(image_emb, dim=-1)
        v = F.normalize(self.ratio * self.fc(v) + (1 - self.ratio) * v, dim=-1)
        return logit_scale * v @ F.normalize(text_emb, dim=-1).T


def build_head(kind: str, embed_dim: int, seed: int = 1, adapter_config: AdapterConfig | None = None) -> nn.Module:
    """A freshly initialised head, its initial weights fixed by ``seed`` (global RNG left untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if kind == "zero-shot-clip":
            return ZeroShotClip()
        if kind == "clip-adapter":
            return ClipAdapter(embed_dim)
        if kind == "mma":
            return MultiModalAdapter(adapter_config or AdapterConfig(embed_dim=embed_dim), backend="torch")
    raise ValueError(f"unknown head kind {kind!r}; choose one of {HEAD_KINDS}")


def head_logits(
    head: nn.Module, image_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale: float = 100.0
) -> torch.Tensor:
    """[B, N] logits of any head. The Multi-Modal Adapter gets the raw text embeddings (not a class
    bank), so gradients reach its key/value projections during training."""
    out = head(image_emb, text_emb, logit_scale)
    return out.logits if isinstance(head, MultiModalAdapter) else out


__all__ = ["HEAD_KINDS", "ClipAdapter", "ZeroShotClip", "build_head", "head_logits"]
