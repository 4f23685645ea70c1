"""Image-folder datasets, CoOp split files, k-shot sampling, base-to-novel split, registry, digits."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mmadapter.data.digits import DIGIT_NAMES, digit_images, write_digits_folder
from mmadapter.data.fewshot import (
    base_novel_classes,
    few_shot_splits,
    image_folder_dataset,
    load_image,
    read_coop_split,
    records_identity,
    restrict,
)
from mmadapter.data.registry import DATASETS, get_dataset_info, load_registered_dataset
from mmadapter.errors import DataError
from tests.helpers import make_image_folder


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return make_image_folder(tmp_path / "ds", ["cat", "dog", "eel"], per_class=10, size=8)


def test_image_folder_classes_and_records(folder: Path) -> None:
    ds = image_folder_dataset(folder)
    assert ds.class_names == ("cat", "dog", "eel")
    assert len(ds.train) == 30 and ds.val is None and ds.test is None
    assert {r.label for r in ds.train if r.class_name == "dog"} == {1}


def test_image_folder_with_train_test_subfolders(tmp_path: Path) -> None:
    make_image_folder(tmp_path / "ds" / "train", ["a", "b"], per_class=4, size=8)
    make_image_folder(tmp_path / "ds" / "test", ["a", "b"], per_class=2, size=8)
    ds = image_folder_dataset(tmp_path / "ds")
    assert ds.class_names == ("a", "b") and len(ds.train) == 8 and len(ds.test) == 4


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda p: None, "not found"),
        (lambda p: p.mkdir(), "no class folders"),
        (lambda p: (p / "cls").mkdir(parents=True), "no image files"),
    ],
)
def test_image_folder_errors(tmp_path: Path, setup, message: str) -> None:
    root = tmp_path / "missing"
    setup(root)
    with pytest.raises(DataError, match=message):
        image_folder_dataset(root)


def test_corrupt_and_truncated_images_are_data_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image at all")
    with pytest.raises(DataError, match="cannot read image") as info:
        load_image(bad)
    assert "\n" not in str(info.value)
    good = tmp_path / "good.png"
    Image.new("RGB", (64, 64), (10, 200, 30)).save(good)
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good.read_bytes()[:60])
    with pytest.raises(DataError, match="truncated.png"):
        load_image(truncated)
    assert load_image(good).mode == "RGB"


def test_few_shot_is_seeded_per_class_and_disjoint(folder: Path) -> None:
    ds = image_folder_dataset(folder)
    a, b = few_shot_splits(ds, shots=3, seed=5), few_shot_splits(ds, shots=3, seed=5)
    assert [r.path for r in a.train] == [r.path for r in b.train]
    assert sorted(r.label for r in a.train) == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert len(a.val) == 9
    train, val, test = ({r.path for r in s} for s in (a.train, a.val, a.test))
    assert not train & val and not train & test and not val & test
    assert len(test) == 30 - 18
    other = few_shot_splits(ds, shots=3, seed=6)
    assert [r.path for r in other.train] != [r.path for r in a.train]


def test_few_shot_with_too_few_images_is_an_error(tmp_path: Path) -> None:
    ds = image_folder_dataset(make_image_folder(tmp_path / "ds", ["a"], per_class=2, size=8))
    with pytest.raises(DataError, match="too few images"):
        few_shot_splits(ds, shots=16)


def test_base_novel_split_follows_coop_label_order(tmp_path: Path) -> None:
    """CoOp's protocol: base = the first ceil(n/2) labels in the split file's label order (here not
    alphabetical), never the first names after sorting; the authors' code takes floor(n/2)."""
    labels = ["zebra", "ant", "moth", "cat", "dog"]  # label 0..4
    entries = [[f"{name}/{i}.jpg", label, name] for label, name in enumerate(labels) for i in range(2)]
    split_file = tmp_path / "split_zhou_Toy.json"
    split_file.write_text(json.dumps({"train": entries[::-1], "val": [], "test": entries}))
    class_names, _ = read_coop_split(split_file, tmp_path)
    assert class_names == tuple(labels)
    assert base_novel_classes(class_names) == (("zebra", "ant", "moth"), ("cat", "dog"))
    assert base_novel_classes(class_names, "authors") == (("zebra", "ant"), ("moth", "cat", "dog"))
    assert base_novel_classes(class_names[:4]) == base_novel_classes(class_names[:4], "authors")  # even n: same
    with pytest.raises(DataError, match="at least 2"):
        base_novel_classes(["only"])
    with pytest.raises(DataError, match="unknown base-to-novel split"):
        base_novel_classes(labels, "sorted")


def test_restrict_relabels(folder: Path) -> None:
    ds = image_folder_dataset(folder)
    novel = restrict(ds.train, ["eel", "dog"])
    assert {(r.class_name, r.label) for r in novel} == {("eel", 0), ("dog", 1)}


def test_records_identity_changes_with_content(folder: Path) -> None:
    ds = image_folder_dataset(folder)
    before = records_identity(ds.train)
    Image.new("RGB", (9, 9)).save(ds.train[0].path)
    assert records_identity(ds.train) != before


def _write_split(path: Path, entries: dict) -> Path:
    path.write_text(json.dumps(entries))
    return path


def test_coop_split_file(tmp_path: Path) -> None:
    split = _write_split(tmp_path / "s.json", {
        "train": [["b/1.jpg", 1, "b"], ["a/1.jpg", 0, "a"]],
        "val": [["a/2.jpg", 0, "a"]],
        "test": [["b/3.jpg", 1, "b"]],
    })
    names, splits = read_coop_split(split, tmp_path / "img")
    assert names == ("a", "b")
    assert splits["train"][0].path == tmp_path / "img" / "b/1.jpg" and len(splits["val"]) == 1


@pytest.mark.parametrize(
    "content, message",
    [
        ({"train": [], "test": []}, "empty class list"),
        ({"train": [["x.jpg", 0, "a"], ["y.jpg", 0, "b"]], "test": []}, "label 0 is both"),
        ({"train": [["x.jpg", 1, "a"]], "test": []}, "labels are not"),
        ({"val": []}, "needs 'train' and 'test'"),
    ],
)
def test_bad_coop_split_files(tmp_path: Path, content: dict, message: str) -> None:
    with pytest.raises(DataError, match=message):
        read_coop_split(_write_split(tmp_path / "s.json", content), tmp_path)


def test_registry_has_the_papers_eleven_datasets_with_coop_templates() -> None:
    assert set(DATASETS) == {"ImageNet", "Caltech101", "OxfordPets", "StanfordCars", "Flowers102", "Food101",
                             "FGVCAircraft", "SUN397", "DTD", "EuroSAT", "UCF101"}
    assert get_dataset_info("oxfordpets").template == "a photo of a {}, a type of pet."
    assert get_dataset_info("EuroSAT").template == "a centered satellite photo of {}."
    assert get_dataset_info("DTD").split_file == "split_zhou_DescribableTextures.json"
    assert all("{}" in d.template and d.split_source for d in DATASETS.values())
    with pytest.raises(DataError, match="unknown dataset"):
        get_dataset_info("MNIST")


def test_load_registered_coop_dataset(tmp_path: Path) -> None:
    root = tmp_path / "oxford_pets"
    make_image_folder(root / "images", ["abyssinian", "beagle"], per_class=2, size=8)
    _write_split(root / "split_zhou_OxfordPets.json", {
        "train": [["abyssinian/000.png", 0, "abyssinian"], ["beagle/000.png", 1, "beagle"]],
        "val": [["abyssinian/001.png", 0, "abyssinian"]],
        "test": [["beagle/001.png", 1, "beagle"]],
    })
    ds = load_registered_dataset("OxfordPets", tmp_path)
    assert ds.class_names == ("abyssinian", "beagle") and ds.template.endswith("a type of pet.")
    assert all(r.path.is_file() for r in ds.train + ds.val + ds.test)
    with pytest.raises(DataError, match="folder not found"):
        load_registered_dataset("DTD", tmp_path)


def test_load_fgvc_and_imagenet_layouts(tmp_path: Path) -> None:
    fgvc = tmp_path / "fgvc_aircraft"
    (fgvc / "images").mkdir(parents=True)
    (fgvc / "variants.txt").write_text("707-320\nCessna 172\n")
    for sub, lines in {"train": "1 707-320\n2 Cessna 172\n", "val": "3 Cessna 172\n", "test": "4 707-320\n"}.items():
        (fgvc / f"images_variant_{sub}.txt").write_text(lines)
    ds = load_registered_dataset("FGVCAircraft", tmp_path)
    assert ds.class_names == ("707-320", "Cessna 172") and ds.train[1].label == 1
    assert ds.test[0].path == fgvc / "images" / "4.jpg"

    imnet = tmp_path / "imagenet"
    make_image_folder(imnet / "images" / "train", ["n01", "n02"], per_class=2, size=8)
    make_image_folder(imnet / "images" / "val", ["n01", "n02"], per_class=1, size=8)
    (imnet / "classnames.txt").write_text("n01 tench\nn02 goldfish\n")
    ds = load_registered_dataset("ImageNet", tmp_path)
    assert ds.class_names == ("tench", "goldfish") and len(ds.train) == 4 and len(ds.test) == 2


def test_digits_are_real_rgb_images(tmp_path: Path) -> None:
    images = digit_images(size=48, per_class=3)
    assert len(images) == 30 and {name for _, name in images} == set(DIGIT_NAMES)
    img, _ = images[0]
    assert img.mode == "RGB" and img.size == (48, 48)
    assert len(np.unique(np.asarray(img))) > 2  # upscaled grey levels, not a blank canvas
    root = write_digits_folder(tmp_path / "digits", size=32, per_class=2)
    ds = image_folder_dataset(root)
    assert ds.class_names == tuple(sorted(DIGIT_NAMES)) and len(ds.train) == 20
    assert Image.open(ds.train[0].path).format == "PNG"
