"""Label sets other than the folded one, served without torch.

A new label set is prompts (every template with every class name) -> token ids (the export's own
``tokenizer.json``) -> ``text_encoder`` -> the normalised mean over templates per class (as
``FrozenClip.class_embeddings``) -> ``class_bank`` -> a :class:`Bank`. Images then go through the image
classifier's ``clip_image_embedding`` output and ``adapter_head`` with that bank.

Building a bank costs one text-encoder pass per prompt, so banks are cached on disk, keyed by the
export's ``manifest_sha256`` (which covers every graph's sha256), the precision and the label set's
hash. The cache follows the project's cache contract: entries are written atomically; an entry that
cannot be read, has the wrong shapes or non-finite values is rebuilt; a cache folder that cannot be
written is one warning line, and serving goes on without it.

The functions take a ``run(graph, feeds) -> outputs`` callable, so that export validation runs the
same code over the files it just wrote as the runtime does over a finished export. No torch here.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mmadapter.errors import DataError, ExportError
from mmadapter.files import write_cache_entry
from mmadapter.runtime.graphs import (  # noqa: F401 - CLIP_IMAGE_EMBEDDING, TEXT_GRAPHS: re-exported
    ADAPTER_HEAD,
    BANK_TENSORS,
    CLASS_BANK,
    CLASS_EMBEDDING,
    CLIP_IMAGE_EMBEDDING,
    IMAGE_EMB,
    INPUT_IDS,
    KEYS,
    LOGITS,
    TEXT_EMB,
    TEXT_EMBEDDING,
    TEXT_ENCODER,
    TEXT_GRAPHS,
    VALUES,
)
from mmadapter.runtime.labels import check_class_names, check_distinct_tokens, check_template, format_prompt, name_list

GraphRunner = Callable[[str, dict[str, np.ndarray]], dict[str, np.ndarray]]
CACHE_ENV = "MMADAPTER_BANK_CACHE"  # a folder; empty string: no bank cache
CACHE_FORMAT = 1


@dataclass(frozen=True)
class Bank:
    """A label set prepared for ``adapter_head``: unit-norm text embeddings [N, C], keys and values [N, D]."""

    class_names: tuple[str, ...]
    text_emb: np.ndarray
    keys: np.ndarray
    values: np.ndarray

    @property
    def feeds(self) -> dict[str, np.ndarray]:
        return {TEXT_EMB: self.text_emb, KEYS: self.keys, VALUES: self.values}


def check_label_set(class_names: Sequence[str], templates: Sequence[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    names = check_class_names(list(class_names) if not isinstance(class_names, str) else class_names, "class list")
    if isinstance(templates, str) or not templates:
        raise DataError("give at least one prompt template (a list of strings with one '{}' each)")
    return tuple(names), tuple(check_template(t) for t in templates)


def label_set_hash(class_names: Sequence[str], templates: Sequence[str]) -> str:
    """sha256 of the label set as the prompts see it: names and templates in order."""
    text = json.dumps({"class_names": list(class_names), "templates": list(templates)}, ensure_ascii=False,
                      separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def class_embeddings(tokenize: Callable[[list[str]], np.ndarray], run: GraphRunner, class_names: Sequence[str],
                     templates: Sequence[str]) -> np.ndarray:
    """One unit-norm embedding per class [N, C] (float32): the normalised mean of its prompts' unit-norm
    text embeddings over the templates, as ``FrozenClip.class_embeddings`` computes it in torch."""
    prompts = [format_prompt(t, c) for t in templates for c in class_names]
    emb = run(TEXT_ENCODER, {INPUT_IDS: tokenize(prompts)})[TEXT_EMBEDDING].astype(np.float32)
    per_template = emb.reshape(len(templates), len(class_names), -1)
    mean = per_template.mean(axis=0)
    norm = np.linalg.norm(mean, axis=-1, keepdims=True)
    return (mean / np.maximum(norm, np.float32(1e-12))).astype(np.float32)


def build_bank(tokenize: Callable[[list[str]], np.ndarray], run: GraphRunner, class_names: Sequence[str],
               templates: Sequence[str]) -> Bank:
    emb = class_embeddings(tokenize, run, class_names, templates)
    out = run(CLASS_BANK, {CLASS_EMBEDDING: emb})
    bank = Bank(tuple(class_names), *(out[t] for t in BANK_TENSORS))
    if not all(np.isfinite(a).all() for a in (bank.text_emb, bank.keys, bank.values)):
        raise ExportError("the class bank of the new label set has NaN or infinite values")
    return bank


def head(run: GraphRunner, clip_image_emb: np.ndarray, bank: Bank) -> dict[str, np.ndarray]:
    """``adapter_head`` over CLIP image embeddings [B, C] and ``bank``: logits [B, N], adapted embedding."""
    return run(ADAPTER_HEAD, {IMAGE_EMB: clip_image_emb, **bank.feeds})


@dataclass(frozen=True)
class Classification:
    """What ``ExportedModel.classify`` returns: logits [B, N] over ``class_names`` (CLIP's scale)."""

    class_names: tuple[str, ...]
    logits: np.ndarray

    @property
    def probabilities(self) -> np.ndarray:
        """Softmax over the classes, float64."""
        z = self.logits.astype(np.float64)
        z = np.exp(z - z.max(axis=-1, keepdims=True))
        return z / z.sum(axis=-1, keepdims=True)

    def top(self, k: int = 5) -> list[list[tuple[str, float]]]:
        """Per image, the ``k`` most probable (class name, probability), best first (ties in class order)."""
        probs = self.probabilities
        order = np.argsort(-probs, axis=-1, kind="stable")[:, :k]
        return [[(self.class_names[j], float(row[j])) for j in idx] for row, idx in zip(probs, order)]


# The bank cache -------------------------------------------------------------------------------------------

def default_cache_dir() -> Path | None:
    """``$MMADAPTER_BANK_CACHE`` (empty: none), else ``$XDG_CACHE_HOME/mmadapter/class-banks``
    (``~/.cache`` when unset)."""
    if CACHE_ENV in os.environ:
        value = os.environ[CACHE_ENV]
        return Path(value) if value else None
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "mmadapter" / "class-banks"




class BankCache:
    """``<root>/<export hash>-<precision>-<label set hash>.npz``, one bank per file."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def path(self, export_hash: str, precision: str, class_names: Sequence[str], templates: Sequence[str]) -> Path:
        key = hashlib.sha256(f"{CACHE_FORMAT}:{export_hash}:{precision}".encode()).hexdigest()[:24]
        return self.root / f"{key}-{label_set_hash(class_names, templates)[:40]}.npz"

    def load(self, path: Path, class_names: Sequence[str], width: tuple[int, int]) -> Bank | None:
        """The cached bank, or None on a miss. Whatever is wrong with an entry (unreadable, other names,
        shapes or dtypes, non-finite values) makes it a miss: it is rebuilt and overwritten."""
        c, d = width
        n = len(class_names)
        try:
            if not path.is_file():
                return None
            with np.load(path, allow_pickle=False) as data:
                arrays = {k: np.array(data[k]) for k in ("class_names", "text_emb", "keys", "values")}
        except Exception:  # noqa: BLE001 - a bad entry is rebuilt, never an error: the cache is ours
            return None
        if [str(x) for x in arrays["class_names"].tolist()] != list(class_names):
            return None
        for name, cols in (("text_emb", c), ("keys", d), ("values", d)):
            a = arrays[name]
            if a.dtype != np.float32 or a.shape != (n, cols) or not np.isfinite(a).all():
                return None
        return Bank(tuple(class_names), arrays["text_emb"], arrays["keys"], arrays["values"])

    def save(self, path: Path, bank: Bank) -> Path | None:
        """Write atomically; a folder that cannot be written is one warning line and None."""
        def write(tmp: Path) -> None:
            with open(tmp, "wb") as f:
                np.savez(f, class_names=np.array(bank.class_names, dtype=str), text_emb=bank.text_emb,
                         keys=bank.keys, values=bank.values)
                f.flush()
                os.fsync(f.fileno())

        return write_cache_entry(self.root, path, write, "class bank cache", suffix=".npz")


def cached_bank(cache: BankCache | None, export_hash: str, precision: str, class_names: Sequence[str],
                templates: Sequence[str], width: tuple[int, int], build: Callable[[], Bank]) -> Bank:
    """The bank from ``cache`` if a good entry is there, else ``build()`` (then stored)."""
    if cache is None:
        return build()
    path = cache.path(export_hash, precision, class_names, templates)
    bank = cache.load(path, class_names, width)
    if bank is None:
        bank = build()
        cache.save(path, bank)
    return bank


# The serving side ------------------------------------------------------------------------------------------

class OpenVocabulary:
    """New label sets for one export: banks built (or read from the cache) and logits through
    ``adapter_head``. ``run(graph, feeds)`` runs one of the export's graphs."""

    def __init__(self, tokenizer: Callable[[list[str]], np.ndarray], run: GraphRunner, templates: Sequence[str],
                 export_hash: str, precision: str, cache: BankCache | None, width: tuple[int, int]):
        self.tokenizer = tokenizer
        self.run = run
        self.templates = tuple(templates)
        self.export_hash = export_hash
        self.precision = precision
        self.cache = cache
        self.width = width
        self._banks: dict[tuple[tuple[str, ...], tuple[str, ...]], Bank] = {}

    @classmethod
    def for_model(cls, model: Any) -> OpenVocabulary:
        """For an :class:`~mmadapter.runtime.model.ExportedModel`: its tokenizer file (checked against
        the manifest's sha256), its sessions (the text side in fp32 when the image side is int8: int8
        exists for the image tower only) and its bank cache setting."""
        from mmadapter.runtime.manifest import verified_file
        from mmadapter.runtime.tokenizer import ClipTokenizer

        manifest = model.manifest
        fields = manifest.tokenizer
        tokenizer = ClipTokenizer.from_manifest(model.folder, fields, verified_file(model.folder, manifest,
                                                                                   fields.file))
        text_precision = "fp32" if model.precision == "int8" else model.precision

        def run(graph: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            precision = model.precision if graph not in TEXT_GRAPHS else text_precision
            return model.session(graph, precision).run(feeds, 256)

        setting = model.bank_cache
        root = default_cache_dir() if setting is True else (Path(setting) if setting else None)
        outputs = {t.name: t.shape for t in manifest.graphs[CLASS_BANK].io.outputs}
        width = (int(outputs[TEXT_EMB][1]), int(outputs[KEYS][1]))
        return cls(tokenizer, run, manifest.label_set.templates, manifest.manifest_sha256,
                   f"{model.precision}/{text_precision}", BankCache(root) if root is not None else None, width)

    def bank(self, class_names: Sequence[str], templates: Sequence[str] | None = None) -> Bank:
        names, temps = check_label_set(class_names, templates if templates is not None else self.templates)
        key = (names, temps)
        if key not in self._banks:
            check_distinct_tokens(self.tokenizer, names, temps)
            self._banks[key] = cached_bank(self.cache, self.export_hash, self.precision, names, temps, self.width,
                                           lambda: build_bank(self.tokenizer, self.run, names, temps))
        return self._banks[key]

    def logits(self, clip_image_emb: np.ndarray, bank: Bank) -> np.ndarray:
        return head(self.run, clip_image_emb, bank)[LOGITS]


def classify(model: Any, images: Any, class_names: Sequence[str] | None, templates: Sequence[str] | None,
             batch_size: int = 32) -> Classification:
    """``ExportedModel.classify``: the folded classifier for the exported label set (no tokenizer
    needed), else the open-vocabulary path. Non-finite logits are an ExportError."""
    from mmadapter.runtime.session import check_batch_size

    batch_size = check_batch_size(batch_size)  # before any image is read
    class_names, templates = name_list(class_names), name_list(templates, "template list")
    names, logits = scores(model, model_pixels(model, images), class_names, templates, batch_size)
    if not np.isfinite(logits).all():
        raise ExportError(f"{model.folder}: non-finite logits for image {int(np.argmin(np.isfinite(logits).all(-1)))} "
                          "(the exported graphs produce NaN/inf)")
    return Classification(names, logits)


def scores(model: Any, pixels: np.ndarray, class_names: Sequence[str] | None, templates: Sequence[str] | None,
           batch_size: int = 32) -> tuple[tuple[str, ...], np.ndarray]:
    """(class names, logits [B, N]) for preprocessed pixels, unchecked (callers name the bad image)."""
    folded = templates is None and (class_names is None or tuple(class_names) == tuple(model.class_names))
    if folded:
        logits = model.classify_pixels(pixels, batch_size)[LOGITS]
        names = tuple(model.class_names)
    else:
        vocabulary = model.open_vocabulary
        bank = vocabulary.bank(class_names if class_names is not None else model.class_names, templates)
        out = model.classify_pixels(pixels, batch_size)
        if CLIP_IMAGE_EMBEDDING not in out:
            raise ExportError(f"{model.folder}: the image classifier has no {CLIP_IMAGE_EMBEDDING} output; export "
                              "the checkpoint again with this version of mmadapter for other label sets")
        logits, names = vocabulary.logits(out[CLIP_IMAGE_EMBEDDING], bank), bank.class_names
    return names, logits


def model_pixels(model: Any, images: Any) -> np.ndarray:
    """Preprocessed pixels [B, 3, H, W] from an array (taken as already preprocessed), or from file paths
    and PIL images. Both go through the project's one loader (``images.prepare_image``: size caps, first
    frame, the mode policy), so a picture in memory gives the pixels it gives from a file; an unusable
    one is a DataError naming it (its path, or ``image N`` for one made in memory)."""
    from PIL import Image

    from mmadapter.runtime.images import open_image, prepare_image
    from mmadapter.runtime.preprocess import preprocess_batch

    if isinstance(images, np.ndarray):
        return images
    if isinstance(images, (str, Path, Image.Image)):
        images = [images]
    short_side = max(model.preprocessing.image_size)
    loaded = []
    for i, x in enumerate(images):
        if isinstance(x, (str, Path)):
            loaded.append(open_image(x, short_side))
        elif isinstance(x, Image.Image):
            loaded.append(prepare_image(x, f"image {i}", short_side))
        else:
            raise DataError(f"image {i} is a {type(x).__name__}; give file paths or PIL images (or one preprocessed "
                            "float array [batch, 3, H, W])")
    if not loaded:
        raise DataError("no images given")
    return preprocess_batch(loaded, model.preprocessing)


__all__ = ["CLIP_IMAGE_EMBEDDING", "Bank", "BankCache", "Classification", "OpenVocabulary", "build_bank",
           "cached_bank", "check_label_set", "class_embeddings", "default_cache_dir", "head", "label_set_hash",
           "classify", "model_pixels", "scores"]
