"""Host-side argument checks shared by the kernel launchers (torch only, no Triton import).

Every check raises ``ValueError`` with one line naming the argument and what was expected, so a
bad call fails before a kernel reads out of bounds or silently computes garbage.
"""

from __future__ import annotations

import os

import torch

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter (must be set before ``import triton``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def check_tensor(name: str, t: object, ndim: int, shape: tuple[int | None, ...] | None = None) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {list(t.shape)}")
    if shape is not None:
        for got, want in zip(t.shape, shape):
            if want is not None and got != want:
                want_s = ["*" if w is None else w for w in shape]
                raise ValueError(f"{name} must have shape {want_s}, got {list(t.shape)}")
    return t


def check_common(named: dict[str, torch.Tensor]) -> tuple[torch.dtype, torch.device]:
    """All tensors share one supported float dtype and one device Triton can run on."""
    items = list(named.items())
    first_name, first = items[0]
    dtype, device = first.dtype, first.device
    if dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"{first_name} has dtype {dtype}; supported: float32, float16, bfloat16")
    for name, t in items[1:]:
        if t.dtype != dtype:
            raise ValueError(
                f"dtype mix: {name} is {t.dtype} but {first_name} is {dtype}; cast the weights and inputs to one dtype"
            )
        if t.device != device:
            raise ValueError(f"device mix: {name} is on {t.device} but {first_name} is on {device}")
    if device.type != "cuda" and not (device.type == "cpu" and interpreting()):
        raise ValueError(
            f"Triton kernels need CUDA tensors (got {device}); CPU tensors run only in Triton's interpreter "
            "(TRITON_INTERPRET=1 set before importing triton)"
        )
    return dtype, device


def next_pow2(x: int, minimum: int = 16) -> int:
    """Triton block dims must be powers of two; tl.dot needs at least 16 on GPUs."""
    p = minimum
    while p < x:
        p *= 2
    return p
