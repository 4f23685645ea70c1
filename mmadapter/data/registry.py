"""Registry of the paper's 11 few-shot datasets (the CoOp benchmark suite), loaded from a local root.

Each entry names its folder under the root (the layout of CoOp's DATASETS.md), its image folder, the
CoOp prompt template, and where its train/val/test split comes from. Nothing is downloaded: the user
prepares the folders as CoOp documents and points ``--data`` at the root that holds them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mmadapter.data.fewshot import ImageDataset, ImageRecord, list_images, read_coop_split
from mmadapter.errors import DataError


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    folder: str  # under the data root
    image_dir: str  # under ``folder``; image paths in the split are relative to it
    template: str  # CoOp's hand-written prompt for this dataset
    split: str  # "coop-json" (a split_zhou_*.json file), "imagenet-folders" or "fgvc-variant-lists"
    split_file: str | None
    split_source: str  # where the split comes from, in words


def _coop(name: str, folder: str, image_dir: str, template: str, split_file: str) -> DatasetInfo:
    return DatasetInfo(
        name, folder, image_dir, template, "coop-json", split_file,
        f"CoOp's fixed split file {split_file} (Zhou et al., 2022), placed in {folder}/",
    )


DATASETS: dict[str, DatasetInfo] = {
    d.name: d
    for d in [
        DatasetInfo(
            "ImageNet", "imagenet", "images", "a photo of a {}.", "imagenet-folders", "classnames.txt",
            "ILSVRC-2012: images/train/<wnid>/ is the few-shot pool, images/val/<wnid>/ the test set; "
            "class names from CoOp's classnames.txt (one '<wnid> <name>' per line)",
        ),
        _coop("Caltech101", "caltech-101", "101_ObjectCategories", "a photo of a {}.", "split_zhou_Caltech101.json"),
        _coop("OxfordPets", "oxford_pets", "images", "a photo of a {}, a type of pet.", "split_zhou_OxfordPets.json"),
        _coop("StanfordCars", "stanford_cars", "", "a photo of a {}.", "split_zhou_StanfordCars.json"),
        _coop(
            "Flowers102", "oxford_flowers", "jpg", "a photo of a {}, a type of flower.", "split_zhou_OxfordFlowers.json"
        ),
        _coop("Food101", "food-101", "images", "a photo of {}, a type of food.", "split_zhou_Food101.json"),
        DatasetInfo(
            "FGVCAircraft", "fgvc_aircraft", "images", "a photo of a {}, a type of aircraft.", "fgvc-variant-lists",
            "variants.txt",
            "the official FGVC-Aircraft 2013b lists images_variant_{train,val,test}.txt and variants.txt "
            "(CoOp uses them unchanged)",
        ),
        _coop("SUN397", "sun397", "SUN397", "a photo of a {}.", "split_zhou_SUN397.json"),
        _coop("DTD", "dtd", "images", "{} texture.", "split_zhou_DescribableTextures.json"),
        _coop("EuroSAT", "eurosat", "2750", "a centered satellite photo of {}.", "split_zhou_EuroSAT.json"),
        _coop("UCF101", "ucf101", "UCF-101-midframes", "a photo of a person doing {}.", "split_zhou_UCF101.json"),
    ]
}


def get_dataset_info(name: str) -> DatasetInfo:
    for key, info in DATASETS.items():
        if key.lower() == name.lower():
            return info
    raise DataError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")


def load_registered_dataset(name: str, data_root: str | Path) -> ImageDataset:
    """Load one of the 11 datasets from ``data_root/<folder>``."""
    info = get_dataset_info(name)
    root = Path(data_root) / info.folder
    if not root.is_dir():
        raise DataError(f"{info.name} folder not found: {root} (expected the CoOp layout under {data_root})")
    image_dir = root / info.image_dir
    if info.split == "coop-json":
        class_names, splits = read_coop_split(root / str(info.split_file), image_dir)
        return ImageDataset(info.name, class_names, info.template, splits["train"], splits["val"], splits["test"])
    if info.split == "imagenet-folders":
        return _load_imagenet(info, root)
    return _load_fgvc(info, root)


def _read_lines(path: Path) -> list[str]:
    if not path.is_file():
        raise DataError(f"list file not found: {path}")
    try:
        return [line.strip() for line in path.read_text().splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from None


def _load_imagenet(info: DatasetInfo, root: Path) -> ImageDataset:
    wnids, class_names = [], []
    for line in _read_lines(root / str(info.split_file)):
        wnid, _, cname = line.partition(" ")
        if not cname:
            raise DataError(f"{root / str(info.split_file)}: line {line!r} is not '<wnid> <class name>'")
        wnids.append(wnid)
        class_names.append(cname.strip())
    if not wnids:
        raise DataError(f"{root / str(info.split_file)} lists no classes (empty class list)")

    def split(sub: str) -> list[ImageRecord]:
        base = root / info.image_dir / sub
        return [ImageRecord(p, i, class_names[i]) for i, w in enumerate(wnids) for p in list_images(base / w)]

    return ImageDataset(info.name, tuple(class_names), info.template, split("train"), None, split("val"))


def _load_fgvc(info: DatasetInfo, root: Path) -> ImageDataset:
    class_names = _read_lines(root / "variants.txt")
    if not class_names:
        raise DataError(f"{root / 'variants.txt'} lists no classes (empty class list)")
    index = {name: i for i, name in enumerate(class_names)}

    def split(sub: str) -> list[ImageRecord]:
        records = []
        for line in _read_lines(root / f"images_variant_{sub}.txt"):
            image_id, _, variant = line.partition(" ")  # variant names contain spaces ("Cessna 172")
            if variant not in index:
                raise DataError(f"images_variant_{sub}.txt: unknown variant {variant!r}")
            records.append(ImageRecord(root / info.image_dir / f"{image_id}.jpg", index[variant], variant))
        return records

    return ImageDataset(info.name, tuple(class_names), info.template, split("train"), split("val"), split("test"))


__all__ = ["DATASETS", "DatasetInfo", "get_dataset_info", "load_registered_dataset"]
