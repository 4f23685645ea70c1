"""The frozen open_clip backbone (tiny random config, no downloads)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from mmadapter import ClipSpec, ConfigError, MultiModalAdapter
from mmadapter.model.backbone import FrozenClip, load_clip, save_clip_weights

TINY = ClipSpec("mmadapter-tiny")


@pytest.fixture(scope="module")
def clip() -> FrozenClip:
    torch.manual_seed(0)
    return load_clip(TINY)


def test_frozen_and_in_eval_mode(clip: FrozenClip) -> None:
    assert not clip.model.training
    assert not any(p.requires_grad for p in clip.model.parameters())


def test_only_the_adapter_trains(clip: FrozenClip) -> None:
    clip_before = {k: v.clone() for k, v in clip.model.state_dict().items()}
    adapter = MultiModalAdapter(backend="torch")
    adapter_before = {k: v.clone() for k, v in adapter.state_dict().items()}
    opt = torch.optim.Adam([p for p in adapter.parameters() if p.requires_grad], lr=1e-2)
    pixels = torch.randn(4, 3, *clip.image_size)
    text = clip.class_embeddings(["cat", "dog", "bird"], ["a photo of a {}."])
    for _ in range(2):
        loss = torch.nn.functional.cross_entropy(
            adapter(clip.encode_images(pixels), text, clip.logit_scale).logits, torch.tensor([0, 1, 2, 0])
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert all(torch.equal(v, clip.model.state_dict()[k]) for k, v in clip_before.items()), "CLIP changed"
    changed = [k for k, v in adapter.state_dict().items() if not torch.equal(v, adapter_before[k])]
    assert sorted(changed) == sorted(adapter_before), f"adapter tensors that did not train: {changed}"


def test_encoders_give_unit_norm_embeddings(clip: FrozenClip) -> None:
    image = Image.new("RGB", (100, 80), (200, 30, 30))
    pixels = clip.preprocess(image).unsqueeze(0)
    assert tuple(pixels.shape) == (1, 3, *clip.image_size)
    emb = clip.encode_images(pixels)
    text = clip.class_embeddings(["red", "green_apple"], ["a photo of a {}.", "a {} thing."])
    assert emb.shape == (1, clip.embed_dim) and text.shape == (2, clip.embed_dim)
    assert torch.allclose(emb.norm(dim=-1), torch.ones(1), atol=1e-5)
    assert torch.allclose(text.norm(dim=-1), torch.ones(2), atol=1e-5)


def test_local_weights_round_trip_and_hash_check(clip: FrozenClip, tmp_path: Path) -> None:
    spec = save_clip_weights(clip, tmp_path / "clip.safetensors")
    assert spec.weights_path and spec.weights_sha256 and len(spec.weights_sha256) == 64
    again = load_clip(spec)
    texts = ["a photo of a cat."]
    assert torch.allclose(again.encode_texts(texts), clip.encode_texts(texts), atol=1e-6), "weights differ"
    tampered = ClipSpec(spec.model_name, None, spec.weights_path, "0" * 64)
    with pytest.raises(ConfigError, match="does not match the sha256"):
        load_clip(tampered)


def test_bad_specs(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown open_clip model"):
        load_clip(ClipSpec("ViT-Q-99"))
    with pytest.raises(ConfigError, match="not found"):
        load_clip(ClipSpec("mmadapter-tiny", weights_path=str(tmp_path / "missing.safetensors")))
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"junk")
    with pytest.raises(ConfigError, match="cannot read CLIP weights"):
        load_clip(ClipSpec("mmadapter-tiny", weights_path=str(junk)))


def test_empty_class_list(clip: FrozenClip) -> None:
    with pytest.raises(ConfigError, match="class list is empty"):
        clip.class_embeddings([], ["a photo of a {}."])
