"""One self-describing checkpoint file: adapter weights in safetensors, with a JSON description
(format version, adapter config, CLIP spec, logit scale, label set, training settings, metrics and a
content sha256) in the safetensors header metadata under the key ``mmadapter``.

Loading checks everything and turns every problem into a one-line :class:`CheckpointError`: the
framing, every metadata field and its type, tensor names, shapes and dtypes, finiteness, and the
sha256 recorded at save over the tensor bytes and the description, so that a flipped bit in a
finite weight or an edited class list is refused instead of giving other answers.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mmadapter.errors import CheckpointError, ConfigError, MMAdapterError
from mmadapter.files import FileWriteError, atomic_path, first_line, resolve_destination
from mmadapter.model.adapter import MultiModalAdapter
from mmadapter.model.config import AdapterConfig, ClipSpec
from mmadapter.runtime.labels import DEFAULT_TEMPLATE, check_class_names, check_template

FORMAT_NAME = "mmadapter-checkpoint"
FORMAT_VERSION = 2  # 2: content sha256, typed metadata, floating tensors only
METADATA_KEY = "mmadapter"
HASH_KEY = "content_sha256"
MAX_HEADER_BYTES = 100_000_000  # safetensors' own limit
FLOAT_DTYPES = {torch.float16: "F16", torch.bfloat16: "BF16", torch.float32: "F32", torch.float64: "F64"}
# bytes per element of every dtype the safetensors format names, to check the framing before loading
SAFETENSORS_DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2, "F16": 2,
                           "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}
_META_KEYS = {"format", "format_version", "adapter", "clip", "logit_scale", "label_set", "training", "metrics",
              HASH_KEY}


@dataclass(frozen=True)
class LabelSet:
    """The classes an adapter was trained on and the prompts that turn them into text."""

    class_names: tuple[str, ...]
    templates: tuple[str, ...] = (DEFAULT_TEMPLATE,)

    def __post_init__(self) -> None:
        object.__setattr__(self, "class_names", check_class_names(self.class_names))
        if isinstance(self.templates, str) or not isinstance(self.templates, (list, tuple)) or not self.templates:
            raise ConfigError(f"prompt templates must be a non-empty list of strings, got {self.templates!r:.80}")
        object.__setattr__(self, "templates", tuple(check_template(t) for t in self.templates))

    def to_dict(self) -> dict[str, Any]:
        return {"class_names": list(self.class_names), "templates": list(self.templates)}

    @classmethod
    def from_dict(cls, data: Any) -> LabelSet:
        _check_object(data, "label_set")
        unknown = sorted(str(k)[:40] for k in set(data) - {"class_names", "templates"})
        if unknown:
            raise ConfigError(f"label_set has unknown keys {unknown[:5]}")
        if "class_names" not in data:
            raise ConfigError("label_set has no class_names")
        names, templates = data["class_names"], data.get("templates", list(cls.templates))
        if not isinstance(names, list):
            raise ConfigError(f"label_set class_names must be a list, got {type(names).__name__}")
        if not isinstance(templates, list):
            raise ConfigError(f"label_set templates must be a list, got {type(templates).__name__}")
        return cls(tuple(names), tuple(templates))


@dataclass
class CheckpointMeta:
    adapter: AdapterConfig
    clip: ClipSpec
    logit_scale: float
    label_set: LabelSet
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, kind in (("adapter", AdapterConfig), ("clip", ClipSpec), ("label_set", LabelSet)):
            value = getattr(self, name)
            if not isinstance(value, kind):
                raise ConfigError(f"checkpoint {name} must be a {kind.__name__}, got {type(value).__name__}")
        self.logit_scale = check_logit_scale(self.logit_scale)
        _check_object(self.training, "training")
        _check_object(self.metrics, "metrics")
        if self.clip.weights_path and not self.clip.weights_sha256:
            # Without the hash, swapping the weights file would silently change every answer.
            raise ConfigError(f"CLIP weights {self.clip.weights_path} have no sha256 recorded; the content of a "
                              "weights file must be pinned")

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
    def from_dict(cls, data: Any) -> CheckpointMeta:
        """The description, with every field and type checked; any problem is a one-line
        :class:`MMAdapterError` (ConfigError, DataError), never a KeyError or TypeError."""
        _check_object(data, "checkpoint metadata")
        unknown = sorted(str(k)[:40] for k in set(data) - _META_KEYS)
        if unknown:
            raise ConfigError(f"checkpoint metadata has unknown keys {unknown[:5]}")
        missing = sorted({"adapter", "clip", "logit_scale", "label_set"} - set(data))
        if missing:
            raise ConfigError(f"checkpoint metadata lacks {missing}")
        return cls(
            adapter=AdapterConfig.from_dict(_check_object(data["adapter"], "adapter")),
            clip=ClipSpec.from_dict(_check_object(data["clip"], "clip")),
            logit_scale=data["logit_scale"],
            label_set=LabelSet.from_dict(data["label_set"]),
            training=dict(_check_object(data.get("training", {}), "training")),
            metrics=dict(_check_object(data.get("metrics", {}), "metrics")),
        )


def _check_object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"{what} must be a JSON object, got {type(value).__name__}")
    return value


def check_logit_scale(value: Any) -> float:
    """CLIP's logit scale (the exponentiated temperature): a finite number > 0, not a bool."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"logit_scale must be a number, got {type(value).__name__}")
    try:
        scale = float(value)
    except OverflowError:
        raise ConfigError("logit_scale is too large") from None
    if not math.isfinite(scale) or scale <= 0:
        raise ConfigError(f"logit_scale must be a finite number > 0, got {scale!r}")
    return scale


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


def canonical_json(data: Any) -> bytes:
    """The one byte form of a JSON value that the content hash covers (key order does not matter)."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=True).encode()


def content_sha256(tensors: dict[str, torch.Tensor], description: dict[str, Any]) -> str:
    """sha256 over every tensor (sorted by name: name, dtype, shape, raw bytes) and the canonical JSON
    of the description without its hash field."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        digest.update(json.dumps([name, str(t.dtype).removeprefix("torch."), list(t.shape)]).encode() + b"\n")
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    digest.update(canonical_json({k: v for k, v in description.items() if k != HASH_KEY}))
    return digest.hexdigest()


def check_output_file(path: str | Path, overwrite: bool = False) -> Path:
    """Cheap checks of a file destination, made before any expensive work: not a folder, not an
    existing file unless ``overwrite``, and a folder that exists (or can be made) and is writable.
    Returns the destination with symbolic links followed."""
    try:
        return _check_output_file(resolve_destination(path), overwrite)
    except (OSError, ValueError) as exc:  # FileWriteError is an OSError: keep its own message
        if isinstance(exc, MMAdapterError):
            raise
        raise FileWriteError(f"cannot write {path}: {first_line(exc)}") from None


def _check_output_file(dest: Path, overwrite: bool) -> Path:
    if dest.is_dir():
        raise FileWriteError(f"{dest} is a folder; give the path of the file to write")
    if dest.exists() and not overwrite:
        raise FileWriteError(f"{dest} exists (use --overwrite to replace it)")
    folder = dest.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise FileWriteError(f"cannot write {dest}: {folder} is a file, not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise FileWriteError(f"cannot write {dest}: the folder {folder} is not writable")
    return dest


def save_checkpoint(path: str | Path, adapter: MultiModalAdapter, meta: CheckpointMeta,
                    overwrite: bool = False) -> Path:
    """Write the checkpoint atomically (a temporary beside it, then moved into place). An existing
    file is refused unless ``overwrite``; non-finite weights are refused; write failures of any
    kind are one :class:`FileWriteError`."""
    from safetensors.torch import save_file

    path = Path(path)
    if meta.adapter != adapter.config:
        raise CheckpointError("checkpoint metadata describes a different adapter config than the module")
    tensors = {k: v.detach().float().contiguous().cpu() for k, v in adapter.state_dict().items()}
    for name, tensor in sorted(tensors.items()):
        if not torch.isfinite(tensor).all():
            raise CheckpointError(f"refusing to save {path}: tensor {name} has NaN or infinite values")
    try:
        # Through JSON and back: what is hashed is exactly what a reader parses.
        description = json.loads(json.dumps(meta.to_dict()))
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint metadata cannot be written as JSON: {first_line(exc)}") from None
    description[HASH_KEY] = content_sha256(tensors, description)
    with atomic_path(path, overwrite=overwrite) as tmp:
        save_file(tensors, str(tmp), metadata={METADATA_KEY: json.dumps(description)})
    return path


def _read_header(path: Path) -> tuple[dict[str, Any], int, int]:
    """The safetensors header (checked framing), its length and the file size."""
    try:
        if not path.is_file():
            raise CheckpointError(f"checkpoint not found: {path}" if not path.exists() else f"{path} is not a file")
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise CheckpointError(f"{path} is not a safetensors checkpoint (file is {size} bytes)")
            (header_len,) = struct.unpack("<Q", head)
            if header_len < 2 or header_len > MAX_HEADER_BYTES or 8 + header_len > size:
                raise CheckpointError(f"{path} is truncated or not a safetensors file (bad header length)")
            raw = f.read(header_len)
    except CheckpointError:
        raise
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {first_line(exc)}") from None
    except ValueError as exc:  # a path the OS cannot take (a NUL byte)
        raise CheckpointError(f"cannot read checkpoint {path!s:.200}: {first_line(exc)}") from None
    try:
        header = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError):  # bad UTF-8, bad JSON, too deep, too many digits
        raise CheckpointError(f"{path} has a corrupt safetensors header") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path} has a corrupt safetensors header (not a JSON object)")
    return header, header_len, size


def _check_framing(path: Path, header: dict[str, Any], data_size: int) -> None:
    """Every tensor entry well formed, within the file, and the entries tile the data exactly,
    so that the safetensors loader is never handed a file it could fail on unpredictably."""
    spans = []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        bad = f"{path} has a corrupt safetensors header (entry {name[:60]!r})"
        if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
            raise CheckpointError(bad)
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if not isinstance(dtype, str) or dtype not in SAFETENSORS_DTYPE_BYTES:
            raise CheckpointError(f"{bad}: unknown dtype")
        if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
            raise CheckpointError(f"{bad}: bad shape")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)
                and 0 <= offsets[0] <= offsets[1]):
            raise CheckpointError(f"{bad}: bad data_offsets")
        if offsets[1] > data_size:
            raise CheckpointError(f"{path} is truncated: tensor data ends before the header says it should")
        if math.prod(shape) * SAFETENSORS_DTYPE_BYTES[dtype] != offsets[1] - offsets[0]:
            raise CheckpointError(f"{bad}: its size does not match its shape")
        spans.append(tuple(offsets))
    position = 0
    for start, end in sorted(spans):
        if start != position:
            raise CheckpointError(f"{path} has a corrupt safetensors header (tensor data overlaps or has gaps)")
        position = end
    if position != data_size:
        raise CheckpointError(f"{path} has {data_size - position} bytes after the tensor data (corrupt or modified)")


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The JSON description of a checkpoint, from the header only (no tensors loaded), with the
    framing and every field checked. Any bytes at all give either the description or a one-line
    :class:`CheckpointError`."""
    path = Path(path)
    header, header_len, size = _read_header(path)
    meta = header.get("__metadata__")
    if meta is not None and (not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values())):
        raise CheckpointError(f"{path} has a corrupt safetensors header (__metadata__ is not strings)")
    _check_framing(path, header, size - 8 - header_len)
    raw = (meta or {}).get(METADATA_KEY)
    if raw is None:
        raise CheckpointError(f"{path} is a safetensors file but not an mmadapter checkpoint (no metadata)")
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):
        raise CheckpointError(f"{path} has corrupt mmadapter metadata") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} has corrupt mmadapter metadata (not a JSON object)")
    if data.get("format") != FORMAT_NAME:
        raise CheckpointError(f"{path} has unknown format {str(data.get('format'))[:80]!r}")
    version = data.get("format_version")
    if version == 1 and type(version) is int:
        raise CheckpointError(f"{path} is a format version 1 checkpoint (older mmadapter, no content sha256); this "
                              f"mmadapter reads version {FORMAT_VERSION}: train it again")
    if type(version) is not int or version != FORMAT_VERSION:
        raise CheckpointError(f"{path} has format version {str(version)[:40]!r}; this mmadapter reads version "
                              f"{FORMAT_VERSION}")
    _parse_meta(path, data)
    recorded = data.get(HASH_KEY)
    if not isinstance(recorded, str) or len(recorded) != 64:
        raise CheckpointError(f"{path} has no content sha256 in its metadata (corrupt or modified)")
    return data


def _parse_meta(path: Path, data: dict[str, Any]) -> CheckpointMeta:
    try:
        return CheckpointMeta.from_dict(data)
    except MMAdapterError as exc:
        raise CheckpointError(f"{path} has invalid metadata: {first_line(exc)}") from None


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as exc:  # noqa: BLE001 - any loader failure on a user's file is a bad file
        raise CheckpointError(f"{path} cannot be read: {first_line(exc)}") from None
    except BaseException as exc:
        # safetensors is Rust: a panic arrives as pyo3's PanicException, a BaseException.
        if type(exc).__name__ == "PanicException":
            raise CheckpointError(f"{path} cannot be read: {first_line(exc)}") from None
        raise


def load_checkpoint(
    path: str | Path, backend: str = "auto", clip_embed_dim: int | None = None
) -> tuple[MultiModalAdapter, CheckpointMeta]:
    """Load and check a checkpoint. ``clip_embed_dim``, when given, is the width of the CLIP the
    adapter will run on; a mismatch is an error here rather than a shape error later."""
    path = Path(path)
    data = read_metadata(path)
    meta = _parse_meta(path, data)
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
    tensors = _load_tensors(path)
    want = expected_shapes(meta.adapter)
    missing, extra = sorted(set(want) - set(tensors)), sorted(set(tensors) - set(want))
    if missing or extra:
        raise CheckpointError(f"{path} tensors do not match the adapter: missing {missing}, unexpected {extra}")
    for name, shape in want.items():
        tensor = tensors[name]
        if tuple(tensor.shape) != shape:
            raise CheckpointError(f"{path}: tensor {name} has shape {list(tensor.shape)}, expected {list(shape)}")
        if tensor.dtype not in FLOAT_DTYPES:
            raise CheckpointError(f"{path}: tensor {name} has dtype {str(tensor.dtype).removeprefix('torch.')}; "
                                  f"adapter tensors are floating point ({', '.join(FLOAT_DTYPES.values())})")
    if content_sha256(tensors, data) != data[HASH_KEY]:
        raise CheckpointError(f"{path}: the content does not match the sha256 recorded at save: corrupt or modified")
    for name in want:
        if not torch.isfinite(tensors[name]).all():
            raise CheckpointError(f"{path}: tensor {name} contains NaN or infinite values")
    adapter = MultiModalAdapter(meta.adapter, backend=backend)
    adapter.load_state_dict({k: v.float() for k, v in tensors.items()})
    adapter.eval()
    return adapter, meta


__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "HASH_KEY",
    "METADATA_KEY",
    "CheckpointMeta",
    "LabelSet",
    "canonical_json",
    "check_logit_scale",
    "check_output_file",
    "content_sha256",
    "expected_shapes",
    "load_checkpoint",
    "read_metadata",
    "save_checkpoint",
]
