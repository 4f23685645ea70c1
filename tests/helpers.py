"""Small builders shared by the data, features, training, evaluation, CLI and demo tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from mmadapter.model.backbone import load_clip, save_clip_weights
from mmadapter.model.config import ClipSpec


def make_image_folder(root: Path, classes: list[str], per_class: int, size: int = 32, seed: int = 0) -> Path:
    """``root/<class>/<i>.png``: noisy images whose mean colour depends on the class."""
    rng = np.random.default_rng(seed)
    for c, name in enumerate(classes):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        base = np.array([(37 * c) % 256, (91 * c + 60) % 256, (151 * c + 120) % 256], dtype=np.float64)
        for i in range(per_class):
            pixels = np.clip(base + rng.normal(0, 25, size=(size, size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels, mode="RGB").save(folder / f"{i:03d}.png")
    return root


def tiny_clip_spec(folder: Path, seed: int = 0) -> ClipSpec:
    """The tiny random CLIP, saved as a local weights file so every load gives the same model."""
    torch.manual_seed(seed)
    return save_clip_weights(load_clip(ClipSpec("mmadapter-tiny")), folder / "tiny-clip.safetensors")


def synthetic_embeddings(
    num_classes: int, per_class: int, dim: int = 64, signal: float = 0.15, seed: int = 0, class_seed: int = 999,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(text [N, C], image [n, C], labels [n]). Each image is a class prototype unrelated to the class
    text, a weak trace of the text (``signal``) and noise: zero-shot is weak, a trained head can learn the
    prototype -> class mapping. ``class_seed`` fixes texts and prototypes, ``seed`` the noise."""
    g_cls = torch.Generator().manual_seed(class_seed)
    text = F.normalize(torch.randn(num_classes, dim, generator=g_cls), dim=-1)
    prototypes = F.normalize(torch.randn(num_classes, dim, generator=g_cls), dim=-1)
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(num_classes).repeat_interleave(per_class)
    noise = F.normalize(torch.randn(labels.numel(), dim, generator=g), dim=-1)
    images = F.normalize(signal * text[labels] + prototypes[labels] + 0.5 * noise, dim=-1)
    return text, images, labels


def train_with_cli(root: Path, classes: list[str], per_class: int, epochs: int) -> dict[str, Path]:
    """An image folder, the tiny CLIP as a local weights file, and a checkpoint trained on them with
    `mmadapter train` (2 shots): what a user's own run leaves."""
    from mmadapter import cli

    data = make_image_folder(root / "data", classes, per_class=per_class)
    spec = tiny_clip_spec(root)
    ckpt = root / "adapter.safetensors"
    rc = cli.main(["train", "--data", str(data), "--clip-model", "mmadapter-tiny", "--clip-weights",
                   str(spec.weights_path), "--shots", "2", "--epochs", str(epochs), "--out", str(ckpt),
                   "--cache-dir", str(root / "cache"), "--no-progress"])
    assert rc == 0, "mmadapter train failed"
    return {"root": root, "data": data, "weights": Path(str(spec.weights_path)), "checkpoint": ckpt}


def write_sample_images(folder: Path, count: int, seed: int) -> Path:
    """The export validation's varied sample images (sizes, modes, patterns) as PNG files in ``folder``."""
    from mmadapter.export.validate import sample_images

    folder.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(sample_images(count, seed=seed)):
        img.save(folder / f"img{i}.png")
    return folder
