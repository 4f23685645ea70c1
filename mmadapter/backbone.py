"""The frozen CLIP: open_clip loading, freezing, and image/text encoding with the model's own
preprocessing and tokenizer. Nothing here is trained.

open_clip is imported lazily so that the adapter, the kernels and the reference stay importable
without it (the GPU machine and the serving runtime have no open_clip).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from mmadapter.config import CLIP_CONFIG_DIR, ClipSpec
from mmadapter.errors import ConfigError
from mmadapter.files import sha256_file

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
        per_template = [self.encode_texts([format_prompt(t, c) for c in class_names]) for t in templates]
        return F.normalize(torch.stack(per_template).mean(dim=0), dim=-1)


# open_clip's defaults for OpenAI-style models, used when a model does not carry its own.
_OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
_OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def format_prompt(template: str, class_name: str) -> str:
    return template.format(class_name.replace("_", " "))


def load_clip(spec: ClipSpec, device: str | torch.device = "cpu") -> FrozenClip:
    """Create an open_clip model from a :class:`ClipSpec` and freeze it.

    ``spec.weights_path`` (a local file) wins over ``spec.pretrained`` (an open_clip tag such as
    ``openai``, downloaded by open_clip on first use); with neither the weights are random.
    A recorded ``weights_sha256`` must match the file.
    """
    open_clip = open_clip_module()
    if spec.model_name not in open_clip.list_models():
        raise ConfigError(f"unknown open_clip model {spec.model_name!r}")
    pretrained = spec.pretrained
    if spec.weights_path:
        path = Path(spec.weights_path)
        if not path.is_file():
            raise ConfigError(f"CLIP weights file not found: {path}")
        if spec.weights_sha256 and sha256_file(path) != spec.weights_sha256:
            raise ConfigError(f"CLIP weights file {path} does not match the sha256 recorded for it")
        pretrained = str(path)
    from safetensors import SafetensorError

    try:
        model, _, preprocess = open_clip.create_model_and_transforms(
            spec.model_name, pretrained=pretrained, device=device
        )
    except (RuntimeError, KeyError, ValueError, OSError, EOFError, SafetensorError) as exc:
        # A corrupt or mismatched weights file surfaces as any of these from torch/safetensors.
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"cannot load CLIP {spec.describe()}: {first}") from None
    model.eval().requires_grad_(False)
    return FrozenClip(spec, model, preprocess, open_clip.get_tokenizer(spec.model_name))


def save_clip_weights(clip: FrozenClip, path: str | Path) -> ClipSpec:
    """Save a CLIP's weights as a local safetensors file (atomically) and return the spec that
    refers to it by path and sha256, exactly as a user's own local weights are referred to."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    state = {k: v.detach().contiguous().cpu() for k, v in clip.model.state_dict().items()}
    save_file(state, str(tmp))
    tmp.replace(path)
    return ClipSpec(clip.spec.model_name, None, str(path.resolve()), sha256_file(path))
