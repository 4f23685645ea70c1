"""Image and class-text embeddings from the frozen CLIP, extracted once and cached on disk.

Training and evaluation run on these cached embeddings only. A cache entry is keyed by the CLIP
(model name, pretrained tag or weights sha256), what was embedded (a hash of the image records, or
the class names and templates) and the kind of embedding; a hit never builds the CLIP at all,
which is why the CLIP is reached through a :class:`ClipProvider` that loads it on first use.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from mmadapter.data.fewshot import ImageRecord, load_image, records_identity
from mmadapter.files import write_cache_entry
from mmadapter.model.backbone import FrozenClip, load_clip, pin_weights
from mmadapter.model.config import ClipSpec

CACHE_FORMAT_VERSION = 1


class ClipProvider:
    """The frozen CLIP, built on first :meth:`get` (or wrapping one already built)."""

    def __init__(self, spec: ClipSpec, device: str | torch.device = "cpu", clip: FrozenClip | None = None) -> None:
        # A local weights file is pinned by its sha256 from the start: the cache key and every
        # checkpoint trained through this provider record it.
        self.spec = pin_weights(spec)
        self.device = device
        self._clip = clip
        self.loads = 0  # how many times the model was built here (tests check that a cache hit builds none)

    def get(self) -> FrozenClip:
        if self._clip is None:
            self._clip = load_clip(self.spec, self.device)
            self.loads += 1
        return self._clip

    def identity(self) -> dict[str, Any]:
        """What identifies the CLIP's weights for caching: the tag, or the content of a local file."""
        return {"model_name": self.spec.model_name, "pretrained": self.spec.pretrained,
                "weights_sha256": self.spec.weights_sha256}


class EmbeddingCache:
    """A folder of ``<key>.safetensors`` files, each one embedding matrix plus a JSON description."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    @staticmethod
    def key(description: dict[str, Any]) -> str:
        blob = json.dumps({"cache_format": CACHE_FORMAT_VERSION, **description}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:32]

    def path(self, key: str) -> Path:
        return self.root / f"{key}.safetensors"

    def load(self, key: str, rows: int | None = None) -> torch.Tensor | None:
        """The cached embeddings, or ``None`` on a miss; an unreadable or mismatched entry, or one with
        non-finite or all-zero rows (no CLIP embedding is either), is a miss (it is recomputed and
        overwritten), never an error: the cache is ours, not the user's."""
        from safetensors.torch import load_file

        path = self.path(key)
        try:
            if not path.is_file():
                return None
            emb = load_file(str(path))["embeddings"]
        except Exception:  # noqa: BLE001 - whatever is wrong with an entry, it is rebuilt
            return None
        if emb.ndim != 2 or not emb.is_floating_point() or (rows is not None and emb.shape[0] != rows):
            return None
        if emb.numel() and (not torch.isfinite(emb).all() or (emb == 0).all(dim=1).any()):
            return None
        return emb

    def save(self, key: str, emb: torch.Tensor, description: dict[str, Any]) -> Path | None:
        """Write atomically (temporary file, then rename), so a killed run leaves no half entry. A cache
        that cannot be written (read-only, a file in the way, a full disk) is one warning line on
        stderr, then the run goes on without it; returns ``None`` then."""
        from safetensors.torch import save_file

        def write(tmp: Path) -> None:
            save_file({"embeddings": emb.detach().float().contiguous().cpu()}, str(tmp),
                      metadata={"description": json.dumps(description, sort_keys=True)})

        return write_cache_entry(self.root, self.path(key), write, "embedding cache")




def _encode_records(clip: FrozenClip, records: Sequence[ImageRecord], batch_size: int, progress: bool) -> torch.Tensor:
    chunks = []
    bar = tqdm(total=len(records), desc="image embeddings", unit="img", disable=not progress, leave=False)
    for start in range(0, len(records), batch_size):
        batch = records[start : start + batch_size]
        pixels = torch.stack([clip.preprocess(load_image(r.path)) for r in batch])
        chunks.append(clip.encode_images(pixels).cpu())
        bar.update(len(batch))
    bar.close()
    return torch.cat(chunks) if chunks else torch.zeros(0, clip.embed_dim)


def image_embeddings(
    provider: ClipProvider,
    records: Sequence[ImageRecord],
    cache_dir: str | Path | None = None,
    batch_size: int = 64,
    progress: bool = True,
) -> torch.Tensor:
    """Unit-norm image embeddings [len(records), C], in record order, from the cache when possible."""
    records = list(records)
    if cache_dir is None:
        return _encode_records(provider.get(), records, batch_size, progress)
    cache = EmbeddingCache(cache_dir)
    description = {"kind": "image", "clip": provider.identity(), "records": records_identity(records),
                   "count": len(records)}
    key = cache.key(description)
    cached = cache.load(key, rows=len(records))
    if cached is not None:
        return cached
    emb = _encode_records(provider.get(), records, batch_size, progress)
    cache.save(key, emb, description)
    return emb


def text_embeddings(
    provider: ClipProvider,
    class_names: Sequence[str],
    templates: Sequence[str],
    cache_dir: str | Path | None = None,
) -> torch.Tensor:
    """Unit-norm class embeddings [N, C] (mean over templates), from the cache when possible."""
    if cache_dir is None:
        return provider.get().class_embeddings(list(class_names), list(templates))
    cache = EmbeddingCache(cache_dir)
    description = {"kind": "text", "clip": provider.identity(), "class_names": list(class_names),
                   "templates": list(templates)}
    key = cache.key(description)
    cached = cache.load(key, rows=len(class_names))
    if cached is not None:
        return cached
    emb = provider.get().class_embeddings(list(class_names), list(templates))
    cache.save(key, emb, description)
    return emb


def labels_of(records: Sequence[ImageRecord]) -> torch.Tensor:
    return torch.tensor([r.label for r in records], dtype=torch.long)


__all__ = ["ClipProvider", "EmbeddingCache", "image_embeddings", "labels_of", "text_embeddings"]
