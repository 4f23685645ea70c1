"""The kernels compute addresses in 64 bits where a row or class index times a stride can pass 2^31.

Triton passes an integer argument below 2^31 as int32, so an int32 index times such a stride wraps
silently: the [100,000 x 21,843] logits of ImageNet-21k have 2.2e9 elements. On CPU (Triton's
interpreter, which wraps int32 products as a GPU does) each tensor here is a view whose rows (or
classes) lie up to 1.5 x 2^31 elements apart, over a sparse anonymous mapping: only the touched pages
take memory, so a few real rows sit past 2^31 without allocating 2^31 elements. Row 0 sits 2^31
elements into its mapping, so a wrapped (negative) int32 offset still lands inside it: int32 code
reads zeros and writes elsewhere, and the test fails on the values rather than crashing.
"""

from __future__ import annotations

import mmap

import pytest
import torch
from test_kernels import DEVICE, make_case

from mmadapter.model import functional

from tolerances import EMB_ATOL_FP32, LOGIT_ATOL_FP32, assert_close

pytest.importorskip("triton")

from mmadapter.kernels import adapt_image_triton, adapted_logits_triton  # noqa: E402
from mmadapter.kernels._checks import interpreting  # noqa: E402

INT32_MAX = 2**31 - 1
MAP_NORESERVE = getattr(mmap, "MAP_NORESERVE", 0x4000)  # Linux's value; Python < 3.13 lacks the name
interpreter_only = pytest.mark.skipif(
    DEVICE != "cpu" or not interpreting(), reason="sparse host mappings need Triton's CPU interpreter"
)


def far_apart(x: torch.Tensor) -> torch.Tensor:
    """A copy of ``x`` [R, C] (R >= 2) whose row r starts r * stride elements after row 0, the last row
    about 1.5 x 2^31 elements in, with the stride itself below 2^31 (so Triton passes it as int32)."""
    n_rows, width = x.shape
    stride = (3 * 2**30 // (n_rows - 1)) // 64 * 64
    assert stride <= INT32_MAX and (n_rows - 1) * stride > INT32_MAX, "the layout must need 64-bit offsets"
    numel = 2**31 + (n_rows - 1) * stride + width
    try:
        buf = mmap.mmap(-1, numel * x.element_size(),
                        flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | MAP_NORESERVE)
    except OSError as e:  # strict overcommit (vm.overcommit_memory=2) or a virtual memory limit
        pytest.skip(f"cannot map {numel * x.element_size() / 2**30:.0f} GiB of sparse memory: {e}")
    view = torch.frombuffer(buf, dtype=x.dtype).as_strided(x.shape, (stride, 1), 2**31)
    view.copy_(x)
    return view


def test_far_apart_layout() -> None:
    """The helper really places rows past 2^31 elements, and they read back as written."""
    x = torch.randn(3, 8)
    far = far_apart(x)
    assert far.storage_offset() + 2 * far.stride(0) > INT32_MAX >= far.stride(0)
    assert torch.equal(far, x)


@interpreter_only
def test_logits_rows_and_classes_past_2_31() -> None:
    """adapted_logits_triton with v', s, the text rows and the logits rows up to 1.5 x 2^31 elements apart
    (as in [100k, 21,843] logits) against reference.py."""
    model, ref, image, text = make_case(512, 3, 5, seed=11)
    p = model.params()
    with torch.no_grad():
        ref_logits, _, _ = ref(image, text)
        keys, values = functional.class_keys_values(text, p)
        v_ad, shift = functional.adapt_image(image, keys, values, p, model.config.num_heads, model.config.blend)
        out = far_apart(torch.full_like(ref_logits, float("nan")))
        got = adapted_logits_triton(far_apart(v_ad), far_apart(shift), far_apart(text), model.config.blend, 100.0,
                                    out=out)
    assert got is out
    # nan (a row never written) fails too
    assert_close(out, ref_logits, LOGIT_ATOL_FP32, what="Triton logits of far-apart rows vs reference.py")


@interpreter_only
@pytest.mark.parametrize("num_splits,block_n", [(None, None), (2, 16)])
def test_attention_rows_and_keys_past_2_31(num_splits: int | None, block_n: int | None) -> None:
    """adapt_image_triton with the images and the class keys and values up to 1.5 x 2^31 elements apart
    (65 keys: more than one key tile) against reference.py (v') and the torch fast path (s), in one launch
    and with the key range split over programs."""
    model, ref, image, text = make_case(512, 3, 65, seed=12)
    p = model.params()
    heads, blend = model.config.num_heads, model.config.blend
    with torch.no_grad():
        _, ref_v, _ = ref(image, text)
        keys, values = functional.class_keys_values(text, p)
        _, fast_shift = functional.adapt_image(image, keys, values, p, heads, blend)
        v_ad, shift = adapt_image_triton(far_apart(image), far_apart(keys), far_apart(values), tuple(p), heads, blend,
                                         num_splits=num_splits, block_n=block_n)
    assert_close(v_ad, ref_v, EMB_ATOL_FP32, what="Triton v' of far-apart rows vs reference.py")
    assert_close(shift, fast_shift, EMB_ATOL_FP32, what="Triton s of far-apart rows vs functional.adapt_image")


@pytest.mark.gpu
def test_imagenet21k_logits_on_gpu() -> None:
    """The ImageNet-21k case at full size: [100,000 x 21,843] fp32 logits (8.7 GB, 2.2e9 elements), rows
    past 2^31 elements checked against the torch fast path on those rows."""
    gen = torch.Generator(device="cuda").manual_seed(13)
    batch, n_cls, width, blend = 100_000, 21_843, 512, 0.2
    v_ad = torch.nn.functional.normalize(torch.randn(batch, width, device="cuda", generator=gen), dim=-1)
    shift = torch.nn.functional.normalize(torch.randn(batch, width, device="cuda", generator=gen), dim=-1)
    text = torch.randn(n_cls, width, device="cuda", generator=gen)
    logits = adapted_logits_triton(v_ad, shift, text, blend, 100.0)
    first_far_row = 2**31 // n_cls + 1  # every element of this row and later ones is past 2^31
    for rows in (slice(0, 64), slice(first_far_row, first_far_row + 64), slice(batch - 64, batch)):
        want = functional.adapted_logits(v_ad[rows], shift[rows], text, blend, 100.0)
        assert_close(logits[rows], want, LOGIT_ATOL_FP32, what=f"Triton logits {rows} vs functional.adapted_logits")
