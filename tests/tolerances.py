"""The tolerances of the numerical tests, in one table (the export's validation thresholds included), and the
helpers that apply them.

Every value is listed with its reason in docs/design.md §8.1. A failure message names what was compared,
against which reference, the error found and the tolerance, so a failing run says which rule broke.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

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


# The export's validation thresholds (docs/design.md §6.5, §8.2), written out as numbers. Tests must not read
# them from the product (mmadapter.runtime.graphs.TOLERANCES): a loosened product threshold would loosen its
# tests with it. tests/test_tolerances.py asserts the product's table equals this one exactly, so changing a
# threshold means changing both, on purpose. Per precision, the fields of graphs.Tolerance:
#   cosine_min: per-row cosine of every embedding output against torch;
#   tie_margin: top-2 logit gap, as a share of max(1, max |logit|), under which a top-1 flip is a near tie
#     (int8 moves CLIP-scale logits by ~0.1-0.2, so 0.5 of 100 sets those inputs aside);
#   logits_atol: max |logit difference| as a share of max(1, max |logit|) (None: not checked).
EXPORT_TOLERANCES = {
    "fp32": {"cosine_min": 0.99999, "tie_margin": 0.0, "logits_atol": 1e-4},
    "fp16": {"cosine_min": 0.999, "tie_margin": 0.0, "logits_atol": None},
    "bf16": {"cosine_min": 0.999, "tie_margin": 0.0, "logits_atol": None},
    "int8": {"cosine_min": 0.999, "tie_margin": 0.005, "logits_atol": None},
}
EXPORT_COSINE_MIN = {precision: t["cosine_min"] for precision, t in EXPORT_TOLERANCES.items()}
EXPORT_TIE_MARGIN = {precision: t["tie_margin"] for precision, t in EXPORT_TOLERANCES.items()}
EXPORT_LOGITS_ATOL_FP32 = EXPORT_TOLERANCES["fp32"]["logits_atol"]
# Share of decisive inputs (not near ties) whose top-1 class must equal torch's (graphs.TOP1_MIN).
EXPORT_TOP1_MIN = 0.999
# `evaluate --onnx`: each int8 variant's top-1 agreement with fp32 on decisive inputs (accuracy.AGREEMENT_MIN).
EVALUATE_AGREEMENT_MIN = 0.99
# A check that sets near ties aside must still have compared something: at least this many decisive inputs,
# and at least this share of the inputs compared. Without it, a run in which every input is a near tie
# (a degenerate model, or a tie margin grown too wide) would pass having checked no top-1 at all.
MIN_DECISIVE_INPUTS = 5
MIN_DECISIVE_SHARE = 0.5


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


def decisive_rows(reference_logits: Any, tie_margin: float) -> np.ndarray:
    """Boolean mask of the rows whose best two reference logits lie more than ``tie_margin`` x max(1, max |logit|)
    apart: the rows where a changed top-1 is a failure rather than a near tie. The rule of export validation,
    written again here so that a test does not borrow the code it checks."""
    logits = np.asarray(reference_logits, dtype=np.float64)
    top2 = np.sort(logits, axis=-1)[:, -2:]
    return (top2[:, 1] - top2[:, 0]) > tie_margin * max(1.0, float(np.abs(logits).max()))


def assert_enough_decisive(decisive: int, compared: int, *, what: str) -> None:
    """A top-1 check that set near ties aside compared at least MIN_DECISIVE_INPUTS decisive inputs, and at least
    MIN_DECISIVE_SHARE of the ``compared`` inputs; ``what`` names the check."""
    needed = max(MIN_DECISIVE_INPUTS, MIN_DECISIVE_SHARE * compared)
    if not decisive >= needed:
        raise AssertionError(f"{what}: only {decisive} of {compared} inputs were decisive (need >= {needed:g}); "
                             "the top-1 check compared too little to mean anything")
