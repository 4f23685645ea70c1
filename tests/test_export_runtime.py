"""``mmadapter.runtime.model`` and ``preprocess``: serving an export folder with ONNX Runtime and
numpy/PIL preprocessing, without torch; provider choice and reporting; bad images and files."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from mmadapter.errors import DataError, ExportError, MMAdapterError
from mmadapter.export.validate import sample_images
from mmadapter.model.classify import predict_images
from mmadapter.runtime.engines import onnxruntime as ort_engine
from mmadapter.runtime.images import ImageSkip, open_image
from mmadapter.runtime.model import ExportedModel, Session, classify_images, resolve_providers
from mmadapter.runtime.preprocess import Preprocessing, preprocess_batch, preprocess_image

from export_fixtures import CLASS_NAMES, ExportBundle
from tolerances import EXPORT_COSINE_MIN

CPU, CUDA, TRT = "CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"
PREPROCESS_ATOL = 1e-5  # numpy vs open_clip preprocess, in normalised units (values span about +-2)


@pytest.fixture(scope="module")
def png_folder(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("pngs")
    paths = []
    for i, img in enumerate(sample_images(12, seed=21)):  # RGB, L and RGBA, sizes 40-300, not square
        path = folder / f"img_{i:02d}.png"
        img.save(path)
        paths.append(path)
    return paths


def test_classify_images_matches_torch_predict(exported: ExportBundle, png_folder: list[Path]) -> None:
    """ONNX Runtime with numpy preprocessing vs mmadapter.model.classify (open_clip preprocess + torch):
    identical top-1 on every image; top-3 probabilities within 1e-4."""
    served = classify_images(exported.out_dir, png_folder, top_k=3, batch_size=5)  # 5 does not divide 12
    reference = predict_images(exported.checkpoint, png_folder, top_k=3)
    assert [p for p, _ in served] == png_folder
    for (path, got), (_, want) in zip(served, reference, strict=True):
        assert got[0][0] == want[0][0], path
        assert len(got) == 3 and all(name in CLASS_NAMES for name, _ in got)
        want_probs = dict(want)
        for name, prob in got:
            if name in want_probs:
                assert prob == pytest.approx(want_probs[name], abs=1e-4), (path, name)
    assert {top[0][0] for _, top in served}  # something was predicted
    everything = classify_images(exported.out_dir, png_folder[:2], top_k=100)
    assert all(len(top) == len(CLASS_NAMES) and sum(p for _, p in top) == pytest.approx(1.0, abs=1e-6)
               for _, top in everything)
    with pytest.raises(DataError, match="top_k"):
        classify_images(exported.out_dir, png_folder, top_k=0)


@pytest.mark.parametrize("size", [(1, 1), (63, 65), (65, 63), (301, 17), (17, 301), (64, 64), (127, 33), (64, 200)])
@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA", "P"])
def test_numpy_preprocessing_matches_open_clip(exported: ExportBundle, size: tuple[int, int],
                                               mode: str) -> None:
    rng = np.random.default_rng(size[0] * 1000 + size[1])
    arr = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    img = Image.fromarray(arr).convert(mode)
    spec = exported.manifest().preprocessing
    ours = preprocess_image(img, spec)
    ref = exported.clip.preprocess(img).numpy()
    assert ours.shape == ref.shape == (3, *exported.clip.image_size) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, ref, rtol=0, atol=PREPROCESS_ATOL)


def test_preprocessing_spec_round_trip_and_errors(exported: ExportBundle) -> None:
    spec = exported.manifest().preprocessing
    assert Preprocessing.from_dict(spec.to_dict()) == spec
    assert preprocess_batch([], spec).shape == (0, 3, 64, 64)
    img = Image.new("RGB", (10, 10))
    with pytest.raises(DataError, match="resize mode"):
        preprocess_image(img, Preprocessing(spec.image_size, spec.mean, spec.std, resize_mode="squash"))
    with pytest.raises(DataError, match="interpolation"):
        preprocess_image(img, Preprocessing(spec.image_size, spec.mean, spec.std, interpolation="magic"))


def test_resolve_providers_on_this_machine() -> None:
    available = ort.get_available_providers()
    assert resolve_providers(["cpu"]) == [CPU]
    assert resolve_providers(["CPU"]) == [CPU]
    default = resolve_providers(None)
    assert default[-1] == CPU and set(default) <= set(available)
    assert default == [p for p in (TRT, CUDA, CPU) if p in available]
    if CUDA not in available:
        with pytest.warns(RuntimeWarning, match="CUDAExecutionProvider"):
            assert resolve_providers(["cuda"]) == [CPU]
    with pytest.raises(ExportError, match="unknown execution provider 'tpu'"):
        resolve_providers(["tpu"])


def test_resolve_providers_order_with_gpu_build(monkeypatch: pytest.MonkeyPatch) -> None:
    """As onnxruntime-gpu with TensorRT would report: TensorRT, CUDA, CPU in that order, or as asked."""
    monkeypatch.setattr(ort, "get_available_providers", lambda: [CPU, CUDA, TRT])
    assert resolve_providers(None) == [TRT, CUDA, CPU]
    assert resolve_providers(["cuda", "cpu"]) == [CUDA, CPU]
    assert resolve_providers(["trt"]) == [TRT, CPU]
    monkeypatch.setattr(ort, "get_available_providers", lambda: [CUDA, CPU])
    with pytest.warns(RuntimeWarning, match="TensorrtExecutionProvider"):
        assert resolve_providers(["tensorrt", "cuda"]) == [CUDA, CPU]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_providers(None) == [CUDA, CPU]  # the default asks for nothing: no warning


def test_session_reports_the_providers_it_really_got(exported: ExportBundle,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    path = exported.out_dir / "adapter_head.ort.onnx"
    sess = Session(path, ["cpu"])
    assert sess.providers == [CPU] and not sess.on_gpu
    if CUDA in ort.get_available_providers():
        pytest.skip("this onnxruntime has CUDA: the silent fallback cannot be simulated")
    # onnxruntime-gpu whose CUDA libraries fail to load: asked for CUDA, silently given CPU.
    monkeypatch.setattr(ort_engine, "resolve_providers", lambda requested=None: [CUDA, CPU])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # ORT's own warning about the unknown provider
        with pytest.warns(RuntimeWarning, match="fell back"):
            fallback = Session(path, ["cuda"])
    assert fallback.providers == [CPU] and not fallback.on_gpu


def test_session_batches_only_the_batch_inputs(exported: ExportBundle) -> None:
    """adapter_head in chunks of 2 images with the whole class bank each time equals one call."""
    rng = np.random.default_rng(0)
    n, c, d = 9, exported.clip.embed_dim, exported.adapter.config.bottleneck_dim
    feeds = {"image_emb": rng.standard_normal((5, c)).astype(np.float32),
             "text_emb": rng.standard_normal((n, c)).astype(np.float32),
             "keys": rng.standard_normal((n, d)).astype(np.float32),
             "values": rng.standard_normal((n, d)).astype(np.float32)}
    batch_inputs = exported.manifest().graphs["adapter_head"].batch_inputs
    assert batch_inputs == ("image_emb",)
    sess = Session(exported.out_dir / "adapter_head.ort.onnx", ["cpu"], batch_axis_inputs=batch_inputs)
    whole = sess.run(feeds, batch_size=64)
    chunked = sess.run(feeds, batch_size=2)
    assert whole["logits"].shape == (5, n)
    for name in whole:
        np.testing.assert_allclose(chunked[name], whole[name], rtol=0, atol=1e-5)
    with pytest.raises(ExportError, match="missing inputs"):
        sess.run({"image_emb": feeds["image_emb"]})
    with pytest.raises(DataError, match="empty"):
        sess.run({**feeds, "image_emb": feeds["image_emb"][:0]})


def test_fp16_serving_agrees_with_fp32(exported: ExportBundle, png_folder: list[Path]) -> None:
    spec = exported.manifest().preprocessing
    pixels = preprocess_batch([open_image(p) for p in png_folder], spec)
    out32 = ExportedModel(exported.out_dir, ["cpu"]).classify_pixels(pixels)
    out16 = ExportedModel(exported.out_dir, ["cpu"], precision="fp16").classify_pixels(pixels)
    a, b = out32["image_embedding"].astype(np.float64), out16["image_embedding"].astype(np.float64)
    cos = (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))
    assert cos.min() >= EXPORT_COSINE_MIN["fp16"]
    np.testing.assert_array_equal(out16["logits"].argmax(-1), out32["logits"].argmax(-1))


def _one_line(exc: BaseException) -> str:
    text = str(exc)
    assert text and "\n" not in text and "Traceback" not in text
    return text


def test_corrupt_and_missing_images_are_one_line_errors(exported: ExportBundle, png_folder: list[Path],
                                                        tmp_path: Path) -> None:
    not_an_image = tmp_path / "text.png"
    not_an_image.write_bytes(b"this is not a PNG file at all")
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(png_folder[3].read_bytes()[:200])
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    for bad in (not_an_image, truncated, empty, tmp_path / "absent.png"):
        with pytest.raises(MMAdapterError) as info:
            classify_images(exported.out_dir, [png_folder[0], bad], top_k=1, strict=True)
        assert isinstance(info.value, DataError)
        assert bad.name in _one_line(info.value)
        # Not strict: the unreadable image is skipped in its place, the readable one still classified.
        good, skipped = classify_images(exported.out_dir, [png_folder[0], bad], top_k=1)
        assert isinstance(skipped, ImageSkip) and not isinstance(good, ImageSkip)


def test_tampered_or_missing_export_files(exported: ExportBundle, tmp_path: Path,
                                          png_folder: list[Path]) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(exported.out_dir, copy)
    target = copy / "image_classifier.ort.onnx"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))
    with pytest.raises(ExportError, match="sha256") as info:
        classify_images(copy, png_folder[:1])
    assert "image_classifier.ort.onnx" in _one_line(info.value)
    target.unlink()
    with pytest.raises(ExportError, match="missing") as info:
        classify_images(copy, png_folder[:1])
    _one_line(info.value)
    with pytest.raises(ExportError, match="has no graph 'nonexistent'"):
        ExportedModel(copy).graph_file("nonexistent")
    (copy / "manifest.json").write_text("{not json")
    with pytest.raises(ExportError, match="not valid JSON") as info:
        classify_images(copy, png_folder[:1])
    _one_line(info.value)
    (copy / "manifest.json").write_text(json.dumps({"format": "something else"}))
    with pytest.raises(ExportError, match="not an mmadapter export manifest"):
        ExportedModel(copy)
    (copy / "manifest.json").unlink()
    with pytest.raises(ExportError, match="no manifest.json"):
        classify_images(copy, png_folder[:1])
    with pytest.raises(ExportError, match="not found"):
        classify_images(tmp_path / "nowhere", png_folder[:1])


def test_runtime_imports_and_serves_without_torch(exported: ExportBundle, png_folder: list[Path]) -> None:
    """What `pip install mmadapter[runtime]` gives: numpy, pillow, onnxruntime; torch and open_clip
    blocked (importing them raises ImportError), and the same top-1 as in-process."""
    code = f"""
import sys
sys.modules["torch"] = None
sys.modules["open_clip"] = None
sys.modules["torchvision"] = None
from mmadapter.runtime.model import classify_images
from mmadapter.errors import MMAdapterError
out = classify_images({str(exported.out_dir)!r}, {[str(p) for p in png_folder[:4]]!r}, top_k=2)
print([top[0][0] for _, top in out])
try:
    classify_images({str(exported.out_dir)!r}, ["/nonexistent.png"])
except MMAdapterError as exc:
    print("error:", exc)
assert sys.modules["torch"] is None
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    expected = [top[0][0] for _, top in classify_images(exported.out_dir, png_folder[:4], top_k=2)]
    assert lines[0] == str(expected)
    assert lines[1].startswith("error: ") and "/nonexistent.png" in lines[1] and "not found" in lines[1]
