"""One self-describing checkpoint file: adapter weights in safetensors, with a JSON description
(format version, adapter config, CLIP spec, logit scale, label set, training settings, metrics)
in the safetensors header metadata under the key ``mmadapter``.

Loading checks everything and turns every problem into a one-line :class:`CheckpointError`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mmadapter.adapter import MultiModalAdapter
from mmadapter.config import AdapterConfig, ClipSpec
from mmadapter.errors import CheckpointError, ConfigError

FORMAT_NAME = "mmadapter-checkpoint"
FORMAT_VERSION = 1
METADATA_KEY = "mmadapter"


@dataclass(frozen=True)
class LabelSet:
    """The classes an adapter was trained on and the prompts that turn them into text."""

    class_names: tuple[str, ...]
    templates: tuple[str, ...] = ("a photo of a {}.",)

    def __post_init__(self) -> None:
        if not self.class_names:
            raise ConfigError("the class list is empty")
        if len(set(self.class_names)) != len(self.class_names):
            raise ConfigError("the class list has duplicate names")
        if not self.templates or any("{}" not in t for t in self.templates):
            raise ConfigError("every prompt template needs one '{}' for the class name")

    def to_dict(self) -> dict[str, Any]:
        return {"class_names": list(self.class_names), "templates": list(self.templates)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LabelSet:
        return cls(tuple(data["class_names"]), tuple(data.get("templates", cls.templates)))


@dataclass
class CheckpointMeta:
    adapter: AdapterConfig
    clip: ClipSpec
    logit_scale: float
    label_set: LabelSet
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "adapter": self.adapter.to_dict(),
            "clip": self.clip.to_dict(),
            "logit_scale": self.logit_scale,
            "label_set": self.label_set.to_dict(),
            "training": self.training,
            "metrics": self.metrics,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CheckpointMeta:
        return cls(
            adapter=AdapterConfig.from_dict(data["adapter"]),
            clip=ClipSpec.from_dict(data["clip"]),
            logit_scale=float(data["logit_scale"]),
            label_set=LabelSet.from_dict(data["label_set"]),
            training=dict(data.get("training", {})),
            metrics=dict(data.get("metrics", {})),
        )


def expected_shapes(config: AdapterConfig) -> dict[str, tuple[int, ...]]:
    c, d = config.embed_dim, config.bottleneck_dim
    return {
        "down.weight": (d, c),
        "down.bias": (d,),
        "attn.in_proj_weight": (3 * d, d),
        "attn.in_proj_bias": (3 * d,),
        "attn.out_proj.weight": (d, d),
        "attn.out_proj.bias": (d,),
        "up.weight": (c, d),
        "up.bias": (c,),
    }


def save_checkpoint(path: str | Path, adapter: MultiModalAdapter, meta: CheckpointMeta) -> Path:
    """Write the checkpoint atomically (temporary file, then rename)."""
    from safetensors.torch import save_file

    if meta.adapter != adapter.config:
        raise CheckpointError("checkpoint metadata describes a different adapter config than the module")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().float().contiguous().cpu() for k, v in adapter.state_dict().items()}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        save_file(tensors, str(tmp), metadata={METADATA_KEY: json.dumps(meta.to_dict())})
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The JSON description of a checkpoint, read from the header only (no tensors loaded)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CheckpointError(f"{path} is not a safetensors checkpoint (file is {size} bytes)")
        (header_len,) = struct.unpack("<Q", head)
        if header_len <= 0 or 8 + header_len > size:
            raise CheckpointError(f"{path} is truncated or not a safetensors file (bad header length)")
        try:
            header = json.loads(f.read(header_len))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise CheckpointError(f"{path} has a corrupt safetensors header") from None
    ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)]
    if ends and 8 + header_len + max(ends) > size:
        raise CheckpointError(f"{path} is truncated: tensor data ends before the header says it should")
    raw = (header.get("__metadata__") or {}).get(METADATA_KEY)
    if raw is None:
        raise CheckpointError(f"{path} is a safetensors file but not an mmadapter checkpoint (no metadata)")
    try:
        data = json.loads(raw)
    except json.JSONDecodeError:
        raise CheckpointError(f"{path} has corrupt mmadapter metadata") from None
    if data.get("format") != FORMAT_NAME:
        raise CheckpointError(f"{path} has unknown format {data.get('format')!r}")
    if data.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has format version {data.get('format_version')!r}; this mmadapter reads version "
            f"{FORMAT_VERSION}"
        )
    return data


def load_checkpoint(
    path: str | Path, backend: str = "auto", clip_embed_dim: int | None = None
) -> tuple[MultiModalAdapter, CheckpointMeta]:
    """Load and check a checkpoint. ``clip_embed_dim``, when given, is the width of the CLIP the
    adapter will run on; a mismatch is an error here rather than a shape error later."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    data = read_metadata(path)
    try:
        meta = CheckpointMeta.from_dict(data)
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path} has invalid metadata: {exc}") from None
    if meta.clip.weights_path and not Path(meta.clip.weights_path).is_absolute():
        # A relative CLIP weights path is relative to the checkpoint's folder, so that a folder
        # holding both (the demo's) can be moved; the recorded sha256 still pins the content.
        resolved = str((path.parent / meta.clip.weights_path).resolve())
        meta = dataclasses.replace(meta, clip=dataclasses.replace(meta.clip, weights_path=resolved))
    if clip_embed_dim is not None and clip_embed_dim != meta.adapter.embed_dim:
        raise CheckpointError(
            f"{path}: adapter width {meta.adapter.embed_dim} does not match the CLIP model "
            f"{meta.clip.model_name} (embedding width {clip_embed_dim})"
        )
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path} cannot be read: {str(exc).splitlines()[0]}") from None
    want = expected_shapes(meta.adapter)
    missing, extra = sorted(set(want) - set(tensors)), sorted(set(tensors) - set(want))
    if missing or extra:
        raise CheckpointError(f"{path} tensors do not match the adapter: missing {missing}, unexpected {extra}")
    for name, shape in want.items():
        if tuple(tensors[name].shape) != shape:
            raise CheckpointError(
                f"{path}: tensor {name} has shape {list(tensors[name].shape)}, expected {list(shape)}"
            )
        if not torch.isfinite(tensors[name]).all():
            raise CheckpointError(f"{path}: tensor {name} contains NaN or infinite values")
    adapter = MultiModalAdapter(meta.adapter, backend=backend)
    adapter.load_state_dict(tensors)
    adapter.eval()
    return adapter, meta
