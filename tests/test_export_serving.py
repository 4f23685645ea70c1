"""``--serving-repo``: the NVIDIA Triton Inference Server model repository. Layout as the server
expects it, and every config.pbtxt parsed here (a small protobuf text-format parser) and checked
against the ONNX graph it serves."""

from __future__ import annotations

import dataclasses
import re
import shutil
from pathlib import Path
from typing import Any

import onnx
import pytest

from mmadapter.export.inference_server import MARKER, config_pbtxt, write_model_repository, written_files
from mmadapter.runtime.manifest import Engine, GraphIO, TensorRT, TensorSpec
from mmadapter.server.repository import MODEL as PIPELINE

from export_fixtures import ExportBundle

GRAPHS = {"image_classifier", "text_encoder", "class_bank", "adapter_head"}
ONNX_TO_TRITON = {onnx.TensorProto.FLOAT: "TYPE_FP32", onnx.TensorProto.FLOAT16: "TYPE_FP16",
                  onnx.TensorProto.INT64: "TYPE_INT64", onnx.TensorProto.INT32: "TYPE_INT32"}
_TOKEN = re.compile(r'\s*(?:(#[^\n]*)|("(?:[^"\\]|\\.)*")|(-?\d+(?:\.\d+)?)|([A-Za-z_][A-Za-z0-9_]*)|([{}\[\]:,]))')


def _tokens(text: str) -> list[str]:
    out, pos = [], 0
    text = text.rstrip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        assert m and m.end() > pos, f"cannot tokenize at {text[pos:pos + 20]!r}"
        pos = m.end()
        if not m.group(1):
            out.append(m.group(0).strip())
    return out


def parse_pbtxt(text: str) -> dict[str, list[Any]]:
    """Protobuf text format (the subset Triton configs use): ``field: scalar``, ``field { ... }``,
    ``field [ {..}, {..} ]`` and ``field: [ 1, 2 ]``. Every field maps to a list of values; strings
    are unquoted, numbers are ints, enums stay identifiers. Unbalanced braces/brackets fail."""
    toks = _tokens(text)
    pos = 0

    def scalar(tok: str) -> Any:
        if tok.startswith('"'):
            return tok[1:-1]
        if re.fullmatch(r"-?\d+", tok):
            return int(tok)
        assert re.fullmatch(r"[A-Za-z_]\w*", tok), f"bad scalar {tok!r}"
        return tok

    def message(closing: str | None) -> dict[str, list[Any]]:
        nonlocal pos
        fields: dict[str, list[Any]] = {}
        while True:
            assert pos < len(toks) or closing is None, f"missing {closing!r}"
            if pos == len(toks):
                return fields
            tok = toks[pos]
            if tok == closing:
                pos += 1
                return fields
            assert re.fullmatch(r"[A-Za-z_]\w*", tok), f"expected a field name, got {tok!r}"
            pos += 1
            has_colon = toks[pos] == ":"
            pos += has_colon
            nxt = toks[pos]
            if nxt == "{":
                pos += 1
                fields.setdefault(tok, []).append(message("}"))
            elif nxt == "[":
                pos += 1
                items: list[Any] = []
                while toks[pos] != "]":
                    if toks[pos] == "{":
                        pos += 1
                        items.append(message("}"))
                    else:
                        items.append(scalar(toks[pos]))
                        pos += 1
                    if toks[pos] == ",":
                        pos += 1
                        assert toks[pos] != "]", "trailing comma"
                    else:
                        assert toks[pos] == "]", f"expected ',' or ']', got {toks[pos]!r}"
                pos += 1
                fields.setdefault(tok, []).extend(items)
            else:
                assert has_colon, f"field {tok} needs ':' before a scalar"
                fields.setdefault(tok, []).append(scalar(nxt))
                pos += 1

    parsed = message(None)
    assert pos == len(toks)
    return parsed


def test_parser_rejects_unbalanced_configs() -> None:
    assert parse_pbtxt('name: "x"\ninput [\n {\n name: "a"\n dims: [ -1, 3 ]\n }\n]\n') == {
        "name": ["x"], "input": [{"name": ["a"], "dims": [-1, 3]}]}
    for bad in ('input [ { name: "a" }', 'input [ { name: "a" ] }', "dims: [ 1, 2 }", 'name "x"', "a { b: 1 } }"):
        with pytest.raises((AssertionError, IndexError)):
            parse_pbtxt(bad)


def _io(model: onnx.ModelProto) -> dict[str, list[tuple[str, str, list[int | str]]]]:
    def one(v: onnx.ValueInfoProto) -> tuple[str, str, list[int | str]]:
        t = v.type.tensor_type
        return v.name, ONNX_TO_TRITON[t.elem_type], [d.dim_param or d.dim_value for d in t.shape.dim]

    return {"input": [one(v) for v in model.graph.input], "output": [one(v) for v in model.graph.output]}


def test_repository_layout(exported: ExportBundle) -> None:
    repo = exported.serving_repo
    assert exported.result.serving_repo == repo
    assert {p.name for p in repo.iterdir()} == GRAPHS | {PIPELINE, MARKER}
    # The marker lists exactly the files written, so that a later --overwrite replaces only those.
    listed = {str(p.relative_to(repo)) for p in repo.rglob("*") if p.is_file() and p.name != MARKER}
    assert written_files(repo) == listed and len(listed) == 2 * len(GRAPHS) + 2
    assert {f"{PIPELINE}/config.pbtxt", f"{PIPELINE}/1/model.py"} <= listed
    manifest = exported.manifest()
    for graph in GRAPHS:
        files = sorted(str(p.relative_to(repo / graph)) for p in (repo / graph).rglob("*") if p.is_file())
        assert files == ["1/model.onnx", "config.pbtxt"], graph
        # The export ran with --fp16: the repository serves the portable fp16 graph (fp32 I/O).
        served = manifest.graphs[graph].files["fp16"].portable
        assert (repo / graph / "1" / "model.onnx").read_bytes() == (exported.out_dir / served).read_bytes()
    assert not [p for p in repo.parent.iterdir() if ".partial" in p.name]


@pytest.mark.parametrize("graph", sorted(GRAPHS))
def test_config_matches_onnx_graph(exported: ExportBundle, graph: str) -> None:
    folder = exported.serving_repo / graph
    cfg = parse_pbtxt((folder / "config.pbtxt").read_text())
    model = onnx.load(str(folder / "1" / "model.onnx"))
    batchable = exported.manifest().graphs[graph].batchable
    assert cfg["name"] == [graph]
    assert cfg["platform"] == ["onnxruntime_onnx"]
    assert cfg["max_batch_size"] == [64 if batchable else 0]
    assert ("dynamic_batching" in cfg) == batchable
    assert cfg["instance_group"][0]["kind"] in (["KIND_AUTO"], ["KIND_CPU"], ["KIND_GPU"])
    io = _io(model)
    for kind in ("input", "output"):
        entries = cfg[kind]
        assert [e["name"][0] for e in entries] == [name for name, _, _ in io[kind]], kind
        for entry, (name, dtype, shape) in zip(entries, io[kind]):
            assert set(entry) == {"name", "data_type", "dims"}, entry
            assert entry["data_type"] == [dtype], name
            if batchable:
                # Triton adds the batch axis itself: the ONNX graph's first axis must be dynamic.
                assert isinstance(shape[0], str) and "batch" in shape[0], (name, shape)
                shape = shape[1:]
            assert entry["dims"] == [d if isinstance(d, int) else -1 for d in shape], name
    assert graph != "adapter_head" or not batchable  # the class bank has no request batch axis


def test_tensorrt_models_in_repository(exported: ExportBundle, tmp_path: Path) -> None:
    """With engines in the manifest, each graph also gets a ``<graph>_trt`` model (tensorrt_plan,
    1/model.plan, on the GPU); written here with a fake engine file, since TensorRT is absent."""
    export_dir = tmp_path / "export"
    shutil.copytree(exported.out_dir, export_dir)
    (export_dir / "image_classifier.fake.plan").write_bytes(b"engine bytes")
    manifest = dataclasses.replace(exported.manifest(),
                                   tensorrt=TensorRT({"image_classifier": Engine("image_classifier.fake.plan")}))
    repo = tmp_path / "repo"
    written = write_model_repository(export_dir, repo, manifest, max_batch_size=16, precision="fp32")
    assert len(written) == len(GRAPHS) + 1
    assert (repo / "image_classifier_trt" / "1" / "model.plan").read_bytes() == b"engine bytes"
    assert (repo / "image_classifier" / "1" / "model.onnx").read_bytes() == (
        export_dir / "image_classifier.onnx").read_bytes()  # precision fp32: the fp32 portable graph
    cfg = parse_pbtxt((repo / "image_classifier_trt" / "config.pbtxt").read_text())
    assert cfg["platform"] == ["tensorrt_plan"] and cfg["name"] == ["image_classifier_trt"]
    assert cfg["max_batch_size"] == [16] and cfg["instance_group"][0]["kind"] == ["KIND_GPU"]
    assert [e["name"][0] for e in cfg["input"]] == ["pixels"] and cfg["input"][0]["dims"] == [3, 64, 64]


def test_config_pbtxt_unit() -> None:
    io = GraphIO((TensorSpec("x", "float16", ("batch", "num_classes", 4)),), (TensorSpec("y", "int32", ("batch",)),))
    cfg = parse_pbtxt(config_pbtxt("m", "onnxruntime_onnx", io, batchable=True, max_batch_size=8))
    assert cfg["input"] == [{"name": ["x"], "data_type": ["TYPE_FP16"], "dims": [-1, 4]}]
    assert cfg["output"] == [{"name": ["y"], "data_type": ["TYPE_INT32"], "dims": []}]
    flat = parse_pbtxt(config_pbtxt("m", "onnxruntime_onnx", io, batchable=False, max_batch_size=8))
    assert flat["max_batch_size"] == [0] and flat["input"][0]["dims"] == [-1, -1, 4]
