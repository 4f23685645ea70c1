"""The typed manifest (mmadapter.runtime.manifest): JSON to dataclasses and back without loss, every
problem of a bad manifest in one line, a manifest written before the typed reader (format 2, the
file in tests/data) still served, other versions refused in one line, and misspelt reads failing
loudly instead of reading as absent. No export is run here: the format-2 file is the fixture."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from mmadapter.errors import ExportError
from mmadapter.runtime.manifest import (
    HASH_FIELD,
    MANIFEST,
    Engine,
    GraphFiles,
    Manifest,
    Report,
    TensorRT,
    Tokenizer,
    check_manifest,
    manifest_hash,
    read_manifest,
    verified_file,
    write_manifest,
)

# Written by `export --fp16 --int8 --openvino --calibration` with the dict-literal writer and the
# hand-written checker that preceded the typed one (commit 9177818), so it has every optional section
# but tensorrt (no GPU there).
FORMAT2 = Path(__file__).parent / "data" / "manifest_format2.json"


@pytest.fixture()
def raw() -> dict[str, Any]:
    return json.loads(FORMAT2.read_text())


def _resealed(doc: dict[str, Any]) -> dict[str, Any]:
    return {**doc, HASH_FIELD: manifest_hash(doc)}


def test_format2_manifest_loads_as_typed_objects(raw: dict[str, Any]) -> None:
    m = Manifest.from_dict(raw)
    assert m.label_set.class_names[:3] == ("zero", "one", "two") and len(m.label_set.class_names) == 10
    assert m.preprocessing.image_size == (64, 64) and min(m.preprocessing.std) > 0
    entry = m.graphs["image_classifier"]
    assert entry.files["int8"] == GraphFiles("image_classifier.int8.onnx", "image_classifier.int8.ort.onnx",
                                             "image_classifier.int8.openvino.xml")
    assert entry.io.output("logits").shape == ("batch", 10) and entry.batch_inputs == ("pixels",)
    assert entry.int8_static_ops == 8 and entry.ort_fusions["BiasGelu"] == 2
    assert m.tokenizer.file == "tokenizer.json" and m.tokenizer.special_tokens["<end_of_text>"] == 49407
    assert m.validation.run and m.validation.passed and m.validation.open_vocabulary
    assert all(isinstance(r, Report) and r.passed for r in m.validation.reports)
    assert m.files["tokenizer.json"].bytes > 0 and m.model_name == "mmadapter-tiny"
    assert m.calibration["holdout_images"] == 30 and m.tensorrt is None


def test_round_trip_is_exact(raw: dict[str, Any]) -> None:
    m = Manifest.from_dict(raw)
    assert m.to_dict() == raw  # nothing dropped, renamed or added
    again = Manifest.from_dict(json.loads(json.dumps(m.to_dict())))
    assert again == m
    # The seal computed from the typed fields is the one the old writer computed from its dicts.
    fresh = dataclasses.replace(m)
    assert fresh.manifest_sha256 == raw[HASH_FIELD] == m.manifest_sha256


def test_tensorrt_section_round_trips(raw: dict[str, Any]) -> None:
    m = Manifest.from_dict(raw)
    engines = TensorRT({"image_classifier": Engine("image_classifier.onnx", "x.json", "fp32")}, "10.7.0", "H100",
                       "9.0", {"min": 1, "opt": 8, "max": 64})
    with_engines = dataclasses.replace(m, tensorrt=engines)
    data = with_engines.to_dict()
    assert data["tensorrt"]["engines"]["image_classifier"] == {"file": "image_classifier.onnx", "sidecar": "x.json",
                                                               "precision": "fp32"}
    assert data[HASH_FIELD] != raw[HASH_FIELD]  # the seal covers the new section
    assert Manifest.from_dict(data) == with_engines


def test_every_problem_is_collected_in_one_line(raw: dict[str, Any]) -> None:
    doc = copy.deepcopy(raw)
    doc["label_set"]["templates"] = []
    doc["preprocessing"]["std"][2] = 0
    doc["graphs"]["text_encoder"]["files"]["fp16"]["ort"] = "elsewhere.onnx"
    doc["tokenizer"]["context_length"] = 0
    doc["files"]["tokenizer.json"]["sha256"] = "abc"
    doc["validation"]["reports"][0]["passed"] = "yes"
    doc["extra"] = 1
    doc["graphs"]["image_classifier"]["io"]["outputs"][0]["shape"] = ["batch", 11]
    problems = check_manifest(doc)
    expected = ["label_set.templates: is empty", "preprocessing.std[2]: must be > 0",
                "graphs.text_encoder.files.fp16.ort: elsewhere.onnx is not listed under files",
                "tokenizer.context_length: must be >= 1", "files.tokenizer.json.sha256: is not 64 hex digits",
                "validation.reports[0].passed: expected true/false", "manifest: unknown fields ['extra']",
                "graphs.image_classifier.io.outputs.logits: has 11 classes but label_set.class_names has 10"]
    for text in expected:
        assert any(p.startswith(text) for p in problems), (text, problems)
    with pytest.raises(ExportError) as info:
        Manifest.from_dict(_resealed(doc), "m.json")
    message = str(info.value)
    assert "\n" not in message and message.startswith("m.json is invalid: ")
    assert message.count("; ") == 5 and message.endswith(f"(+{len(problems) - 6} more)")


@pytest.mark.parametrize("version", [1, 3, "2", True, None])
def test_other_format_versions_are_one_line(raw: dict[str, Any], version: Any) -> None:
    doc = _resealed({**raw, "format_version": version})
    with pytest.raises(ExportError, match=r"has format version .*; this mmadapter reads version 2 \(export the "
                                          r"checkpoint again\)") as info:
        Manifest.from_dict(doc)
    assert "\n" not in str(info.value)


def test_format2_folder_is_served_and_checked(raw: dict[str, Any], tmp_path: Path) -> None:
    """read_manifest and verified_file on a folder holding the format-2 manifest: the manifest is
    read, a listed file that is missing or changed is refused, an unlisted one too."""
    (tmp_path / MANIFEST).write_text(FORMAT2.read_text())
    m = read_manifest(tmp_path)
    with pytest.raises(ExportError, match="missing from the export folder"):
        verified_file(tmp_path, m, "tokenizer.json")
    (tmp_path / "tokenizer.json").write_text("{}")
    with pytest.raises(ExportError, match="does not match the sha256"):
        verified_file(tmp_path, m, "tokenizer.json")
    with pytest.raises(ExportError, match="is not listed"):
        verified_file(tmp_path, m, "manifest.json")


def test_misspelt_reads_fail_loudly(raw: dict[str, Any]) -> None:
    m = Manifest.from_dict(raw)
    with pytest.raises(AttributeError):
        m.label_set.class_name  # noqa: B018
    with pytest.raises(AttributeError):
        m.graphs["image_classifier"].files["fp32"].onnx  # noqa: B018
    with pytest.raises(ValueError, match="unknown file kind 'onnx'"):
        m.graphs["image_classifier"].files["fp32"].get("onnx")
    with pytest.raises(dataclasses.FrozenInstanceError):
        m.logit_scale = 1.0  # type: ignore[misc]
    # The JSON it was read from is copied, not shared: editing it later changes nothing read.
    raw["clip"]["model_name"] = "other"
    assert m.model_name == "mmadapter-tiny"


def test_writer_refuses_what_the_reader_refuses(raw: dict[str, Any], tmp_path: Path) -> None:
    m = Manifest.from_dict(raw)
    entry = m.graphs["adapter_head"]
    bad = dataclasses.replace(m, graphs={**m.graphs, "adapter_head": dataclasses.replace(
        entry, files={**entry.files, "fp16": GraphFiles(ort="not-written.onnx")})})
    with pytest.raises(ExportError, match="adapter_head.files.fp16.ort: not-written.onnx is not listed"):
        write_manifest(tmp_path, bad)
    assert not (tmp_path / MANIFEST).exists()
    write_manifest(tmp_path, m)
    assert json.loads((tmp_path / MANIFEST).read_text()) == raw


def test_tokenizer_section_on_its_own(raw: dict[str, Any]) -> None:
    tok = Tokenizer.from_dict(raw["tokenizer"])
    assert tok.to_dict() == raw["tokenizer"]
    with pytest.raises(ExportError, match=r"section is invalid: tokenizer: unknown fields \['sot'\]; "
                                          r"tokenizer.sot_token_id: must be >= 0"):
        Tokenizer.from_dict({**raw["tokenizer"], "sot_token_id": -1, "sot": 1})


def test_a_tensor_name_given_twice_is_refused(raw: dict[str, Any]) -> None:
    """Found by the fuzz test: a second output named ``logits`` passed the schema, and which of the two a
    reader by name would get was undefined."""
    doc = copy.deepcopy(raw)
    outputs = doc["graphs"]["image_classifier"]["io"]["outputs"]
    outputs[1]["name"] = outputs[0]["name"]
    problems = check_manifest(doc)
    assert any(p.startswith("graphs.image_classifier.io.outputs: tensor names must be unique") for p in problems), \
        problems
    with pytest.raises(ExportError, match="unique"):
        Manifest.from_dict(_resealed(doc), "m.json")
