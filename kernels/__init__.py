"""Triton kernels of the adapter head, installed as ``mmadapter.kernels``.

- ``adapt_image_triton``: fused down / query / single-query flash attention / out_proj / up / blend
  -> adapted image embedding v' and text shift s (``adapter_attention.py``).
- ``adapted_logits_triton``: fused [B, N] logits with the rescale epilogue (``adapter_logits.py``).
- ``triton_adapter_head``: both, with ``functional.adapter_head``'s signature and an autograd
  backward.

Importing this package needs torch only: the kernel modules (which import Triton) load on first use.
"""

from __future__ import annotations

from typing import Any

from mmadapter.kernels.head import triton_adapter_head

_LAZY = {
    "adapt_image_triton": "mmadapter.kernels.adapter_attention",
    "adapted_logits_triton": "mmadapter.kernels.adapter_logits",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'mmadapter.kernels' has no attribute {name!r}")


__all__ = ["adapt_image_triton", "adapted_logits_triton", "triton_adapter_head"]
