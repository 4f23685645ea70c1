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

from mmadapter import functional
from mmadapter.adapter import MultiModalAdapter
from mmadapter.config import AdapterConfig
from mmadapter.reference import ReferenceMultiModalAdapter

pytest.importorskip("triton")

from mmadapter.kernels import adapt_image_triton, adapted_logits_triton, adapter_head_op, triton_adapter_head  # noqa: E402
from mmadapter.kernels.adapter_attention import BLOCK_N  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
LOGIT_ATOL_FP32 = 1e-4  # docs/design.md §8.1: max abs logit difference to the reference, fp32
EMB_ATOL_FP32 = 1e-5  # unit-norm embeddings v', s


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


def max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()


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
    err = max_err(logits, ref_logits)
    assert err <= LOGIT_ATOL_FP32, f"logits vs reference.py: max abs {err:.3g} > {LOGIT_ATOL_FP32}"
    err = max_err(v_ad, ref_v)
    assert err <= EMB_ATOL_FP32, f"v' vs reference.py: max abs {err:.3g} > {EMB_ATOL_FP32}"
    err = max_err(shift, fast_shift)
    assert err <= EMB_ATOL_FP32, f"s vs functional.adapt_image: max abs {err:.3g} > {EMB_ATOL_FP32}"


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
    err = max_err(logits, ref_logits)
    assert err <= LOGIT_ATOL_FP32, f"split logits vs reference.py: max abs {err:.3g} > {LOGIT_ATOL_FP32}"
    err = max_err(v_ad, ref_v)
    assert err <= EMB_ATOL_FP32, f"split v' vs reference.py: max abs {err:.3g} > {EMB_ATOL_FP32}"


def _low_precision_rule(dtype: torch.dtype, width: int, batch: int, n_cls: int) -> None:
    """Kernel error against the fp32 reference <= 2x the torch fast path's own error at ``dtype``
    + a small atol (half an fp16 ulp of a CLIP-scale logit ~30 is 0.008)."""
    model, ref, image, text = make_case(width, batch, n_cls, seed=2)
    with torch.no_grad():
        ref_logits, ref_v, _ = ref(image, text)
        low = model.to(dtype)
        image_l, text_l = image.to(dtype), text.to(dtype)
        k_logits, k_v, _ = run_head(low, image_l, text_l)
        t_logits, t_v, _ = run_head(low, image_l, text_l, head=functional.adapter_head)
    assert k_logits.dtype == dtype and k_v.dtype == dtype
    for what, k, t, r, atol in (("logits", k_logits, t_logits, ref_logits, 2e-2), ("v'", k_v, t_v, ref_v, 2e-3)):
        k_err, t_err = max_err(k, r), max_err(t, r)
        assert k_err <= 2 * t_err + atol, (
            f"{dtype} {what}: kernel error {k_err:.3g} vs fp32 reference.py > 2 x torch fast path's "
            f"{t_err:.3g} + {atol}"
        )


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
    err = max_err(logits, f_logits)
    assert err <= LOGIT_ATOL_FP32, f"logits vs functional: max abs {err:.3g} > {LOGIT_ATOL_FP32}"
    err = max(max_err(v_ad, f_v), max_err(shift, f_s))
    assert err <= EMB_ATOL_FP32, f"v', s vs functional: max abs {err:.3g} > {EMB_ATOL_FP32}"


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
        err, scale = max_err(p.grad, q.grad), q.grad.abs().max().item()
        assert err <= 1e-5 + 1e-4 * scale, f"grad {name} vs reference.py: max abs {err:.3g} > 1e-5 + 1e-4 x {scale:.3g}"


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
        grads.append(scale.grad.item())
    assert abs(grads[0] - grads[1]) <= 1e-4 * abs(grads[1]), f"d/d logit_scale vs functional: {grads}"


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
        assert max_err(w, g) <= 1e-6, f"{name}: strided inputs vs contiguous, max abs {max_err(w, g):.3g} > 1e-6"


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
    err = max_err(got.logits, want.logits)
    assert err <= LOGIT_ATOL_FP32, f"backend triton vs torch (class bank): max abs {err:.3g} > {LOGIT_ATOL_FP32}"
    auto = MultiModalAdapter(model.config, backend="auto")
    expected = "triton" if DEVICE == "cuda" else "torch"
    assert auto.resolved_backend(image.device) == expected


def test_custom_op_matches_fast_path() -> None:
    model, _, image, text = make_case(512, 3, 5, seed=8)
    p = model.params()
    keys, values = functional.class_keys_values(text, p)
    args = (image, text, keys.detach(), values.detach(), *(t.detach() for t in p), 4, 0.2, 100.0)
    with torch.no_grad():
        got = adapter_head_op(*args)
        want = functional.adapter_head(image, text, keys, values, p, 4, 0.2, 100.0)
    for g, w, name in zip(got, want, ("logits", "v'", "s")):
        err = max_err(g, w)
        assert err <= LOGIT_ATOL_FP32, f"mmadapter::adapter_head {name} vs functional: max abs {err:.3g}"
    if DEVICE == "cpu":  # opcheck on CUDA would trace the Triton kernel with fake tensors per test util
        torch.library.opcheck(adapter_head_op, args, test_utils=("test_schema", "test_faketensor",
                                                                 "test_autograd_registration"))


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
