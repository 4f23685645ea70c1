"""What ``predict`` takes and gives on both paths (torch with a checkpoint, ONNX Runtime with an export
folder): the image list, the class list, ranking logits into top-k results, and printing them.

A result list holds, in input order, a :data:`Prediction` per classified image and an
:class:`~mmadapter.runtime.images.ImageSkip` per image that could not be read. No torch here: the serving
runtime uses it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mmadapter.errors import DataError, MMAdapterError
from mmadapter.files import first_line
from mmadapter.runtime.images import ImageSkip, is_image_file, list_images
from mmadapter.runtime.labels import check_class_names

Prediction = tuple[Path, list[tuple[str, float]]]  # image, [(class name, probability)] best first
Result = Prediction | ImageSkip

# `--classes` text that ends like one of these names a file, even when no such file exists.
_LIST_FILE = re.compile(r"\.(txt|text|csv|tsv|json|jsonl|lst|list|names|labels|ya?ml)$", re.IGNORECASE)


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


def _looks_like_path(text: str) -> bool:
    if "," in text:
        return False  # a comma-separated list, even if a name holds a slash ("AC/DC,Queen")
    separators = {os.sep, "/"} | ({os.altsep} if os.altsep else set())
    return any(sep in text for sep in separators) or bool(_LIST_FILE.search(text.strip()))


def parse_class_list(text: str) -> list[str]:
    """Class names from a comma-separated list or, if ``text`` names a file, one name per line (UTF-8,
    blank lines ignored). Text that looks like a file name (a path separator and no comma, or an
    extension such as ``.txt``) but names no file is an error, not a one-class list. Names are checked
    as every label set is (blanks, duplicates, names that give the same prompt)."""
    path = Path(text)
    if path.is_file():
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise DataError(f"cannot read class list {path}: {first_line(exc)}") from None
        names = [line.strip() for line in lines if line.strip()]
        what = f"class list file {path}"
    elif path.is_dir():
        raise DataError(f"the class list {text!r} is a folder, not a file of names")
    elif _looks_like_path(text):
        raise DataError(f"class list file not found: {text}")
    else:
        # Empty items (a trailing comma) are dropped; blank-but-present names cannot occur here.
        names = [n.strip() for n in text.split(",") if n.strip()]
        what = f"class list {text!r}"
    return list(check_class_names(names, what))


def rank(logits: np.ndarray, paths: Sequence[Path], class_names: Sequence[str], top_k: int,
         error: type[MMAdapterError] = DataError) -> list[Prediction]:
    """Softmax (float64) over each row of ``logits`` [B, N] and its ``top_k`` classes, best first (ties
    keep class order). Non-finite logits are ``error``: probabilities would print as nan."""
    logits = np.asarray(logits, dtype=np.float64)
    finite = np.isfinite(logits).all(axis=-1)
    if not finite.all():
        bad = paths[int(np.argmin(finite))]
        raise error(f"non-finite logits for {bad}: the adapter or CLIP weights produce NaN/inf")
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    probs = e / e.sum(axis=-1, keepdims=True)
    k = min(top_k, len(class_names))
    out: list[Prediction] = []
    for path, row in zip(paths, probs, strict=True):
        top = np.argsort(-row, kind="stable")[:k]
        out.append((Path(path), [(class_names[i], float(row[i])) for i in top]))
    return out


def in_order(loaded: Sequence[object], predictions: Sequence[Prediction]) -> list[Result]:
    """Merge the predictions for the images that were read back between the skips, in input order."""
    ranked = iter(predictions)
    return [item if isinstance(item, ImageSkip) else next(ranked) for item in loaded]


def check_some_read(results: Sequence[Result]) -> list[Result]:
    """``results`` unless every image was skipped: then the DataError that names the first one."""
    skipped = [r for r in results if isinstance(r, ImageSkip)]
    if results and len(skipped) == len(results):
        first = skipped[0]
        raise DataError(f"none of the {len(results)} images could be read; first: {first.path}: {first.reason}")
    return list(results)


def count_skipped(results: Sequence[Result]) -> int:
    return sum(isinstance(r, ImageSkip) for r in results)


def format_predictions(results: Sequence[Result]) -> str:
    """One line per image: ``path: class (prob), class (prob), ...`` or ``path: skipped (reason)``."""
    lines = []
    for item in results:
        if isinstance(item, ImageSkip):
            lines.append(f"{item.path}: skipped ({item.reason})")
        else:
            path, top = item
            lines.append(f"{path}: " + ", ".join(f"{name} ({prob:.3f})" for name, prob in top))
    return "\n".join(lines)


__all__ = [
    "ImageSkip",
    "Prediction",
    "Result",
    "check_some_read",
    "collect_images",
    "count_skipped",
    "format_predictions",
    "in_order",
    "parse_class_list",
    "rank",
]
