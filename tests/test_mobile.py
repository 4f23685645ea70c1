"""Phones: ``export --ort-mobile`` (ONNX Runtime's .ort format and its reduced-operator config) and
``export --executorch`` (ExecuTorch programs lowered to XNNPACK) with the ``executorch`` engine, on the tiny
random model. The ExecuTorch tests skip when the ``mobile`` extra is not installed."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mmadapter.export import onnx_io
from mmadapter.export.ort_mobile import CONFIG, SOURCE_ATOL, compare_to_source, config_operators
from mmadapter.runtime.engines import open_session
from mmadapter.runtime.manifest import read_manifest, sha256_file

from export_fixtures import make_checkpoint

# Contrib ops ONNX Runtime's CPU fusions put into a graph; the standard ones must all come from the sources.
ORT_FUSED_OPS = {"BiasGelu", "DynamicQuantizeMatMul", "FusedMatMul", "SkipLayerNormalization", "Attention",
                 "MultiHeadAttention", "QuickGelu", "Gelu", "FastGelu", "BiasSoftmax", "MatMulIntegerToFloat"}


@pytest.fixture(scope="module")
def ort_mobile_export(tmp_path_factory):
    from mmadapter.export.pipeline import export_checkpoint

    root = tmp_path_factory.mktemp("ort_mobile")
    ckpt, clip, adapter, meta = make_checkpoint(root)
    result = export_checkpoint(ckpt, root / "out", int8=True, ort_mobile=True, progress=False)
    return result


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

