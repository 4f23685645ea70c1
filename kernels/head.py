"""The adapter head on the Triton kernels, with an autograd backward.

Forward runs the two fused kernels (``adapt_image_triton`` then ``adapted_logits_triton``). Backward is the
torch fast path recomputed under ``enable_grad`` (``mmadapter.model.functional``): the head is O(N * C)
per image, so recomputing it costs one more forward, and the gradients are exactly the fast path's.

Triton is imported only when a kernel is launched, so this module (and ``mmadapter.kernels``)
imports on machines without Triton or without a GPU.
"""

from __future__ import annotations

import torch


def _launch(
    image_emb: torch.Tensor, text_emb: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
    params: tuple, num_heads: int, blend: float, logit_scale: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    from mmadapter.kernels.adapter_attention import adapt_image_triton
    from mmadapter.kernels.adapter_logits import adapted_logits_triton

    v_adapted, shift = adapt_image_triton(image_emb, keys, values, tuple(params), num_heads, blend)
    return adapted_logits_triton(v_adapted, shift, text_emb, blend, logit_scale), v_adapted, shift


def _fast_path(inputs: tuple, num_heads: int, blend: float, logit_scale: float) -> tuple:
    # The model code is imported here only: kernel files stay free of it (docs/design.md §4).
    from mmadapter.model import functional

    image_emb, text_emb, keys, values, *params = inputs
    return functional.adapter_head(
        image_emb, text_emb, keys, values, functional.AdapterParams(*params), num_heads, blend, logit_scale
    )


def _recompute_grads(
    inputs: tuple, needs: tuple, grads: tuple, num_heads: int, blend: float, logit_scale: float
) -> list[torch.Tensor | None]:
    """Gradients of the fast path at ``inputs`` for output gradients ``grads`` (None = zero)."""
    with torch.enable_grad():
        leaves = [x.detach().requires_grad_(bool(n)) for x, n in zip(inputs, needs)]
        outs = _fast_path(tuple(leaves), num_heads, blend, logit_scale)
        pairs = [(o, g) for o, g in zip(outs, grads) if g is not None]
        wanted = [x for x in leaves if x.requires_grad]
        if not wanted or not pairs:
            return [None] * len(inputs)
        got = iter(torch.autograd.grad([o for o, _ in pairs], wanted, [g for _, g in pairs], allow_unused=True))
    return [next(got) if x.requires_grad else None for x in leaves]


class _TritonAdapterHead(torch.autograd.Function):
    @staticmethod
    def forward(ctx, num_heads, blend, logit_scale, *inputs):  # noqa: ANN001 - autograd signature
        ctx.save_for_backward(*inputs)
        ctx.cfg = (num_heads, blend, logit_scale)
        image_emb, text_emb, keys, values, *params = inputs
        return _launch(image_emb, text_emb, keys, values, tuple(params), num_heads, blend, logit_scale)

    @staticmethod
    def backward(ctx, *grads):  # noqa: ANN001
        grads_in = _recompute_grads(ctx.saved_tensors, ctx.needs_input_grad[3:], grads, *ctx.cfg)
        return (None, None, None, *grads_in)


def triton_adapter_head(
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    p: tuple,
    num_heads: int,
    blend: float,
    logit_scale: float | torch.Tensor = 100.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Same signature and result as ``functional.adapter_head``: (logits [B, N], v' [B, C], s [B, C]),
    on the Triton kernels (CUDA tensors, or CPU tensors under ``TRITON_INTERPRET=1``).
    Differentiable: backward recomputes the torch fast path."""
    tensor_scale = logit_scale if isinstance(logit_scale, torch.Tensor) else None
    # A tensor scale (e.g. a learnt one) is applied outside the kernel so autograd sees it.
    scale = 1.0 if tensor_scale is not None else float(logit_scale)
    inputs = (image_emb, text_emb, keys, values, *tuple(p))
    if torch.is_grad_enabled() and any(isinstance(t, torch.Tensor) and t.requires_grad for t in inputs):
        logits, v_adapted, shift = _TritonAdapterHead.apply(num_heads, blend, scale, *inputs)
    else:
        logits, v_adapted, shift = _launch(image_emb, text_emb, keys, values, tuple(p), num_heads, blend, scale)
    if tensor_scale is not None:
        logits = logits * tensor_scale
    return logits, v_adapted, shift
