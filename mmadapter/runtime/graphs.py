"""The names of the exported graphs, their symbolic axes and the tensors the runtime feeds and reads.

Kept apart from :mod:`mmadapter.export.specs`, which builds the graphs and imports torch: the serving
runtime (runtime, open_vocab, manifest, web, accuracy, openvino) must import without torch, yet must
use the same names the specs export. specs.py builds its :class:`GraphSpec` objects from these.
"""

from __future__ import annotations

from dataclasses import dataclass

# Graphs (file stems: image_classifier -> image_classifier.onnx), in export order.
IMAGE_CLASSIFIER = "image_classifier"
TEXT_ENCODER = "text_encoder"
CLASS_BANK = "class_bank"
ADAPTER_HEAD = "adapter_head"
GRAPH_NAMES = (IMAGE_CLASSIFIER, TEXT_ENCODER, CLASS_BANK, ADAPTER_HEAD)
# The graphs of the open-vocabulary path (a new label set), besides the image classifier.
TEXT_GRAPHS = (TEXT_ENCODER, CLASS_BANK, ADAPTER_HEAD)

# Symbolic axis names, shared with the manifest, TensorRT profiles and Triton configs.
BATCH = "batch"
TEXT_BATCH = "text_batch"
NUM_CLASSES = "num_classes"
BATCH_AXES = (BATCH, TEXT_BATCH)  # per-request batch axes (Triton / TensorRT batch profiles)

# Tensor names.
PIXELS = "pixels"
LOGITS = "logits"
IMAGE_EMBEDDING = "image_embedding"  # the adapted image embedding
CLIP_IMAGE_EMBEDDING = "clip_image_embedding"  # CLIP's unit-norm image embedding (adapter_head's input)
INPUT_IDS = "input_ids"
TEXT_EMBEDDING = "text_embedding"
CLASS_EMBEDDING = "class_embedding"
IMAGE_EMB = "image_emb"
TEXT_EMB = "text_emb"
KEYS = "keys"
VALUES = "values"
BANK_TENSORS = (TEXT_EMB, KEYS, VALUES)  # class_bank's outputs, adapter_head's class inputs


@dataclass(frozen=True)
class Tolerance:
    """How close one precision's graphs must stay to the torch model (docs/design.md §8.2)."""

    cosine_min: float  # per-row cosine of every embedding output
    tie_margin: float  # top-2 logit gap, as a share of max(1, max |logit|), under which a top-1 flip is a near tie
    logits_atol: float | None = None  # max |logit difference| as a share of max(1, max |logit|); None: not checked


# The validation tolerances per precision; every GraphSpec refers to this table (GraphSpec.tolerances).
# int8 moves CLIP-scale logits by ~0.1-0.2 (ViT-B-16, measured), so an input on which torch's best two
# classes lie closer than 0.005 of the largest |logit| (0.5 of 100) is a near tie: a flip there is
# counted, not failed. fp32/fp16 count every input. fp32 logits: 1e-4 of the largest (CLIP's scale
# makes them ~100).
TOLERANCES = {
    "fp32": Tolerance(cosine_min=0.99999, tie_margin=0.0, logits_atol=1e-4),
    "fp16": Tolerance(cosine_min=0.999, tie_margin=0.0),
    # OpenVINO's bf16 (the fp32 IR computed in bfloat16) is held to fp16's thresholds: fewer mantissa bits
    # than fp16, fp32's range, and fp32 accumulation in OpenVINO's CPU kernels (0.99996 on ViT-B-16).
    "bf16": Tolerance(cosine_min=0.999, tie_margin=0.0),
    "int8": Tolerance(cosine_min=0.999, tie_margin=0.005),
}
TOP1_MIN = 0.999  # share of decisive inputs whose top-1 class must equal torch's
