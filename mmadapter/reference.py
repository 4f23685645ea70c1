"""The paper's formulation of the Multi-Modal Adapter, in plain torch: the ground truth.

This is the method of docs/design.md §1.3 written out literally, the way the authors' code computes it: per image,
a token sequence of the N class texts followed by the image, a mask that lets each text token see
only the image and the image see only the texts, one multi-head attention over the bottleneck, and
the residual blends. It costs O(B * N^2) time and memory, so it is used only by tests and
benchmarks as the reference that the fast path (``mmadapter.model.functional``) must reproduce.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mmadapter.model.config import AdapterConfig


def cross_modal_mask(num_classes: int, device: torch.device | None = None) -> torch.Tensor:
    """Additive [N+1, N+1] mask: text token i sees only the image token (index N); the image
    token sees only the N text tokens, not itself."""
    n = num_classes
    mask = torch.full((n + 1, n + 1), float("-inf"), device=device)
    mask[:n, n] = 0.0
    mask[n, :n] = 0.0
    return mask


class ReferenceMultiModalAdapter(nn.Module):
    """Same parameters (names and shapes) as :class:`mmadapter.model.adapter.MultiModalAdapter`."""

    def __init__(self, config: AdapterConfig | None = None) -> None:
        super().__init__()
        self.config = config or AdapterConfig()
        c, d = self.config.embed_dim, self.config.bottleneck_dim
        self.down = nn.Linear(c, d)
        self.attn = nn.MultiheadAttention(d, self.config.num_heads, batch_first=True)
        self.up = nn.Linear(d, c)

    def forward(
        self, image_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale: float = 100.0
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """image_emb [B, C], text_emb [N, C] -> (logits [B, N], adapted image [B, C],
        adapted text [B, N, C])."""
        lam = self.config.blend
        v = F.normalize(image_emb, dim=-1)
        t = F.normalize(text_emb, dim=-1)
        b, n = v.shape[0], t.shape[0]
        seq = torch.cat([t.unsqueeze(0).expand(b, n, -1), v.unsqueeze(1)], dim=1)  # [B, N+1, C]
        x = self.down(seq)
        # The authors build one mask per (image, head): materialise it the same way, so the
        # reference's cost is the one the fast path is measured against.
        mask = cross_modal_mask(n, device=v.device).to(x.dtype)
        mask = mask.unsqueeze(0).repeat(b * self.config.num_heads, 1, 1)
        h, _ = self.attn(x, x, x, attn_mask=mask, need_weights=False)
        h = self.up(h)  # [B, N+1, C]
        a_img = F.normalize(h[:, n], dim=-1)
        a_txt = F.normalize(h[:, :n], dim=-1)
        v_adapted = F.normalize((1 - lam) * v + lam * a_img, dim=-1)
        t_adapted = F.normalize((1 - lam) * t.unsqueeze(0) + lam * a_txt, dim=-1)  # [B, N, C]
        logits = logit_scale * torch.einsum("bc,bnc->bn", v_adapted, t_adapted)
        return logits, v_adapted, t_adapted

