"""The fast path (mmadapter.model.functional via MultiModalAdapter) against the paper's formulation
(mmadapter.reference). Tolerances: tests/tolerances.py (docs/design.md §8.1)."""

from __future__ import annotations

import pytest
import torch

from mmadapter import AdapterConfig, ClassBank, ConfigError, MultiModalAdapter
from mmadapter.model.config import get_adapter_config, list_adapter_configs
from mmadapter.reference import ReferenceMultiModalAdapter, cross_modal_mask

from tolerances import CACHED_LOGIT_ATOL, EMB_ATOL_FP32, GRAD_ATOL, GRAD_RTOL_OF_MAX, LOGIT_ATOL_FP32, assert_close


def random_adapter(embed_dim: int, seed: int = 0) -> MultiModalAdapter:
    """An adapter with weights far from initialisation, so every term of the attention matters."""
    torch.manual_seed(seed)
    adapter = MultiModalAdapter(AdapterConfig(embed_dim=embed_dim), backend="torch")
    with torch.no_grad():
        for p in adapter.parameters():
            p.normal_(0.0, 0.15)
    return adapter


def reference_of(adapter: MultiModalAdapter) -> ReferenceMultiModalAdapter:
    ref = ReferenceMultiModalAdapter(adapter.config)
    ref.load_state_dict(adapter.state_dict())  # same names: loads unchanged, strict
    return ref.eval()


@pytest.mark.parametrize("embed_dim", [512, 768, 1024])
@pytest.mark.parametrize("num_classes", [1, 2, 37, 1000])
@pytest.mark.parametrize("batch", [1, 7, 64])
def test_fast_path_matches_reference(embed_dim: int, num_classes: int, batch: int) -> None:
    adapter = random_adapter(embed_dim, seed=num_classes + batch)
    ref = reference_of(adapter)
    gen = torch.Generator().manual_seed(embed_dim)
    image = torch.randn(batch, embed_dim, generator=gen)
    text = torch.randn(num_classes, embed_dim, generator=gen)
    with torch.no_grad():
        fast = adapter(image, text, logit_scale=100.0)
        want_logits, want_image, _ = ref(image, text, logit_scale=100.0)
    assert_close(fast.logits, want_logits, LOGIT_ATOL_FP32, what="fast path logits vs reference.py")
    assert_close(fast.image_emb, want_image, EMB_ATOL_FP32, what="fast path v' vs reference.py")


def test_text_shift_reproduces_reference_adapted_texts() -> None:
    """The reference's per-image adapted texts equal normalize(0.8 t_i + 0.2 s_b) (docs/design.md §3.2)."""
    adapter = random_adapter(512, seed=3)
    ref = reference_of(adapter)
    image, text = torch.randn(5, 512), torch.nn.functional.normalize(torch.randn(11, 512), dim=-1)
    with torch.no_grad():
        out = adapter(image, text)
        _, _, ref_texts = ref(image, text)
    rebuilt = torch.nn.functional.normalize(0.8 * text[None] + 0.2 * out.text_shift[:, None], dim=-1)
    assert_close(rebuilt, ref_texts, EMB_ATOL_FP32, what="texts rebuilt from s vs reference.py's adapted texts")


def test_class_bank_gives_same_logits_as_text_embeddings() -> None:
    adapter = random_adapter(768, seed=4).eval()
    image, text = torch.randn(9, 768), torch.randn(23, 768)
    bank = adapter.class_bank(text, [f"c{i}" for i in range(23)])
    assert isinstance(bank, ClassBank) and bank.keys.shape == (23, 192) and not bank.keys.requires_grad
    with torch.no_grad():
        direct = adapter(image, text).logits
        cached = adapter(image, bank).logits
    assert_close(cached, direct, CACHED_LOGIT_ATOL, what="logits from a class bank vs keys/values recomputed")


def test_gradients_match_reference() -> None:
    adapter = random_adapter(512, seed=5)
    ref = reference_of(adapter).train()
    image, text, labels = torch.randn(6, 512), torch.randn(13, 512), torch.randint(0, 13, (6,))
    loss_fast = torch.nn.functional.cross_entropy(adapter(image, text).logits, labels)
    loss_ref = torch.nn.functional.cross_entropy(ref(image, text)[0], labels)
    loss_fast.backward()
    loss_ref.backward()
    ref_params = dict(ref.named_parameters())
    for name, p in adapter.named_parameters():
        want = ref_params[name].grad
        assert_close(p.grad, want, GRAD_ATOL + GRAD_RTOL_OF_MAX * want.abs().max().item(),
                     what=f"fast path grad of {name} vs reference.py")


def test_no_quadratic_or_per_class_width_tensor() -> None:
    """Per-image cost O(N*C): no [B, N, C] and no (N+1)^2 tensor is created on the fast path."""
    from torch.utils._python_dispatch import TorchDispatchMode

    adapter = random_adapter(512, seed=6).eval()
    b, n, c = 16, 600, 512  # N > C, so a dimension >= N can only be a class axis
    bank = adapter.class_bank(torch.randn(n, c))
    shapes: list[tuple[int, ...]] = []

    class RecordShapes(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, tuple | list) else [out]:
                if isinstance(t, torch.Tensor):
                    shapes.append(tuple(t.shape))
            return out

    with torch.no_grad(), RecordShapes():
        adapter(torch.randn(b, c), bank)
    largest = max(shapes, key=lambda s: torch.Size(s).numel())
    assert torch.Size(largest).numel() <= n * c, f"largest intermediate {largest} is larger than the bank [N, C]"
    quadratic = [s for s in shapes if sum(d >= n for d in s) >= 2]
    assert not quadratic, f"class-by-class intermediates found: {quadratic}"


def test_paper_parameter_count() -> None:
    assert MultiModalAdapter(AdapterConfig(embed_dim=512)).num_trainable_parameters() == 197_760


@pytest.mark.parametrize("name,width", [("mma-vit-b", 512), ("mma-vit-l", 768), ("mma-vit-h", 1024)])
def test_registered_configs(name: str, width: int) -> None:
    assert name in list_adapter_configs()
    cfg = get_adapter_config(name)
    assert (cfg.embed_dim, cfg.bottleneck_dim, cfg.num_heads, cfg.blend) == (width, width // 4, 4, 0.2)


def test_mask_matches_paper() -> None:
    mask = cross_modal_mask(3)
    allowed = torch.isfinite(mask)
    assert allowed[:3, 3].all() and not allowed[:3, :3].any(), "text tokens see only the image token"
    assert allowed[3, :3].all() and not allowed[3, 3], "the image token sees only the texts, not itself"


def test_bad_shapes_and_configs_raise_one_line_errors() -> None:
    adapter = MultiModalAdapter(AdapterConfig(embed_dim=512))
    with pytest.raises(ConfigError, match=r"\[rows, 512\]"):
        adapter(torch.randn(2, 768), torch.randn(3, 512))
    with pytest.raises(ConfigError, match="at least one class"):
        adapter.class_bank(torch.randn(0, 512))
    with pytest.raises(ConfigError, match="divisible"):
        AdapterConfig(embed_dim=500)
    with pytest.raises(ConfigError, match="unknown backend"):
        MultiModalAdapter(backend="cuda")
    with pytest.raises(ConfigError, match="unknown adapter config"):
        get_adapter_config("mma-vit-q")
