"""CLIP image preprocessing in numpy and PIL only, matching open_clip's default eval transform
(resize the shortest side with bicubic filtering, center crop, RGB, scale to [0, 1], normalise),
so that serving needs neither torch nor open_clip. No torch import here, by design.

Images are read by the project's one loader (:func:`mmadapter.runtime.images.open_image`), the same one
training and ``predict --checkpoint`` use, so both paths see the same pixels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mmadapter.errors import DataError
from mmadapter.runtime.images import MAX_RESIZED_PIXELS, resized_size

_RESAMPLE = {"bicubic": 3, "bilinear": 2, "nearest": 0, "lanczos": 1}  # PIL.Image.Resampling values


@dataclass(frozen=True)
class Preprocessing:
    """What the manifest records under ``preprocessing``."""

    image_size: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resize_mode: str = "shortest"  # open_clip's default: shortest side to size, then center crop
    interpolation: str = "bicubic"

    def to_dict(self) -> dict[str, Any]:
        return {
            "image_size": list(self.image_size),
            "mean": list(self.mean),
            "std": list(self.std),
            "resize_mode": self.resize_mode,
            "interpolation": self.interpolation,
            "layout": "NCHW float32 RGB",
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Preprocessing:
        return cls(
            tuple(data["image_size"]), tuple(data["mean"]), tuple(data["std"]),
            data.get("resize_mode", "shortest"), data.get("interpolation", "bicubic"),
        )


def preprocess_image(image: Any, spec: Preprocessing) -> np.ndarray:
    """One PIL image -> float32 [3, H, W]."""
    from PIL import Image

    crop_h, crop_w = spec.image_size
    if spec.resize_mode != "shortest":
        raise DataError(f"resize mode {spec.resize_mode!r} is not supported by the numpy preprocessing")
    resample = _RESAMPLE.get(spec.interpolation)
    if resample is None:
        raise DataError(f"unknown interpolation {spec.interpolation!r}")
    # open_clip resizes with the short side equal to the crop's larger side, then crops.
    new_w, new_h = resized_size(image.width, image.height, max(crop_h, crop_w))
    if new_w * new_h > MAX_RESIZED_PIXELS:  # the loader refuses these; an image made in memory may not be
        raise DataError(f"a {image.width}x{image.height} image resized to {new_w}x{new_h} is over the "
                        f"{MAX_RESIZED_PIXELS // 10**6}-megapixel limit")
    if (new_w, new_h) != image.size:
        image = image.resize((new_w, new_h), resample=Image.Resampling(resample))
    left = int(round((new_w - crop_w) / 2.0))
    top = int(round((new_h - crop_h) / 2.0))
    image = image.crop((left, top, left + crop_w, top + crop_h))
    # Conversion after the crop, in open_clip's order (it matters for palette and RGBA images).
    if image.mode != "RGB":
        image = image.convert("RGB")
    arr = np.asarray(image, dtype=np.float32) / np.float32(255.0)
    arr = (arr - np.asarray(spec.mean, dtype=np.float32)) / np.asarray(spec.std, dtype=np.float32)
    return np.ascontiguousarray(arr.transpose(2, 0, 1))


def preprocess_batch(images: Sequence[Any], spec: Preprocessing) -> np.ndarray:
    """PIL images -> float32 [B, 3, H, W]."""
    if not images:
        return np.zeros((0, 3, *spec.image_size), dtype=np.float32)
    return np.stack([preprocess_image(img, spec) for img in images])
