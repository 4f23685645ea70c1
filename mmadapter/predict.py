"""Top-k classification of image files with a checkpoint: the frozen CLIP the checkpoint names, the
adapter, and a class bank for the checkpoint's label set (or any other class list: open vocabulary).

Returns the structure the ONNX Runtime path (``mmadapter.export.runtime.classify_images``) returns,
so the CLI prints both the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from mmadapter.backbone import load_clip
from mmadapter.checkpoint import load_checkpoint
from mmadapter.data import is_image_file, list_images, load_image
from mmadapter.errors import CheckpointError, DataError

Prediction = tuple[Path, list[tuple[str, float]]]  # image, [(class name, probability)] best first


def collect_images(inputs: Sequence[str | Path]) -> list[Path]:
    """Image files named directly, plus the images inside named folders (sorted)."""
    if not inputs:
        raise DataError("no images given")
    paths: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            paths.extend(list_images(item))
        elif is_image_file(item):
            paths.append(item)
        elif item.exists():
            raise DataError(f"not an image file ({item.suffix or 'no extension'}): {item}")
        else:
            raise DataError(f"image or folder not found: {item}")
    return paths


def parse_class_list(text: str) -> list[str]:
    """Class names from a comma-separated list or, if ``text`` names a file, one name per line."""
    path = Path(text)
    if path.is_file():
        try:
            names = [line.strip() for line in path.read_text().splitlines()]
        except (OSError, UnicodeDecodeError) as exc:
            raise DataError(f"cannot read class list {path}: {exc}") from None
    else:
        names = [n.strip() for n in text.split(",")]
    names = [n for n in names if n]
    if not names:
        raise DataError(f"the class list {text!r} is empty")
    if len(set(names)) != len(names):
        raise DataError(f"the class list {text!r} has duplicate names")
    return names


def predict_images(
    checkpoint: str | Path,
    image_paths: Sequence[Path],
    top_k: int = 5,
    class_names: Sequence[str] | None = None,
    batch_size: int = 64,
    device: str = "cpu",
) -> list[Prediction]:
    """Probabilities of the ``top_k`` best classes for each image, in input order."""
    if top_k < 1:
        raise DataError(f"top-k must be at least 1, got {top_k}")
    adapter, meta = load_checkpoint(checkpoint, backend="torch")
    clip = load_clip(meta.clip, device)
    if clip.embed_dim != adapter.config.embed_dim:
        raise CheckpointError(f"{checkpoint}: adapter width {adapter.config.embed_dim} does not match the CLIP "
                              f"model {meta.clip.model_name} (embedding width {clip.embed_dim})")
    names = list(class_names) if class_names is not None else list(meta.label_set.class_names)
    if not names:
        raise DataError("the class list is empty")
    adapter = adapter.to(device)
    bank = adapter.class_bank(clip.class_embeddings(names, list(meta.label_set.templates)), names)
    k = min(top_k, len(names))
    results: list[Prediction] = []
    for start in range(0, len(image_paths), batch_size):
        batch = list(image_paths[start : start + batch_size])
        pixels = torch.stack([clip.preprocess(load_image(p)) for p in batch])
        with torch.no_grad():
            probs = adapter(clip.encode_images(pixels), bank, meta.logit_scale).logits.softmax(dim=-1)
        top = probs.topk(k, dim=-1)
        for path, values, indices in zip(batch, top.values.tolist(), top.indices.tolist()):
            results.append((Path(path), [(names[i], float(v)) for v, i in zip(values, indices)]))
    return results


def format_predictions(predictions: Sequence[Prediction]) -> str:
    """One line per image: ``path: class (prob), class (prob), ...``."""
    lines = []
    for path, top in predictions:
        lines.append(f"{path}: " + ", ".join(f"{name} ({prob:.3f})" for name, prob in top))
    return "\n".join(lines)


__all__ = ["Prediction", "collect_images", "format_predictions", "parse_class_list", "predict_images"]
