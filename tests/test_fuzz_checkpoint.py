"""Property-based fuzzing of the checkpoint readers: whatever the bytes, ``read_metadata``,
``CheckpointMeta.from_dict`` and ``load_checkpoint`` either succeed or raise an MMAdapterError with a
one-line message; never a KeyError, TypeError, AttributeError, RecursionError or a safetensors error.

About 1,250 generated inputs per run (derandomized, so every run tries the same ones), from raw
bytes to near-valid files: correct safetensors framing around a real checkpoint description with
wrong types, missing and extra keys, huge numbers and NaN put in.
"""

from __future__ import annotations

import copy
import json
import math
import struct
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mmadapter import AdapterConfig, ClipSpec, MultiModalAdapter
from mmadapter.errors import MMAdapterError
from mmadapter.model.checkpoint import (
    HASH_KEY,
    METADATA_KEY,
    CheckpointMeta,
    LabelSet,
    content_sha256,
    load_checkpoint,
    read_metadata,
    save_checkpoint,
)

BASE = settings(deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def fuzz(examples: int) -> settings:
    return settings(BASE, max_examples=examples)

CONFIG = AdapterConfig(embed_dim=16)  # small tensors: each generated file is a few KB

json_leaves = (st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
               | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12)
               | st.sampled_from([0, 1, 2, -1, 16, 16.0, 512, 1e308, "", "{}", "a {}", "ViT-B-16", "F32", [], {}]))
json_values = st.recursive(
    json_leaves, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as folder:
        yield Path(folder)


@pytest.fixture(scope="module")
def valid(workdir: Path) -> dict[str, Any]:
    """A real checkpoint: its tensors, its description and its file."""
    adapter = MultiModalAdapter(CONFIG, backend="torch")
    meta = CheckpointMeta(CONFIG, ClipSpec("mmadapter-tiny", None, "clip.safetensors", "0" * 64), 100.0,
                          LabelSet(("cat", "dog", "fish"), ("a photo of a {}.", "a {} drawing.")),
                          {"lr": 0.01, "seed": 1}, {"test_acc": 50.0})
    path = save_checkpoint(workdir / "valid.safetensors", adapter, meta)
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), "pt") as f:
        description = json.loads(f.metadata()[METADATA_KEY])
    return {"path": path, "tensors": load_file(str(path)), "description": description}


def expect_clean(call, *args: Any) -> Any:
    """``call(*args)``: success, or an MMAdapterError with one line; anything else fails the test."""
    try:
        return call(*args)
    except MMAdapterError as exc:
        assert str(exc) and "\n" not in str(exc), f"not one line: {str(exc)!r}"
        return None


def paths_in(value: Any, prefix: tuple = ()) -> list[tuple]:
    """Every key path into nested dicts and lists (the places a mutation can hit)."""
    found = [prefix] if prefix else []
    if isinstance(value, dict):
        for key, item in value.items():
            found += paths_in(item, (*prefix, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found += paths_in(item, (*prefix, i))
    return found


@st.composite
def mutated(draw: st.DrawFn, base: dict[str, Any]) -> dict[str, Any]:
    """``base`` with one to three mutations: a value replaced by any JSON value, a key removed, a key
    added."""
    data = copy.deepcopy(base)
    for _ in range(draw(st.integers(1, 3))):
        paths = paths_in(data)
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent = data
        for key in path[:-1]:
            parent = parent[key]
        action = draw(st.sampled_from(["replace", "replace", "delete", "add"]))
        if action == "replace":
            parent[path[-1]] = draw(json_values)
        elif action == "delete":
            del parent[path[-1]]
        elif isinstance(parent, dict):
            parent[draw(st.text(max_size=8))] = draw(json_values)
        else:
            parent.append(draw(json_values))
    return data


def write_file(path: Path, header: Any, data: bytes) -> Path:
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


def tensor_header(tensors: dict[str, torch.Tensor]) -> tuple[dict[str, Any], bytes]:
    header, chunks, offset = {}, [], 0
    for name in sorted(tensors):
        blob = tensors[name].contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
        shape, offsets = list(tensors[name].shape), [offset, offset + len(blob)]
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": offsets}
        chunks.append(blob)
        offset += len(blob)
    return header, b"".join(chunks)


# -- raw bytes -------------------------------------------------------------------------------------------


@fuzz(200)
@given(body=st.binary(max_size=600))
def test_random_bytes(workdir: Path, body: bytes) -> None:
    assert expect_clean(read_metadata, write_bytes(workdir / "raw.safetensors", body)) is None


@fuzz(200)
@given(body=st.binary(max_size=400), length=st.one_of(st.integers(0, 2**64 - 1), st.integers(0, 500)),
       tail=st.binary(max_size=64))
def test_bytes_with_a_length_field(workdir: Path, body: bytes, length: int, tail: bytes) -> None:
    path = write_bytes(workdir / "framed.safetensors", struct.pack("<Q", length) + body + tail)
    assert expect_clean(read_metadata, path) is None


@fuzz(150)
@given(header=json_values, data=st.binary(max_size=64), encoding=st.sampled_from(["utf-8", "utf-16", "latin-1"]))
def test_any_json_header(workdir: Path, header: Any, data: bytes, encoding: str) -> None:
    raw = json.dumps(header, ensure_ascii=False).encode(encoding, errors="replace")
    path = write_bytes(workdir / "json.safetensors", struct.pack("<Q", len(raw)) + raw + data)
    assert expect_clean(read_metadata, path) is None


def write_bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


# -- near-valid headers ----------------------------------------------------------------------------------


@fuzz(300)
@given(data=st.data())
def test_mutated_description(valid: dict[str, Any], data: st.DataObject) -> None:
    description = data.draw(mutated(valid["description"]))
    result = expect_clean(CheckpointMeta.from_dict, description)
    if result is not None:  # accepted: then it is a full, well-typed description
        assert isinstance(result.logit_scale, float) and math.isfinite(result.logit_scale) and result.logit_scale > 0
        assert all(isinstance(n, str) for n in result.label_set.class_names)


@fuzz(200)
@given(data=st.data(), rehash=st.booleans())
def test_mutated_metadata_in_a_valid_file(workdir: Path, valid: dict[str, Any], data: st.DataObject,
                                          rehash: bool) -> None:
    description = data.draw(mutated(valid["description"]))
    if rehash and isinstance(description, dict):
        description[HASH_KEY] = content_sha256(valid["tensors"], description)
    header, blob = tensor_header(valid["tensors"])
    header["__metadata__"] = {METADATA_KEY: json.dumps(description)}
    path = write_file(workdir / "mutated.safetensors", header, blob)
    loaded = expect_clean(load_checkpoint, path)
    if loaded is not None:
        adapter, meta = loaded
        assert rehash or description == valid["description"], "an edited description loaded without a new hash"
        assert all(torch.isfinite(p).all() for p in adapter.parameters())


@fuzz(200)
@given(data=st.data())
def test_mutated_framing(workdir: Path, valid: dict[str, Any], data: st.DataObject) -> None:
    header, blob = tensor_header(valid["tensors"])
    header["__metadata__"] = {METADATA_KEY: json.dumps(valid["description"])}
    header = data.draw(mutated(header))
    blob = blob[: data.draw(st.integers(0, len(blob) + 8))] + data.draw(st.binary(max_size=8))
    path = write_file(workdir / "framing.safetensors", header, blob)
    expect_clean(read_metadata, path)
    expect_clean(load_checkpoint, path)


def test_the_valid_file_loads(valid: dict[str, Any]) -> None:
    adapter, meta = load_checkpoint(valid["path"])
    assert meta.label_set.class_names == ("cat", "dog", "fish")
    assert meta.adapter == CONFIG and sum(p.numel() for p in adapter.parameters()) > 0
