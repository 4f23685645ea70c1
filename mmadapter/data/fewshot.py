"""Few-shot image data: image-folder datasets, CoOp split files, seeded k-shot sampling and the
base-to-novel split (docs/design.md §2.2). Images are read lazily; a record is a path and a label.

Every problem with user data (missing folder, empty class list, unreadable image, malformed split
file) is a one-line :class:`DataError`.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from PIL import Image

from mmadapter.errors import DataError
from mmadapter.files import first_line
from mmadapter.runtime.images import IMAGE_EXTENSIONS, is_image_file, list_images, open_image
from mmadapter.runtime.labels import check_class_names

DEFAULT_TEMPLATE = "a photo of a {}."


@dataclass(frozen=True)
class ImageRecord:
    path: Path
    label: int  # index into the class names of the record list it belongs to
    class_name: str


@dataclass(frozen=True)
class ImageDataset:
    """A labelled dataset. ``val`` and ``test`` may be ``None``: then :func:`few_shot_splits` draws the
    validation shots from ``train`` and tests on whatever ``train`` images were not drawn."""

    name: str
    class_names: tuple[str, ...]
    template: str
    train: list[ImageRecord]
    val: list[ImageRecord] | None = None
    test: list[ImageRecord] | None = None


@dataclass(frozen=True)
class FewShotSplits:
    class_names: tuple[str, ...]
    train: list[ImageRecord]
    val: list[ImageRecord]
    test: list[ImageRecord]


def load_image(path: str | Path) -> Image.Image:
    """The project's one image loader (:func:`mmadapter.runtime.images.open_image`): fully decoded, size-capped,
    8-bit images left in their own mode (open_clip's transform converts to RGB after the crop), 16-bit
    and float images scaled; any failure is a one-line DataError naming the file."""
    return open_image(path)


def _folder_records(root: Path, class_names: Sequence[str]) -> list[ImageRecord]:
    records = []
    for label, name in enumerate(class_names):
        for path in list_images(root / name):
            records.append(ImageRecord(path, label, name))
    return records


def image_folder_dataset(root: str | Path, template: str = DEFAULT_TEMPLATE, name: str | None = None) -> ImageDataset:
    """One sub-folder per class (folder name = class name). If ``root`` has ``train/`` and ``test/``
    (and optionally ``val/``) sub-folders, each is such a folder tree; otherwise all images form the
    training pool and the test set is what the few-shot sampling leaves over."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"dataset folder not found: {root}")
    split_root = root / "train" if (root / "train").is_dir() and (root / "test").is_dir() else root
    class_names = tuple(sorted(p.name for p in split_root.iterdir() if p.is_dir() and not p.name.startswith(".")))
    if not class_names:
        raise DataError(f"no class folders in {split_root} (expected one sub-folder of images per class)")
    # Folders such as `a b` and `a_b` give the same prompt: refused before any image is listed or read.
    check_class_names(class_names, f"class folders of {split_root}")
    train = _folder_records(split_root, class_names)
    val = test = None
    if split_root != root:
        test = _split_folder_records(root / "test", class_names)
        val = _split_folder_records(root / "val", class_names) if (root / "val").is_dir() else None
    return ImageDataset(name or root.name, class_names, template, train, val, test)


def _split_folder_records(folder: Path, class_names: Sequence[str]) -> list[ImageRecord]:
    present = {p.name for p in folder.iterdir() if p.is_dir()}
    unknown = sorted(present - set(class_names))
    if unknown:
        raise DataError(f"{folder} has class folders not in the training classes: {unknown[:5]}")
    return _folder_records(folder, [c for c in class_names if c in present]) if present else []


def read_coop_split(
    split_file: str | Path, image_dir: str | Path
) -> tuple[tuple[str, ...], dict[str, list[ImageRecord]]]:
    """Read a CoOp split file (``{"train": [[relpath, label, classname], ...], "val": ..., "test": ...}``).

    Returns the class names ordered by label and the records of each split; image paths are
    resolved against ``image_dir`` (checked when an image is read, not here: ImageNet-size splits
    have a million entries)."""
    split_file, image_dir = Path(split_file), Path(image_dir)
    if not split_file.is_file():
        raise DataError(f"split file not found: {split_file}")
    try:
        data = json.loads(split_file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"cannot read split file {split_file}: {first_line(exc)}") from None
    if not isinstance(data, dict) or "train" not in data or "test" not in data:
        raise DataError(f"split file {split_file} needs 'train' and 'test' lists")
    names: dict[int, str] = {}
    splits: dict[str, list[ImageRecord]] = {}
    for split in ("train", "val", "test"):
        records = []
        for entry in data.get(split, []):
            if not (isinstance(entry, list) and len(entry) == 3 and isinstance(entry[1], int)):
                raise DataError(f"split file {split_file}: bad {split} entry {entry!r}; expected [path, label, name]")
            rel, label, cname = entry
            if names.setdefault(label, cname) != cname:
                raise DataError(f"split file {split_file}: label {label} is both {names[label]!r} and {cname!r}")
            records.append(ImageRecord(image_dir / rel, label, cname))
        splits[split] = records
    if not names:
        raise DataError(f"split file {split_file} lists no images (empty class list)")
    if sorted(names) != list(range(len(names))):
        raise DataError(f"split file {split_file}: labels are not 0..{len(names) - 1}")
    return tuple(names[i] for i in range(len(names))), splits


def sample_per_class(
    records: Sequence[ImageRecord], shots: int, seed: int, exclude: set[Path] | None = None
) -> list[ImageRecord]:
    """Up to ``shots`` records per class, drawn with a seeded RNG independent of global state."""
    if shots <= 0:
        raise DataError(f"shots must be positive, got {shots}")
    by_class: dict[int, list[ImageRecord]] = defaultdict(list)
    for r in records:
        if not exclude or r.path not in exclude:
            by_class[r.label].append(r)
    rng = random.Random(seed)
    chosen: list[ImageRecord] = []
    for label in sorted(by_class):
        pool = by_class[label]
        chosen.extend(rng.sample(pool, min(shots, len(pool))))
    return chosen


def few_shot_splits(
    dataset: ImageDataset, shots: int = 16, seed: int = 1, val_shots: int | None = None
) -> FewShotSplits:
    """Seeded ``shots``-per-class training set plus a disjoint ``val_shots``-per-class validation set
    (default: as many as ``shots``), and the test set."""
    val_shots = shots if val_shots is None else val_shots
    train = sample_per_class(dataset.train, shots, seed)
    taken = {r.path for r in train}
    if dataset.val is not None and dataset.val:
        val = sample_per_class(dataset.val, val_shots, seed + 1, exclude=taken)
    else:
        val = sample_per_class(dataset.train, val_shots, seed + 1, exclude=taken)
    taken |= {r.path for r in val}
    test = dataset.test if dataset.test is not None else [r for r in dataset.train if r.path not in taken]
    if not train or not test:
        raise DataError(f"dataset {dataset.name} has too few images for {shots}-shot training plus a test set")
    return FewShotSplits(dataset.class_names, train, val, list(test))


BASE_NOVEL_SPLITS = ("coop", "authors")


def base_novel_classes(class_names: Sequence[str], split: str = "coop") -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The base-to-novel protocol on ``class_names`` in the dataset's label order (label 0 first):
    ``coop``, the protocol of CoOp/CoCoOp whose tables every base-to-novel paper reports, takes the
    first ceil(n/2) labels as base; ``authors`` takes floor(n/2), as the Multi-Modal Adapter authors'
    code does (it differs for an odd number of classes). The rest are novel. Names are never sorted:
    ImageNet's, Caltech101's and StanfordCars' label orders are not alphabetical."""
    if split not in BASE_NOVEL_SPLITS:
        raise DataError(f"unknown base-to-novel split {split!r}; choose {' or '.join(BASE_NOVEL_SPLITS)}")
    if len(class_names) < 2:
        raise DataError(f"base-to-novel needs at least 2 classes, got {len(class_names)}")
    half = math.ceil(len(class_names) / 2) if split == "coop" else len(class_names) // 2
    return tuple(class_names[:half]), tuple(class_names[half:])


def restrict(records: Sequence[ImageRecord], class_names: Sequence[str]) -> list[ImageRecord]:
    """The records whose class is in ``class_names``, relabelled by position in ``class_names``."""
    index = {name: i for i, name in enumerate(class_names)}
    return [replace(r, label=index[r.class_name]) for r in records if r.class_name in index]


def records_identity(records: Sequence[ImageRecord]) -> str:
    """A content-sensitive hash of a record list (paths, labels, file sizes and modification times),
    used to key the embedding cache: a changed, added or removed image changes it."""
    digest = hashlib.sha256()
    for r in records:
        try:
            st = r.path.stat()
            stamp = f"{st.st_size}:{st.st_mtime_ns}"
        except OSError:
            stamp = "missing"
        digest.update(f"{r.path.resolve()}|{r.label}|{r.class_name}|{stamp}\n".encode())
    return digest.hexdigest()


__all__ = [
    "DEFAULT_TEMPLATE",
    "IMAGE_EXTENSIONS",
    "FewShotSplits",
    "ImageDataset",
    "ImageRecord",
    "BASE_NOVEL_SPLITS",
    "base_novel_classes",
    "few_shot_splits",
    "image_folder_dataset",
    "is_image_file",
    "list_images",
    "load_image",
    "read_coop_split",
    "records_identity",
    "restrict",
    "sample_per_class",
]
