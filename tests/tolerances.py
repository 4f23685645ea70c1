"""The tolerances of the numerical tests, in one table, and the two helpers that apply them.

Every value is listed with its reason in docs/design.md §8.1. A failure message names what was compared,
against which reference, the error found and the tolerance, so a failing run says which rule broke.
"""

from __future__ import annotations

from typing import Any

import torch

from mmadapter.runtime.graphs import TOLERANCES as EXPORT_TOLERANCES

# Max abs difference of fp32 logits (CLIP's scale, ~100) from reference.py: two summation orders differ by
# ~1e-5; any formula error moves logits by 1e-2 or more.
LOGIT_ATOL_FP32 = 1e-4
# Max abs difference of unit-norm embeddings (adapted image v', text shift s, adapted texts), fp32.
EMB_ATOL_FP32 = 1e-5
# The same arithmetic, only addressing differs (strided inputs vs contiguous copies).
SAME_OPS_ATOL = 1e-6
# Logits from a cached class bank vs keys/values recomputed from the raw texts: the bank's texts are normalised
# once more, which moves them by an ulp; an fp32 ulp of a logit between 64 and 128 is 7.6e-6.
CACHED_LOGIT_ATOL = 1e-5
# Gradients span orders of magnitude per parameter: a floor plus a share of the reference's largest entry.
GRAD_ATOL = 1e-5
GRAD_RTOL_OF_MAX = 1e-4
# One scalar gradient (d logits / d logit_scale): relative.
SCALAR_GRAD_RTOL = 1e-4
# fp16 / bf16 kernels against the fp32 reference: at most LOW_PRECISION_FACTOR x the torch fast path's own
# error at that dtype, plus an absolute term about half an fp16 ulp of a CLIP-scale logit (~0.008 at 30).
LOW_PRECISION_FACTOR = 2.0
LOW_PRECISION_LOGIT_ATOL = 2e-2
LOW_PRECISION_EMB_ATOL = 2e-3


# The export's validation thresholds are the product's own, defined once (mmadapter/export/graphs.py);
# tests of exported graphs compare against the same table.
EXPORT_COSINE_MIN = {precision: t.cosine_min for precision, t in EXPORT_TOLERANCES.items()}


def _float64(x: Any) -> torch.Tensor:
    """A torch tensor or numpy array (or number) as a float64 CPU tensor."""
    return torch.as_tensor(x).detach().to("cpu", torch.float64)


def max_abs_error(actual: Any, expected: Any) -> float:
    """Largest absolute elementwise difference, in float64 (nan where either side has a nan)."""
    return (_float64(actual) - _float64(expected)).abs().max().item()


def assert_close(actual: Any, expected: Any, atol: float, rtol: float = 0.0, *, what: str) -> None:
    """|actual - expected| <= atol + rtol * |expected| elementwise, for torch tensors or numpy arrays; ``what``
    names the comparison and its reference, e.g. "Triton logits vs reference.py". A nan anywhere fails."""
    a, e = _float64(actual), _float64(expected)
    if a.shape != e.shape:
        raise AssertionError(f"{what}: shape {list(a.shape)} vs {list(e.shape)}")
    excess = (a - e).abs() - (atol + rtol * e.abs())
    worst = excess.max().item() if excess.numel() else float("-inf")
    if not worst <= 0:  # also catches nan
        err = max_abs_error(a, e)
        bound = f"{atol:g}" + (f" + {rtol:g} x |expected|" if rtol else "")
        raise AssertionError(f"{what}: max abs error {err:.3g} > tolerance {bound}")


def min_cosine(a: Any, b: Any) -> float:
    """Smallest cosine similarity between corresponding rows of ``a`` and ``b`` ([R, C] each, torch or numpy)."""
    a, b = _float64(a), _float64(b)
    a, b = a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1)
    cos = (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1)).clamp_min(1e-30)
    return cos.min().item()


def assert_min_cosine(a: Any, b: Any, minimum: float, *, what: str) -> None:
    """Every row's cosine of ``a`` to ``b`` is at least ``minimum``; ``what`` names the reference."""
    cos = min_cosine(a, b)
    if not cos >= minimum:
        raise AssertionError(f"{what}: min row cosine {cos:.8f} < {minimum}")
