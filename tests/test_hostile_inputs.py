"""Hostile inputs through the API and the CLI, second set: batch sizes, inline class lists of
any length, generators, --device with --onnx, the names of unreadable images, one pixel path for files
and in-memory images of every PIL mode, class names the text encoder cannot tell apart, byte-order
marks and control characters, and output that stays one line per image (and JSON Lines for machines).
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image
from test_hostile import assert_user_error, run_cli, work  # noqa: F401 - work: a fixture

from mmadapter.errors import DataError
from mmadapter.runtime.labels import check_class_names, name_list
from mmadapter.runtime.open_vocab import model_pixels
from mmadapter.runtime.preprocess import Preprocessing
from mmadapter.runtime.ranking import parse_class_list

from export_fixtures import ExportBundle

# -- item 5: arguments -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model(exported: ExportBundle):  # noqa: ANN201
    from mmadapter.runtime.model import ExportedModel

    return ExportedModel(exported.out_dir, bank_cache=None)


@pytest.mark.parametrize("batch_size", [0, -1, 1.5, True, "8"])
def test_batch_size_below_one_is_an_error_in_the_api(model, batch_size: object, tmp_path: Path) -> None:  # noqa: ANN001
    from mmadapter.runtime.model import classify_images

    image = Image.new("RGB", (40, 40), (10, 200, 30))
    path = tmp_path / "a.png"
    image.save(path)
    pixels = model_pixels(model, [image])
    with pytest.raises(DataError, match="batch size"):
        model.classify([image], batch_size=batch_size)
    with pytest.raises(DataError, match="batch size"):
        model.classify_pixels(pixels, batch_size=batch_size)
    with pytest.raises(DataError, match="batch size"):
        classify_images(model.folder, [path], batch_size=batch_size)
    assert model.classify([image], batch_size=1).logits.shape == (1, len(model.class_names))


def test_a_generator_of_class_names_is_read_once(model) -> None:  # noqa: ANN001
    image = Image.new("RGB", (40, 40), (200, 20, 30))
    names = ["red apple", "green leaf", "blue sky"]
    as_list = model.classify([image], class_names=names)
    as_generator = model.classify([image], class_names=(n for n in names))
    assert as_generator.class_names == tuple(names)
    np.testing.assert_array_equal(as_generator.logits, as_list.logits)
    with pytest.raises(DataError, match="list of names"):
        model.classify([image], class_names={"a", "b"})  # a set has no order to label logits by
    assert name_list(None) is None


def test_inline_classes_of_any_length(exported: ExportBundle, work: dict[str, Path],  # noqa: F811
                                      capsys: pytest.CaptureFixture[str]) -> None:
    names = [f"class number {i}" for i in range(40)]  # over 255 bytes: too long for a file name
    text = ",".join(names)
    assert len(text.encode()) > 255
    assert parse_class_list(text) == names
    assert parse_class_list("x" * 5000) == ["x" * 5000]  # one long name, no comma
    rc, out, err = run_cli(["predict", "--onnx", exported.out_dir, "--classes", text, work["images"]], capsys)
    assert rc == 0, err
    assert len(out.strip().splitlines()) == len(list(work["images"].iterdir()))


def test_device_with_onnx_is_an_error(exported: ExportBundle, work: dict[str, Path],  # noqa: F811
                                      capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = run_cli(["predict", "--onnx", exported.out_dir, "--device", "cuda", work["images"]], capsys)
    assert_user_error(rc, err, "--device cuda", "--onnx")
    assert out == ""


def test_unreadable_image_errors_name_the_file(exported: ExportBundle, work: dict[str, Path],  # noqa: F811
                                               capsys: pytest.CaptureFixture[str]) -> None:
    bad = work["images"] / "not-really.png"
    bad.write_text("hello")
    rc, _, err = run_cli(["predict", "--onnx", exported.out_dir, "--strict", bad], capsys)
    line = assert_user_error(rc, err, "not-really.png")
    assert "_io." not in line and "BufferedReader" not in line


# -- item 3: one pixel path -----------------------------------------------------------------------------

_MODES = ["I;16", "I", "F", "L", "LA", "P", "PA", "RGBA", "CMYK", "1", "RGB", "YCbCr"]


def _picture(mode: str) -> Image.Image:
    rng = np.random.default_rng(7)
    ramp = np.linspace(0, 1, 48 * 64).reshape(48, 64)
    if mode == "I;16":
        return Image.fromarray((ramp * 60000 + 2000).astype(np.uint16))
    if mode == "I":
        return Image.fromarray((ramp * 70000).astype(np.int32))
    if mode == "F":
        return Image.fromarray((ramp * 0.8 + 0.1).astype(np.float32))
    rgb = Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8))
    if mode == "PA":
        return rgb.convert("P").convert("PA")
    if mode == "LA":
        return Image.merge("LA", (rgb.convert("L"), Image.fromarray((ramp * 255).astype(np.uint8))))
    return rgb.convert(mode)


@pytest.mark.parametrize("mode", _MODES)
def test_in_memory_images_give_the_pixels_of_their_file(mode: str, tmp_path: Path) -> None:
    """Every mode through the loader: the picture from a file and the same picture in memory (both as
    made and as PIL opens the file) give equal pixels, and the caller's image is left as it was."""
    model = SimpleNamespace(preprocessing=Preprocessing((32, 32), (0.48, 0.46, 0.41), (0.27, 0.26, 0.28)))
    picture = _picture(mode)
    path = tmp_path / "picture.tif"  # TIFF keeps every one of these modes as it is
    picture.save(path)
    before = np.asarray(picture).copy()
    from_file = model_pixels(model, [path])
    with Image.open(path) as opened:
        assert opened.mode == mode
        from_opened = model_pixels(model, [opened])
    from_memory = model_pixels(model, [picture])
    np.testing.assert_array_equal(from_memory, from_file)
    np.testing.assert_array_equal(from_opened, from_file)
    assert picture.mode == mode and np.array_equal(np.asarray(picture), before)
    if mode in ("I;16", "F"):  # neither saturated to white nor crushed to black
        grey = from_file[0, 0] * 0.27 + 0.48
        assert 0.2 < float(grey.mean()) < 0.8


def test_other_objects_are_refused_as_images(model) -> None:  # noqa: ANN001
    with pytest.raises(DataError, match="image 1 is a list"):
        model_pixels(model, [Image.new("RGB", (8, 8)), [1, 2, 3]])


# -- item 4: class names --------------------------------------------------------------------------------


def test_names_equal_after_truncation_are_refused(model, work: dict[str, Path],  # noqa: ANN001, F811
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    long_cat, long_dog = "word " * 90 + "cat", "word " * 90 + "dog"
    image = Image.new("RGB", (40, 40))
    with pytest.raises(DataError, match="context length"):
        model.classify([image], class_names=[long_cat, long_dog, "bird"])
    classes = work["root"] / "long.txt"
    classes.write_text(f"{long_cat}\n{long_dog}\n")
    for mode in (["--onnx", model.folder], ["--checkpoint", work["checkpoint"]]):
        rc, out, err = run_cli(["predict", *mode, "--classes", classes, work["images"]], capsys)
        assert_user_error(rc, err, "context length")
        assert out == ""


def test_byte_order_mark_is_not_part_of_a_name(tmp_path: Path) -> None:
    path = tmp_path / "classes.txt"
    path.write_bytes("\ufeffcat\ndog\n".encode())
    assert parse_class_list(str(path)) == ["cat", "dog"]


@pytest.mark.parametrize("name", ["d\x1b[31mog", "bell\x07", "nul\x00l", "del\x7f", "c1\x85", "two\nlines"])
def test_control_characters_in_names_are_refused(name: str, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="control character") as info:
        check_class_names(["cat", name])
    message = str(info.value)
    assert "\n" not in message and not any(ch in message for ch in "\x1b\x07\x00\x7f\x85")
    assert repr(name) in message  # named, with Python's escapes
    path = tmp_path / "classes.txt"
    path.write_text(f"cat\n{name}\n" if "\n" not in name else "cat\nx\x1by\n")
    with pytest.raises(DataError, match="control character"):
        parse_class_list(str(path))


# -- item 6: output ------------------------------------------------------------------------------------


def test_any_file_name_prints_one_line(exported: ExportBundle, work: dict[str, Path],  # noqa: F811
                                       capsys: pytest.CaptureFixture[str]) -> None:
    folder = work["images"]
    source = sorted(folder.iterdir())[0]
    evil = folder / "evil\nfive_9999.png: five (0.999)\nx.png"
    evil.write_bytes(source.read_bytes())
    (folder / "bell\x07\x1b[2J.png").write_bytes(source.read_bytes())
    (folder / "back\\slash.png").write_bytes(source.read_bytes())
    count = len(list(folder.iterdir()))
    rc, out, err = run_cli(["predict", "--onnx", exported.out_dir, folder], capsys)
    assert rc == 0, err
    lines = out.splitlines()
    assert len(lines) == count and not any(ch in out for ch in "\x07\x1b")
    assert any("evil\\nfive_9999.png: five (0.999)\\nx.png" in line for line in lines), out
    assert any("back\\\\slash.png" in line for line in lines), out
    rc, out, err = run_cli(["predict", "--onnx", exported.out_dir, folder, "--format", "json", "--top-k", "2"],
                           capsys)
    assert rc == 0, err
    records = [json.loads(line) for line in out.splitlines()]
    assert len(records) == count
    assert str(evil) in {r["path"] for r in records}
    for record in records:
        assert len(record["top"]) == 2
        assert all(isinstance(t["label"], str) and 0 <= t["probability"] <= 1 for t in record["top"])


def test_json_lines_name_skipped_images(exported: ExportBundle, work: dict[str, Path],  # noqa: F811
                                        capsys: pytest.CaptureFixture[str]) -> None:
    (work["images"] / "broken.png").write_bytes(b"not a png")
    rc, out, err = run_cli(["predict", "--onnx", exported.out_dir, work["images"], "--format", "json"], capsys)
    assert rc == 0, err
    records = [json.loads(line) for line in out.splitlines()]
    skipped = [r for r in records if "skipped" in r]
    assert [Path(r["path"]).name for r in skipped] == ["broken.png"] and "top" not in skipped[0]
    assert len(records) == len(list(work["images"].iterdir()))


def test_bytes_that_are_no_image_are_named_not_shown_as_a_python_object() -> None:
    """An inference server's request body: the error names the input, never ``<_io.BytesIO object at ...>``."""
    from mmadapter.runtime.images import ImageReadError, decode_image

    for data in (b"not an image", b"\x89PNG\r\n\x1a\n" + b"0" * 40, b"GIF89a" + b"\0" * 20):
        with pytest.raises(ImageReadError) as info:
            decode_image(data, 224, "IMAGE[0]")
        assert "IMAGE[0]" in str(info.value) and "<_io" not in str(info.value) and "\n" not in str(info.value)
