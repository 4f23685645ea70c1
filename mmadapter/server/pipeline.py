"""What the Triton pipeline model computes, without Triton: encoded images and an optional label set in,
top-k labels, probabilities and embeddings out, over :class:`mmadapter.runtime.ExportedModel`.

Kept free of ``triton_python_backend_utils`` so that it is tested in-process, and free of torch (it
imports the serving runtime only): the server's Python stub loads it next to numpy and onnxruntime (or,
where the graphs are the repository's own models, without onnxruntime).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mmadapter.errors import DataError
from mmadapter.runtime.graphs import CLIP_IMAGE_EMBEDDING, IMAGE_EMBEDDING, LOGITS
from mmadapter.runtime.images import decode_image
from mmadapter.runtime.labels import check_class_names
from mmadapter.runtime.model import ExportedModel, SessionOpener
from mmadapter.runtime.preprocess import preprocess_image

# The pipeline's tensor names, as clients see them (config.pbtxt and the README use these).
IMAGE = "IMAGE"
LABELS = "LABELS"
TOP_LABELS = "LABEL"
TOP_PROBABILITIES = "PROBABILITY"
ADAPTED = "ADAPTED_EMBEDDING"
CLIP = "CLIP_EMBEDDING"
OUTPUTS = (TOP_LABELS, TOP_PROBABILITIES, ADAPTED, CLIP)
# A request's label set is at most this long: a bank costs one text-encoder pass per prompt, and a
# client must not be able to hold the model instance for minutes with one request.
MAX_LABELS = 1000
MAX_IMAGE_BYTES = 16 * 1024 * 1024


@dataclass
class Answer:
    """One request's outputs, each with the request's batch as its first axis."""

    labels: np.ndarray  # object [B, k] of bytes
    probabilities: np.ndarray  # float32 [B, k]
    adapted: np.ndarray  # float32 [B, D]
    clip: np.ndarray  # float32 [B, C]

    def tensors(self) -> dict[str, np.ndarray]:
        return {TOP_LABELS: self.labels, TOP_PROBABILITIES: self.probabilities, ADAPTED: self.adapted, CLIP: self.clip}


class Pipeline:
    """One export folder served by label set; banks of new label sets are built once per instance
    (and kept in the export's bank cache on disk, as for ``predict --onnx``)."""

    def __init__(self, export_dir: str | Path, top_k: int = 5, precision: str = "fp32",
                 threads: int | None = None, opener: SessionOpener | None = None):
        # opener: where the graphs run (mmadapter.server.bls: the repository's per-graph models); None:
        # ONNX Runtime in this process.
        self.model = ExportedModel(export_dir, precision=precision, intra_op_threads=threads, opener=opener)
        self.top_k = top_k
        self.short_side = max(self.model.preprocessing.image_size)

    def pixels(self, images: np.ndarray) -> np.ndarray:
        """IMAGE [B] or [B, 1] of encoded bytes -> float32 pixels [B, 3, H, W]; a bad one is a DataError
        naming its place in the request."""
        flat = np.asarray(images, dtype=object).reshape(-1)
        if flat.size == 0:
            raise DataError(f"{IMAGE} holds no image")
        out = []
        for i, data in enumerate(flat):
            if not isinstance(data, (bytes, bytearray)):
                raise DataError(f"{IMAGE}[{i}] is not bytes")
            if len(data) > MAX_IMAGE_BYTES:
                raise DataError(f"{IMAGE}[{i}] is {len(data)} bytes, over the {MAX_IMAGE_BYTES}-byte limit")
            image = decode_image(data, self.short_side, f"{IMAGE}[{i}]")
            out.append(preprocess_image(image, self.model.preprocessing))
        return np.stack(out)

    def label_set(self, labels: np.ndarray | None, batch: int) -> tuple[str, ...] | None:
        """LABELS [B, N] (one label set, repeated per image of the request, as Triton batches every
        input) -> class names; None: the export's own."""
        if labels is None:
            return None
        rows = np.asarray(labels, dtype=object).reshape(batch, -1) if batch else np.asarray(labels, dtype=object)
        if rows.ndim != 2 or rows.shape[1] == 0:
            raise DataError(f"{LABELS} must be [batch, N] with N >= 1 label")
        if rows.shape[1] > MAX_LABELS:
            raise DataError(f"{LABELS} holds {rows.shape[1]} labels; at most {MAX_LABELS} per request")
        if any(list(r) != list(rows[0]) for r in rows[1:]):
            raise DataError(f"the rows of {LABELS} differ: one label set per request, repeated for each image")
        try:
            names = [x.decode("utf-8") if isinstance(x, bytes) else str(x) for x in rows[0]]
        except UnicodeDecodeError:
            raise DataError(f"{LABELS} must be UTF-8 text") from None
        return check_class_names(names, LABELS)

    def run(self, pixels: np.ndarray, class_names: Sequence[str] | None) -> Answer:
        """Pixels [B, 3, H, W] of one or more requests that share a label set."""
        from mmadapter.runtime.open_vocab import Classification

        out = self.model.classify_pixels(pixels)
        if class_names is None or tuple(class_names) == tuple(self.model.class_names):
            names, logits = tuple(self.model.class_names), out[LOGITS]
        else:
            vocabulary = self.model.open_vocabulary
            bank = vocabulary.bank(class_names)
            names, logits = bank.class_names, vocabulary.logits(out[CLIP_IMAGE_EMBEDDING], bank)
        if not np.isfinite(logits).all():
            raise DataError("the model gave non-finite logits for this image")
        top = Classification(names, logits).top(min(self.top_k, len(names)))
        return Answer(np.array([[n.encode() for n, _ in row] for row in top], dtype=object),
                      np.array([[p for _, p in row] for row in top], dtype=np.float32),
                      np.asarray(out[IMAGE_EMBEDDING], dtype=np.float32),
                      np.asarray(out[CLIP_IMAGE_EMBEDDING], dtype=np.float32))


def split(answer: Answer, sizes: Sequence[int]) -> list[Answer]:
    """The answer of a merged batch, cut back into one per request (``sizes``: their batch sizes)."""
    cuts = np.cumsum(sizes)[:-1]
    parts = [np.split(a, cuts) for a in (answer.labels, answer.probabilities, answer.adapted, answer.clip)]
    return [Answer(*p) for p in zip(*parts)]
