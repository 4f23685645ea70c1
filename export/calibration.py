"""Calibration images for the static int8 graphs (ONNX Runtime Q/DQ, OpenVINO + NNCF): where they come
from, which are used to calibrate and which are held out to validate, all preprocessed exactly as
serving does (:mod:`mmadapter.runtime.preprocess`).

Only real images calibrate: ``--calibration DIR`` (any folder of images, class sub-folders or not),
or else the training images the checkpoint records when that folder is still reachable. Without
either, the export stops with one line; activation ranges from random noise would quantize for
inputs that never occur and are never used in a released graph.

Every fourth selected image (seeded order) is held out: the int8 graphs are validated on those, never
on images they were calibrated with.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mmadapter.errors import ExportError
from mmadapter.runtime.graphs import CLIP_IMAGE_EMBEDDING, IMAGE_EMBEDDING, LOGITS, PIXELS
from mmadapter.runtime.images import IMAGE_EXTENSIONS, ImageSkip, is_image_file, read_images

MAX_CALIBRATION_IMAGES = 64  # ranges settle well before this (NNCF's 300 default costs 5x the export time)
MAX_HOLDOUT_IMAGES = 32
HOLDOUT_EVERY = 4  # one image in four is held out for validation
MIN_IMAGES = 4  # at least 3 to calibrate with and 1 to validate on
SEED = 0
# Checkpoint ``training`` fields that may name the folder its images came from (newest first).
TRAINING_DATA_KEYS = ("data_root", "data")


@dataclass
class CalibrationSet:
    source: Path
    calibration: np.ndarray  # float32 [n, 3, H, W], preprocessed
    holdout: np.ndarray  # float32 [m, 3, H, W], never used to calibrate
    skipped: int  # unreadable images left out
    digest: str  # sha256 over the relative paths used, in order (calibration, then holdout)

    def to_dict(self) -> dict[str, Any]:
        return {"source": str(self.source), "calibration_images": int(len(self.calibration)),
                "holdout_images": int(len(self.holdout)), "skipped_images": self.skipped,
                "images_sha256": self.digest, "holdout_every": HOLDOUT_EVERY, "seed": SEED}


def training_data_folder(training: Any, checkpoint: str | Path) -> Path | None:
    """The image folder a checkpoint's ``training`` metadata names, if it names one that exists. A relative
    path is relative to the checkpoint's folder (the demo's checkpoint lies beside its digits), so the
    folder can move with the checkpoint."""
    if not isinstance(training, dict):
        return None
    for key in TRAINING_DATA_KEYS:
        value = training.get(key)
        if isinstance(value, str) and value:
            folder = Path(checkpoint).parent / value  # an absolute value stays as it is
            if folder.is_dir():
                return folder
    return None


def resolve_calibration_folder(calibration: str | Path | None, checkpoint: str | Path) -> Path:
    """``--calibration`` if given (checked), else the checkpoint's training images; one ExportError line
    when neither is usable. Reads only the checkpoint's header."""
    if calibration is not None:
        folder = Path(calibration)
        if not folder.is_dir():
            raise ExportError(f"--calibration {folder}: " + ("is a file, not a folder of images" if folder.exists()
                                                             else "folder not found"))
        image_files(folder)  # an empty folder is reported now, before any model is loaded
        return folder
    from mmadapter.model.checkpoint import read_metadata

    training = read_metadata(Path(checkpoint)).get("training")
    found = training_data_folder(training, checkpoint)
    if found is None:
        dataset = training.get("dataset") if isinstance(training, dict) else None
        named = f"records its training dataset {dataset!r} but no reachable image folder" if dataset else \
            "records no training images"
        raise ExportError(f"calibrated int8 needs real images: checkpoint {Path(checkpoint).name} {named}; give "
                          "--calibration DIR (a folder of images like those served)")
    image_files(found)
    return found


def image_files(folder: Path) -> list[Path]:
    """Image files under ``folder`` (class sub-folders included), sorted; hidden folders skipped."""
    files = sorted(p for p in Path(folder).rglob("*") if is_image_file(p)
                   and not any(part.startswith(".") for part in p.relative_to(folder).parts))
    if len(files) < MIN_IMAGES:
        raise ExportError(f"--calibration {folder}: {len(files)} image files ({', '.join(IMAGE_EXTENSIONS)}); "
                          f"calibration needs at least {MIN_IMAGES}")
    return files


def split_order(count: int, seed: int = SEED) -> tuple[list[int], list[int]]:
    """Indices of the calibration and held-out images among ``count`` files: a seeded shuffle, every
    :data:`HOLDOUT_EVERY`-th image held out, each side capped."""
    order = np.random.default_rng(seed).permutation(count).tolist()
    holdout = order[::HOLDOUT_EVERY][:MAX_HOLDOUT_IMAGES]
    chosen = set(holdout)
    calibration = [i for i in order if i not in chosen][:MAX_CALIBRATION_IMAGES]
    return calibration, holdout


def load_calibration(folder: str | Path, preprocessing: Any, seed: int = SEED) -> CalibrationSet:
    """The calibration and held-out pixels of ``folder`` (see :func:`split_order`); unreadable images are
    skipped and counted, too few readable ones is an ExportError."""
    from mmadapter.runtime.preprocess import preprocess_batch

    folder = Path(folder)
    files = image_files(folder)
    cal_idx, hold_idx = split_order(len(files), seed)
    short_side = max(preprocessing.image_size)
    parts, skipped, names = [], 0, []
    for indices in (cal_idx, hold_idx):
        loaded = read_images([files[i] for i in indices], short_side)
        good = [(files[i], img) for i, img in zip(indices, loaded) if not isinstance(img, ImageSkip)]
        skipped += len(indices) - len(good)
        names += [p.relative_to(folder).as_posix() for p, _ in good]
        parts.append(preprocess_batch([img for _, img in good], preprocessing))
    if len(parts[0]) < MIN_IMAGES - 1 or len(parts[1]) < 1:
        raise ExportError(f"--calibration {folder}: only {len(parts[0]) + len(parts[1])} readable images "
                          f"({skipped} unreadable); calibration needs at least {MIN_IMAGES}")
    digest = hashlib.sha256("\n".join(names).encode("utf-8", "surrogatepass")).hexdigest()
    return CalibrationSet(folder, parts[0], parts[1], skipped, digest)


def batches(pixels: np.ndarray, batch_size: int = 1) -> list[dict[str, np.ndarray]]:
    """Feeds of the image classifier, ``batch_size`` images each (calibrators run them one by one)."""
    return [{PIXELS: pixels[i:i + batch_size]} for i in range(0, len(pixels), batch_size)]


def write_calibrated_graphs(folder: Path, spec: Any, files: dict[str, dict[str, str]],
                            calibration: CalibrationSet | None, openvino: bool) -> dict[str, Any]:
    """The calibrated graphs of one graph spec into ``folder`` and their names into ``files`` (by precision
    and kind): with ``calibration`` and ``spec.int8_scopes``, the static Q/DQ int8 graph (``int8/portable``:
    ONNX Runtime, TensorRT) and, with ``openvino``, its IR (``int8/openvino``); with ``openvino``, the fp32 IR
    of every graph (``fp32/openvino``). Returns the manifest fields to add to the graph's entry."""
    from mmadapter.export import onnx_io

    extra: dict[str, Any] = {}
    portable = folder / files["fp32"]["portable"]
    if openvino:
        from mmadapter.export.openvino import convert_to_ir, ir_name

        files["fp32"]["openvino"] = convert_to_ir(portable, folder / ir_name(portable.name)).name
    if calibration is not None and spec.int8_scopes:
        qdq = folder / f"{spec.name}.int8.onnx"
        extra["int8_static_ops"] = onnx_io.quantize_static_int8(portable, qdq, spec.int8_scopes,
                                                                 batches(calibration.calibration))
        files.setdefault("int8", {})["portable"] = qdq.name
        if openvino:
            files["int8"]["openvino"] = convert_to_ir(qdq, folder / ir_name(qdq.name)).name
    return extra


def holdout_case(clip: Any, adapter: Any, bank: Any, logit_scale: float, pixels: np.ndarray) -> Any:
    """A validation case of the image classifier on the held-out calibration images, with the torch
    model's outputs as expected values."""
    import torch

    from mmadapter.export.validate import Case

    with torch.no_grad():
        emb = clip.encode_images(torch.from_numpy(pixels))
        out = adapter.eval()(emb, bank, logit_scale)
    expected = {LOGITS: out.logits.float().numpy(), IMAGE_EMBEDDING: out.image_emb.float().numpy(),
                CLIP_IMAGE_EMBEDDING: emb.float().numpy()}
    return Case(f"{len(pixels)} held-out calibration images", {PIXELS: pixels}, expected)


def calibration_folder_for(*, int8: bool, openvino: bool, calibration: str | Path | None,
                           checkpoint: str | Path, executorch: bool = False) -> Path | None:
    """The folder the export calibrates with, checked before any model is loaded: ``--calibration`` or the
    checkpoint's training images. Needed for OpenVINO int8 (one ExportError line without it: it has no
    dynamic int8 to fall back on) and ExecuTorch int8 (its program's activations are dynamic, but it is only
    written once held-out real images have validated it); for ONNX
    Runtime alone it adds the static Q/DQ graph when images are there and otherwise leaves the dynamic int8
    graph on its own. ``--calibration`` without ``--int8`` is refused (it would do nothing)."""
    if openvino:
        from mmadapter.runtime.engines.openvino import openvino_unavailable_reason

        reason = openvino_unavailable_reason()
        if reason is not None:
            raise ExportError(f"--openvino: {reason}")
    if not int8:
        if calibration is not None:
            raise ExportError("--calibration calibrates int8 graphs: add --int8")
        return None
    if calibration is not None or openvino or executorch:
        return resolve_calibration_folder(calibration, checkpoint)
    from mmadapter.model.checkpoint import read_metadata

    try:
        found = training_data_folder(read_metadata(Path(checkpoint)).get("training"), checkpoint)
    except Exception:  # noqa: BLE001 - loading the checkpoint reports what is wrong with it
        return None
    try:
        return None if found is None else (image_files(found) and found)
    except ExportError:
        return None


def validate_static(validate_graph: Any, path: Path, spec: Any, synthetic: list[Any], held_out: Any,
                    factory: Any) -> Any:
    """Validation of a calibrated (static) int8 graph. Its activation ranges come from the calibration
    images, so it is held to every int8 rule (embedding cosine >= 0.999, top-1) on the held-out images of
    that folder. On the synthetic validation images (noise, stripes, flat colour: far outside any real
    folder, whose activations the fixed ranges clip) top-1 is still required, and the embedding cosine is
    recorded (``synthetic_min_cosine``) rather than failed: the tiny test CLIP calibrated on the digits
    reaches 0.9987 there, and dynamic int8 remains the graph for inputs unlike the calibration set."""
    from mmadapter.export.validate import GraphReport

    class StaticReport(GraphReport):
        synthetic_min_cosine: dict[str, float] = {}

        def to_dict(self) -> dict[str, Any]:
            return {**super().to_dict(), "calibrated": True, "synthetic_min_cosine": self.synthetic_min_cosine}

    real = validate_graph(path, spec, [held_out], "int8", factory)
    other = validate_graph(path, spec, synthetic, "int8", factory)
    report = StaticReport(real.file, "int8", list(real.failures), dict(real.min_cosine), dict(real.max_abs_diff),
                          real.top1_agreement, real.near_ties + other.near_ties, other.batch_sizes + real.batch_sizes,
                          real.tolerance)
    report.failures += [f for f in other.failures if " cosine " not in f]
    report.synthetic_min_cosine = dict(other.min_cosine)
    if other.top1_agreement is not None:
        report.top1_agreement = min(other.top1_agreement, report.top1_agreement or 1.0)
    for name, diff in other.max_abs_diff.items():
        report.max_abs_diff[name] = max(diff, report.max_abs_diff.get(name, 0.0))
    return report
