"""Top-k classification of image files with a checkpoint: the frozen CLIP the checkpoint names, the
adapter, and a class bank for the checkpoint's label set (or any other class list: open vocabulary).

Returns the structure the ONNX Runtime path (``mmadapter.runtime.model.classify_images``) returns,
so the CLI prints both the same way. The torch-free pieces (image and class lists, ranking, printing)
live in :mod:`mmadapter.runtime.ranking` and are re-exported here.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from mmadapter.errors import CheckpointError, DataError
from mmadapter.model.backbone import load_clip
from mmadapter.model.checkpoint import load_checkpoint
from mmadapter.runtime.images import ImageSkip, read_images
from mmadapter.runtime.labels import check_class_names, name_list
from mmadapter.runtime.ranking import (
    Prediction,
    Result,
    check_some_read,
    collect_images,
    count_skipped,
    format_predictions,
    in_order,
    parse_class_list,
    rank,
)
from mmadapter.runtime.session import check_batch_size


def predict_images(
    checkpoint: str | Path,
    image_paths: Sequence[Path],
    top_k: int = 5,
    class_names: Sequence[str] | None = None,
    batch_size: int = 64,
    device: str = "cpu",
    strict: bool = False,
) -> list[Result]:
    """Probabilities of the ``top_k`` best classes for each image, in input order. An image that
    cannot be read (corrupt, truncated, oversized) is an :class:`ImageSkip` in its place (``strict``:
    a DataError instead); if none can be read, a DataError naming the first."""
    if top_k < 1:
        raise DataError(f"top-k must be at least 1, got {top_k}")
    batch_size = check_batch_size(batch_size)
    class_names = name_list(class_names)
    adapter, meta = load_checkpoint(checkpoint, backend="torch")
    clip = load_clip(meta.clip, device)
    if clip.embed_dim != adapter.config.embed_dim:
        raise CheckpointError(f"{checkpoint}: adapter width {adapter.config.embed_dim} does not match the CLIP "
                              f"model {meta.clip.model_name} (embedding width {clip.embed_dim})")
    names = list(class_names) if class_names is not None else list(meta.label_set.class_names)
    check_class_names(names)
    adapter = adapter.to(device)
    bank = adapter.class_bank(clip.class_embeddings(names, list(meta.label_set.templates)), names)
    short_side = max(clip.image_size)
    results: list[Result] = []
    for start in range(0, len(image_paths), batch_size):
        batch = list(image_paths[start : start + batch_size])
        loaded = read_images(batch, short_side, strict)
        good = [(Path(p), img) for p, img in zip(batch, loaded) if not isinstance(img, ImageSkip)]
        ranked: list[Prediction] = []
        if good:
            pixels = torch.stack([clip.preprocess(img) for _, img in good])
            with torch.no_grad():
                logits = adapter(clip.encode_images(pixels), bank, meta.logit_scale).logits
            ranked = rank(logits.double().cpu().numpy(), [p for p, _ in good], names, top_k, CheckpointError)
        results.extend(in_order(loaded, ranked))
    return check_some_read(results)


__all__ = [
    "ImageSkip",
    "Prediction",
    "Result",
    "collect_images",
    "count_skipped",
    "format_predictions",
    "parse_class_list",
    "predict_images",
]
