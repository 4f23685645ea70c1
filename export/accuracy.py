"""Accuracy of an export on a labelled image folder (one sub-folder per class, named as the export's
class names): top-1 of the fp32 graph and of every int8 variant the export holds (ONNX Runtime dynamic
and static Q/DQ, OpenVINO fp32 and int8), and each variant's top-1 agreement with fp32 on decisive
inputs (fp32's best two logits further apart than the int8 tie margin of
:mod:`mmadapter.export.validate`). An int8 variant below :data:`AGREEMENT_MIN` fails. No torch.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from mmadapter.errors import DataError, ExportError
from mmadapter.runtime.graphs import IMAGE_CLASSIFIER, LOGITS, PIXELS, TOLERANCES

AGREEMENT_MIN = 0.99  # int8 top-1 identical to fp32 on >= 99% of decisive inputs
TIE_MARGIN = TOLERANCES["int8"].tie_margin


def labelled_images(folder: Path, class_names: list[str]) -> tuple[list[Path], np.ndarray]:
    """Image paths and their label indices from ``folder/<class name>/*``; a sub-folder that is not
    one of the export's classes is one DataError line."""
    from mmadapter.runtime.images import list_images

    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"--data {folder}: folder not found")
    subs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not subs:
        raise DataError(f"--data {folder}: no class sub-folders (expected one folder of images per class)")
    index = {name: i for i, name in enumerate(class_names)}
    unknown = [p.name for p in subs if p.name not in index]
    if unknown:
        raise DataError(f"--data {folder}: class folders {unknown[:5]} are not classes of the export "
                        f"({len(class_names)} classes, e.g. {class_names[:3]})")
    paths, labels = [], []
    for sub in subs:
        found = list_images(sub)
        paths += found
        labels += [index[sub.name]] * len(found)
    return paths, np.asarray(labels)


def variants(model: Any) -> dict[str, Callable[[], Any]]:
    """Name -> session opener for every graph of the image classifier the export holds."""
    from mmadapter.runtime.engines import open_session
    from mmadapter.runtime.manifest import verified_file
    from mmadapter.runtime.model import Session

    entry = model.manifest.graphs[IMAGE_CLASSIFIER]
    batch_inputs = entry.batch_inputs
    out: dict[str, Callable[[], Any]] = {}
    names = {("fp32", "ort"): "onnxruntime fp32", ("int8", "ort"): "onnxruntime int8 dynamic",
             ("int8", "portable"): "onnxruntime int8 static (Q/DQ)", ("fp32", "openvino"): "openvino fp32",
             ("int8", "openvino"): "openvino int8 (Q/DQ)"}
    for (precision, kind), label in names.items():
        file = entry.files[precision].get(kind) if precision in entry.files else None
        if file is None:
            continue
        if kind == "openvino":
            from mmadapter.runtime.engines.openvino import verified_ir

            out[label] = lambda p=precision, f=entry.files[precision]: Session(open_session(
                verified_ir(model.folder, model.manifest, f, IMAGE_CLASSIFIER, p), engine="openvino", precision=p),
                batch_axis_inputs=batch_inputs)
        else:
            out[label] = lambda p=precision, f=file: Session(open_session(
                verified_file(model.folder, model.manifest, f), precision=p, providers=["cpu"]),
                batch_axis_inputs=batch_inputs)
    return out


def evaluate_export(onnx_dir: str | Path, data_dir: str | Path, batch_size: int = 32,
                    skip_openvino: bool = False) -> dict[str, Any]:
    """Top-1 per variant and agreement with fp32 (see the module docstring); raises one ExportError line
    when an int8 variant agrees with fp32 on fewer than :data:`AGREEMENT_MIN` of the decisive inputs."""
    from mmadapter.runtime.images import ImageSkip, read_images
    from mmadapter.runtime.model import ExportedModel
    from mmadapter.runtime.preprocess import preprocess_batch

    model = ExportedModel(onnx_dir, ["cpu"])
    paths, labels = labelled_images(Path(data_dir), model.class_names)
    short_side = max(model.preprocessing.image_size)
    openers = variants(model)
    if skip_openvino:
        openers = {k: v for k, v in openers.items() if not k.startswith("openvino")}
    sessions = {name: open_() for name, open_ in openers.items()}
    logits: dict[str, list[np.ndarray]] = {name: [] for name in sessions}
    kept: list[int] = []
    for start in range(0, len(paths), batch_size):
        loaded = read_images(paths[start:start + batch_size], short_side)
        good = [i for i, img in enumerate(loaded) if not isinstance(img, ImageSkip)]
        if not good:
            continue
        kept += [start + i for i in good]
        pixels = preprocess_batch([loaded[i] for i in good], model.preprocessing)
        for name, sess in sessions.items():
            logits[name].append(sess.run({PIXELS: pixels}, batch_size)[LOGITS])
    if not kept:
        raise DataError(f"--data {data_dir}: none of its {len(paths)} images could be read")
    truth = labels[kept]
    by_name = {name: np.concatenate(parts) for name, parts in logits.items()}
    ref = by_name["onnxruntime fp32"]
    top2 = np.sort(ref, axis=-1)[:, -2:] if ref.shape[1] > 1 else np.concatenate([ref, ref - np.inf], -1)
    decisive = (top2[:, 1] - top2[:, 0]) > TIE_MARGIN * max(1.0, float(np.abs(ref).max()))
    rows, failures = [], []
    for name, lg in by_name.items():
        agree = float((lg.argmax(-1) == ref.argmax(-1))[decisive].mean()) if decisive.any() else None
        rows.append({"graph": name, "top1": float((lg.argmax(-1) == truth).mean()),
                     "agreement_with_fp32": agree, "decisive_inputs": int(decisive.sum())})
        if "int8" in name and agree is not None and agree < AGREEMENT_MIN:
            failures.append(f"{name} agrees with fp32 on {agree:.2%} of decisive inputs (< {AGREEMENT_MIN:.0%})")
    result = {"data": str(data_dir), "images": len(kept), "skipped": len(paths) - len(kept),
              "near_ties": int((~decisive).sum()), "rows": rows, "failures": failures}
    return result


def format_table(result: dict[str, Any]) -> str:
    lines = [f"{result['images']} images from {result['data']} ({result['skipped']} skipped, "
             f"{result['near_ties']} near ties set aside for agreement)",
             "| graph | top-1 | top-1 agreement with fp32 (decisive inputs) |", "|---|---|---|"]
    for r in result["rows"]:
        agree = "-" if r["agreement_with_fp32"] is None else f"{r['agreement_with_fp32']:.2%}"
        lines.append(f"| {r['graph']} | {r['top1']:.2%} | {agree} |")
    return "\n".join(lines)


def check(result: dict[str, Any]) -> None:
    if result["failures"]:
        raise ExportError("; ".join(result["failures"]))
