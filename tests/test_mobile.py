"""Phones: ``export --ort-mobile`` (ONNX Runtime's .ort format and its reduced-operator config) and
``export --executorch`` (ExecuTorch programs lowered to XNNPACK) with the ``executorch`` engine, on the tiny
random model. The ExecuTorch tests skip when the ``mobile`` extra is not installed."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

from mmadapter.errors import ExportError
from mmadapter.export import onnx_io
from mmadapter.export.ort_mobile import CONFIG, SOURCE_ATOL, compare_to_source, config_operators
from mmadapter.runtime.engines import open_session
from mmadapter.runtime.engines.executorch import set_thread_pool_size, thread_pool_size
from mmadapter.runtime.manifest import read_manifest, sha256_file

from export_fixtures import make_checkpoint

# Contrib ops ONNX Runtime's CPU fusions put into a graph; the standard ones must all come from the sources.
ORT_FUSED_OPS = {"BiasGelu", "DynamicQuantizeMatMul", "FusedMatMul", "SkipLayerNormalization", "Attention",
                 "MultiHeadAttention", "QuickGelu", "Gelu", "FastGelu", "BiasSoftmax", "MatMulIntegerToFloat"}


HAS_EXECUTORCH = importlib.util.find_spec("executorch") is not None
needs_executorch = pytest.mark.skipif(not HAS_EXECUTORCH, reason="ExecuTorch (the mobile extra) is not installed")


@pytest.fixture(scope="module")
def ort_mobile_export(tmp_path_factory):
    """One export for every test here (the lowering dominates): .ort files, and .pte programs when ExecuTorch
    is installed (int8 calibrated on the digits, real images); a small --max-classes keeps the planned memory
    small."""
    from mmadapter.data.digits import write_digits_folder
    from mmadapter.export.pipeline import export_checkpoint

    root = tmp_path_factory.mktemp("ort_mobile")
    ckpt, clip, adapter, meta = make_checkpoint(root)
    digits = write_digits_folder(root / "digits", per_class=4)
    return export_checkpoint(ckpt, root / "out", int8=True, ort_mobile=True, executorch=HAS_EXECUTORCH,
                             calibration=digits, max_classes=64, progress=False)


def test_every_served_graph_has_an_ort_file_listed_with_its_hash(ort_mobile_export):
    folder, manifest = ort_mobile_export.out_dir, read_manifest(ort_mobile_export.out_dir)
    for graph, entry in manifest.graphs.items():
        for precision, files in entry.files.items():
            if files.ort is None:
                continue
            assert files.ort_mobile is not None and files.ort_mobile.endswith(".ort"), (graph, precision)
            assert manifest.files[files.ort_mobile].sha256 == sha256_file(folder / files.ort_mobile)
    assert manifest.graphs["image_classifier"].files["int8"].ort_mobile == "image_classifier.int8.ort"
    assert manifest.files[CONFIG].sha256 == sha256_file(folder / CONFIG)


def test_ort_files_passed_validation_against_torch(ort_mobile_export):
    reports = [r for r in ort_mobile_export.validation if r["file"].endswith(".ort")]
    assert len(reports) == 5  # four graphs in fp32, the image classifier in int8
    assert all(r["passed"] for r in reports), [r["failures"] for r in reports]


def test_ort_files_load_and_agree_with_their_onnx_sources(ort_mobile_export):
    folder, manifest = ort_mobile_export.out_dir, read_manifest(ort_mobile_export.out_dir)
    entry = manifest.graphs["image_classifier"]
    pixels = np.random.default_rng(1).standard_normal((3, 3, *manifest.preprocessing.image_size)).astype(np.float32)
    for precision in ("fp32", "int8"):
        files = entry.files[precision]
        failures, worst = compare_to_source(folder / files.ort_mobile, folder / files.ort, [{"pixels": pixels}],
                                            lambda p: open_session(p, providers=["cpu"]), precision)
        assert not failures and worst <= SOURCE_ATOL[precision]
    assert SOURCE_ATOL["fp32"] == 1e-5


def test_reduced_operator_config_lists_only_operators_the_graphs_use(ort_mobile_export):
    folder = ort_mobile_export.out_dir
    used = {op for name in folder.glob("*.ort.onnx") for domain, op in onnx_io.op_types(name) if domain == "ai.onnx"}
    ops = config_operators(folder / CONFIG)
    assert ops["ai.onnx"] and ops["ai.onnx"] <= used
    assert set(ops) <= {"ai.onnx", "com.microsoft"} and ops.get("com.microsoft", set()) <= ORT_FUSED_OPS
    assert str(folder.parent) not in (folder / CONFIG).read_text()  # no path of the machine that exported


def test_manifest_refuses_an_ort_mobile_file_of_another_format(ort_mobile_export):
    from mmadapter.runtime.manifest import check_manifest

    data = json.loads((ort_mobile_export.out_dir / "manifest.json").read_text())
    data["graphs"]["text_encoder"]["files"]["fp32"]["ort_mobile"] = "text_encoder.ort.onnx"
    assert any("does not end in .ort" in p for p in check_manifest(data))


def test_cli_names_the_flag():
    from mmadapter.cli.commands import build_export_parser

    args = build_export_parser().parse_args(["--checkpoint", "c", "--out", "o", "--ort-mobile"])
    assert args.ort_mobile



# ExecuTorch ---------------------------------------------------------------------------------------------------

@needs_executorch
def test_programs_are_validated_against_torch_at_every_batch_size(ort_mobile_export):
    reports = {r["file"]: r for r in ort_mobile_export.validation
               if r["file"].endswith(".pte") and r["precision"] == "fp32"}
    assert set(reports) == {"image_classifier.pte", "text_encoder.pte", "class_bank.pte", "adapter_head.pte"}
    for report in reports.values():
        assert report["passed"], report["failures"]
        assert report["batch_sizes"] == [1, 3, 17] and report["thresholds"]["cosine"] == 0.99999


@needs_executorch
def test_int8_program_is_dynamic_and_held_to_int8_rules_on_held_out_images(ort_mobile_export):
    """The int8 image classifier: PT2E int8 weights with dynamic int8 activations (nothing calibrated, said in
    its sidecar), validated by ExecuTorch's runtime at every int8 rule (cosine >= 0.999, top-1) on the
    synthetic images and on the held-out digits, as the dynamic ONNX graph is; the held-out batch is the
    last one validated."""
    from mmadapter.export.executorch import DYNAMIC, INT8_SCHEMES
    from mmadapter.export.validate import COSINE_MIN

    folder, manifest = ort_mobile_export.out_dir, read_manifest(ort_mobile_export.out_dir)
    (report,) = [r for r in ort_mobile_export.validation if r["file"] == "image_classifier.int8.pte"]
    assert report["passed"] and "calibrated" not in report, report["failures"]
    assert report["thresholds"]["cosine"] == COSINE_MIN["int8"] == 0.999
    assert report["batch_sizes"][-1] == manifest.calibration["holdout_images"] >= 1
    assert manifest.graphs["image_classifier"].files["int8"].executorch == "image_classifier.int8.pte"
    assert all(e.files.get("int8") is None for g, e in manifest.graphs.items() if g != "image_classifier")
    assert manifest.files["image_classifier.int8.pte"].sha256 == sha256_file(folder / "image_classifier.int8.pte")
    fp32 = (folder / "image_classifier.pte").stat().st_size
    assert (folder / "image_classifier.int8.pte").stat().st_size < fp32  # its linears hold int8 weights
    side = json.loads((folder / "image_classifier.int8.pte.json").read_text())
    assert side["precision"] == "int8" and side["int8_scheme"] == INT8_SCHEMES[DYNAMIC]
    assert "dynamic" in side["int8_scheme"]["activations"]


@needs_executorch
def test_static_int8_program_is_calibrated_on_real_images_and_validated_as_calibrated(ort_mobile_export,
                                                                                     tmp_path):
    """--executorch-int8 static: activation ranges observed on the real calibration images (the sidecar says
    so), validated like the calibrated ONNX graph (every int8 rule on the held-out digits; report marked
    calibrated), and a different program from the dynamic one: on the same pixels their logits differ, while
    both stay within int8's cosine (0.999, tests' literal) of the fp32 program."""
    from mmadapter.data.digits import write_digits_folder
    from mmadapter.export.executorch import INT8_SCHEMES, STATIC
    from mmadapter.export.pipeline import export_checkpoint

    ckpt, *_ = make_checkpoint(tmp_path)
    result = export_checkpoint(ckpt, tmp_path / "out", int8=True, executorch=True, executorch_int8="static",
                               calibration=write_digits_folder(tmp_path / "digits", per_class=4), max_classes=64,
                               progress=False)
    (report,) = [r for r in result.validation if r["file"] == "image_classifier.int8.pte"]
    assert report["passed"] and report["calibrated"] is True, report["failures"]
    side = json.loads((result.out_dir / "image_classifier.int8.pte.json").read_text())
    assert side["int8_scheme"] == INT8_SCHEMES[STATIC] and "calibration images" in side["int8_scheme"]["activations"]
    logits, pixels = {}, None
    for name, folder in (("static", result.out_dir), ("dynamic", ort_mobile_export.out_dir),
                         ("fp32", result.out_dir)):
        program = folder / ("image_classifier.pte" if name == "fp32" else "image_classifier.int8.pte")
        session = open_session(program, engine="executorch", precision="fp32" if name == "fp32" else "int8")
        feed = session.get_inputs()[0]
        if pixels is None:
            pixels = np.random.default_rng(0).normal(size=(2, *feed.shape[1:])).astype(np.float32)
        logits[name] = session.run(None, {feed.name: pixels})[0]
    assert not np.allclose(logits["static"], logits["dynamic"], atol=1e-6)
    for name in ("static", "dynamic"):
        a, b = logits[name].ravel(), logits["fp32"].ravel()
        assert a @ b / (np.linalg.norm(a) * np.linalg.norm(b)) >= 0.999, name


def test_executorch_int8_scheme_needs_executorch_and_int8(tmp_path, capsys):
    from mmadapter.cli import main

    code = main(["export", "--checkpoint", str(tmp_path / "x.safetensors"), "--out", str(tmp_path / "out"),
                 "--executorch", "--executorch-int8", "static"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "add --executorch --int8" in err
    assert not (tmp_path / "out").exists()


def test_plain_attention_matches_torchs_attention():
    """The attention the programs are lowered with equals torch's scaled_dot_product_attention (float32,
    max difference <= 1e-5) without a mask, with CLIP's additive causal mask, a boolean mask and is_causal."""
    torch = pytest.importorskip("torch")
    from mmadapter.export.executorch import plain_attention

    q, k, v = torch.randn(3, 2, 4, 7, 16, generator=torch.Generator().manual_seed(0)).unbind(0)
    causal = torch.full((7, 7), float("-inf")).triu(1)
    keep = torch.rand(7, 7, generator=torch.Generator().manual_seed(1)) > 0.3
    keep[:, 0] = True  # no row fully masked
    sdpa = torch.nn.functional.scaled_dot_product_attention
    for kwargs in ({}, {"attn_mask": causal}, {"attn_mask": keep}, {"is_causal": True}, {"scale": 0.3}):
        assert (plain_attention(q, k, v, **kwargs) - sdpa(q, k, v, **kwargs)).abs().max() <= 1e-5, kwargs


@needs_executorch
def test_int8_program_serves_through_the_engine(ort_mobile_export):
    from mmadapter.runtime.model import ExportedModel

    model = ExportedModel(ort_mobile_export.out_dir, engine="executorch", precision="int8")
    pixels = np.random.default_rng(4).standard_normal((2, 3, *model.preprocessing.image_size)).astype(np.float32)
    assert model.classify_pixels(pixels)["logits"].shape == (2, len(model.class_names))
    assert any(r.startswith("ExecuTorch:XNNPACK (program precision int8, ") for r in model.session_runs().values())


def test_executorch_int8_needs_real_calibration_images(tmp_path):
    """--executorch --int8 without --calibration or reachable training images: one line, before loading."""
    from mmadapter.export.calibration import calibration_folder_for

    ckpt, *_ = make_checkpoint(tmp_path)
    with pytest.raises(ExportError, match="real images"):
        calibration_folder_for(int8=True, openvino=False, calibration=None, checkpoint=ckpt, executorch=True)
    assert calibration_folder_for(int8=True, openvino=False, calibration=None, checkpoint=ckpt) is None


@needs_executorch
def test_programs_are_hashed_with_their_sidecars_and_bounds(ort_mobile_export):
    folder, manifest = ort_mobile_export.out_dir, read_manifest(ort_mobile_export.out_dir)
    for graph, entry in manifest.graphs.items():
        name = entry.files["fp32"].executorch
        assert name == f"{graph}.pte"
        for listed in (name, name + ".json"):
            assert manifest.files[listed].sha256 == sha256_file(folder / listed)
    assert manifest.graphs["image_classifier"].executorch_max == {"batch": 32}
    assert manifest.graphs["adapter_head"].executorch_max == {"batch": 1, "num_classes": 64}


@needs_executorch
def test_engine_serves_the_folder_like_onnx_runtime(ort_mobile_export):
    from mmadapter.runtime.model import ExportedModel

    folder = ort_mobile_export.out_dir
    model = ExportedModel(folder, engine="executorch")
    size = model.preprocessing.image_size
    pixels = np.random.default_rng(2).standard_normal((40, 3, *size)).astype(np.float32)  # > the bound of 32
    got = model.classify_pixels(pixels, batch_size=40)["logits"]
    want = ExportedModel(folder).classify_pixels(pixels)["logits"]
    assert np.abs(got - want).max() <= 1e-4 * max(1.0, float(np.abs(want).max()))
    names = ["cat", "dog", "car"]  # open vocabulary: tokenizer -> text_encoder -> class_bank -> adapter_head
    a = model.classify(pixels[:5], class_names=names)
    b = ExportedModel(folder).classify(pixels[:5], class_names=names)
    assert np.abs(a.logits - b.logits).max() <= 1e-4 * max(1.0, float(np.abs(b.logits).max()))
    threads = thread_pool_size()
    runs = f"ExecuTorch:XNNPACK (program precision fp32, {threads} thread{'s' * (threads != 1)})"
    assert set(model.session_runs().values()) == {runs}


@needs_executorch
def test_threads_resize_executorchs_process_wide_pool(ort_mobile_export):
    """threads=1 leaves XNNPACK's pool (process-wide) at one thread and describe() says so; the size the
    process had before is restored after, for the other tests."""
    before = thread_pool_size()
    try:
        session = open_session(ort_mobile_export.out_dir / "image_classifier.pte", engine="executorch", threads=1)
        assert thread_pool_size() == 1
        assert session.describe() == "ExecuTorch:XNNPACK (program precision fp32, 1 thread)"
        open_session(ort_mobile_export.out_dir / "image_classifier.pte", engine="executorch", threads=2)
        assert thread_pool_size() == 2 and session.describe().endswith("2 threads)")
        with pytest.raises(ExportError, match="positive integer"):
            open_session(ort_mobile_export.out_dir / "image_classifier.pte", engine="executorch", threads=0)
    finally:
        set_thread_pool_size(before)
    assert thread_pool_size() == before


@needs_executorch
def test_cli_predicts_with_the_executorch_engine(ort_mobile_export, tmp_path):
    from PIL import Image

    from mmadapter.cli import main

    image = tmp_path / "a.png"
    Image.fromarray(np.random.default_rng(3).integers(0, 255, (80, 90, 3), dtype=np.uint8)).save(image)
    assert main(["predict", "--onnx", str(ort_mobile_export.out_dir), "--engine", "executorch", str(image)]) == 0


def test_missing_extra_is_one_line(monkeypatch, capsys):
    """Without executorch: export --executorch and the engine each say so in one line, naming the extra."""
    import mmadapter.export.executorch as et_export
    import mmadapter.runtime.engines.executorch as et_engine

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "executorch" else real(name, *a))
    with pytest.raises(ExportError) as info:
        et_export.require_executorch()
    assert "\n" not in str(info.value) and "mmadapter[mobile]" in str(info.value)
    with pytest.raises(ExportError) as info:
        open_session("image_classifier.pte", engine="executorch")
    assert "\n" not in str(info.value) and "mmadapter[mobile]" in str(info.value)
    assert et_engine.executorch_unavailable_reason() == et_engine.MISSING
