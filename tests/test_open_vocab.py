"""Open vocabulary without torch: a label set other than the exported one through the export's tokenizer,
text_encoder, class_bank and the image classifier's CLIP embedding into adapter_head; its validation at
export; the class bank cache; ``predict --onnx --classes``. References: the torch model (open_clip's
tokenizer and encoders, the adapter with a class bank); tolerances: export/validate.py's thresholds."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from mmadapter.cli import main
from mmadapter.errors import DataError, ExportError
from mmadapter.export import onnx_io
from mmadapter.export import validate as validate_module
from mmadapter.export.pipeline import export_checkpoint
from mmadapter.export.validate import sample_images
from mmadapter.runtime import open_vocab
from mmadapter.runtime.model import ExportedModel, classify_images
from mmadapter.runtime.open_vocab import CLIP_IMAGE_EMBEDDING, BankCache

from export_fixtures import CLASS_NAMES, ExportBundle, copying_exporter
from helpers import write_sample_images
from tolerances import EXPORT_COSINE_MIN as COSINE_MIN
from tolerances import EXPORT_LOGITS_ATOL_FP32 as LOGITS_ATOL_FP32
from tolerances import EXPORT_TOP1_MIN, min_cosine

NEW_CLASSES = ("zebra", "lighthouse", "Café crème", "rock &amp; roll", "x-ray machine")


@pytest.fixture(autouse=True)
def _own_bank_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test's default bank cache is its own folder, never the user's ~/.cache."""
    folder = tmp_path / "bank-cache"
    monkeypatch.setenv(open_vocab.CACHE_ENV, str(folder))
    return folder


@pytest.fixture(scope="module")
def pixels() -> np.ndarray:
    from mmadapter.runtime.preprocess import Preprocessing, preprocess_batch

    spec = Preprocessing((64, 64), (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))
    return preprocess_batch(sample_images(9, seed=5), spec)


def _torch_logits(bundle: ExportBundle, pixels: np.ndarray, names, templates=None) -> np.ndarray:
    templates = list(templates or bundle.meta.label_set.templates)
    with torch.no_grad():
        emb = bundle.clip.encode_images(torch.from_numpy(pixels))
        bank = bundle.adapter.class_bank(bundle.clip.class_embeddings(list(names), templates), list(names))
        return bundle.adapter(emb, bank, bundle.meta.logit_scale).logits.double().numpy()


# The export: tokenizer file, raw embedding output, validation of the open-vocabulary path --------------

def test_tokenizer_file_is_written_and_hashed(exported: ExportBundle) -> None:
    m = exported.manifest()
    tok = m.tokenizer
    assert tok.file == "tokenizer.json" and tok.kind == "clip-bpe"
    data = (exported.out_dir / "tokenizer.json").read_bytes()
    assert m.files["tokenizer.json"].sha256 == hashlib.sha256(data).hexdigest()
    assert (tok.sot_token_id, tok.eot_token_id) == (exported.clip.tokenizer.sot_token_id,
                                                    exported.clip.tokenizer.eot_token_id)
    outputs = [t.name for t in m.graphs["image_classifier"].io.outputs]
    assert outputs == ["logits", "image_embedding", CLIP_IMAGE_EMBEDDING]


def test_export_validated_the_open_vocabulary_path(exported: ExportBundle) -> None:
    reports = exported.manifest().validation.open_vocabulary
    assert [r.precision for r in reports] == ["fp32", "fp16", "int8"]
    for report in reports:
        assert report.passed and not report.failures, report
        r = report.measures
        assert r["batch_sizes"] == [1, 3, 17]
        assert r["top1_agreement"] == 1.0 or report.precision == "int8" and r["top1_agreement"] >= EXPORT_TOP1_MIN
        assert min(r["min_cosine"].values()) >= COSINE_MIN[report.precision], r
    assert reports[0].measures["max_abs_diff"]["logits"] <= LOGITS_ATOL_FP32 * 100


def test_clip_image_embedding_matches_open_clip(exported: ExportBundle, pixels: np.ndarray) -> None:
    """Reference: FrozenClip.encode_images. Tolerance: cosine >= COSINE_MIN per precision, unit norm 1e-3."""
    with torch.no_grad():
        ref = exported.clip.encode_images(torch.from_numpy(pixels)).numpy()
    for precision in ("fp32", "fp16", "int8"):
        model = ExportedModel(exported.out_dir, precision=precision)
        raw = model.classify_pixels(pixels)[CLIP_IMAGE_EMBEDDING]
        assert min_cosine(raw, ref) >= COSINE_MIN[precision], precision
        np.testing.assert_allclose(np.linalg.norm(raw, axis=-1), 1.0, atol=1e-3)


# The runtime: new label sets against torch ---------------------------------------------------------------

@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_new_label_set_logits_match_torch(exported: ExportBundle, pixels: np.ndarray, precision: str) -> None:
    """Reference: the torch adapter over open_clip's class embeddings of NEW_CLASSES. Tolerance: fp32 logits
    within LOGITS_ATOL_FP32 x the largest logit; fp16 logits' rows cosine >= COSINE_MIN['fp16'] and the
    same top-1 (none of these inputs is a near tie: checked)."""
    ref = _torch_logits(exported, pixels, NEW_CLASSES)
    got = ExportedModel(exported.out_dir, precision=precision).classify(pixels, NEW_CLASSES)
    assert got.class_names == NEW_CLASSES and got.logits.shape == ref.shape
    if precision == "fp32":
        tol = LOGITS_ATOL_FP32 * max(1.0, np.abs(ref).max())
        np.testing.assert_allclose(got.logits, ref, rtol=0, atol=tol)
    else:
        assert min_cosine(got.logits, ref) >= COSINE_MIN["fp16"]
    top2 = np.sort(ref, axis=-1)[:, -2:]
    assert (top2[:, 1] - top2[:, 0] > 1e-3).all()  # decisive rows, so top-1 must agree
    assert (got.logits.argmax(-1) == ref.argmax(-1)).all()


def test_other_templates_and_the_folded_set(exported: ExportBundle, pixels: np.ndarray) -> None:
    """Without class names: the folded classifier exactly. The checkpoint's names and templates given
    explicitly through the open path: the folded logits within LOGITS_ATOL_FP32 x the largest logit.
    Another template: the torch model with that template within the same tolerance."""
    model = ExportedModel(exported.out_dir)
    folded = model.classify(pixels)
    assert folded.class_names == CLASS_NAMES
    np.testing.assert_array_equal(folded.logits, model.classify_pixels(pixels)["logits"])
    explicit = model.classify(pixels, CLASS_NAMES, exported.meta.label_set.templates)
    tol = LOGITS_ATOL_FP32 * np.abs(folded.logits).max()
    np.testing.assert_allclose(explicit.logits, folded.logits, rtol=0, atol=tol)
    other = model.classify(pixels, NEW_CLASSES, ["a blurry picture of the {}."])
    ref = _torch_logits(exported, pixels, NEW_CLASSES, ["a blurry picture of the {}."])
    np.testing.assert_allclose(other.logits, ref, rtol=0, atol=LOGITS_ATOL_FP32 * np.abs(ref).max())
    top = other.top(2)
    assert len(top) == len(pixels) and all(len(row) == 2 and row[0][1] >= row[1][1] for row in top)
    np.testing.assert_allclose(other.probabilities.sum(-1), 1.0, atol=1e-12)


def test_images_as_paths_and_pil(exported: ExportBundle, tmp_path: Path) -> None:
    images = sample_images(3, seed=8)
    paths = []
    for i, img in enumerate(images):
        paths.append(tmp_path / f"{i}.png")
        img.save(paths[-1])
    model = ExportedModel(exported.out_dir)
    by_path = model.classify(paths, NEW_CLASSES).logits
    by_pil = model.classify([p for p in paths], NEW_CLASSES).logits
    np.testing.assert_array_equal(by_path, by_pil)
    with pytest.raises(DataError):
        model.classify([tmp_path / "missing.png"], NEW_CLASSES)


def test_bad_label_sets_are_one_data_error(exported: ExportBundle, pixels: np.ndarray) -> None:
    model = ExportedModel(exported.out_dir)
    for names, templates, match in ((["a", "A"], None, "give the same prompt"), ([], None, "empty"),
                                    (["a"], ["no field"], "exactly one"), (["a"], [], "at least one")):
        with pytest.raises(DataError, match=match) as info:
            model.classify(pixels, names, templates)
        assert "\n" not in str(info.value)


def test_tampered_tokenizer_is_refused(exported: ExportBundle, tmp_path: Path, pixels: np.ndarray) -> None:
    copy = tmp_path / "export"
    shutil.copytree(exported.out_dir, copy)
    data = json.loads((copy / "tokenizer.json").read_text())
    data["model"]["vocab"]["zebra</w>"] = 1
    (copy / "tokenizer.json").write_text(json.dumps(data))
    model = ExportedModel(copy)
    model.classify(pixels)  # the folded label set needs no tokenizer
    with pytest.raises(ExportError, match="tokenizer.json does not match the sha256"):
        model.classify(pixels, NEW_CLASSES)


# The bank cache --------------------------------------------------------------------------------------------

def test_bank_cache_is_written_once_and_reused(exported: ExportBundle, pixels: np.ndarray,
                                               _own_bank_cache: Path) -> None:
    first = ExportedModel(exported.out_dir).classify(pixels, NEW_CLASSES).logits
    entries = list(_own_bank_cache.iterdir())
    assert len(entries) == 1 and entries[0].suffix == ".npz"
    again = ExportedModel(exported.out_dir)
    np.testing.assert_array_equal(again.classify(pixels, NEW_CLASSES).logits, first)
    # Served from the cache: the text encoder never ran.
    assert "text_encoder.ort.onnx" not in again.session_providers()
    # Another precision or label set is another entry.
    ExportedModel(exported.out_dir, precision="fp16").classify(pixels, NEW_CLASSES)
    ExportedModel(exported.out_dir).classify(pixels, NEW_CLASSES[:2])
    assert len(list(_own_bank_cache.iterdir())) == 3
    assert not [p for p in _own_bank_cache.iterdir() if ".partial-" in p.name]


@pytest.mark.parametrize("poison", ["garbage", "nan", "other_names", "shape"])
def test_poisoned_cache_entry_is_rebuilt(exported: ExportBundle, pixels: np.ndarray, _own_bank_cache: Path,
                                         poison: str) -> None:
    good = ExportedModel(exported.out_dir).classify(pixels, NEW_CLASSES).logits
    (entry,) = list(_own_bank_cache.iterdir())
    with np.load(entry) as data:
        arrays = {k: np.array(data[k]) for k in data.files}
    if poison == "garbage":
        entry.write_bytes(b"not an npz file")
    else:
        if poison == "nan":
            arrays["keys"][0, 0] = np.nan
        elif poison == "other_names":
            arrays["class_names"] = arrays["class_names"][::-1]
        else:
            arrays["values"] = arrays["values"][:, :-1]
        with open(entry, "wb") as f:
            np.savez(f, **arrays)
    np.testing.assert_array_equal(ExportedModel(exported.out_dir).classify(pixels, NEW_CLASSES).logits, good)
    with np.load(entry) as data:  # rewritten with the good bank
        assert np.isfinite(data["keys"]).all() and data["values"].shape == (len(NEW_CLASSES), 128)


def test_unwritable_cache_is_one_warning(exported: ExportBundle, pixels: np.ndarray, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("in the way")
    model = ExportedModel(exported.out_dir, bank_cache=blocker / "cache")
    ref = ExportedModel(exported.out_dir, bank_cache=None).classify(pixels, NEW_CLASSES).logits
    np.testing.assert_array_equal(model.classify(pixels, NEW_CLASSES).logits, ref)
    model.classify(pixels, NEW_CLASSES[:3])  # warned about once per folder
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("warning: class bank cache ") and "not writable" in err[0]
    assert blocker.read_text() == "in the way"


def test_cache_key_names_export_precision_and_label_set(tmp_path: Path) -> None:
    cache = BankCache(tmp_path)
    base = cache.path("e" * 64, "fp32/fp32", ["a", "b"], ["{}"])
    assert base != cache.path("f" * 64, "fp32/fp32", ["a", "b"], ["{}"])
    assert base != cache.path("e" * 64, "fp16/fp16", ["a", "b"], ["{}"])
    assert base != cache.path("e" * 64, "fp32/fp32", ["b", "a"], ["{}"])
    assert base != cache.path("e" * 64, "fp32/fp32", ["a", "b"], ["a {}"])


# Validation at export fails when the open-vocabulary path is wrong ----------------------------------------

def test_wrong_open_vocabulary_path_fails_the_export(exported: ExportBundle, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    export_graph, optimize = copying_exporter(exported)
    monkeypatch.setattr(onnx_io, "export_graph", export_graph)
    monkeypatch.setattr(onnx_io, "optimize_for_ort", optimize)
    real_head = validate_module.head

    def shifted_head(run, emb, bank):  # what a wrong class bank or a mismatched head would give
        out = real_head(run, emb, bank)
        out["logits"] = out["logits"] + np.arange(out["logits"].shape[1], dtype=np.float32)
        return out

    monkeypatch.setattr(validate_module, "head", shifted_head)
    with pytest.raises(ExportError, match=r"validation failed: open vocabulary .* logits differ from torch"):
        export_checkpoint(exported.checkpoint, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


# The command line -----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def image_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_sample_images(tmp_path_factory.mktemp("images"), 4, seed=11)


def test_predict_onnx_classes_list_and_file(exported: ExportBundle, image_folder: Path, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["predict", "--onnx", str(exported.out_dir), "--classes", "zero,one,two", str(image_folder),
                 "--top-k", "3"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 4
    for line in lines:
        names = [part.split(" (")[0] for part in line.split(": ", 1)[1].split(", ")]
        assert sorted(names) == ["one", "two", "zero"], line
    listing = tmp_path / "classes.txt"
    listing.write_text("zebra\nlighthouse\n\nCafé crème\n", encoding="utf-8")
    assert main(["predict", "--onnx", str(exported.out_dir), "--classes", str(listing), str(image_folder)]) == 0
    out = capsys.readouterr().out
    assert "Café crème" in out and "apple" not in out
    # The same ranking as the Python API.
    results = classify_images(exported.out_dir, sorted(image_folder.iterdir()), 1, class_names=list(NEW_CLASSES))
    direct = ExportedModel(exported.out_dir).classify(sorted(image_folder.iterdir()), NEW_CLASSES)
    assert [r[1][0][0] for r in results] == [NEW_CLASSES[i] for i in direct.logits.argmax(-1)]


def test_predict_onnx_bad_classes_is_one_line(exported: ExportBundle, image_folder: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["predict", "--onnx", str(exported.out_dir), "--classes", "cat,Cat", str(image_folder)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "same prompt" in err[0]


def test_predict_verbose_prints_the_providers_once(exported: ExportBundle, image_folder: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["predict", "--onnx", str(exported.out_dir), "--classes", "zero,one", str(image_folder),
                 "--verbose"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("providers: ")
    for graph in ("image_classifier.ort.onnx", "text_encoder.ort.onnx", "class_bank.ort.onnx",
                  "adapter_head.ort.onnx"):
        assert f"{graph}: CPUExecutionProvider (graph precision fp32)" in err[0]  # what runs, and at what
    assert main(["predict", "--onnx", str(exported.out_dir), str(image_folder)]) == 0
    assert capsys.readouterr().err == ""  # without --verbose: nothing on stderr


def test_non_finite_logits_are_an_error_on_both_paths(exported: ExportBundle, pixels: np.ndarray,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    original = ExportedModel.classify_pixels

    def nan_row(self, px, batch_size=32):
        out = original(self, px, batch_size)
        for name in ("logits", CLIP_IMAGE_EMBEDDING):
            out[name][1, 0] = np.nan
        return out

    monkeypatch.setattr(ExportedModel, "classify_pixels", nan_row)
    for names in (None, NEW_CLASSES):
        with pytest.raises(ExportError, match="non-finite logits for image 1") as info:
            ExportedModel(exported.out_dir).classify(pixels, names)
        assert "\n" not in str(info.value)
