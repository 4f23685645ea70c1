"""Declarative description of every exported graph (in the spirit of optimum's ``OnnxConfig``).

A :class:`GraphSpec` names a graph's inputs and outputs, their dtypes and symbolic axes, the torch
module to trace and a sample-input factory. Everything downstream (export, fp16 conversion,
validation, the manifest, TensorRT profiles, the Triton configs) reads these specs instead of
repeating names and shapes. The names themselves (graphs, axes, tensors) live in
:mod:`mmadapter.runtime.graphs`, a module without torch, because the serving runtime must use them
without importing torch; this module imports them from there and is the only place they are bound
to modules, shapes and validation.

The wrappers below trace :mod:`mmadapter.model.functional` (plain torch ops, the exact fast path): there
is no (N+1)^2 attention in any graph, only single-query attention over N cached keys.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mmadapter.model import functional
from mmadapter.model.adapter import ClassBank, MultiModalAdapter
from mmadapter.runtime.graphs import (
    ADAPTER_HEAD,
    BATCH,
    CLASS_BANK,
    CLASS_EMBEDDING,
    CLIP_IMAGE_EMBEDDING,
    IMAGE_CLASSIFIER,
    IMAGE_EMB,
    IMAGE_EMBEDDING,
    INPUT_IDS,
    KEYS,
    LOGITS,
    NUM_CLASSES,
    PIXELS,
    TEXT_BATCH,
    TEXT_EMB,
    TEXT_EMBEDDING,
    TEXT_ENCODER,
    TOLERANCES,
    VALUES,
    Tolerance,
)
from mmadapter.runtime.tokenizer import EOT_TOKEN_ID, SOT_TOKEN_ID

MAX_DIM = 1 << 16  # upper bound for torch.export's dynamic dims; real limits come from TensorRT profiles
# Traced batch size; validation runs at other sizes, since a graph traced at one size can silently keep
# it (docs/design.md §6.1).
EXPORT_BATCH = 2


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output: name, numpy dtype name, shape with ints or axis names."""

    name: str
    dtype: str  # "float32", "int64"
    shape: tuple[int | str, ...]

    @property
    def batch_axis(self) -> str | None:
        return self.shape[0] if self.shape and isinstance(self.shape[0], str) else None

    def to_dict(self) -> dict[str, object]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}


@dataclass
class Case:
    """One call of a graph: numpy inputs and the torch model's outputs."""

    label: str
    inputs: dict[str, np.ndarray]
    expected: dict[str, np.ndarray]


@dataclass
class Reference:
    """The torch model on the validation inputs, computed once (``validate.build_cases``); each spec's
    ``cases`` cuts its own cases from it, one per batch size."""

    batch_sizes: Sequence[int]
    adapter: MultiModalAdapter
    bank: ClassBank  # the checkpoint's label set
    logit_scale: float
    pixels: torch.Tensor  # real preprocessed images
    image_emb: torch.Tensor  # CLIP's unit-norm image embeddings of ``pixels``
    output: Any  # adapter(image_emb, bank, logit_scale)
    tokens: torch.Tensor  # token ids of prompts
    text_emb: torch.Tensor  # CLIP's unit-norm text embeddings of ``tokens``

    def split(self, t: torch.Tensor) -> list[torch.Tensor]:
        out, start = [], 0
        for s in self.batch_sizes:
            out.append(t[start:start + s])
            start += s
        return out


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().float().numpy()


@dataclass
class GraphSpec:
    """What to export for one graph and how to call it."""

    name: str  # file stem: image_classifier -> image_classifier.onnx
    module: nn.Module
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    sample_inputs: Callable[[dict[str, int]], tuple[torch.Tensor, ...]]  # axis sizes -> inputs
    description: str = ""
    # Whether the leading axis is a per-request batch that Triton may batch dynamically.
    batchable: bool = True
    # Torch module scopes whose weight MatMuls an int8 export quantizes (the image tower's transformer
    # blocks). Empty: no int8 variant. The per-request hot path is the image classifier; the text
    # tower runs once per label set and lost more (cosine 0.9997 on the tiny test model), and the
    # adapter graphs are small and feed the logits directly.
    int8_scopes: tuple[str, ...] = ()
    # Validation: the cases (inputs and the torch model's outputs) and the tolerance per precision.
    cases: Callable[[Reference], list[Case]] | None = None
    tolerances: Mapping[str, Tolerance] = field(default_factory=lambda: TOLERANCES)

    def dynamic_shapes(self) -> tuple[dict[int, torch.export.Dim], ...]:
        """torch.export dims, one Dim object per axis name so that equal names are tied."""
        dims: dict[str, torch.export.Dim] = {}
        out = []
        for t in self.inputs:
            axes = {}
            for i, size in enumerate(t.shape):
                if isinstance(size, str):
                    dims.setdefault(size, torch.export.Dim(size, min=1, max=MAX_DIM))
                    axes[i] = dims[size]
            out.append(axes)
        return tuple(out)

    def axis_names(self) -> set[str]:
        return {s for t in (*self.inputs, *self.outputs) for s in t.shape if isinstance(s, str)}


class ImageClassifier(nn.Module):
    """Pixels -> (logits over the folded label set, adapted image embedding, CLIP image embedding), fast path.

    The raw unit-norm CLIP embedding is a third output rather than a separate image-encoder graph: the
    image tower is the bulk of the weights and the time, so one graph (one file per precision, one
    session, one pass) serves both the folded label set and any new one (through ``adapter_head``);
    the folded head it also computes costs O(B * N * C), little next to the tower."""

    def __init__(self, clip_model: nn.Module, adapter: MultiModalAdapter, bank: ClassBank, logit_scale: float):
        super().__init__()
        self.visual = clip_model.visual
        self.adapter = adapter
        self.cfg = adapter.config
        self.logit_scale = float(logit_scale)
        # Buffers become graph constants: the label set is baked in, computed once here.
        self.register_buffer("text_emb", bank.text_emb.detach().float().clone())
        self.register_buffer("keys", bank.keys.detach().float().clone())
        self.register_buffer("values", bank.values.detach().float().clone())

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        image_emb = F.normalize(self.visual(pixels), dim=-1)
        logits, v_adapted, _ = functional.adapter_head(
            image_emb, self.text_emb, self.keys, self.values, self.adapter.params(),
            self.cfg.num_heads, self.cfg.blend, self.logit_scale,
        )
        return logits, v_adapted, image_emb


class TextEncoder(nn.Module):
    """Token ids -> unit-norm text embeddings (for building new label sets)."""

    def __init__(self, clip_model: nn.Module):
        super().__init__()
        self.model = clip_model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.model.encode_text(input_ids), dim=-1)


class ClassBankBuilder(nn.Module):
    """Class embeddings [N, C] -> the class bank (unit-norm text, keys, values), so that a new
    label set can be prepared for ``adapter_head`` without torch."""

    def __init__(self, adapter: MultiModalAdapter):
        super().__init__()
        self.adapter = adapter

    def forward(self, class_emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        keys, values = functional.class_keys_values(class_emb, self.adapter.params())
        return F.normalize(class_emb, dim=-1), keys, values


class AdapterHead(nn.Module):
    """Image embeddings + a class bank of any size -> (logits, adapted image embedding)."""

    def __init__(self, adapter: MultiModalAdapter, logit_scale: float):
        super().__init__()
        self.adapter = adapter
        self.cfg = adapter.config
        self.logit_scale = float(logit_scale)

    def forward(
        self, image_emb: torch.Tensor, text_emb: torch.Tensor, keys: torch.Tensor, values: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        logits, v_adapted, _ = functional.adapter_head(
            image_emb, text_emb, keys, values, self.adapter.params(), self.cfg.num_heads, self.cfg.blend,
            self.logit_scale,
        )
        return logits, v_adapted


def _classifier_cases(ref: Reference) -> list[Case]:
    return [Case(f"{BATCH} {b}", {PIXELS: _np(px)},
                 {LOGITS: _np(lg), IMAGE_EMBEDDING: _np(emb), CLIP_IMAGE_EMBEDDING: _np(raw)})
            for b, px, lg, emb, raw in zip(ref.batch_sizes, ref.split(ref.pixels), ref.split(ref.output.logits),
                                           ref.split(ref.output.image_emb), ref.split(ref.image_emb))]


def _text_cases(ref: Reference) -> list[Case]:
    return [Case(f"text batch {b}", {INPUT_IDS: tok.numpy().astype(np.int64)}, {TEXT_EMBEDDING: _np(emb)})
            for b, tok, emb in zip(ref.batch_sizes, ref.split(ref.tokens), ref.split(ref.text_emb))]


def _bank_cases(ref: Reference) -> list[Case]:
    """Class banks of other sizes than the checkpoint's label set: the open-vocabulary path."""
    cases = []
    for n, emb in zip(ref.batch_sizes, ref.split(ref.text_emb)):
        new_bank = ref.adapter.class_bank(emb)
        cases.append(Case(f"{NUM_CLASSES} {n}", {CLASS_EMBEDDING: _np(emb)},
                          {TEXT_EMB: _np(new_bank.text_emb), KEYS: _np(new_bank.keys), VALUES: _np(new_bank.values)}))
    return cases


def _head_cases(ref: Reference) -> list[Case]:
    banks = [ref.bank, ref.adapter.class_bank(ref.text_emb[:3]), ref.adapter.class_bank(ref.text_emb)]
    cases = []
    for b, emb_b, cb in zip(ref.batch_sizes, ref.split(ref.image_emb), banks):
        head = ref.adapter(emb_b, cb, ref.logit_scale)
        cases.append(Case(
            f"{BATCH} {b}, {NUM_CLASSES} {cb.num_classes}",
            {IMAGE_EMB: _np(emb_b), TEXT_EMB: _np(cb.text_emb), KEYS: _np(cb.keys), VALUES: _np(cb.values)},
            {LOGITS: _np(head.logits), IMAGE_EMBEDDING: _np(head.image_emb)}))
    return cases


def build_specs(
    clip_model: nn.Module,
    adapter: MultiModalAdapter,
    bank: ClassBank,
    logit_scale: float,
    image_size: tuple[int, int],
    context_length: int,
) -> list[GraphSpec]:
    """The graphs of one export, in export order."""
    c, d = adapter.config.embed_dim, adapter.config.bottleneck_dim
    h, w = image_size
    gen = torch.Generator().manual_seed(0)

    def pixels(sizes: dict[str, int]) -> tuple[torch.Tensor, ...]:
        return (torch.randn(sizes.get(BATCH, EXPORT_BATCH), 3, h, w, generator=gen),)

    def tokens(sizes: dict[str, int]) -> tuple[torch.Tensor, ...]:
        # Token id layout of CLIP: start token, a few words, end token (the highest id: argmax
        # finds it), zero padding. Values only need to be valid ids for tracing.
        b = sizes.get(TEXT_BATCH, EXPORT_BATCH)
        ids = torch.zeros(b, context_length, dtype=torch.int64)
        ids[:, 0] = SOT_TOKEN_ID
        ids[:, 1:4] = torch.randint(1, 49000, (b, 3), generator=gen)
        ids[:, 4] = EOT_TOKEN_ID
        return (ids,)

    def embeddings(sizes: dict[str, int]) -> tuple[torch.Tensor, ...]:
        return (F.normalize(torch.randn(sizes.get(NUM_CLASSES, 7), c, generator=gen), dim=-1),)

    def head_inputs(sizes: dict[str, int]) -> tuple[torch.Tensor, ...]:
        b, k = sizes.get(BATCH, EXPORT_BATCH), sizes.get(NUM_CLASSES, 7)
        img = F.normalize(torch.randn(b, c, generator=gen), dim=-1)
        sample = adapter.class_bank(torch.randn(k, c, generator=gen))
        return img, sample.text_emb, sample.keys, sample.values

    return [
        _classifier_spec(clip_model, adapter, bank, logit_scale, image_size, pixels),
        _text_encoder_spec(clip_model, c, context_length, tokens),
        _class_bank_spec(adapter, c, d, embeddings),
        _adapter_head_spec(adapter, logit_scale, c, d, head_inputs),
    ]


SampleInputs = Callable[[dict[str, int]], tuple[torch.Tensor, ...]]
F32 = "float32"


def _classifier_spec(clip_model: nn.Module, adapter: MultiModalAdapter, bank: ClassBank, logit_scale: float,
                     image_size: tuple[int, int], pixels: SampleInputs) -> GraphSpec:
    c, n, (h, w) = adapter.config.embed_dim, bank.num_classes, image_size
    return GraphSpec(
        IMAGE_CLASSIFIER,
        ImageClassifier(clip_model, adapter, bank, logit_scale).eval(),
        (TensorSpec(PIXELS, F32, (BATCH, 3, h, w)),),
        (TensorSpec(LOGITS, F32, (BATCH, n)), TensorSpec(IMAGE_EMBEDDING, F32, (BATCH, c)),
         TensorSpec(CLIP_IMAGE_EMBEDDING, F32, (BATCH, c))),
        pixels,
        "preprocessed pixels -> logits over the checkpoint's label set, the adapted image embedding and "
        "CLIP's unit-norm image embedding (adapter_head's input for any other label set)",
        int8_scopes=("visual.transformer",),
        cases=_classifier_cases,
    )


def _text_encoder_spec(clip_model: nn.Module, c: int, context_length: int, tokens: SampleInputs) -> GraphSpec:
    return GraphSpec(
        TEXT_ENCODER,
        TextEncoder(clip_model).eval(),
        (TensorSpec(INPUT_IDS, "int64", (TEXT_BATCH, context_length)),),
        (TensorSpec(TEXT_EMBEDDING, F32, (TEXT_BATCH, c)),),
        tokens,
        "CLIP token ids -> unit-norm text embeddings",
        cases=_text_cases,
    )


def _class_bank_spec(adapter: MultiModalAdapter, c: int, d: int, embeddings: SampleInputs) -> GraphSpec:
    return GraphSpec(
        CLASS_BANK,
        ClassBankBuilder(adapter).eval(),
        (TensorSpec(CLASS_EMBEDDING, F32, (NUM_CLASSES, c)),),
        (
            TensorSpec(TEXT_EMB, F32, (NUM_CLASSES, c)),
            TensorSpec(KEYS, F32, (NUM_CLASSES, d)),
            TensorSpec(VALUES, F32, (NUM_CLASSES, d)),
        ),
        embeddings,
        "class embeddings (mean over prompt templates) -> class bank for adapter_head",
        batchable=False,
        cases=_bank_cases,
    )


def _adapter_head_spec(adapter: MultiModalAdapter, logit_scale: float, c: int, d: int,
                       head_inputs: SampleInputs) -> GraphSpec:
    return GraphSpec(
        ADAPTER_HEAD,
        AdapterHead(adapter, logit_scale).eval(),
        (
            TensorSpec(IMAGE_EMB, F32, (BATCH, c)),
            TensorSpec(TEXT_EMB, F32, (NUM_CLASSES, c)),
            TensorSpec(KEYS, F32, (NUM_CLASSES, d)),
            TensorSpec(VALUES, F32, (NUM_CLASSES, d)),
        ),
        (TensorSpec(LOGITS, F32, (BATCH, NUM_CLASSES)), TensorSpec(IMAGE_EMBEDDING, F32, (BATCH, c))),
        head_inputs,
        "image embeddings + class bank of any size -> logits and adapted image embedding",
        # The class bank has no batch axis, so Triton must not batch requests for this model.
        batchable=False,
        cases=_head_cases,
    )
