"""What ``predict`` takes and gives on both paths (torch with a checkpoint, ONNX Runtime with an export
folder): the image list, the class list, ranking logits into top-k results, and printing them.

A result list holds, in input order, a :data:`Prediction` per classified image and an
:class:`~mmadapter.runtime.images.ImageSkip` per image that could not be read. No torch here: the serving
runtime uses it.
"""

from __future__ import annotations

import json
import os
import re
import unicodedata
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
# Characters the human format writes as escapes: control (Cc), format (Cf: bidi overrides), lone
# surrogates (Cs: undecodable file-name bytes) and line or paragraph separators (Zl, Zp).
_ESCAPED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
_LIST_FILE = re.compile(r"\.(txt|text|csv|tsv|json|jsonl|lst|list|names|labels|ya?ml)$", re.IGNORECASE)


def _probe(path: Path) -> str | None:
    """"file", "dir", "other" or None (nothing there). Never raises: a text too long for a file name
    (ENAMETOOLONG), a NUL byte or an unreadable parent simply names no file, so it is taken as text."""
    try:
        if path.is_file():
            return "file"
        if path.is_dir():
            return "dir"
        return "other" if path.exists() else None
    except (OSError, ValueError):
        return None


def collect_images(inputs: Sequence[str | Path]) -> list[Path]:
    """Image files named directly, plus the images inside named folders (sorted)."""
    if not inputs:
        raise DataError("no images given")
    paths: list[Path] = []
    for item in map(Path, inputs):
        kind = _probe(item)
        if kind == "dir":
            paths.extend(list_images(item))
        elif kind == "file" and is_image_file(item):
            paths.append(item)
        elif kind is not None:
            raise DataError(f"not an image file ({item.suffix or 'no extension'}): {item}")
        else:
            raise DataError(f"image or folder not found: {item}")
    return paths


def _looks_like_path(text: str) -> bool:
    if "," in text:
        return False  # a comma-separated list, even if a name holds a slash ("AC/DC,Queen")
    separators = {os.sep, "/"} | ({os.altsep} if os.altsep else set())
    return any(sep in text for sep in separators) or bool(_LIST_FILE.search(text.strip()))


def _trim(name: str) -> str:
    """``name`` without the white space around it: spaces, tabs and a CRLF file's carriage returns,
    but not the other control characters Python counts as white space (NEL, FS, GS, RS, VT, FF): those
    stay, and the class-name check refuses them."""
    def blank(ch: str) -> bool:
        return ch.isspace() and (ch in " \t\r" or unicodedata.category(ch) != "Cc")

    start, end = 0, len(name)
    while start < end and blank(name[start]):
        start += 1
    while end > start and blank(name[end - 1]):
        end -= 1
    return name[start:end]


def parse_class_list(text: str) -> list[str]:
    """Class names from a comma-separated list or, if ``text`` names a file, one name per line (UTF-8,
    blank lines ignored). Text that looks like a file name (a path separator and no comma, or an
    extension such as ``.txt``) but names no file is an error, not a one-class list; text of any length
    that names no file is a list. A UTF-8 byte-order mark at the start of a file is not part of the first
    name. Names are checked as every label set is (blanks, control characters, duplicates, names that
    give the same prompt)."""
    path = Path(text)
    kind = _probe(path)
    if kind == "file":
        try:
            # Lines end at "\n" only: str.splitlines() would also split at NEL, U+2028 and other control
            # characters, and hide them from the check below.
            lines = path.read_text(encoding="utf-8-sig").split("\n")
        except (OSError, UnicodeDecodeError) as exc:
            raise DataError(f"cannot read class list {path}: {first_line(exc)}") from None
        names = [_trim(line) for line in lines if _trim(line)]
        what = f"class list file {path}"
    elif kind == "dir":
        raise DataError(f"the class list {text!r} is a folder, not a file of names")
    elif _looks_like_path(text):
        raise DataError(f"class list file not found: {text}")
    else:
        # Empty items (a trailing comma) are dropped; blank-but-present names cannot occur here.
        names = [_trim(n) for n in text.split(",") if _trim(n)]
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


def display_text(text: str) -> str:
    """``text`` as the human format prints it: a backslash doubled, and every control, format, separator
    or lone surrogate character (newline, ESC, BEL, NUL, DEL, C1, U+2028, bidi overrides, bytes of a
    file name that are not UTF-8) written as its Python escape (``\\n``, ``\\x1b``, ``\\u202e``). So one
    image is always one line, nothing reaches the terminal raw, and the text is still readable."""
    if text.isprintable() and "\\" not in text:
        return text
    out = []
    for ch in text:
        if ch == "\\":
            out.append("\\\\")
        elif unicodedata.category(ch) in _ESCAPED_CATEGORIES:
            out.append(repr(ch)[1:-1])
        else:
            out.append(ch)
    return "".join(out)


def format_predictions(results: Sequence[Result]) -> str:
    """The human format, one line per image: ``path: class (prob), class (prob), ...`` or ``path: skipped
    (reason)``, every name through :func:`display_text`. For people: a class name may itself hold
    ``, `` or ``(0.9)``; programs read :func:`format_json_lines`."""
    lines = []
    for item in results:
        if isinstance(item, ImageSkip):
            lines.append(f"{display_text(str(item.path))}: skipped ({display_text(item.reason)})")
        else:
            path, top = item
            lines.append(f"{display_text(str(path))}: "
                         + ", ".join(f"{display_text(name)} ({prob:.3f})" for name, prob in top))
    return "\n".join(lines)


def format_json_lines(results: Sequence[Result]) -> str:
    """The format for programs (``predict --format json``), one JSON object per image and line:
    ``{"path": ..., "top": [{"label": ..., "probability": ...}, ...]}`` best first, or ``{"path": ...,
    "skipped": reason}``. ASCII-only JSON: names are exact strings (a file name that is not UTF-8 keeps
    its escaped bytes as lone surrogates) and no byte of them reaches a terminal raw."""
    lines = []
    for item in results:
        if isinstance(item, ImageSkip):
            record: dict[str, object] = {"path": str(item.path), "skipped": item.reason}
        else:
            path, top = item
            record = {"path": str(path), "top": [{"label": name, "probability": prob} for name, prob in top]}
        lines.append(json.dumps(record, ensure_ascii=True))
    return "\n".join(lines)


__all__ = [
    "ImageSkip",
    "Prediction",
    "Result",
    "check_some_read",
    "collect_images",
    "count_skipped",
    "display_text",
    "format_json_lines",
    "format_predictions",
    "in_order",
    "parse_class_list",
    "rank",
]
