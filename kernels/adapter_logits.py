"""Fused Triton kernel: [B, N] logits of the adapted image against the per-image adapted texts.

docs/design.md §3.2: with unit-norm v', s and t_i, and l the blend,
    logit[b, i] = scale * ((1-l) <v'_b, t_i> + l <v'_b, s_b>) / sqrt((1-l)^2 + l^2 + 2 l (1-l) <t_i, s_b>)
so one program per [BB, BN] output tile runs two dots over C (v' t^T and s t^T) that share the
text tile, and applies the rescale in the epilogue: the [B, N, C] adapted texts never exist.
Like ``functional.adapted_logits`` it normalises the text rows itself (their squared norms are
summed from the same tile loads), so un-normalised text embeddings give the same logits.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from mmadapter.kernels._checks import check_common, check_tensor

BLOCK_N = 64
BLOCK_C = 64


@triton.jit
def _adapter_logits_kernel(
    v_ptr, svb, svc, s_ptr, ssb, ssc, t_ptr, stn, stc, out_ptr, sob, son,
    B, N, keep, blend, scale,
    C: tl.constexpr, BB: tl.constexpr, BN: tl.constexpr, BC: tl.constexpr, PRECISION: tl.constexpr,
):
    rows = tl.program_id(0) * BB + tl.arange(0, BB)
    cls = tl.program_id(1) * BN + tl.arange(0, BN)
    rmask = rows < B
    nmask = cls < N
    # Row and class offsets in int64: the logits of 100k images x 21,843 classes are 2.2e9 > 2^31 elements,
    # and an int32 index times an int32 stride wraps silently (Triton passes strides < 2^31 as int32).
    rows64 = rows.to(tl.int64)
    cls64 = cls.to(tl.int64)
    vt = tl.zeros((BB, BN), dtype=tl.float32)
    st = tl.zeros((BB, BN), dtype=tl.float32)
    tt = tl.zeros((BN,), dtype=tl.float32)
    vs = tl.zeros((BB,), dtype=tl.float32)
    for c0 in range(0, C, BC):
        cols = c0 + tl.arange(0, BC)
        cmask = cols < C
        bcmask = rmask[:, None] & cmask[None, :]
        v = tl.load(v_ptr + rows64[:, None] * svb + cols[None, :] * svc, mask=bcmask, other=0.0)
        s = tl.load(s_ptr + rows64[:, None] * ssb + cols[None, :] * ssc, mask=bcmask, other=0.0)
        t = tl.load(t_ptr + cls64[None, :] * stn + cols[:, None] * stc, mask=nmask[None, :] & cmask[:, None], other=0.0)
        vt = tl.dot(v, t, vt, input_precision=PRECISION)
        st = tl.dot(s, t, st, input_precision=PRECISION)
        tf = t.to(tl.float32)
        tt += tl.sum(tf * tf, axis=0)
        # <v', s> is recomputed by every class tile: BB * C work, nothing next to the dots.
        vs += tl.sum(v.to(tl.float32) * s.to(tl.float32), axis=1)
    inv_t = 1.0 / tl.maximum(tl.sqrt(tt), 1e-12)
    vt = vt * inv_t[None, :]
    st = st * inv_t[None, :]
    # Clamped like functional: t = -s with blend 0.5 would make the adapted text zero.
    norm_sq = tl.maximum(keep * keep + blend * blend + 2.0 * keep * blend * st, 1e-12)
    out = scale * (keep * vt + blend * vs[:, None]) / tl.sqrt(norm_sq)
    tl.store(out_ptr + rows64[:, None] * sob + cls64[None, :] * son, out.to(out_ptr.dtype.element_ty),
             mask=rmask[:, None] & nmask[None, :])


def launch_meta(c_width: int, dtype: torch.dtype, batch: int, *, fp32_precision: str = "ieee") -> dict[str, int | str]:
    """The constexprs and launch options of ``_adapter_logits_kernel`` for this width, dtype and batch size,
    as ``adapted_logits_triton`` launches it. Needs no tensors, so the AOT compile test
    (tests/test_kernels_compile.py) builds exactly what a launch builds."""
    if fp32_precision not in ("ieee", "tf32"):
        raise ValueError(f"fp32_precision must be 'ieee' or 'tf32', got {fp32_precision!r}")
    # Bigger image tiles re-read the text bank fewer times; 64 keeps two fp32 accumulators in registers.
    bb = 16 if batch <= 16 else 32 if batch <= 32 else 64
    # fp32 tiles of 64 columns, three operands, two pipeline stages would crowd shared memory.
    bc = BLOCK_C if dtype != torch.float32 else BLOCK_C // 2
    return dict(
        C=c_width, BB=bb, BN=BLOCK_N, BC=bc, PRECISION=fp32_precision if dtype == torch.float32 else "tf32",
        num_warps=8 if bb == 64 else 4, num_stages=2,
    )


def adapted_logits_triton(
    v_adapted: torch.Tensor,
    shift: torch.Tensor,
    text_emb: torch.Tensor,
    blend: float,
    logit_scale: float = 100.0,
    *,
    fp32_precision: str = "ieee",
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """v' [B, C], s [B, C] (unit-norm, as ``adapt_image_triton`` writes them) and text embeddings [N, C]
    (normalised here) -> logits [B, N] in the input dtype; what ``functional.adapted_logits`` computes.
    ``out``: a [B, N] tensor of that dtype and device, any strides, to write the logits into (returned)."""
    check_tensor("v_adapted", v_adapted, 2)
    c_width = v_adapted.shape[1]
    check_tensor("shift", shift, 2, (v_adapted.shape[0], c_width))
    check_tensor("text_emb", text_emb, 2, (None, c_width))
    batch, n_cls = v_adapted.shape[0], text_emb.shape[0]
    named = {"v_adapted": v_adapted, "shift": shift, "text_emb": text_emb}
    if out is not None:
        named["out"] = check_tensor("out", out, 2, (batch, n_cls))
    dtype, device = check_common(named)
    if isinstance(logit_scale, torch.Tensor):
        raise ValueError("logit_scale must be a Python float here; multiply a tensor scale outside the kernel")
    if not 0.0 <= float(blend) <= 1.0:
        raise ValueError(f"blend must lie in [0, 1], got {blend}")
    meta = launch_meta(c_width, dtype, batch, fp32_precision=fp32_precision)
    if n_cls == 0:
        raise ValueError("text_emb needs at least one class (N >= 1)")
    if out is None:
        out = torch.empty((batch, n_cls), dtype=dtype, device=device)
    if batch == 0:
        return out
    grid = (triton.cdiv(batch, int(meta["BB"])), triton.cdiv(n_cls, int(meta["BN"])))
    _adapter_logits_kernel[grid](
        v_adapted, v_adapted.stride(0), v_adapted.stride(1), shift, shift.stride(0), shift.stride(1),
        text_emb, text_emb.stride(0), text_emb.stride(1), out, out.stride(0), out.stride(1),
        batch, n_cls, 1.0 - float(blend), float(blend), float(logit_scale), **meta,
    )
    return out
