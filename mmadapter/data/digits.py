"""The demo's built-in dataset: scikit-learn's bundled handwritten digits (no download), rendered as
real RGB images and written as an ordinary image folder, so the demo exercises the same data path a
user's own dataset takes."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from mmadapter.errors import DataError
from mmadapter.files import FileWriteError, atomic_write_text, first_line

DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
DIGITS_TEMPLATE = "a photo of the digit {}."


def digit_images(size: int = 64, per_class: int | None = None) -> list[tuple[Image.Image, str]]:
    """(RGB image, class name) pairs: the 8x8 digits upscaled to ``size`` pixels, dark ink on paper."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise DataError("the built-in digits dataset needs scikit-learn (pip install 'mmadapter[demo]')") from None
    digits = load_digits()
    counts: dict[int, int] = {}
    out = []
    for pixels, target in zip(digits.images, digits.target):
        target = int(target)
        if per_class is not None and counts.get(target, 0) >= per_class:
            continue
        counts[target] = counts.get(target, 0) + 1
        gray = (255 - pixels / 16.0 * 255).astype(np.uint8)  # sklearn stores ink as 0..16
        # A faint blue tint makes the three channels differ, so RGB handling is really exercised.
        rgb = np.stack([gray, gray, np.maximum(gray, 40)], axis=-1)
        img = Image.fromarray(rgb, mode="RGB").resize((size, size), Image.Resampling.BICUBIC)
        out.append((img, DIGIT_NAMES[target]))
    return out


def write_digits_folder(root: str | Path, size: int = 64, per_class: int | None = None) -> Path:
    """Write the digits as ``root/<class name>/<index>.png`` (skipped when already complete)."""
    root = Path(root)
    marker = root / ".complete"
    if marker.is_file() and marker.read_text() == f"{size}:{per_class}":
        return root
    # The marker, written last, is what says the folder is complete; it goes first, so that a run
    # killed half way is started over rather than taken for complete. (Per-image atomic writes would
    # buy nothing more and cost a folder scan per image.)
    images = digit_images(size, per_class)
    try:
        marker.unlink(missing_ok=True)
        for name in DIGIT_NAMES:  # a different size or count: start over rather than mix old files in
            shutil.rmtree(root / name, ignore_errors=True)
        for i, (img, name) in enumerate(images):
            folder = root / name
            folder.mkdir(parents=True, exist_ok=True)
            img.save(folder / f"{i:04d}.png", format="PNG")
    except OSError as exc:
        raise FileWriteError(f"cannot write the digits images into {root}: {first_line(exc)}") from None
    atomic_write_text(marker, f"{size}:{per_class}")
    return root


__all__ = ["DIGITS_TEMPLATE", "DIGIT_NAMES", "digit_images", "write_digits_folder"]
