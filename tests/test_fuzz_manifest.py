"""Property-based fuzzing of the manifest reader and ``ExportedModel`` construction: mutated real
manifests (wrong types, missing keys, reordered lists, NaN, huge numbers), with and without a
recomputed hash, and random JSON. The only exceptions allowed are the project's own (one line);
a manifest that differs from the exported one without a matching hash is always refused.

1,300 generated inputs per run (derandomized, so CI sees the same ones every time)."""

from __future__ import annotations

import copy
import json
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mmadapter.errors import DataError, ExportError, MMAdapterError
from mmadapter.runtime.manifest import HASH_FIELD, MANIFEST, manifest_hash, read_manifest
from mmadapter.runtime.model import ExportedModel

from export_fixtures import ExportBundle

FUZZ = settings(derandomize=True, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
SPECIAL = [math.nan, math.inf, -math.inf, 1e308, -1e308, 2**63, -(2**63), 0, -1, 0.5, True, False, None, "", "x" * 300,
           [], {}, [1, 2, 3], {"a": 1}]


@pytest.fixture(scope="module")
def base(exported: ExportBundle) -> dict[str, Any]:
    return json.loads((exported.out_dir / MANIFEST).read_text())


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def _paths(obj: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += _paths(v, (*prefix, i))
    return out


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True)


def _load(folder: Path, data: Any) -> ExportedModel | None:
    """Write ``data`` as the manifest and construct the model; None when it was refused (one line)."""
    (folder / MANIFEST).write_text(json.dumps(data))
    try:
        model = ExportedModel(folder, ["cpu"])
    except MMAdapterError as exc:
        assert str(exc) and "\n" not in str(exc), exc
        return None
    # Accepted: what the runtime uses must have its types.
    assert model.class_names and all(isinstance(n, str) for n in model.class_names)
    assert len(model.preprocessing.image_size) == 2 and min(model.preprocessing.std) > 0
    return model


def _mutate(data: st.DataObject, base: dict[str, Any], paths: list[tuple]) -> dict[str, Any]:
    doc = copy.deepcopy(base)
    for _ in range(data.draw(st.integers(1, 3), label="mutations")):
        path = data.draw(st.sampled_from(paths), label="path")
        parent, key = doc, None
        try:
            for step in path[:-1]:
                parent = parent[step]
            key = path[-1] if path else None
            target = parent[key] if path else doc
        except (KeyError, IndexError, TypeError):
            continue  # an earlier mutation removed or replaced this part
        op = data.draw(st.sampled_from(["delete", "replace", "special", "shuffle", "duplicate"]), label="op")
        if op == "delete" and path:
            del parent[key]
        elif op in ("replace", "special"):
            value = data.draw(JSON if op == "replace" else st.sampled_from(SPECIAL), label="value")
            if path:
                parent[key] = value
            else:
                doc = value if isinstance(value, dict) else doc
        elif op == "shuffle" and isinstance(target, list) and len(target) > 1:
            target[:] = data.draw(st.permutations(target), label="order")
        elif op == "duplicate" and isinstance(target, list) and target:
            target.append(copy.deepcopy(target[0]))
    return doc


@settings(FUZZ, max_examples=500)
@given(data=st.data())
def test_mutated_manifest_with_old_hash_is_refused(base: dict[str, Any], folder: Path, data: st.DataObject) -> None:
    doc = _mutate(data, base, _paths(base))
    model = _load(folder, doc)
    if _canonical({k: v for k, v in doc.items() if k != HASH_FIELD}) != \
            _canonical({k: v for k, v in base.items() if k != HASH_FIELD}):
        assert model is None  # changed without a matching hash: never served


@settings(FUZZ, max_examples=500)
@given(data=st.data())
def test_mutated_manifest_with_new_hash_passes_the_schema_or_is_one_error(
        base: dict[str, Any], folder: Path, data: st.DataObject) -> None:
    """The hash recomputed after the edit, so the schema check is what stands between the edit and
    the runtime."""
    doc = _mutate(data, base, _paths(base))
    doc[HASH_FIELD] = manifest_hash(doc)
    model = _load(folder, doc)
    if model is not None:
        names = doc["label_set"]["class_names"]
        logits = doc["graphs"]["image_classifier"]["io"]["outputs"]
        assert [t["shape"] for t in logits if t["name"] == "logits"] == [["batch", len(names)]]


@settings(FUZZ, max_examples=150)
@given(doc=JSON)
def test_random_json(folder: Path, doc: Any) -> None:
    assert _load(folder, doc) is None


@settings(FUZZ, max_examples=150)
@given(doc=st.dictionaries(st.sampled_from(["label_set", "preprocessing", "graphs", "files", "logit_scale",
                                            "validation", HASH_FIELD, "checkpoint"]), JSON, max_size=8))
def test_random_json_with_the_right_format_fields(folder: Path, doc: dict[str, Any]) -> None:
    doc = {"format": "mmadapter-onnx-export", "format_version": 2, **doc}
    doc[HASH_FIELD] = manifest_hash(doc)
    assert _load(folder, doc) is None


def test_reordered_class_names_with_the_old_hash_are_refused(exported: ExportBundle, tmp_path: Path) -> None:
    copy_dir = tmp_path / "export"
    shutil.copytree(exported.out_dir, copy_dir)
    doc = json.loads((copy_dir / MANIFEST).read_text())
    doc["label_set"]["class_names"] = doc["label_set"]["class_names"][::-1]
    (copy_dir / MANIFEST).write_text(json.dumps(doc, indent=2))
    with pytest.raises(ExportError, match=r"modified after export \(hash mismatch\)"):
        read_manifest(copy_dir)
    with pytest.raises(ExportError, match="hash mismatch"):
        ExportedModel(copy_dir)


def test_class_count_checked_against_the_graph(exported: ExportBundle, tmp_path: Path) -> None:
    """A ninth class name added with the manifest's own record of N changed to match (and the hash
    recomputed): the schema passes, the graph's logits width (7) does not."""
    copy_dir = tmp_path / "export"
    shutil.copytree(exported.out_dir, copy_dir)
    doc = json.loads((copy_dir / MANIFEST).read_text())
    names = doc["label_set"]["class_names"]
    doc["label_set"]["class_names"] = [*names, "zebra"]
    with pytest.raises(ExportError, match=r"has 7 classes but label_set.class_names has 8"):
        _load_strict(copy_dir, doc)
    doc["graphs"]["image_classifier"]["io"]["outputs"][0]["shape"] = ["batch", len(names) + 1]
    model = _load_strict(copy_dir, doc)
    with pytest.raises(ExportError, match="gives logits of shape .* manifest names 8 classes"):
        model.classify_pixels(np.zeros((1, 3, 64, 64), np.float32))
    doc["preprocessing"]["std"][1] = 0.0
    with pytest.raises(ExportError, match=r"preprocessing.std\[1\]: must be > 0"):
        _load_strict(copy_dir, doc)


def _load_strict(folder: Path, doc: dict[str, Any]) -> ExportedModel:
    doc = {**doc, HASH_FIELD: manifest_hash(doc)}
    (folder / MANIFEST).write_text(json.dumps(doc))
    return ExportedModel(folder, ["cpu"])


def test_wrong_inputs_are_one_line_errors(exported: ExportBundle) -> None:
    model = ExportedModel(exported.out_dir, ["cpu"])
    session = model.session("image_classifier")
    for bad, match in ((np.zeros((2, 3, 32, 32), np.float32), "the graph takes"),
                       (np.zeros((2, 64, 64), np.float32), "needs 4 dims"),
                       (np.zeros((2, 3, 64, 64), np.int64), "must be a float32 array")):
        with pytest.raises(DataError, match=match) as info:
            session.run({"pixels": bad})
        assert "\n" not in str(info.value)
    with pytest.raises(DataError, match="unknown inputs"):
        session.run({"pixels": np.zeros((1, 3, 64, 64), np.float32), "extra": np.zeros(1)})
    with pytest.raises(DataError, match="pixels must be a float array"):
        model.classify_pixels([[1.0], [2.0, 3.0]])
