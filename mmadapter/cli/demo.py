"""``mmadapter demo``: the whole path offline, in well under a minute on a laptop CPU.

A tiny open_clip model with *random* weights (``mmadapter-tiny``), saved as a local weights file that
the checkpoint refers to by path and sha256; scikit-learn's bundled digits written as an image folder;
16-shot base-to-novel training and evaluation with the baselines; the report (JSON, markdown, plot);
the checkpoint ``adapter.safetensors``; a folder of PNG images and a top-k prediction on it.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from mmadapter.data.digits import DIGITS_TEMPLATE, write_digits_folder
from mmadapter.data.embeddings import ClipProvider
from mmadapter.data.fewshot import base_novel_classes, few_shot_splits, image_folder_dataset, restrict
from mmadapter.errors import DataError
from mmadapter.folders import Owner, destination, owned_folder
from mmadapter.model.backbone import load_clip, save_clip_weights
from mmadapter.model.checkpoint import save_checkpoint
from mmadapter.model.classify import Prediction, collect_images, format_predictions, predict_images
from mmadapter.model.config import ClipSpec, TrainConfig
from mmadapter.training.base_to_novel import BaseToNovelReport, write_report
from mmadapter.training.workflow import checkpoint_meta, evaluate_base_to_novel

DEMO_CLIP_MODEL = "mmadapter-tiny"
RANDOM_WEIGHTS_NOTICE = (
    "NOTE: the demo's CLIP ('mmadapter-tiny') has RANDOM weights, so its accuracies say nothing about "
    "real CLIP models; the demo shows that the whole path runs."
)
IMAGES_PER_CLASS = 2  # in the prediction folder DIR/images/


@dataclass
class DemoResult:
    out_dir: Path
    checkpoint: Path
    clip_weights: Path
    report: BaseToNovelReport
    report_files: dict[str, Path]
    images: list[Path]
    predictions: list[Prediction]
    seconds: float


def export_and_serve(
    out_dir: Path, checkpoint: Path, images: list[Path], torch_predictions: Sequence[Prediction],
    log: Callable[[str], None] = print, progress: bool = False, fp16: bool = False,
) -> list[Prediction]:
    """The product's main job on the demo checkpoint: export (validated against torch) into
    ``out_dir/onnx``, then classify the demo images through ONNX Runtime, no torch in the loop."""
    from mmadapter.export.pipeline import export_checkpoint
    from mmadapter.runtime.model import classify_images

    result = export_checkpoint(checkpoint, out_dir / "onnx", fp16=fp16, overwrite=True, progress=progress)
    cosines = [c for r in result.validation for c in r.get("min_cosine", {}).values()]
    batches = sorted({b for r in result.validation for b in r.get("batch_sizes", [])})
    log(f"\nexported to {result.out_dir}: {', '.join(result.files)}")
    log(f"validated {len(result.validation)} graphs against torch at batch sizes {batches}"
        + (f": lowest output cosine {min(cosines):.7f}" if cosines else ""))
    served = classify_images(result.out_dir, images, top_k=3)
    log(f"top-3 predictions through ONNX Runtime for {out_dir / 'images'}:")
    log(format_predictions(served))
    agree = sum(a[1][0][0] == b[1][0][0] for a, b in zip(torch_predictions, served, strict=True))
    log(f"ONNX Runtime and torch agree on top-1 for {agree}/{len(served)} images")
    return served


def _demo_clip(out_dir: Path, seed: int) -> ClipProvider:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # the same random CLIP on every run, so the weights file is reproducible
        clip = load_clip(ClipSpec(DEMO_CLIP_MODEL), "cpu")
    spec = save_clip_weights(clip, out_dir / "clip-weights.safetensors")
    return ClipProvider(spec, clip=replace(clip, spec=spec))


def _write_prediction_images(out_dir: Path, test_paths: list[Path], class_of: dict[Path, str]) -> list[Path]:
    folder = out_dir / "images"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    written, per_class = [], {}
    for path in test_paths:
        name = class_of[path]
        if per_class.get(name, 0) >= IMAGES_PER_CLASS:
            continue
        per_class[name] = per_class.get(name, 0) + 1
        target = folder / f"{name}_{path.stem}.png"
        shutil.copyfile(path, target)  # the digits are already real PNG files
        written.append(target)
    return written


DEMO_MARKER = ".mmadapter-demo"  # written first: the folder is the demo's to rewrite on the next run

# The demo owns its whole output folder once marked. It is filled in place, not built aside and
# swapped in, because what it prints and returns (images, predictions, the export) names final paths.
DEMO_FOLDER = Owner("demo", DEMO_MARKER, lambda folder: () if (folder / DEMO_MARKER).is_file() else None,
                    "holds files that the demo did not write", whole=True,
                    write_marker=lambda folder: (folder / DEMO_MARKER).touch(), error=DataError)


def run_demo(
    out_dir: str | Path = "demo-output", progress: bool = False, seed: int = 1,
    log: Callable[[str], None] = print, web: bool = False, ort_web: str | Path | None = None,
) -> DemoResult:
    """The demo into ``out_dir`` (new, empty or an earlier demo's), under its lock: a second demo
    into the same folder meanwhile fails at once."""
    out_dir = Path(out_dir)
    with owned_folder(destination(out_dir, "--out", DEMO_FOLDER), overwrite=True, in_place=True):
        return _run_demo(out_dir, progress, seed, log, web, ort_web)


def _run_demo(out_dir: Path, progress: bool, seed: int, log: Callable[[str], None], web: bool,
              ort_web: str | Path | None) -> DemoResult:
    start = time.perf_counter()
    log(RANDOM_WEIGHTS_NOTICE)
    provider = _demo_clip(out_dir, seed)
    clip = provider.get()
    log(f"CLIP {DEMO_CLIP_MODEL}: width {clip.embed_dim}, input {clip.image_size[0]}px, weights "
        f"{provider.spec.weights_path}")
    dataset = image_folder_dataset(write_digits_folder(out_dir / "digits", size=clip.image_size[0]),
                                   template=DIGITS_TEMPLATE, name="digits (scikit-learn)")
    log(f"dataset: {len(dataset.train)} digit images in {len(dataset.class_names)} classes, {out_dir / 'digits'}")

    train_config = TrainConfig(seed=seed)
    report = evaluate_base_to_novel(dataset, provider, train_config, cache_dir=out_dir / "cache",
                                    progress=progress, note="random CLIP weights: the numbers mean nothing about "
                                    "real CLIP")
    report_files = write_report(report, out_dir)
    log("")
    log(report.to_markdown())

    # The Multi-Modal Adapter the report trained on the base classes becomes the checkpoint.
    base = tuple(report.info["base_classes"])
    meta = checkpoint_meta(provider, report.heads["mma"].config, clip.logit_scale, base, dataset.template,
                           train_config, {**report.results["mma"], **report.training["mma"]}, dataset.name)
    # The weights file lies beside the checkpoint: refer to it relatively, so the folder can move
    # (the sha256 still pins the content).
    meta = replace(meta, clip=replace(meta.clip, weights_path="clip-weights.safetensors"))
    # Its training images too, so `export --int8 --openvino` calibrates on them without --calibration.
    meta.training["data_root"] = "digits"
    # The demo owns its output folder: a rerun replaces the previous run's checkpoint.
    checkpoint = save_checkpoint(out_dir / "adapter.safetensors", report.heads["mma"], meta, overwrite=True)
    log(f"checkpoint: {checkpoint} (label set: {', '.join(base)}; CLIP weights by path + sha256)")

    splits = few_shot_splits(dataset, train_config.shots, train_config.seed)
    base_test = restrict(splits.test, base_novel_classes(dataset.class_names)[0])
    images = _write_prediction_images(out_dir, [r.path for r in base_test], {r.path: r.class_name for r in base_test})
    predictions = predict_images(checkpoint, collect_images([out_dir / "images"]), top_k=3)
    log(f"\ntop-3 predictions for {out_dir / 'images'} (file names carry the true class):")
    log(format_predictions(predictions))

    # The web page gets the fp16 graphs (the smallest validated ones for the tiny model).
    export_and_serve(out_dir, checkpoint, images, predictions, log, progress, fp16=web)
    if web:
        from mmadapter.export.web import write_web

        log(write_web(out_dir / "onnx", out_dir / "web", ort_web).summary())
    seconds = time.perf_counter() - start
    log(f"\ndone in {seconds:.1f} s; report: {', '.join(str(p) for p in report_files.values())}")
    log(RANDOM_WEIGHTS_NOTICE)
    return DemoResult(out_dir, checkpoint, Path(str(provider.spec.weights_path)), report, report_files, images,
                      predictions, seconds)


__all__ = ["DEMO_CLIP_MODEL", "RANDOM_WEIGHTS_NOTICE", "DemoResult", "export_and_serve", "run_demo"]
