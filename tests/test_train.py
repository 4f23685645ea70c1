"""The training loop, the baselines and the frozen CLIP: only adapter parameters change."""

from __future__ import annotations

import pytest
import torch

from mmadapter.errors import DataError
from mmadapter.model.adapter import MultiModalAdapter
from mmadapter.model.backbone import load_clip
from mmadapter.model.baselines import ClipAdapter, ZeroShotClip, build_head, head_logits
from mmadapter.model.config import AdapterConfig, TrainConfig
from mmadapter.training.train import EmbeddedSplit, accuracy, predict_logits, train_head
from tests.helpers import synthetic_embeddings, tiny_clip_spec

DIM = 64
CFG = AdapterConfig(embed_dim=DIM)


def _data(seed: int = 0):
    text, train_x, train_y = synthetic_embeddings(8, 16, DIM, seed=seed)
    _, val_x, val_y = synthetic_embeddings(8, 16, DIM, seed=seed + 100)
    return text, EmbeddedSplit(train_x, train_y), EmbeddedSplit(val_x, val_y)


@pytest.mark.parametrize("kind", ["mma", "clip-adapter"])
def test_training_beats_zero_shot(kind: str) -> None:
    text, train, val = _data()
    zero_shot = accuracy(ZeroShotClip(), val, text)
    # Small batches: with one step per epoch, patience would end the run before the adapter gets going.
    config = TrainConfig(max_epochs=60, batch_size=32, patience=10)
    result = train_head(build_head(kind, DIM, adapter_config=CFG), train, text, config, val, progress=False)
    assert zero_shot < 40 and result.best_val_acc > zero_shot + 30
    assert accuracy(result.head, val, text) == pytest.approx(result.best_val_acc)  # best weights were restored
    assert result.history[0]["train_loss"] > result.history[result.best_epoch - 1]["train_loss"]


def test_early_stopping_keeps_the_best_weights() -> None:
    text, train, _ = _data()
    g = torch.Generator().manual_seed(3)
    noise_val = EmbeddedSplit(train.image_emb, torch.randint(0, 8, (len(train),), generator=g))  # unlearnable
    result = train_head(build_head("mma", DIM, adapter_config=CFG), train, text,
                        TrainConfig(max_epochs=200, patience=3), noise_val, progress=False)
    assert result.stopped_early and len(result.history) == result.best_epoch + 3
    assert accuracy(result.head, noise_val, text) == pytest.approx(result.best_val_acc)


def test_training_is_seeded() -> None:
    text, train, val = _data()
    runs = [train_head(build_head("mma", DIM, seed=7, adapter_config=CFG), train, text,
                       TrainConfig(max_epochs=4, seed=7, batch_size=32), val, progress=False) for _ in range(2)]
    for a, b in zip(runs[0].head.state_dict().values(), runs[1].head.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    other = train_head(build_head("mma", DIM, seed=8, adapter_config=CFG), train, text,
                       TrainConfig(max_epochs=4, seed=8, batch_size=32), val, progress=False)
    assert not torch.equal(other.head.up.weight, runs[0].head.up.weight)


def test_training_changes_only_adapter_parameters(tmp_path) -> None:
    clip = load_clip(tiny_clip_spec(tmp_path))
    clip_before = {k: v.clone() for k, v in clip.model.state_dict().items()}
    assert not any(p.requires_grad for p in clip.model.parameters())
    names = ["a", "b", "c"]
    text = clip.class_embeddings(names, ["a photo of a {}."])
    images = clip.encode_images(torch.randn(12, 3, 64, 64))
    text_before, images_before = text.clone(), images.clone()
    adapter = build_head("mma", clip.embed_dim)
    adapter_before = {k: v.clone() for k, v in adapter.state_dict().items()}
    train = EmbeddedSplit(images, torch.arange(3).repeat(4))
    train_head(adapter, train, text, TrainConfig(max_epochs=3, patience=10), None, clip.logit_scale, progress=False)
    for k, v in clip.model.state_dict().items():
        assert torch.equal(v, clip_before[k]), f"CLIP tensor {k} changed"
    assert torch.equal(text, text_before) and torch.equal(images, images_before)
    assert all(p.grad is None for p in clip.model.parameters())
    changed = [k for k, v in adapter.state_dict().items() if not torch.equal(v, adapter_before[k])]
    assert set(changed) == set(adapter_before)  # every adapter tensor trained, the CLIP none


def test_zero_shot_head_is_not_trained() -> None:
    text, train, val = _data()
    result = train_head(ZeroShotClip(), train, text, TrainConfig(), val, progress=False)
    assert result.history == [] and result.best_val_acc == pytest.approx(accuracy(ZeroShotClip(), val, text))


def test_clip_adapter_shape_and_residual() -> None:
    head = ClipAdapter(512)
    assert sum(p.numel() for p in head.parameters()) == 2 * 512 * 128  # C -> C/4 -> C, no biases
    assert head.ratio == 0.2
    with torch.no_grad():
        head.fc[0].weight.zero_()  # adapter branch outputs 0: only the (1 - ratio) residual remains
    text, images, _ = synthetic_embeddings(5, 2, 512)
    torch.testing.assert_close(head(images, text), ZeroShotClip()(images, text))


def test_mma_eval_uses_a_class_bank_equal_to_direct_logits() -> None:
    text, train, _ = _data()
    head = build_head("mma", DIM, adapter_config=CFG)
    assert isinstance(head, MultiModalAdapter)
    with torch.no_grad():
        direct = head_logits(head, train.image_emb, text, 50.0)
    torch.testing.assert_close(predict_logits(head, train.image_emb, text, 50.0, batch_size=7), direct)


def test_labels_outside_the_label_set_are_rejected() -> None:
    text, train, _ = _data()
    with pytest.raises(DataError, match="outside"):
        train_head(build_head("mma", DIM, adapter_config=CFG), train, text[:4], TrainConfig(), progress=False)
