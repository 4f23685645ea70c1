"""The Triton kernels against the paper's formulation (``mmadapter/reference.py``).

Runs on CUDA where present, else in Triton's CPU interpreter (conftest sets TRITON_INTERPRET=1).
Shapes are the ones that catch tiling bugs: N = 1, N = one past a key tile, N = 1000, batch 1 and
odd batches, every CLIP width. Interpreter launches cost about a second each, so the CPU matrix is
kept lean and the large shapes run on GPU only.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from mmadapter.model import functional
from mmadapter.model.adapter import MultiModalAdapter
from mmadapter.model.config import AdapterConfig
from mmadapter.reference import ReferenceMultiModalAdapter

from tolerances import (
    EMB_ATOL_FP32,
    GRAD_ATOL,
    GRAD_RTOL_OF_MAX,
    LOGIT_ATOL_FP32,
    LOW_PRECISION_EMB_ATOL,
    LOW_PRECISION_FACTOR,
    LOW_PRECISION_LOGIT_ATOL,
    SAME_OPS_ATOL,
    SCALAR_GRAD_RTOL,
    assert_close,
    max_abs_error,
)

pytest.importorskip("triton")

from mmadapter.kernels import adapt_image_triton, adapted_logits_triton, triton_adapter_head  # noqa: E402
from mmadapter.kernels.adapter_attention import BLOCK_N  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def make_case(
    width: int, batch: int, n_cls: int, dtype: torch.dtype = torch.float32, seed: int = 0
) -> tuple[MultiModalAdapter, ReferenceMultiModalAdapter, torch.Tensor, torch.Tensor]:
    """Adapter with random non-init weights (std 0.15: attention far from uniform), the reference
    with the same state dict, and raw (un-normalised) image and text embeddings, all fp32."""
    gen = torch.Generator().manual_seed(seed)
    cfg = AdapterConfig(embed_dim=width)
    model = MultiModalAdapter(cfg, backend="triton")
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.15)
    ref = ReferenceMultiModalAdapter(cfg)
    ref.load_state_dict(model.state_dict())
    image = torch.randn(batch, width, generator=gen) * 3
    text = torch.randn(n_cls, width, generator=gen)
    return model.to(DEVICE), ref.to(DEVICE), image.to(DEVICE), text.to(DEVICE)


def run_head(model: MultiModalAdapter, image: torch.Tensor, text: torch.Tensor, head=triton_adapter_head):
    p = model.params()
    keys, values = functional.class_keys_values(text, p)
    return head(image, text, keys, values, p, model.config.num_heads, model.config.blend, 100.0)


FP32_CASES = [
    (512, 1, 1), (512, 17, BLOCK_N + 1), (512, 3, 1000),
    (768, 3, 1), (768, 1, BLOCK_N + 1),
    (1024, 17, 1), (1024, 3, BLOCK_N + 1),
]


@pytest.mark.parametrize("width,batch,n_cls", FP32_CASES)
def test_fp32_matches_reference(width: int, batch: int, n_cls: int) -> None:
    model, ref, image, text = make_case(width, batch, n_cls)
    with torch.no_grad():
        logits, v_ad, shift = run_head(model, image, text)
        ref_logits, ref_v, _ = ref(image, text)
        _, _, fast_shift = run_head(model, image, text, head=functional.adapter_head)
    assert_close(logits, ref_logits, LOGIT_ATOL_FP32, what="Triton logits vs reference.py")
    assert_close(v_ad, ref_v, EMB_ATOL_FP32, what="Triton v' vs reference.py")
    assert_close(shift, fast_shift, EMB_ATOL_FP32, what="Triton s vs functional.adapt_image")


@pytest.mark.parametrize("n_cls,splits,block_n", [(BLOCK_N + 1, 2, None), (5 * BLOCK_N - 3, 3, None), (17, 1, 16)])
def test_split_keys_match_reference(n_cls: int, splits: int, block_n: int | None) -> None:
    """The two-launch path (key range split over programs, then combined) equals the reference;
    block_n 16 is the smallest key tile a GPU picks (fp32, C = 1024)."""
    model, ref, image, text = make_case(768, 5, n_cls, seed=1)
    p = model.params()
    with torch.no_grad():
        keys, values = functional.class_keys_values(text, p)
        v_ad, shift = adapt_image_triton(image, keys, values, tuple(p), 4, 0.2, num_splits=splits, block_n=block_n)
        logits = adapted_logits_triton(v_ad, shift, text, 0.2, 100.0)
        ref_logits, ref_v, _ = ref(image, text)
    assert_close(logits, ref_logits, LOGIT_ATOL_FP32, what=f"Triton logits, {splits} key splits, vs reference.py")
    assert_close(v_ad, ref_v, EMB_ATOL_FP32, what=f"Triton v', {splits} key splits, vs reference.py")


def _low_precision_rule(dtype: torch.dtype, width: int, batch: int, n_cls: int) -> None:
    """Kernel error against the fp32 reference <= LOW_PRECISION_FACTOR x the torch fast path's own error at
    ``dtype`` + a small atol (tests/tolerances.py)."""
    model, ref, image, text = make_case(width, batch, n_cls, seed=2)
    with torch.no_grad():
        ref_logits, ref_v, _ = ref(image, text)
        low = model.to(dtype)
        image_l, text_l = image.to(dtype), text.to(dtype)
        k_logits, k_v, _ = run_head(low, image_l, text_l)
        t_logits, t_v, _ = run_head(low, image_l, text_l, head=functional.adapter_head)
    assert k_logits.dtype == dtype and k_v.dtype == dtype
    for what, k, t, r, atol in (("logits", k_logits, t_logits, ref_logits, LOW_PRECISION_LOGIT_ATOL),
                                ("v'", k_v, t_v, ref_v, LOW_PRECISION_EMB_ATOL)):
        t_err = max_abs_error(t, r)
        assert_close(k, r, LOW_PRECISION_FACTOR * t_err + atol,
                     what=f"{dtype} Triton {what} vs fp32 reference.py (bound: {LOW_PRECISION_FACTOR:g} x the torch "
                          f"fast path's {t_err:.3g} at {dtype} + {atol:g})")


@pytest.mark.parametrize("width,batch,n_cls", [(512, 3, BLOCK_N + 1), (768, 17, 1), (1024, 1, 130)])
def test_fp16_error_rule(width: int, batch: int, n_cls: int) -> None:
    _low_precision_rule(torch.float16, width, batch, n_cls)


# Triton's interpreter has no bf16 arithmetic (numpy has no bfloat16): results are garbage there.
@pytest.mark.gpu
@pytest.mark.parametrize("width,batch,n_cls", [(512, 3, BLOCK_N + 1), (768, 17, 1000), (1024, 1, 130)])
def test_bf16_error_rule(width: int, batch: int, n_cls: int) -> None:
    _low_precision_rule(torch.bfloat16, width, batch, n_cls)


@pytest.mark.gpu
@pytest.mark.parametrize("width", [512, 768, 1024])
@pytest.mark.parametrize("batch,n_cls", [(1, 21843), (256, 1000), (1024, 10000)])
def test_large_shapes_match_fast_path(width: int, batch: int, n_cls: int) -> None:
    """Shapes too large for the interpreter or the O(N^2) reference: against the fast path, which the
    adapter tests hold to the reference within 1e-4."""
    model, _, image, text = make_case(width, batch, n_cls, seed=3)
    with torch.no_grad():
        logits, v_ad, shift = run_head(model, image, text)
        f_logits, f_v, f_s = run_head(model, image, text, head=functional.adapter_head)
    assert_close(logits, f_logits, LOGIT_ATOL_FP32, what="Triton logits vs functional.adapter_head")
    assert_close(v_ad, f_v, EMB_ATOL_FP32, what="Triton v' vs functional.adapter_head")
    assert_close(shift, f_s, EMB_ATOL_FP32, what="Triton s vs functional.adapter_head")


@pytest.mark.parametrize("width,batch,n_cls", [(512, 5, BLOCK_N + 1), (768, 3, 7)])
def test_gradients_match_reference(width: int, batch: int, n_cls: int) -> None:
    """Training through backend="triton": every weight's gradient equals the reference's."""
    model, ref, image, text = make_case(width, batch, n_cls, seed=4)
    labels = torch.arange(batch, device=DEVICE) % n_cls
    probe = torch.randn(batch, width, device=DEVICE)  # also push a gradient through v'
    out = model(image, text)
    (F.cross_entropy(out.logits, labels) + (out.image_emb * probe).sum()).backward()
    ref_logits, ref_v, _ = ref(image, text)
    (F.cross_entropy(ref_logits, labels) + (ref_v * probe).sum()).backward()
    for (name, p), (_, q) in zip(model.named_parameters(), ref.named_parameters()):
        assert_close(p.grad, q.grad, GRAD_ATOL + GRAD_RTOL_OF_MAX * q.grad.abs().max().item(),
                     what=f"Triton grad of {name} vs reference.py")


def test_tensor_logit_scale_gets_gradient() -> None:
    model, _, image, text = make_case(512, 3, 9, seed=5)
    p = model.params()
    with torch.no_grad():
        keys, values = functional.class_keys_values(text, p)
    grads = []
    for head in (triton_adapter_head, functional.adapter_head):
        scale = torch.tensor(50.0, device=DEVICE, requires_grad=True)
        logits = head(image, text, keys, values, p, 4, 0.2, scale)[0]
        logits.square().mean().backward()
        grads.append(scale.grad)
    assert_close(grads[0], grads[1], 0.0, SCALAR_GRAD_RTOL, what="Triton d/d logit_scale vs functional.adapter_head")


def test_non_contiguous_inputs() -> None:
    """Activations with arbitrary strides give the same result as contiguous copies."""
    model, _, image, text = make_case(512, 3, BLOCK_N + 1, seed=6)
    p = model.params()
    with torch.no_grad():
        keys, values = functional.class_keys_values(text, p)
        want = triton_adapter_head(image, text, keys, values, p, 4, 0.2)
        got = triton_adapter_head(
            image.T.contiguous().T, torch.stack([text, -text], 2)[:, :, 0],
            keys.T.contiguous().T, torch.stack([values, values], 2)[:, :, 0], p, 4, 0.2,
        )
    for w, g, name in zip(want, got, ("logits", "v'", "s")):
        assert_close(g, w, SAME_OPS_ATOL, what=f"Triton {name} of strided inputs vs contiguous copies")


def test_launcher_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    model, _, image, text = make_case(512, 2, 3)
    p = tuple(model.params())
    with torch.no_grad():
        keys, values = functional.class_keys_values(text, model.params())
        with pytest.raises(ValueError, match="image_emb must have shape"):
            adapt_image_triton(torch.zeros(2, 768, device=DEVICE), keys, values, p, 4, 0.2)
        with pytest.raises(ValueError, match="dtype mix"):
            adapt_image_triton(image.half(), keys, values, p, 4, 0.2)
        with pytest.raises(ValueError, match="supported: float32"):
            adapt_image_triton(image.double(), keys.double(), values.double(), tuple(t.double() for t in p), 4, 0.2)
        with pytest.raises(ValueError, match="num_heads"):
            adapt_image_triton(image, keys, values, p, 3, 0.2)
        with pytest.raises(ValueError, match="at least one class"):
            adapt_image_triton(image, keys[:0], values[:0], p, 4, 0.2)
        with pytest.raises(ValueError, match="keys must have shape"):
            adapt_image_triton(image, keys[:, :64], values, p, 4, 0.2)
        with pytest.raises(ValueError, match="8 adapter weights"):
            adapt_image_triton(image, keys, values, p[:7], 4, 0.2)
        with pytest.raises(ValueError, match="text_emb must have shape"):
            adapted_logits_triton(image, image, text[:, :100], 0.2)
        with pytest.raises(ValueError, match=r"out must have shape \[2, 3\]"):
            adapted_logits_triton(image, image, text, 0.2, out=torch.empty(3, 2, device=DEVICE))
        with pytest.raises(ValueError, match="dtype mix: out"):
            adapted_logits_triton(image, image, text, 0.2, out=torch.empty(2, 3, device=DEVICE, dtype=torch.float16))
        if DEVICE == "cpu":
            monkeypatch.setenv("TRITON_INTERPRET", "0")
            with pytest.raises(ValueError, match="need CUDA tensors"):
                adapt_image_triton(image, keys, values, p, 4, 0.2)


def test_empty_batch() -> None:
    model, _, image, text = make_case(512, 1, 3)
    with torch.no_grad():
        logits, v_ad, shift = run_head(model, image[:0], text)
    assert logits.shape == (0, 3) and v_ad.shape == (0, 512) and shift.shape == (0, 512)


def test_module_backends_with_class_bank() -> None:
    model, _, image, text = make_case(768, 3, 11, seed=7)
    bank = model.class_bank(text)
    with torch.no_grad():
        got = model(image, bank)
        model.backend = "torch"
        want = model(image, bank)
    assert_close(got.logits, want.logits, LOGIT_ATOL_FP32, what="backend triton vs backend torch, class bank")
    auto = MultiModalAdapter(model.config, backend="auto")
    expected = "triton" if DEVICE == "cuda" else "torch"
    assert auto.resolved_backend(image.device) == expected


def test_package_imports_without_triton() -> None:
    """mmadapter and mmadapter.kernels import, and "auto" falls back to torch, when Triton is absent."""
    code = (
        "import sys; sys.modules['triton'] = None\n"
        "import torch, mmadapter, mmadapter.kernels\n"
        "m = mmadapter.MultiModalAdapter(backend='auto')\n"
        "assert m.resolved_backend(torch.device('cuda')) == 'torch'\n"
        "print(m(torch.randn(2, 512), torch.randn(3, 512)).logits.shape)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
