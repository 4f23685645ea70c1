"""Adapters trained with the authors' code (dqmis/clip-mma) turned into checkpoints of ours.

The authors keep the adapter as a module with a ``downsampler`` (Linear C -> C/4), an ``mha``
(``torch.nn.MultiheadAttention`` over C/4, 4 heads) and an ``upsampler`` (Linear C/4 -> C), inside a
model whose state dict also holds the whole CLIP. Their training script saves
``{"epoch", "state_dict", "best_acc1", "optimizer"}``. Either that file, a bare state dict, or one
whose adapter keys lack the ``adapter.`` prefix converts here; the CLIP's own entries are ignored
(and counted).

The two modules compute the same function (docs/design.md §1): the authors' forward runs the
masked attention over the N class texts and the image literally, ours its exact fast path, with the
same parameters under other names (``downsampler`` -> ``down``, ``mha`` -> ``attn``, ``upsampler`` ->
``up``). The number of attention heads cannot be read from the tensors (4 heads and 8 heads have
the same shapes), so it is the registered config's for the width: 4, the authors' value.

Files are read without running any pickled code: ``.safetensors`` through safetensors, anything
else through ``torch.load(weights_only=True)`` (tensors and plain containers only).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mmadapter.errors import CheckpointError, ConfigError, MMAdapterError
from mmadapter.files import first_line, sha256_file
from mmadapter.model.checkpoint import CheckpointMeta, LabelSet, check_output_file, expected_shapes, save_checkpoint
from mmadapter.model.config import AdapterConfig, ClipSpec, adapter_config_for_width
from mmadapter.runtime.labels import DEFAULT_TEMPLATE

# The authors' parameter names (below the adapter's prefix) and ours.
AUTHORS_TO_OURS: dict[str, str] = {
    "downsampler.weight": "down.weight",
    "downsampler.bias": "down.bias",
    "mha.in_proj_weight": "attn.in_proj_weight",
    "mha.in_proj_bias": "attn.in_proj_bias",
    "mha.out_proj.weight": "attn.out_proj.weight",
    "mha.out_proj.bias": "attn.out_proj.bias",
    "upsampler.weight": "up.weight",
    "upsampler.bias": "up.bias",
}
ANCHOR = "downsampler.weight"  # the key whose prefix locates the adapter and whose shape gives the width
ADAPTER_MODULES = ("downsampler.", "mha.", "upsampler.")
DEFAULT_PREFIX = "adapter."
# The authors' ablations with an MLP bottleneck (nn.Sequential: downsampler.0.weight, ...) are another
# architecture, not a layout of this one.
_SEQUENTIAL = re.compile(r"(?:^|\.)(?:downsampler|upsampler)\.\d+\.weight$")
_UNPICKLER_GLOBAL = re.compile(r"Unsupported global: GLOBAL (\S+)")


@dataclass(frozen=True)
class AuthorsAdapter:
    """An adapter found in a state dict of the authors' layout, renamed and checked."""

    tensors: dict[str, torch.Tensor]  # our names, float32
    config: AdapterConfig
    prefix: str  # the prefix of the adapter's keys in the source ("adapter." or "")
    ignored: int  # entries of the source that are not the adapter (the CLIP's weights, a logit scale, ...)
    logit_scale: float | None  # exp of the model's log-space logit scale, when the source holds one


def read_state_dict(path: str | Path) -> dict[str, Any]:
    """The state dict in a ``.safetensors`` or torch file, read without running pickled code. A torch
    file saved by the authors' training script (``{"state_dict": ..., "optimizer": ...}``) gives its
    ``state_dict``. Any problem is a one-line :class:`CheckpointError`."""
    path = Path(path)
    try:
        if not path.is_file():
            raise CheckpointError(f"state dict not found: {path}" if not path.exists() else f"{path} is not a file")
        with path.open("rb") as f:
            magic = f.read(4)
    except OSError as exc:
        raise CheckpointError(f"cannot read {path}: {first_line(exc)}") from None
    if magic[:2] == b"PK" or magic[:1] == b"\x80":  # torch's zip format, or a legacy pickle
        state = _torch_load(path)
    else:
        state = _safetensors_load(path)
    if isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping) or not all(isinstance(k, str) for k in state):
        raise CheckpointError(f"{path} holds a {type(state).__name__}, not a state dict (names to tensors)")
    return dict(state)


def _torch_load(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - whatever the loader raises, the file cannot be used
        text = str(exc)
        if "Weights only load failed" in text:
            found = _UNPICKLER_GLOBAL.search(text)
            needs = f" (it needs {found.group(1)})" if found else ""
            raise CheckpointError(f"{path} holds Python objects other than tensors and plain containers{needs}; "
                                  "only those are read (torch.load with weights_only=True)") from None
        reason = first_line(exc).split(". ")[0]  # torch appends paragraphs of advice to the reason
        raise CheckpointError(f"{path} cannot be read as a torch file (truncated or corrupt?): {reason}") from None


def _safetensors_load(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as exc:  # noqa: BLE001 - any loader failure on a user's file is a bad file
        raise CheckpointError(f"{path} is neither a torch file nor a readable safetensors file: "
                              f"{first_line(exc)}") from None
    except BaseException as exc:
        # safetensors is Rust: a panic arrives as pyo3's PanicException, a BaseException.
        if type(exc).__name__ == "PanicException":
            raise CheckpointError(f"{path} is not a readable safetensors file: {first_line(exc)}") from None
        raise


def find_adapter_prefix(state: Mapping[str, Any], source: str = "the state dict") -> str:
    """The prefix of the adapter's keys: ``adapter.``, ``""``, or any other single one (a model wrapped
    in DistributedDataParallel gives ``module.adapter.``). None or several is a one-line error."""
    prefixes = sorted(k[: -len(ANCHOR)] for k in state
                      if k.endswith(ANCHOR) and (k == ANCHOR or k[: -len(ANCHOR)].endswith(".")))
    if len(prefixes) > 1:
        shown = ", ".join(repr(p) for p in prefixes[:4])
        raise CheckpointError(f"{source} is ambiguous: it holds an adapter under several prefixes ({shown})")
    if prefixes:
        return prefixes[0]
    sequential = next((k for k in state if _SEQUENTIAL.search(k)), None)
    if sequential is not None:
        raise CheckpointError(f"{source} holds {sequential!r}: an adapter with an MLP bottleneck (one of the "
                              "authors' ablations), not the Multi-Modal Adapter's single linear layers")
    first = next(iter(state), None)
    raise CheckpointError(f"{source} has no adapter: missing key {DEFAULT_PREFIX + ANCHOR!r} (or {ANCHOR!r}); "
                          f"it holds {len(state)} entries" + (f", the first {first[:80]!r}" if first else ""))


def map_authors_state_dict(state: Mapping[str, Any], source: str = "the state dict") -> AuthorsAdapter:
    """Rename and check the adapter in a state dict of the authors' layout. The width C comes from
    ``downsampler.weight`` ([C/4, C]); every tensor must have the shape the adapter config for that
    width gives, be floating point and finite. Any problem is one :class:`CheckpointError` naming the
    key (as the source spells it) and the shapes."""
    prefix = find_adapter_prefix(state, source)
    for key in state:
        inside = key[len(prefix):] if key.startswith(prefix) else None
        if inside is not None and inside.startswith(ADAPTER_MODULES) and inside not in AUTHORS_TO_OURS:
            raise CheckpointError(f"{source} has the unexpected adapter key {key!r}: not part of the Multi-Modal "
                                  "Adapter (a different attention or projection layout)")
    raw: dict[str, torch.Tensor] = {}
    for theirs in AUTHORS_TO_OURS:
        key = prefix + theirs
        if key not in state:
            raise CheckpointError(f"{source} lacks the adapter key {key!r}")
        value = state[key]
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{source}: {key!r} is a {type(value).__name__}, not a tensor")
        if not value.is_floating_point():
            raise CheckpointError(f"{source}: {key!r} has dtype {str(value.dtype).removeprefix('torch.')}; "
                                  "adapter weights are floating point")
        raw[theirs] = value
    config = _config_for(raw[ANCHOR], prefix + ANCHOR, source)
    want = expected_shapes(config)
    tensors: dict[str, torch.Tensor] = {}
    for theirs, ours in AUTHORS_TO_OURS.items():
        tensor = raw[theirs]
        if tuple(tensor.shape) != want[ours]:
            raise CheckpointError(f"{source}: {prefix + theirs!r} has shape {list(tensor.shape)}, expected "
                                  f"{list(want[ours])} for an adapter of width {config.embed_dim}")
        if not torch.isfinite(tensor).all():
            raise CheckpointError(f"{source}: {prefix + theirs!r} has NaN or infinite values")
        tensors[ours] = tensor.detach().to(device="cpu", dtype=torch.float32).contiguous()
    return AuthorsAdapter(tensors, config, prefix, len(state) - len(AUTHORS_TO_OURS),
                          _logit_scale_in(state, prefix, source))


def _config_for(down_weight: torch.Tensor, key: str, source: str) -> AdapterConfig:
    if down_weight.ndim != 2 or min(down_weight.shape) < 1:
        raise CheckpointError(f"{source}: {key!r} has shape {list(down_weight.shape)}, expected [C/4, C] "
                              "(a linear layer's weight)")
    width = int(down_weight.shape[1])
    try:
        return adapter_config_for_width(width)
    except ConfigError as exc:
        raise CheckpointError(f"{source}: {key!r} has shape {list(down_weight.shape)}: width {width} gives no "
                              f"adapter config ({first_line(exc)})") from None


def _logit_scale_in(state: Mapping[str, Any], prefix: str, source: str) -> float | None:
    """The authors' model keeps CLIP's logit scale as a parameter in log space (its forward uses
    ``logit_scale.exp()``), beside the adapter: ``logit_scale`` or ``_clip.logit_scale``."""
    if not prefix.endswith(DEFAULT_PREFIX):
        return None
    root = prefix[: -len(DEFAULT_PREFIX)]
    for key in (root + "logit_scale", root + "_clip.logit_scale"):
        value = state.get(key)
        if isinstance(value, torch.Tensor) and value.is_floating_point() and value.numel() == 1:
            scale = math.exp(min(float(value.reshape(())), 700.0))  # beyond e^700 a float overflows
            if not math.isfinite(scale) or scale <= 0:
                raise CheckpointError(f"{source}: {key!r} gives the logit scale {scale!r}; expected a finite "
                                      "number > 0")
            return scale
    return None


def clip_spec_for(clip_model: str, pretrained: str | None = None, clip_weights: str | Path | None = None) -> ClipSpec:
    """The CLIP spec a checkpoint records, as training records it: a local weights file by absolute
    path and sha256, else the open_clip pretrained tag (``None``: random weights)."""
    from mmadapter.model.backbone import pin_weights

    if clip_weights is not None:
        return pin_weights(ClipSpec(clip_model, None, str(Path(clip_weights).resolve()), None))
    return ClipSpec(clip_model, pretrained or None)


def clip_embed_dim(model_name: str) -> int:
    """The embedding width of an open_clip model, from its config (nothing is built or downloaded)."""
    from mmadapter.model.backbone import open_clip_module

    config = open_clip_module().get_model_config(model_name)
    if not config or not isinstance(config.get("embed_dim"), int):
        raise ConfigError(f"unknown open_clip model {model_name!r}")
    return int(config["embed_dim"])


def _clip_logit_scale(spec: ClipSpec) -> float:
    from mmadapter.model.backbone import load_clip

    try:
        return load_clip(spec).logit_scale
    except MMAdapterError as exc:
        raise ConfigError(f"cannot read the logit scale of CLIP {spec.describe()} (give it explicitly): "
                          f"{first_line(exc)}") from None


def convert_authors_state_dict(
    path_or_state_dict: str | Path | Mapping[str, Any],
    *,
    clip_model: str,
    pretrained: str | None = None,
    clip_weights: str | Path | None = None,
    class_names: Sequence[str],
    templates: Sequence[str] = (DEFAULT_TEMPLATE,),
    logit_scale: float | None = None,
    out: str | Path,
    overwrite: bool = False,
) -> Path:
    """Write a checkpoint of ours from an adapter in the authors' layout (a file or a state dict).

    The CLIP is recorded as ``mmadapter train`` records it: ``clip_weights`` (a local file, pinned by
    sha256) wins over ``pretrained`` (an open_clip tag). Its width must be the adapter's. The logit
    scale is ``logit_scale`` when given, else the one the authors' model saved beside the adapter,
    else the CLIP's own (which builds the CLIP, downloading a pretrained tag's weights on first use).
    ``class_names`` and ``templates`` are the label set the adapter was trained for. An existing
    ``out`` is refused unless ``overwrite``. Where the adapter came from is recorded in the
    checkpoint's ``training`` field. Returns the checkpoint's path."""
    out = check_output_file(out, overwrite)
    label_set = LabelSet(tuple(class_names), tuple(templates))
    clip_width = clip_embed_dim(clip_model)
    if isinstance(path_or_state_dict, Mapping):
        source, source_sha = "the state dict", None
        found = map_authors_state_dict(path_or_state_dict, source)
    else:
        path = Path(path_or_state_dict)
        source = str(path)
        found = map_authors_state_dict(read_state_dict(path), source)
        source_sha = sha256_file(path)
    if found.config.embed_dim != clip_width:
        raise CheckpointError(f"{source}: adapter width {found.config.embed_dim} does not match the CLIP model "
                              f"{clip_model} (embedding width {clip_width})")
    spec = clip_spec_for(clip_model, pretrained, clip_weights)  # hashes a local weights file: after the cheap checks
    if logit_scale is not None:
        scale, scale_from = logit_scale, "argument"
    elif found.logit_scale is not None:
        scale, scale_from = found.logit_scale, "source"
    else:
        scale, scale_from = _clip_logit_scale(spec), "clip"
    from mmadapter.model.adapter import MultiModalAdapter

    adapter = MultiModalAdapter(found.config, backend="torch")
    adapter.load_state_dict(found.tensors)
    provenance = {
        "converted_from": "authors' layout (dqmis/clip-mma)",
        "source": Path(source).name if source_sha else source,
        "source_sha256": source_sha,
        "source_prefix": found.prefix,
        "ignored_entries": found.ignored,
        "logit_scale_from": scale_from,
    }
    meta = CheckpointMeta(adapter=found.config, clip=spec, logit_scale=scale, label_set=label_set,
                          training=provenance)
    return save_checkpoint(out, adapter, meta, overwrite=overwrite)


# -- the ``mmadapter convert`` subcommand ------------------------------------------------------------------


__all__ = [
    "AUTHORS_TO_OURS",
    "AuthorsAdapter",
    "clip_embed_dim",
    "clip_spec_for",
    "convert_authors_state_dict",
    "find_adapter_prefix",
    "map_authors_state_dict",
    "read_state_dict",
]
