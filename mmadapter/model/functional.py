"""The exact fast path of the Multi-Modal Adapter (docs/design.md §3), as plain torch functions.

The reference mask makes every text token attend to the image token alone, so its output does not
depend on the class: it is one vector per image, the *text shift* ``s_b``. The image token is
single-query attention over N keys and values that depend on the label set only. With unit-norm
``t_i`` and ``s_b`` the adapted-text logit needs no [B, N, C] tensor:

    <v'_b, t'_bi> = ((1-l) <v'_b, t_i> + l <v'_b, s_b>) / sqrt((1-l)^2 + l^2 + 2 l (1-l) <t_i, s_b>)

These functions are the torch backend of the adapter, what the ONNX export traces, the backward of the
Triton head, and what the Triton kernels are checked against besides the reference.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F


class AdapterParams(NamedTuple):
    """The adapter's weights, in ``torch.nn.Linear`` / ``nn.MultiheadAttention`` layout."""

    down_weight: torch.Tensor  # [D, C]
    down_bias: torch.Tensor  # [D]
    in_proj_weight: torch.Tensor  # [3D, D]: query, key, value projections stacked
    in_proj_bias: torch.Tensor  # [3D]
    out_proj_weight: torch.Tensor  # [D, D]
    out_proj_bias: torch.Tensor  # [D]
    up_weight: torch.Tensor  # [C, D]
    up_bias: torch.Tensor  # [C]


def _split_in_proj(p: AdapterParams) -> tuple[torch.Tensor, ...]:
    wq, wk, wv = p.in_proj_weight.chunk(3, dim=0)
    bq, bk, bv = p.in_proj_bias.chunk(3, dim=0)
    return wq, wk, wv, bq, bk, bv


def class_keys_values(text_emb: torch.Tensor, p: AdapterParams) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys and values [N, D] of the class tokens: they depend on the label set only, so they are
    computed once per label set (and cached in a class bank at inference)."""
    _, wk, wv, _, bk, bv = _split_in_proj(p)
    d = F.linear(F.normalize(text_emb, dim=-1), p.down_weight, p.down_bias)
    return F.linear(d, wk, bk), F.linear(d, wv, bv)


def adapt_image(
    image_emb: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    p: AdapterParams,
    num_heads: int,
    blend: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """image_emb [B, C] -> (adapted image embedding v' [B, C], text shift s [B, C]); both unit-norm.

    O(B * N * D) work; the largest intermediate is the [B, heads, N] attention weights."""
    wq, _, wv, bq, _, bv = _split_in_proj(p)
    v = F.normalize(image_emb, dim=-1)
    d = F.linear(v, p.down_weight, p.down_bias)  # [B, D]
    b, n = d.shape[0], keys.shape[0]
    head_dim = d.shape[1] // num_heads
    q = F.linear(d, wq, bq).view(b, num_heads, head_dim)
    k = keys.view(n, num_heads, head_dim)
    val = values.view(n, num_heads, head_dim)
    scores = torch.einsum("bhd,nhd->bhn", q, k) * (1.0 / math.sqrt(head_dim))
    attended = torch.einsum("bhn,nhd->bhd", scores.softmax(dim=-1), val).reshape(b, -1)
    a_img = F.linear(F.linear(attended, p.out_proj_weight, p.out_proj_bias), p.up_weight, p.up_bias)
    v_adapted = F.normalize((1 - blend) * v + blend * F.normalize(a_img, dim=-1), dim=-1)
    # A text token's softmax has one key (the image), weight 1: its output is the image's value.
    own_value = F.linear(d, wv, bv)
    shift = F.linear(F.linear(own_value, p.out_proj_weight, p.out_proj_bias), p.up_weight, p.up_bias)
    return v_adapted, F.normalize(shift, dim=-1)


def adapted_logits(
    v_adapted: torch.Tensor,
    shift: torch.Tensor,
    text_emb: torch.Tensor,
    blend: float,
    logit_scale: float | torch.Tensor = 100.0,
) -> torch.Tensor:
    """[B, N] logits against the per-image adapted texts normalize((1-l) t_i + l s_b), without
    forming them: two [B, C] x [C, N] products and a per-element rescale."""
    t = F.normalize(text_emb, dim=-1)
    keep = 1 - blend
    v_dot_t = v_adapted @ t.T  # [B, N]
    s_dot_t = shift @ t.T  # [B, N]
    v_dot_s = (v_adapted * shift).sum(dim=-1, keepdim=True)  # [B, 1]
    # |(1-l) t + l s|^2 for unit t, s; clamped because t = -s with l = 0.5 would make it zero.
    norm_sq = (keep * keep + blend * blend + 2 * keep * blend * s_dot_t).clamp_min(1e-12)
    return logit_scale * (keep * v_dot_t + blend * v_dot_s) * norm_sq.rsqrt()


def adapter_head(
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    p: AdapterParams,
    num_heads: int,
    blend: float,
    logit_scale: float | torch.Tensor = 100.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The whole head: (logits [B, N], adapted image [B, C], text shift [B, C])."""
    v_adapted, shift = adapt_image(image_emb, keys, values, p, num_heads, blend)
    return adapted_logits(v_adapted, shift, text_emb, blend, logit_scale), v_adapted, shift
