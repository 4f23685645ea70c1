"""The checkpoint format: round trip, and a one-line CheckpointError for every kind of bad file."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from mmadapter import AdapterConfig, CheckpointError, ClipSpec, MultiModalAdapter
from mmadapter.errors import MMAdapterError
from mmadapter.model.checkpoint import (
    FORMAT_VERSION,
    HASH_KEY,
    METADATA_KEY,
    CheckpointMeta,
    LabelSet,
    content_sha256,
    load_checkpoint,
    read_metadata,
    save_checkpoint,
)


def make_meta(embed_dim: int = 512) -> CheckpointMeta:
    return CheckpointMeta(
        adapter=AdapterConfig(embed_dim=embed_dim),
        clip=ClipSpec("ViT-B-16", "openai"),
        logit_scale=100.0,
        label_set=LabelSet(("cat", "dog", "fish"), ("a photo of a {}.",)),
        training={"lr": 0.01},
        metrics={"hm": 0.5},
    )


@pytest.fixture()
def saved(tmp_path: Path) -> tuple[Path, MultiModalAdapter]:
    torch.manual_seed(0)
    adapter = MultiModalAdapter(AdapterConfig())
    with torch.no_grad():
        for p in adapter.parameters():
            p.normal_(0, 0.1)
    return save_checkpoint(tmp_path / "adapter.safetensors", adapter, make_meta()), adapter


def one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message, f"error message is not one line: {message!r}"
    return message


def test_round_trip(saved: tuple[Path, MultiModalAdapter]) -> None:
    path, adapter = saved
    loaded, meta = load_checkpoint(path)
    assert meta == make_meta()
    for name, tensor in adapter.state_dict().items():
        assert torch.equal(tensor, loaded.state_dict()[name]), f"{name} changed in the round trip"
    assert read_metadata(path)["format_version"] == FORMAT_VERSION
    assert [p.name for p in path.parent.iterdir()] == ["adapter.safetensors"], "temporary files left behind"


def test_truncated_file(saved: tuple[Path, MultiModalAdapter], tmp_path: Path) -> None:
    path, _ = saved
    data = path.read_bytes()
    for cut in (4, 50, len(data) // 2, len(data) - 1):
        bad = tmp_path / f"cut{cut}.safetensors"
        bad.write_bytes(data[:cut])
        with pytest.raises(CheckpointError) as exc:
            load_checkpoint(bad)
        assert "truncated" in one_line(exc) or "not a safetensors" in one_line(exc)


def test_missing_and_not_a_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nope.safetensors")
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(garbage)
    plain = tmp_path / "plain.safetensors"
    save_file({"x": torch.zeros(2)}, str(plain))
    with pytest.raises(CheckpointError, match="not an mmadapter checkpoint"):
        load_checkpoint(plain)


def write_with(tmp_path: Path, tensors: dict[str, torch.Tensor], meta: dict) -> Path:
    """A checkpoint written by hand, with a correct content sha256, so the check under test is the one
    that must catch it."""
    path = tmp_path / "edited.safetensors"
    meta = {**meta, HASH_KEY: content_sha256(tensors, meta)}
    save_file(tensors, str(path), metadata={METADATA_KEY: json.dumps(meta)})
    return path


def test_missing_extra_and_misshapen_tensors(tmp_path: Path) -> None:
    state = {k: v.clone() for k, v in MultiModalAdapter().state_dict().items()}
    meta = make_meta().to_dict()
    missing = dict(state)
    del missing["up.bias"]
    with pytest.raises(CheckpointError, match=r"missing \['up.bias'\]"):
        load_checkpoint(write_with(tmp_path, missing, meta))
    with pytest.raises(CheckpointError, match=r"unexpected \['extra'\]"):
        load_checkpoint(write_with(tmp_path, {**state, "extra": torch.zeros(1)}, meta))
    with pytest.raises(CheckpointError, match="down.weight has shape"):
        load_checkpoint(write_with(tmp_path, {**state, "down.weight": torch.zeros(128, 500)}, meta))
    nan = {**state, "up.bias": torch.full((512,), float("nan"))}
    with pytest.raises(CheckpointError, match="NaN"):
        load_checkpoint(write_with(tmp_path, nan, meta))


def test_version_and_config_mismatches(tmp_path: Path) -> None:
    state = MultiModalAdapter().state_dict()
    future = {**make_meta().to_dict(), "format_version": FORMAT_VERSION + 1}
    with pytest.raises(CheckpointError, match="format version"):
        load_checkpoint(write_with(tmp_path, state, future))
    bad_cfg = make_meta().to_dict()
    bad_cfg["adapter"] = {"embed_dim": 512, "heads": 4}
    with pytest.raises(CheckpointError) as exc:
        load_checkpoint(write_with(tmp_path, state, bad_cfg))
    assert "unknown keys" in one_line(exc)


def test_width_that_does_not_match_clip(saved: tuple[Path, MultiModalAdapter]) -> None:
    path, _ = saved
    with pytest.raises(CheckpointError) as exc:
        load_checkpoint(path, clip_embed_dim=768)
    assert "does not match the CLIP model" in one_line(exc)


def test_label_set_validation() -> None:
    with pytest.raises(MMAdapterError, match="empty"):
        LabelSet(())
    with pytest.raises(MMAdapterError, match="twice"):
        LabelSet(("a", "a"))
    with pytest.raises(MMAdapterError, match="exactly one"):
        LabelSet(("a",), ("no placeholder",))
    with pytest.raises(MMAdapterError, match="exactly one"):
        LabelSet(("a",), ("a {} of {}",))


def test_header_length_past_end(tmp_path: Path) -> None:
    bad = tmp_path / "huge-header.safetensors"
    bad.write_bytes(struct.pack("<Q", 10**9) + b"{}")
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(bad)
