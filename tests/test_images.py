"""The one image loader (mmadapter.runtime.images) on every path: per image mode, torch predict and ONNX Runtime
serving agree and the numpy preprocessing equals open_clip's transform; 16-bit and float images keep
their brightness; oversized, odd and corrupt images are skipped (or fatal with strict); non-finite logits
are errors; class lists and class folders are checked."""

from __future__ import annotations

import struct
import subprocess
import sys
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mmadapter.data import fewshot as data
from mmadapter.errors import CheckpointError, DataError, ExportError
from mmadapter.model.backbone import FrozenClip
from mmadapter.model.classify import count_skipped, format_predictions, parse_class_list, predict_images
from mmadapter.runtime import model as runtime
from mmadapter.runtime.images import ImageReadError, ImageSkip, open_image
from mmadapter.runtime.model import classify_images
from mmadapter.runtime.preprocess import Preprocessing, preprocess_image
from mmadapter.runtime.ranking import rank

from export_fixtures import CLASS_NAMES, ExportBundle

PREPROCESS_ATOL = 1e-5  # numpy vs open_clip's transform, normalised units (values span about +-2)
PROB_ATOL = 1e-3  # ONNX Runtime vs torch (the reference), per class probability
ROOT = Path(__file__).resolve().parents[1]


def _noise(rng: np.random.Generator, w: int, h: int, channels: int) -> np.ndarray:
    return rng.integers(0, 256, (h, w, channels), dtype=np.uint8)


def _write_modes(folder: Path) -> dict[str, Path]:
    """One file per image mode, non-square, with content that the resize filter and the conversion
    order both affect (sharp noise, transparent pixels over bright colours)."""
    rng = np.random.default_rng(5)
    folder.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}

    def save(name: str, img: Image.Image, suffix: str = ".png", **kw) -> None:
        paths[name] = folder / f"{name}{suffix}"
        img.save(paths[name], **kw)

    save("RGB", Image.fromarray(_noise(rng, 90, 70, 3)))
    save("L", Image.fromarray(_noise(rng, 71, 93, 1)[..., 0]))
    pal = Image.fromarray(_noise(rng, 83, 61, 3)).quantize(colors=32)
    save("P", pal, transparency=3)  # a palette PNG with a transparent index
    rgba = _noise(rng, 77, 99, 4)
    rgba[..., 3] = np.where(rng.random((99, 77)) < 0.5, 0, rng.integers(1, 256, (99, 77)))
    save("RGBA", Image.fromarray(rgba, "RGBA"))
    la = _noise(rng, 66, 88, 2)
    la[..., 1] = np.where(rng.random((88, 66)) < 0.5, 0, 255)
    save("LA", Image.fromarray(la, "LA"))
    grey16 = (rng.random((75, 95)) * 65535).astype(np.uint16)
    save("I;16", Image.fromarray(grey16))
    save("F", Image.fromarray(rng.random((85, 65)).astype(np.float32)), ".tif")
    save("CMYK", Image.fromarray(_noise(rng, 96, 72, 4), "CMYK"), ".jpg", quality=95)
    save("1", Image.fromarray(rng.random((64, 80)) < 0.5).convert("1"))
    return paths


LOADED_MODE = {"RGB": "RGB", "L": "L", "P": "P", "RGBA": "RGBA", "LA": "LA", "I;16": "L", "F": "L",
               "CMYK": "RGB", "1": "L"}


@pytest.fixture(scope="module")
def mode_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    paths = _write_modes(tmp_path_factory.mktemp("modes"))
    for mode, path in paths.items():  # the files really hold these modes
        assert Image.open(path).mode == mode, path
    return paths


def _spec(exported: ExportBundle) -> Preprocessing:
    return exported.manifest().preprocessing


def test_loader_mode_policy(mode_files: dict[str, Path]) -> None:
    for mode, path in mode_files.items():
        img = data.load_image(path)
        assert img.mode == LOADED_MODE[mode], mode
        assert img.size == Image.open(path).size


@pytest.mark.parametrize("mode", list(LOADED_MODE))
def test_numpy_preprocessing_equals_open_clip_per_mode(exported: ExportBundle, mode_files: dict[str, Path],
                                                       mode: str) -> None:
    """What serving computes (numpy on runtime.images.open_image) vs what training and predict
    compute (open_clip's transform on data.load_image), within PREPROCESS_ATOL."""
    ours = preprocess_image(open_image(mode_files[mode]), _spec(exported))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. PIL's palette-transparency warning on every conversion
        ref = exported.clip.preprocess(data.load_image(mode_files[mode])).numpy()
    assert ours.shape == ref.shape == (3, *exported.clip.image_size)
    np.testing.assert_allclose(ours, ref, rtol=0, atol=PREPROCESS_ATOL)
    if mode in ("P", "RGBA", "LA"):
        # The order is what this guards: converting to RGB before the resize (as training once did)
        # gives other pixels for these images.
        early = exported.clip.preprocess(data.load_image(mode_files[mode]).convert("RGB")).numpy()
        assert np.abs(early - ref).max() > 1e-2


def test_torch_predict_and_onnx_serving_agree_per_mode(exported: ExportBundle, mode_files: dict[str, Path]) -> None:
    """predict_images (checkpoint, torch; the reference) vs classify_images (export, ONNX Runtime):
    same top-1 and every class probability within PROB_ATOL, for every mode."""
    paths = list(mode_files.values())
    n = len(CLASS_NAMES)
    reference = predict_images(exported.checkpoint, paths, top_k=n)
    served = classify_images(exported.out_dir, paths, top_k=n, providers=["cpu"], batch_size=4)
    assert count_skipped(reference) == count_skipped(served) == 0
    for (path, want), (got_path, got), mode in zip(reference, served, mode_files, strict=True):
        assert got_path == path
        assert got[0][0] == want[0][0], mode
        want_probs = dict(want)
        assert sum(want_probs.values()) == pytest.approx(1.0, abs=1e-9)
        for name, prob in got:
            assert prob == pytest.approx(want_probs[name], abs=PROB_ATOL), (mode, name)


def test_sixteen_bit_and_float_images_keep_their_brightness(tmp_path: Path, exported: ExportBundle) -> None:
    grey16 = tmp_path / "grey16.png"
    Image.fromarray(np.array([[0, 32768, 65535]] * 4, dtype=np.uint16)).save(grey16)
    floats = tmp_path / "float.tif"
    Image.fromarray(np.array([[0.0, 0.5, 1.0]] * 4, dtype=np.float32)).save(floats)
    for path in (grey16, floats):
        img = open_image(path)
        assert img.mode == "L"
        # Mid-grey stays mid-grey (PIL's own conversion makes 32768 white and 0.5 black).
        assert [img.getpixel((x, 0)) for x in range(3)] == [0, 128, 255], path.name
    mid = tmp_path / "mid16.png"
    Image.fromarray(np.full((40, 40), 32768, dtype=np.uint16)).save(mid)
    spec = _spec(exported)
    pixels = preprocess_image(open_image(mid), spec)
    expected = (128 / 255 - np.asarray(spec.mean)) / np.asarray(spec.std)  # reference: 8-bit 128, exactly
    np.testing.assert_allclose(pixels.mean(axis=(1, 2)), expected, rtol=0, atol=1e-5)
    nan_tif = tmp_path / "nan.tif"
    Image.fromarray(np.full((4, 4), np.nan, dtype=np.float32)).save(nan_tif)
    with pytest.raises(DataError, match="NaN"):
        open_image(nan_tif)


def test_first_frame_and_no_exif_rotation(tmp_path: Path) -> None:
    frames = [Image.new("RGB", (20, 10), c) for c in ((250, 0, 0), (0, 250, 0))]
    gif = tmp_path / "anim.gif"
    frames[0].save(gif, save_all=True, append_images=frames[1:], duration=50)
    first = open_image(gif).convert("RGB")
    assert first.getpixel((5, 5))[0] > 200 and first.getpixel((5, 5))[1] < 50
    rotated = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"; open_clip ignores it, so do we
    Image.new("RGB", (40, 20), (9, 9, 9)).save(rotated, exif=exif)
    assert open_image(rotated).size == (40, 20)


def _png_claiming(path: Path, width: int, height: int) -> Path:
    """A valid 8x8 PNG whose IHDR (with a correct CRC) claims another size."""
    Image.new("L", (8, 8)).save(path)
    raw = bytearray(path.read_bytes())
    raw[16:24] = struct.pack(">II", width, height)
    raw[29:33] = struct.pack(">I", zlib.crc32(bytes(raw[12:29])) & 0xFFFFFFFF)
    path.write_bytes(bytes(raw))
    return path


@pytest.fixture
def mixed_folder(tmp_path: Path, mode_files: dict[str, Path]) -> tuple[list[Path], dict[str, str]]:
    """Two good images among a 1x100000 PNG, a header claiming 20000x20000 and a truncated PNG;
    the bad ones map to a word their skip reason must hold."""
    good_a, good_b = tmp_path / "a_good.png", tmp_path / "e_good.png"
    good_a.write_bytes(mode_files["RGB"].read_bytes())
    good_b.write_bytes(mode_files["RGBA"].read_bytes())
    tall = tmp_path / "b_tall.png"
    Image.new("L", (1, 100_000)).save(tall)
    assert tall.stat().st_size < 1000
    bomb = _png_claiming(tmp_path / "c_bomb.png", 20_000, 20_000)
    truncated = tmp_path / "d_truncated.png"
    truncated.write_bytes(good_a.read_bytes()[: good_a.stat().st_size // 2])
    paths = [good_a, tall, bomb, truncated, good_b]
    return paths, {tall.name: "aspect ratio", bomb.name: "megapixel", truncated.name: "truncated"}


def _check_skips(results: list, paths: list[Path], reasons: dict[str, str]) -> None:
    assert len(results) == len(paths)
    for path, item in zip(paths, results, strict=True):
        if path.name in reasons:
            assert isinstance(item, ImageSkip) and item.path == path
            assert reasons[path.name] in item.reason and "\n" not in item.reason
        else:
            assert not isinstance(item, ImageSkip) and item[0] == path and item[1][0][0] in CLASS_NAMES
    assert count_skipped(results) == len(reasons)
    lines = format_predictions(results).splitlines()
    assert len(lines) == len(paths)
    for path, line in zip(paths, lines):
        if path.name in reasons:
            assert line.startswith(f"{path}: skipped (") and line.endswith(")")
        else:
            assert line.startswith(f"{path}: ")
            assert "nan" not in line[len(str(path)):] and "skipped" not in line[len(str(path)):]


def test_bad_images_are_skipped_on_both_paths(exported: ExportBundle,
                                              mixed_folder: tuple[list[Path], dict[str, str]]) -> None:
    paths, reasons = mixed_folder
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no DecompressionBombWarning or other stray output
        torch_results = predict_images(exported.checkpoint, paths, top_k=2, batch_size=3)
        served = classify_images(exported.out_dir, paths, top_k=2, providers=["cpu"], batch_size=3)
    _check_skips(torch_results, paths, reasons)
    _check_skips(served, paths, reasons)
    for a, b in zip(torch_results, served):
        assert (a == b) if isinstance(a, ImageSkip) else a[1][0][0] == b[1][0][0]


def test_strict_and_all_bad_are_errors(exported: ExportBundle,
                                       mixed_folder: tuple[list[Path], dict[str, str]]) -> None:
    paths, reasons = mixed_folder
    bad = [p for p in paths if p.name in reasons]
    with pytest.raises(DataError, match="b_tall.png: .*aspect ratio") as info:
        classify_images(exported.out_dir, paths, providers=["cpu"], strict=True)
    assert "\n" not in str(info.value)
    with pytest.raises(DataError, match="b_tall.png"):
        predict_images(exported.checkpoint, paths, strict=True)
    expected = f"none of the 3 images could be read; first: {bad[0]}: "
    for call in (lambda: classify_images(exported.out_dir, bad, providers=["cpu"]),
                 lambda: predict_images(exported.checkpoint, bad)):
        with pytest.raises(DataError) as info:
            call()
        assert str(info.value).startswith(expected) and "aspect ratio" in str(info.value)


def test_oversized_headers_refused_before_decoding(tmp_path: Path) -> None:
    for w, h, word in ((20_000, 20_000, "400 megapixels"), (10_000, 10_000, "100 megapixels"),
                       (7_000, 7_000, "49 megapixels")):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            with pytest.raises(ImageReadError, match=word) as info:
                open_image(_png_claiming(tmp_path / f"{w}.png", w, h))
        assert f"{w}.png" in str(info.value)
    tall = _png_claiming(tmp_path / "tall.png", 100, 10_000)  # 100:1 passes the aspect cap ...
    with pytest.raises(ImageReadError, match="resized to 600x60000"):  # ... but not at a 600 px model size
        open_image(tall, short_side=600)
    assert open_image(_png_claiming(tmp_path / "ok.png", 8, 8)).size == (8, 8)
    with pytest.raises(ImageReadError, match="not found"):
        open_image(tmp_path / "absent.png")


def test_tall_png_costs_little_memory_and_no_torch(tmp_path: Path) -> None:
    """Peak RSS growth (ru_maxrss, in a fresh process with torch blocked) of reading the 277-byte
    1x100000 PNG through the loader and the serving preprocessing: under 200 MB (it once took 3 GB)."""
    tall = tmp_path / "tall.png"
    Image.new("L", (1, 100_000)).save(tall)
    code = f"""
import resource, sys
sys.modules["torch"] = None
sys.modules["open_clip"] = None
import numpy, PIL.Image
from mmadapter.runtime.images import read_images
from mmadapter.runtime.ranking import format_predictions
from mmadapter.runtime.preprocess import Preprocessing, preprocess_batch
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
out = read_images([{str(tall)!r}], short_side=224)
preprocess_batch([i for i in out if hasattr(i, "mode")], Preprocessing((224, 224), (0.5,) * 3, (0.5,) * 3))
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(after - before)
print(format_predictions(out))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    growth_kb, line = proc.stdout.strip().splitlines()
    assert int(growth_kb) < 200 * 1024
    assert line.startswith(f"{tall}: skipped (1x100000 has an aspect ratio")


def test_non_finite_logits_are_errors(exported: ExportBundle, mode_files: dict[str, Path],
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    path = mode_files["RGB"]
    with pytest.raises(DataError, match=r"non-finite logits for x\.png"):
        rank(np.array([[0.0, np.inf]]), [Path("x.png")], ["a", "b"], 1)
    with monkeypatch.context() as m:
        m.setattr(FrozenClip, "encode_images", lambda self, pixels: torch.full((len(pixels), self.embed_dim), np.nan))
        with pytest.raises(CheckpointError, match=f"non-finite logits for {path}: the adapter or CLIP weights"):
            predict_images(exported.checkpoint, [path])
    original = runtime.ExportedModel.classify_pixels

    def nan_logits(self, pixels, batch_size=32):
        out = original(self, pixels, batch_size)
        out["logits"][-1, 0] = np.nan
        return out

    monkeypatch.setattr(runtime.ExportedModel, "classify_pixels", nan_logits)
    with pytest.raises(ExportError, match=f"non-finite logits for {mode_files['L']}") as info:
        classify_images(exported.out_dir, [path, mode_files["L"]], providers=["cpu"])
    assert "nan (" not in str(info.value) and "\n" not in str(info.value)


def test_parse_class_list(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert parse_class_list("cat, dog,") == ["cat", "dog"]
    names = tmp_path / "names.txt"
    names.write_text("golden retriever\n\n  tabby cat \ncafé\n", encoding="utf-8")
    assert parse_class_list(str(names)) == ["golden retriever", "tabby cat", "café"]
    for missing in ("my_clases.txt", "lists/names", "labels.JSON", str(tmp_path / "nope.csv")):
        with pytest.raises(DataError, match=f"class list file not found: {missing}$"):
            parse_class_list(missing)
    with pytest.raises(DataError, match="'a b' and 'a_b'"):
        parse_class_list("a b,a_b")
    clash = tmp_path / "clash.txt"
    clash.write_text("Dog\ncat\ndog\n")
    with pytest.raises(DataError, match="'Dog' and 'dog'"):
        parse_class_list(str(clash))
    (tmp_path / "empty.txt").write_text("\n \n")
    with pytest.raises(DataError, match="empty"):
        parse_class_list("empty.txt")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    with pytest.raises(DataError, match="cannot read class list"):
        parse_class_list("latin1.txt")


def test_class_folders_giving_the_same_prompt_are_refused_before_reading(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("a b", "a_b", "c"):
        (tmp_path / "ds" / name).mkdir(parents=True)
        (tmp_path / "ds" / name / "0.png").write_bytes(b"not an image")

    def no_listing(folder):
        raise AssertionError(f"listed {folder} before the names were checked")

    monkeypatch.setattr(data, "list_images", no_listing)
    with pytest.raises(DataError, match="'a b' and 'a_b'") as info:
        data.image_folder_dataset(tmp_path / "ds")
    assert "ds" in str(info.value) and "\n" not in str(info.value)


def test_serving_side_modules_import_without_torch() -> None:
    code = ("import sys; sys.modules['torch'] = None; sys.modules['open_clip'] = None\n"
            "import mmadapter.runtime.images, mmadapter.runtime.ranking, mmadapter.runtime.preprocess\n"
            "from mmadapter.runtime.ranking import ImageSkip, collect_images, count_skipped, format_predictions, "
            "parse_class_list\nprint('ok')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr
    assert format_predictions([ImageSkip(Path("x.png"), "why")]) == "x.png: skipped (why)"
