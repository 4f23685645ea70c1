"""Fused Triton kernel: the adapted image embedding v' and the text shift s (docs/design.md §3.2; the kernel: §4).

Per tile of BB images, one program computes
    d  = down(normalize(v))                       shared by both outputs
    q  = W_q d + b_q, then single-query attention over the cached class keys/values, in tiles of
         BN keys with an online softmax (fp32 running max and sum), any N (masked tail)
    a  = up(out_proj(attended));  v' = normalize((1-l) v^ + l normalize(a))
    u  = up(out_proj(W_v d + b_v)); s = normalize(u)   (a text token's softmax has one key: weight 1)
and writes v' and s. Triton cannot slice register tensors, and a whole [D, D] weight tile
(256 x 256 for C = 1024) does not fit in shared memory, so every projection is a sum of
[BB, BK] x [BK, *] dots over column chunks picked out of the register tile by a masked reduction,
in rolled loops (unrolled, ptxas spilled up to 150 KB per thread in fp32 at C >= 768), and up() is a
batched dot over K chunks of BK (see tests/test_kernels_compile.py for the compiled register budget).
Heads live in a padded layout: head h, dim j sits at column h * HDP + j with HDP = next power of
two >= head_dim (48 -> 64), so attention runs as 3-D dots [heads, BB, HDP] x [heads, HDP, BN].

With few image tiles (small batch) the key range is split over programs (flash-decoding): a first
launch writes each split's running max, sum and accumulator, a second combines them and runs the
epilogue. With one split everything is one launch.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from mmadapter.kernels._checks import check_common, check_tensor, interpreting, next_pow2

LOG2E = 1.4426950408889634
BLOCK_B = 16  # images per program: the M dim of every dot, >= 16 for tl.dot on GPUs
BLOCK_N = 64  # keys per attention step (the interpreter's; on a GPU see _gpu_block_n)
BLOCK_C = 32  # embedding columns per step of the down/up projections (keeps weight tiles small)
BLOCK_K = 32  # bottleneck columns per step of the bottleneck projections


@triton.jit
def _col_chunk(x, j, ROWS: tl.constexpr, NCHUNK: tl.constexpr, BK: tl.constexpr):
    """Columns [j*BK, (j+1)*BK) of a register tile x [ROWS, NCHUNK*BK], by mask and reduction."""
    x3 = tl.reshape(x, (ROWS, NCHUNK, BK))
    sel = (tl.arange(0, NCHUNK) == j)[None, :, None]
    return tl.sum(tl.where(sel, x3, 0.0), axis=1)


@triton.jit
def _down(x_ptr, sxb, sxc, rows, rmask, wd_ptr, bd_ptr,
          C: tl.constexpr, D: tl.constexpr, DP: tl.constexpr, BB: tl.constexpr, BC: tl.constexpr,
          PRECISION: tl.constexpr):
    """d = down(v / |v|) [BB, DP] in fp32, plus |v|^2 [BB]. Normalising is a per-row scale, so it
    is applied to the accumulated product instead of to v. ``rows`` are int64 (see the kernel)."""
    offs_d = tl.arange(0, DP)
    acc = tl.zeros((BB, DP), dtype=tl.float32)
    sumsq = tl.zeros((BB,), dtype=tl.float32)
    for c0 in range(0, C, BC):
        cols = c0 + tl.arange(0, BC)
        xc = tl.load(x_ptr + rows[:, None] * sxb + cols[None, :] * sxc,
                     mask=rmask[:, None] & (cols < C)[None, :], other=0.0)
        xf = xc.to(tl.float32)
        sumsq += tl.sum(xf * xf, axis=1)
        w = tl.load(wd_ptr + offs_d[None, :] * C + cols[:, None],
                    mask=(offs_d < D)[None, :] & (cols < C)[:, None], other=0.0)  # W_down^T chunk
        acc = tl.dot(xc, w, acc, input_precision=PRECISION)
    inv = 1.0 / tl.maximum(tl.sqrt(sumsq), 1e-12)
    bias = tl.load(bd_ptr + offs_d, mask=offs_d < D, other=0.0).to(tl.float32)
    return acc * inv[:, None] + bias[None, :], sumsq


@triton.jit
def _to_heads(d, w_ptr, b_ptr, row0, D: tl.constexpr, DP: tl.constexpr, HD: tl.constexpr,
              H: tl.constexpr, HP: tl.constexpr, HDP: tl.constexpr, BB: tl.constexpr, BK: tl.constexpr,
              PRECISION: tl.constexpr):
    """W[row0:row0+D] d + b for d [BB, DP] -> [BB, HP*HDP] in the padded head layout."""
    DH: tl.constexpr = HP * HDP
    offs = tl.arange(0, DH)
    head, dim = offs // HDP, offs % HDP
    valid = (head < H) & (dim < HD)
    wrow = row0 + head * HD + dim
    acc = tl.zeros((BB, DH), dtype=tl.float32)
    for j in range(DP // BK):
        dk = _col_chunk(d, j, BB, DP // BK, BK).to(w_ptr.dtype.element_ty)
        ks = j * BK + tl.arange(0, BK)
        w = tl.load(w_ptr + wrow[None, :] * D + ks[:, None], mask=valid[None, :] & (ks < D)[:, None], other=0.0)
        acc = tl.dot(dk, w, acc, input_precision=PRECISION)
    bias = tl.load(b_ptr + wrow, mask=valid, other=0.0).to(tl.float32)
    return acc + bias[None, :]


@triton.jit
def _from_heads(h, w_ptr, b_ptr, D: tl.constexpr, DP: tl.constexpr, HD: tl.constexpr, H: tl.constexpr,
                HP: tl.constexpr, HDP: tl.constexpr, BB: tl.constexpr, BK: tl.constexpr, PRECISION: tl.constexpr):
    """out_proj: W_o h + b_o for h [BB, HP*HDP] in the padded head layout -> [BB, DP]."""
    DH: tl.constexpr = HP * HDP
    offs_o = tl.arange(0, DP)
    acc = tl.zeros((BB, DP), dtype=tl.float32)
    for j in range(DH // BK):
        hk = _col_chunk(h, j, BB, DH // BK, BK).to(w_ptr.dtype.element_ty)
        ks = j * BK + tl.arange(0, BK)
        head, dim = ks // HDP, ks % HDP
        kvalid = (head < H) & (dim < HD)
        w = tl.load(w_ptr + offs_o[None, :] * D + (head * HD + dim)[:, None],
                    mask=(offs_o < D)[None, :] & kvalid[:, None], other=0.0)
        acc = tl.dot(hk, w, acc, input_precision=PRECISION)
    bias = tl.load(b_ptr + offs_o, mask=offs_o < D, other=0.0).to(tl.float32)
    return acc + bias[None, :]


@triton.jit
def _adapter_attention_kernel(
    x_ptr, sxb, sxc, k_ptr, skn, skd, val_ptr, svn, svd,
    wd_ptr, bd_ptr, wi_ptr, bi_ptr, wo_ptr, bo_ptr, wu_ptr, bu_ptr,
    outv_ptr, outs_ptr, pml_ptr, pacc_ptr,
    B, N, keys_per_split, num_splits, qk_scale, blend,
    C: tl.constexpr, D: tl.constexpr, H: tl.constexpr, HD: tl.constexpr, DP: tl.constexpr,
    HP: tl.constexpr, HDP: tl.constexpr, BB: tl.constexpr, BN: tl.constexpr, BC: tl.constexpr,
    BK: tl.constexpr, MODE: tl.constexpr, PRECISION: tl.constexpr,
):
    # MODE 0: everything in one launch; 1: attention partials of one key split; 2: combine + epilogue.
    DH: tl.constexpr = HP * HDP
    pid_b = tl.program_id(0)
    pid_s = tl.program_id(1)
    rows = pid_b * BB + tl.arange(0, BB)
    rmask = rows < B
    # Addresses from a row or class index are computed in int64: Triton passes strides < 2^31 as int32, and
    # an int32 index times such a stride wraps silently once it passes 2^31 (a strided view of a large
    # batch; the split partials of a large one). Masks and the partials' in-plane offsets stay int32.
    rows64 = rows.to(tl.int64)
    pid_s64 = pid_s.to(tl.int64)
    d, sumsq = _down(x_ptr, sxb, sxc, rows64, rmask, wd_ptr, bd_ptr, C, D, DP, BB, BC, PRECISION)

    hh = tl.arange(0, HP)
    ml_offs = hh[:, None] * B + rows[None, :]  # [HP, BB] into a [HP, B] plane
    acc_offs = ml_offs[:, :, None] * HDP + tl.arange(0, HDP)[None, None, :]  # [HP, BB, HDP]
    if MODE != 2:
        q = _to_heads(d, wi_ptr, bi_ptr, 0, D, DP, HD, H, HP, HDP, BB, BK, PRECISION) * qk_scale
        q3 = tl.permute(tl.reshape(q, (BB, HP, HDP)), (1, 0, 2)).to(k_ptr.dtype.element_ty)
        # Keys are read transposed, [HP, HDP, BN], so scores are a plain batched dot.
        kh = tl.arange(0, HP)[:, None, None]
        kd = tl.arange(0, HDP)[None, :, None]
        kn = tl.arange(0, BN)[None, None, :]
        kcol_ok = (kh < H) & (kd < HD)
        vh = tl.arange(0, HP)[:, None, None]
        vn = tl.arange(0, BN)[None, :, None]
        vd = tl.arange(0, HDP)[None, None, :]
        vcol_ok = (vh < H) & (vd < HD)
        m_i = tl.full((HP, BB), float("-inf"), dtype=tl.float32)
        l_i = tl.zeros((HP, BB), dtype=tl.float32)
        acc = tl.zeros((HP, BB, HDP), dtype=tl.float32)
        start = pid_s * keys_per_split
        end = tl.minimum(N, start + keys_per_split)
        for n0 in range(start, end, BN):
            kt = tl.load(k_ptr + (n0 + kn).to(tl.int64) * skn + (kh * HD + kd) * skd,
                         mask=kcol_ok & ((n0 + kn) < end), other=0.0)
            s = tl.dot(q3, kt, input_precision=PRECISION)  # [HP, BB, BN], log2 units
            s = tl.where(((n0 + tl.arange(0, BN)) < end)[None, None, :], s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, axis=2))
            alpha = tl.exp2(m_i - m_new)
            p = tl.exp2(s - m_new[:, :, None])
            l_i = l_i * alpha + tl.sum(p, axis=2)
            vt = tl.load(val_ptr + (n0 + vn).to(tl.int64) * svn + (vh * HD + vd) * svd,
                         mask=vcol_ok & ((n0 + vn) < end), other=0.0)
            acc = tl.dot(p.to(val_ptr.dtype.element_ty), vt, acc * alpha[:, :, None], input_precision=PRECISION)
            m_i = m_new
        if MODE == 1:
            plane = pid_s64 * 2 * HP * B
            store_mask = rmask[None, :]
            tl.store(pml_ptr + plane + ml_offs, m_i, mask=store_mask)
            tl.store(pml_ptr + plane + HP * B + ml_offs, l_i, mask=store_mask)
            tl.store(pacc_ptr + pid_s64 * HP * B * HDP + acc_offs, acc, mask=store_mask[:, :, None])
    else:
        # Combine the key splits: rescale each split's sum and accumulator to the global max.
        m_i = tl.full((HP, BB), float("-inf"), dtype=tl.float32)
        for sp in range(0, num_splits):
            m_s = tl.load(pml_ptr + tl.cast(sp, tl.int64) * 2 * HP * B + ml_offs, mask=rmask[None, :], other=0.0)
            m_i = tl.maximum(m_i, m_s)
        l_i = tl.zeros((HP, BB), dtype=tl.float32)
        acc = tl.zeros((HP, BB, HDP), dtype=tl.float32)
        for sp in range(0, num_splits):
            sp64 = tl.cast(sp, tl.int64)  # sp is a Python int in the interpreter
            m_s = tl.load(pml_ptr + sp64 * 2 * HP * B + ml_offs, mask=rmask[None, :], other=0.0)
            l_s = tl.load(pml_ptr + sp64 * 2 * HP * B + HP * B + ml_offs, mask=rmask[None, :], other=1.0)
            a_s = tl.load(pacc_ptr + sp64 * HP * B * HDP + acc_offs, mask=rmask[None, :, None], other=0.0)
            w = tl.exp2(m_s - m_i)
            l_i += l_s * w
            acc += a_s * w[:, :, None]

    if MODE != 1:
        attended = tl.reshape(tl.permute(acc / l_i[:, :, None], (1, 0, 2)), (BB, DH))
        own_value = _to_heads(d, wi_ptr, bi_ptr, 2 * D, D, DP, HD, H, HP, HDP, BB, BK, PRECISION)
        o = _from_heads(attended, wo_ptr, bo_ptr, D, DP, HD, H, HP, HDP, BB, BK, PRECISION)
        o_s = _from_heads(own_value, wo_ptr, bo_ptr, D, DP, HD, H, HP, HDP, BB, BK, PRECISION)
        # up() runs as batched dots over K chunks of BK, summed: [NK, BB, BK] x [NK, BK, BC]. A plain
        # [BB, DP] x [DP, BC] dot has K = DP, and fp32 "ieee" dots (FMA, no tensor cores) hold a
        # thread's whole K extent in registers: at DP 256 ptxas spilled 40-150 KB (AOT compile test).
        NK: tl.constexpr = DP // BK
        o3 = tl.permute(tl.reshape(o.to(wu_ptr.dtype.element_ty), (BB, NK, BK)), (1, 0, 2))
        os3 = tl.permute(tl.reshape(o_s.to(wu_ptr.dtype.element_ty), (BB, NK, BK)), (1, 0, 2))
        kk = (tl.arange(0, NK)[:, None, None] * BK + tl.arange(0, BK)[None, :, None])  # [NK, BK, 1]
        inv_v = 1.0 / tl.maximum(tl.sqrt(sumsq), 1e-12)
        # Pass 1: the norms. |y|^2 of y = (1-l) v^ + l a^ follows from |v^|^2, |a|^2 and <v^, a>, so
        # up() is recomputed once in pass 2 instead of keeping a [BB, C] tile in registers.
        aa = tl.zeros((BB,), dtype=tl.float32)
        va = tl.zeros((BB,), dtype=tl.float32)
        uu = tl.zeros((BB,), dtype=tl.float32)
        for c0 in range(0, C, BC):
            cols = c0 + tl.arange(0, BC)
            wu = tl.load(wu_ptr + cols[None, None, :] * D + kk, mask=(cols < C)[None, None, :] & (kk < D),
                         other=0.0)  # W_up^T chunk, [NK, BK, BC]
            bu = tl.load(bu_ptr + cols, mask=cols < C, other=0.0).to(tl.float32)[None, :]
            a = tl.sum(tl.dot(o3, wu, input_precision=PRECISION), axis=0) + bu
            u = tl.sum(tl.dot(os3, wu, input_precision=PRECISION), axis=0) + bu
            xv = tl.load(x_ptr + rows64[:, None] * sxb + cols[None, :] * sxc,
                         mask=rmask[:, None] & (cols < C)[None, :], other=0.0).to(tl.float32)
            aa += tl.sum(a * a, axis=1)
            va += tl.sum(xv * a, axis=1)
            uu += tl.sum(u * u, axis=1)
        inv_a = 1.0 / tl.maximum(tl.sqrt(aa), 1e-12)
        keep = 1.0 - blend
        yy = keep * keep * sumsq * inv_v * inv_v + blend * blend * aa * inv_a * inv_a
        yy += 2.0 * keep * blend * va * inv_v * inv_a
        inv_y = 1.0 / tl.maximum(tl.sqrt(tl.maximum(yy, 0.0)), 1e-12)
        inv_u = 1.0 / tl.maximum(tl.sqrt(uu), 1e-12)
        # Pass 2: recompute up() per chunk and write both outputs.
        for c0 in range(0, C, BC):
            cols = c0 + tl.arange(0, BC)
            cmask = rmask[:, None] & (cols < C)[None, :]
            wu = tl.load(wu_ptr + cols[None, None, :] * D + kk, mask=(cols < C)[None, None, :] & (kk < D),
                         other=0.0)  # W_up^T chunk, [NK, BK, BC]
            bu = tl.load(bu_ptr + cols, mask=cols < C, other=0.0).to(tl.float32)[None, :]
            a = tl.sum(tl.dot(o3, wu, input_precision=PRECISION), axis=0) + bu
            u = tl.sum(tl.dot(os3, wu, input_precision=PRECISION), axis=0) + bu
            xv = tl.load(x_ptr + rows64[:, None] * sxb + cols[None, :] * sxc, mask=cmask, other=0.0).to(tl.float32)
            y = (keep * xv * inv_v[:, None] + blend * a * inv_a[:, None]) * inv_y[:, None]
            out_offs = rows64[:, None] * C + cols[None, :]
            tl.store(outv_ptr + out_offs, y.to(outv_ptr.dtype.element_ty), mask=cmask)
            tl.store(outs_ptr + out_offs, (u * inv_u[:, None]).to(outs_ptr.dtype.element_ty), mask=cmask)


def _gpu_block_n(padded_bottleneck: int, elem_size: int) -> int:
    """Keys per step such that one key (or value) tile is about 16 KiB: the pipeliner double-buffers
    both in shared memory, and 256-wide fp32 tiles of 64 keys would not fit next to the weight tiles."""
    return max(16, min(64, 16384 // (padded_bottleneck * elem_size)))


def launch_meta(
    c_width: int,
    d_width: int,
    num_heads: int,
    dtype: torch.dtype,
    *,
    block_n: int | None = None,
    fp32_precision: str = "ieee",
    interpret: bool | None = None,
) -> dict[str, int | str]:
    """The constexprs (all but MODE) and launch options of ``_adapter_attention_kernel`` for these widths
    and dtype, as ``adapt_image_triton`` launches it. Needs no tensors, so the AOT compile test
    (tests/test_kernels_compile.py) builds exactly what a launch builds. ``interpret`` None: as the
    environment says; False: the GPU choice (key tile sized for shared memory)."""
    if fp32_precision not in ("ieee", "tf32"):
        raise ValueError(f"fp32_precision must be 'ieee' or 'tf32', got {fp32_precision!r}")
    head_dim = d_width // num_heads
    dp, hp, hdp = next_pow2(d_width), next_pow2(num_heads, 1), next_pow2(head_dim)
    if interpret is None:
        interpret = interpreting()
    if block_n is None:
        block_n = BLOCK_N if interpret else _gpu_block_n(hp * hdp, dtype.itemsize)
    if block_n < 16 or block_n & (block_n - 1):
        raise ValueError(f"block_n must be a power of two >= 16, got {block_n}")
    return dict(
        C=c_width, D=d_width, H=num_heads, HD=head_dim, DP=dp, HP=hp, HDP=hdp, BB=BLOCK_B, BN=block_n,
        BC=BLOCK_C, BK=min(BLOCK_K, dp, hp * hdp),
        PRECISION=fp32_precision if dtype == torch.float32 else "tf32",  # ignored by fp16/bf16 dots
        num_warps=4, num_stages=2,
    )


def _num_sms(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 1  # interpreter: programs run one after another, splitting buys nothing


def adapt_image_triton(
    image_emb: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    params: tuple[torch.Tensor, ...],
    num_heads: int,
    blend: float,
    *,
    num_splits: int | None = None,
    block_n: int | None = None,
    fp32_precision: str = "ieee",
) -> tuple[torch.Tensor, torch.Tensor]:
    """image_emb [B, C], class keys/values [N, D] and the 8 adapter weights (``AdapterParams`` order)
    -> (v' [B, C], s [B, C]), both unit-norm, in the input dtype; what ``functional.adapt_image``
    computes, in one launch (two when the key range is split over programs).

    ``num_splits`` None picks a split count that fills the GPU; ``fp32_precision`` "ieee" keeps fp32
    dots exact (TF32 would cost ~1e-3 relative, 0.1 on CLIP-scale logits); "tf32" trades that for speed.
    """
    if not isinstance(params, tuple) or len(params) != 8:
        raise ValueError("params must be the 8 adapter weights in AdapterParams order")
    wd, bd, wi, bi, wo, bo, wu, bu = params
    check_tensor("down_weight", wd, 2)
    d_width, c_width = wd.shape
    check_tensor("image_emb", image_emb, 2, (None, c_width))
    check_tensor("keys", keys, 2, (None, d_width))
    check_tensor("values", values, 2, (keys.shape[0], d_width))
    check_tensor("down_bias", bd, 1, (d_width,))
    check_tensor("in_proj_weight", wi, 2, (3 * d_width, d_width))
    check_tensor("in_proj_bias", bi, 1, (3 * d_width,))
    check_tensor("out_proj_weight", wo, 2, (d_width, d_width))
    check_tensor("out_proj_bias", bo, 1, (d_width,))
    check_tensor("up_weight", wu, 2, (c_width, d_width))
    check_tensor("up_bias", bu, 1, (c_width,))
    names = ("down_weight", "down_bias", "in_proj_weight", "in_proj_bias", "out_proj_weight", "out_proj_bias",
             "up_weight", "up_bias")
    dtype, device = check_common(
        {"image_emb": image_emb, "keys": keys, "values": values, **dict(zip(names, params))}
    )
    if not isinstance(num_heads, int) or num_heads <= 0 or d_width % num_heads:
        raise ValueError(f"num_heads must be a positive divisor of the bottleneck width {d_width}, got {num_heads}")
    if not 0.0 <= float(blend) <= 1.0:
        raise ValueError(f"blend must lie in [0, 1], got {blend}")
    meta = launch_meta(c_width, d_width, num_heads, dtype, block_n=block_n, fp32_precision=fp32_precision)
    n_keys, batch = keys.shape[0], image_emb.shape[0]
    if n_keys == 0:
        raise ValueError("keys and values need at least one class (N >= 1)")
    out_v = torch.empty((batch, c_width), dtype=dtype, device=device)
    out_s = torch.empty((batch, c_width), dtype=dtype, device=device)
    if batch == 0:
        return out_v, out_s
    # Weights are indexed as dense row-major inside the kernel; activations may have any strides.
    wd, bd, wi, bi, wo, bo, wu, bu = (t.contiguous() for t in params)

    head_dim, block_n, hp, hdp = d_width // num_heads, int(meta["BN"]), int(meta["HP"]), int(meta["HDP"])
    tiles = triton.cdiv(batch, BLOCK_B)
    key_blocks = triton.cdiv(n_keys, block_n)
    if num_splits is None:
        # Fill about two waves of programs, but give each split at least 4 key blocks so the
        # repeated down/query projection stays small next to its share of the attention.
        num_splits = max(1, min(triton.cdiv(2 * _num_sms(device), tiles), key_blocks // 4))
    num_splits = max(1, min(int(num_splits), key_blocks))
    keys_per_split = triton.cdiv(key_blocks, num_splits) * block_n
    num_splits = triton.cdiv(n_keys, keys_per_split)  # no empty split
    if hp * batch * hdp >= 2**31:
        # The partials are indexed in int32 within a split's plane; a batch this large fills the GPU unsplit.
        keys_per_split, num_splits = key_blocks * block_n, 1

    if num_splits > 1:
        pml = torch.empty((num_splits, 2, hp, batch), dtype=torch.float32, device=device)
        pacc = torch.empty((num_splits, hp, batch, hdp), dtype=torch.float32, device=device)
    else:
        pml = pacc = out_v  # unused in the one-launch mode
    args = (
        image_emb, image_emb.stride(0), image_emb.stride(1), keys, keys.stride(0), keys.stride(1),
        values, values.stride(0), values.stride(1), wd, bd, wi, bi, wo, bo, wu, bu, out_v, out_s, pml, pacc,
        batch, n_keys, keys_per_split, num_splits, LOG2E / math.sqrt(head_dim), float(blend),
    )
    if num_splits == 1:
        _adapter_attention_kernel[(tiles, 1)](*args, MODE=0, **meta)
    else:
        _adapter_attention_kernel[(tiles, num_splits)](*args, MODE=1, **meta)
        _adapter_attention_kernel[(tiles, 1)](*args, MODE=2, **meta)
    return out_v, out_s
