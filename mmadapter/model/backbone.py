"""The frozen CLIP: open_clip loading, freezing, and image/text encoding with the model's own
preprocessing and tokenizer. Nothing here is trained.

open_clip is imported lazily so that the adapter, the kernels and the reference stay importable
without it (the GPU machine and the serving runtime have no open_clip).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from mmadapter.errors import ConfigError
from mmadapter.files import atomic_path, first_line, sha256_file
from mmadapter.model.config import CLIP_CONFIG_DIR, ClipSpec
from mmadapter.runtime.labels import check_distinct_tokens, format_prompt

_registered = False


def open_clip_module() -> Any:
    """open_clip, with this package's own model configs (the tiny demo CLIP) registered once."""
    global _registered
    import open_clip

    if not _registered:
        open_clip.add_model_config(CLIP_CONFIG_DIR)
        _registered = True
    return open_clip


@dataclass
class FrozenClip:
    """An open_clip model in eval mode with every parameter frozen, plus its preprocessing."""

    spec: ClipSpec
    model: torch.nn.Module
    preprocess: Callable[[Any], torch.Tensor]  # PIL image -> [3, H, W] float tensor
    tokenizer: Callable[[Sequence[str]], torch.Tensor]

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def embed_dim(self) -> int:
        return int(self.model.text_projection.shape[1]) if hasattr(self.model, "text_projection") and \
            self.model.text_projection is not None else int(self.model.visual.output_dim)

    @property
    def image_size(self) -> tuple[int, int]:
        size = self.model.visual.image_size
        return (size, size) if isinstance(size, int) else tuple(size)

    @property
    def logit_scale(self) -> float:
        return float(self.model.logit_scale.exp().item())

    @property
    def image_mean(self) -> tuple[float, ...]:
        return tuple(getattr(self.model.visual, "image_mean", None) or _OPENAI_MEAN)

    @property
    def image_std(self) -> tuple[float, ...]:
        return tuple(getattr(self.model.visual, "image_std", None) or _OPENAI_STD)

    @torch.no_grad()
    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """Preprocessed pixels [B, 3, H, W] -> unit-norm image embeddings [B, C] (fp32)."""
        pixels = pixels.to(self.device)
        return F.normalize(self.model.encode_image(pixels).float(), dim=-1)

    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """Strings -> unit-norm text embeddings [len(texts), C] (fp32)."""
        tokens = self.tokenizer(list(texts)).to(self.device)
        return F.normalize(self.model.encode_text(tokens).float(), dim=-1)

    @torch.no_grad()
    def class_embeddings(self, class_names: Sequence[str], templates: Sequence[str]) -> torch.Tensor:
        """One unit-norm embedding per class: the normalised mean over prompt templates."""
        if not class_names:
            raise ConfigError("the class list is empty")
        if not templates:
            raise ConfigError("no prompt templates given")
        # Names that the text encoder cannot tell apart once their prompts are cut at its context length.
        check_distinct_tokens(lambda prompts: self.tokenizer(prompts).cpu().numpy(), class_names, templates)
        per_template = [self.encode_texts([format_prompt(t, c) for c in class_names]) for t in templates]
        return F.normalize(torch.stack(per_template).mean(dim=0), dim=-1)


# open_clip's defaults for OpenAI-style models, used when a model does not carry its own.
_OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
_OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def weights_sha256(path: str | Path) -> str:
    """sha256 of a weights file, remembered per (file, size, mtime) within this process: a large CLIP
    file is hashed once per run, not once per use."""
    path = Path(path)
    try:
        st = path.stat()
        key = (str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ino)
        if key not in _sha_memo:
            _sha_memo[key] = sha256_file(path)
    except OSError as exc:
        raise ConfigError(f"cannot read CLIP weights {path}: {first_line(exc)}") from None
    return _sha_memo[key]


_sha_memo: dict[tuple[str, int, int, int], str] = {}


def pin_weights(spec: ClipSpec) -> ClipSpec:
    """``spec`` with the sha256 of its local weights file recorded (computed when missing), so that a
    checkpoint always pins the content of the weights it was trained on."""
    if not spec.weights_path or spec.weights_sha256:
        return spec
    path = Path(spec.weights_path)
    if not path.is_file():
        raise ConfigError(f"CLIP weights file not found: {path}")
    return replace(spec, weights_sha256=weights_sha256(path))


def read_weights_file(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from a safetensors file or a torch file. Torch (pickle) files are read with
    ``weights_only=True``: tensors and plain containers only, never arbitrary objects."""
    try:
        with open(path, "rb") as f:
            magic = f.read(2)
        if magic[:2] == b"PK" or magic[:1] == b"\x80":  # torch's zip format, or a legacy pickle
            obj = torch.load(path, map_location="cpu", weights_only=True)
        else:
            from safetensors.torch import load_file

            obj = load_file(str(path))
    except Exception as exc:  # noqa: BLE001 - whatever the loader raises, the file is unusable
        raise ConfigError(f"cannot read CLIP weights {path}: {first_line(exc)}") from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    ):
        raise ConfigError(f"CLIP weights {path} are not a state dict (names to tensors)")
    if next(iter(obj)).startswith("module."):  # saved from DistributedDataParallel
        obj = {k.removeprefix("module."): v for k, v in obj.items()}
    return obj


def _open_clip_conversions(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The adjustments open_clip's own checkpoint loader makes (third-party layouts, the old text
    layout, scalar logit scale, position embeddings resized), so that every file open_clip accepts
    is accepted here too."""
    from open_clip.convert import convert_state_dict
    from open_clip.model import convert_to_custom_text_state_dict, resize_pos_embed, resize_text_pos_embed

    state = convert_state_dict(model, dict(state))
    if "positional_embedding" in state and not hasattr(model, "positional_embedding"):
        state = convert_to_custom_text_state_dict(state)
    for name in ("logit_scale", "logit_bias"):
        own = getattr(model, name, None)
        if name in state and own is not None and own.ndim != state[name].ndim:
            state[name] = state[name].reshape(own.shape)
    if getattr(model, "logit_bias", None) is not None and "logit_bias" not in state and "logit_scale" in state:
        state["logit_bias"] = torch.zeros_like(state["logit_scale"])
    state.pop("text.transformer.embeddings.position_ids", None)
    resize_pos_embed(state, model)
    resize_text_pos_embed(state, model)
    return state


def load_weights_into(model: torch.nn.Module, path: Path, model_name: str) -> None:
    """Load a local weights file into ``model``; weights that do not fit (missing or unexpected
    keys, wrong shapes or kinds, non-finite values) are one :class:`ConfigError` naming both."""
    state = read_weights_file(path)
    misfit = f"CLIP weights {path} do not fit open_clip model {model_name}"
    try:
        state = _open_clip_conversions(model, state)
    except Exception as exc:  # noqa: BLE001 - a conversion that fails means the layout is not this model's
        raise ConfigError(f"{misfit}: {first_line(exc)}") from None
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [k for k in own if k in state and (tuple(state[k].shape) != tuple(own[k].shape)
                                               or state[k].is_floating_point() != own[k].is_floating_point())]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys, first {missing[0]!r}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys, first {unexpected[0]!r}")
    if wrong:
        k = wrong[0]
        problems.append(f"{len(wrong)} tensors of another shape or kind, first {k!r} "
                        f"{list(state[k].shape)} {str(state[k].dtype).removeprefix('torch.')} where the model has "
                        f"{list(own[k].shape)} {str(own[k].dtype).removeprefix('torch.')}")
    if problems:
        raise ConfigError(f"{misfit}: {'; '.join(problems)}")
    for name, tensor in state.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise ConfigError(f"CLIP weights {path}: tensor {name} has NaN or infinite values")
    try:
        model.load_state_dict(state, strict=True)
    except (RuntimeError, ValueError) as exc:
        raise ConfigError(f"{misfit}: {first_line(exc)}") from None


def load_clip(spec: ClipSpec, device: str | torch.device = "cpu") -> FrozenClip:
    """Create an open_clip model from a :class:`ClipSpec` and freeze it.

    ``spec.weights_path`` (a local file) wins over ``spec.pretrained`` (an open_clip tag such as
    ``openai``, downloaded by open_clip on first use); with neither the weights are random.
    A recorded ``weights_sha256`` must match the file; when none is recorded, the returned
    clip's spec records it.
    """
    open_clip = open_clip_module()
    if spec.model_name not in open_clip.list_models():
        raise ConfigError(f"unknown open_clip model {spec.model_name!r}")
    if spec.weights_path:
        path = Path(spec.weights_path)
        if not path.is_file():
            raise ConfigError(f"CLIP weights file not found: {path}")
        sha = weights_sha256(path)
        if spec.weights_sha256 and sha != spec.weights_sha256:
            raise ConfigError(f"CLIP weights file {path} does not match the sha256 recorded for it")
        spec = replace(spec, weights_sha256=sha)
        with _quiet_random_init_warning():  # the weights come next, from the file
            model, preprocess = _create_model(open_clip, spec, None, "cpu")
        load_weights_into(model, path, spec.model_name)
        model.to(device)
    else:
        model, preprocess = _create_model(open_clip, spec, spec.pretrained, device)
    model.eval().requires_grad_(False)
    return FrozenClip(spec, model, preprocess, open_clip.get_tokenizer(spec.model_name))


@contextlib.contextmanager
def _quiet_random_init_warning() -> Iterator[None]:
    def keep(record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("No pretrained weights loaded")

    root = logging.getLogger()
    root.addFilter(keep)
    try:
        yield
    finally:
        root.removeFilter(keep)


def _create_model(open_clip: Any, spec: ClipSpec, pretrained: str | None, device: str | torch.device) -> tuple:
    from safetensors import SafetensorError

    try:
        model, _, preprocess = open_clip.create_model_and_transforms(
            spec.model_name, pretrained=pretrained, device=device
        )
    except (RuntimeError, KeyError, ValueError, OSError, EOFError, SafetensorError) as exc:
        # An unknown pretrained tag, a failed download or a bad device surface as any of these.
        if pretrained and "download" in str(exc).lower():
            raise ConfigError(f"cannot download the {pretrained!r} weights of CLIP {spec.model_name}: the model hub "
                              "is unreachable from here (or the tag is unknown); give a local weights file with "
                              "--clip-weights FILE") from None
        raise ConfigError(f"cannot load CLIP {spec.describe()}: {first_line(exc)}") from None
    return model, preprocess


def save_clip_weights(clip: FrozenClip, path: str | Path, overwrite: bool = True) -> ClipSpec:
    """Save a CLIP's weights as a local safetensors file (atomically) and return the spec that
    refers to it by path and sha256, exactly as a user's own local weights are referred to."""
    from safetensors.torch import save_file

    path = Path(path)
    state = {k: v.detach().contiguous().cpu() for k, v in clip.model.state_dict().items()}
    with atomic_path(path, overwrite=overwrite) as tmp:
        save_file(state, str(tmp))
    return ClipSpec(clip.spec.model_name, None, str(path.resolve()), weights_sha256(path))
