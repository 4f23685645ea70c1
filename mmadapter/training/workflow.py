"""The steps the CLI and the demo share, as typed functions: open a dataset, embed it (through the
cache), train the adapter into a checkpoint, run the base-to-novel report."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from mmadapter.data.embeddings import ClipProvider, image_embeddings, labels_of, text_embeddings
from mmadapter.data.fewshot import ImageDataset, base_novel_classes, few_shot_splits, image_folder_dataset, restrict
from mmadapter.data.registry import load_registered_dataset
from mmadapter.errors import DataError
from mmadapter.model.baselines import build_head
from mmadapter.model.checkpoint import CheckpointMeta, LabelSet, check_output_file, save_checkpoint
from mmadapter.model.config import AdapterConfig, TrainConfig, adapter_config_for_width
from mmadapter.runtime.labels import check_template
from mmadapter.training.base_to_novel import BaseNovelData, BaseToNovelReport, run_base_to_novel
from mmadapter.training.train import EmbeddedSplit, TrainResult, accuracy, train_head


def open_dataset(data_root: str | Path, dataset: str | None = None, template: str | None = None) -> ImageDataset:
    """A registered dataset (by name, under ``data_root``) or an image folder at ``data_root``."""
    ds = load_registered_dataset(dataset, data_root) if dataset else image_folder_dataset(data_root)
    if template is not None:
        ds = replace(ds, template=check_template(template))
    return ds


def _embed(provider: ClipProvider, records: list, cache_dir: Path | None, progress: bool) -> EmbeddedSplit:
    return EmbeddedSplit(image_embeddings(provider, records, cache_dir, progress=progress), labels_of(records))


def prepare_base_novel(
    dataset: ImageDataset, provider: ClipProvider, shots: int = 16, seed: int = 1,
    cache_dir: str | Path | None = None, progress: bool = True, split: str = "coop",
) -> BaseNovelData:
    """Few-shot base-class train/val splits and base/novel/all test sets, as cached embeddings
    (``split``: see :func:`mmadapter.data.fewshot.base_novel_classes`)."""
    cache = Path(cache_dir) if cache_dir is not None else None
    base, novel = base_novel_classes(dataset.class_names, split)
    splits = few_shot_splits(dataset, shots, seed)
    templates = [dataset.template]
    test_base, test_novel = restrict(splits.test, base), restrict(splits.test, novel)
    if not test_base or not test_novel:
        raise DataError(f"dataset {dataset.name} has no test images for the base or the novel classes")
    return BaseNovelData(
        base_classes=base,
        novel_classes=novel,
        text_base=text_embeddings(provider, base, templates, cache),
        text_novel=text_embeddings(provider, novel, templates, cache),
        train=_embed(provider, restrict(splits.train, base), cache, progress),
        val=_embed(provider, restrict(splits.val, base), cache, progress),
        test_base=_embed(provider, test_base, cache, progress),
        test_novel=_embed(provider, test_novel, cache, progress),
        test_all=_embed(provider, restrict(splits.test, base + novel), cache, progress),
    )


def evaluate_base_to_novel(
    dataset: ImageDataset, provider: ClipProvider, train_config: TrainConfig | None = None,
    cache_dir: str | Path | None = None, progress: bool = True, note: str | None = None, split: str = "coop",
) -> BaseToNovelReport:
    train_config = train_config or TrainConfig()
    data = prepare_base_novel(dataset, provider, train_config.shots, train_config.seed, cache_dir, progress, split)
    clip = provider.get()
    info: dict[str, Any] = {
        "dataset": dataset.name, "template": dataset.template, "clip": provider.spec.to_dict(),
        "shots": train_config.shots, "seed": train_config.seed, "train_config": train_config.to_dict(),
        "split": split,
    }
    if note:
        info["note"] = note
    return run_base_to_novel(data, train_config, adapter_config_for_width(data.text_base.shape[1]),
                             clip.logit_scale, progress=progress, info=info)


def checkpoint_meta(
    provider: ClipProvider, adapter_config: AdapterConfig, logit_scale: float, class_names: tuple[str, ...],
    template: str, train_config: TrainConfig, metrics: dict[str, Any], dataset_name: str,
) -> CheckpointMeta:
    return CheckpointMeta(
        adapter=adapter_config, clip=provider.spec, logit_scale=logit_scale,
        label_set=LabelSet(tuple(class_names), (template,)),
        training={**train_config.to_dict(), "dataset": dataset_name}, metrics=metrics,
    )


def train_checkpoint(
    dataset: ImageDataset, provider: ClipProvider, out_path: str | Path, train_config: TrainConfig | None = None,
    base_only: bool = False, cache_dir: str | Path | None = None, progress: bool = True, overwrite: bool = False,
    split: str = "coop", data_root: str | Path | None = None,
) -> tuple[Path, TrainResult, float]:
    """Train the Multi-Modal Adapter on ``shots`` images per class (all classes, or the base half
    with ``base_only``) and save it as a checkpoint. Returns the path, the training result and the
    test accuracy (%) on the same label set. An existing ``out_path`` is refused unless ``overwrite``,
    and that is checked before any embedding or training work."""
    check_output_file(out_path, overwrite)
    train_config = train_config or TrainConfig()
    cache = Path(cache_dir) if cache_dir is not None else None
    classes = base_novel_classes(dataset.class_names, split)[0] if base_only else dataset.class_names
    splits = few_shot_splits(dataset, train_config.shots, train_config.seed)
    text = text_embeddings(provider, classes, [dataset.template], cache)
    train = _embed(provider, restrict(splits.train, classes), cache, progress)
    val = _embed(provider, restrict(splits.val, classes), cache, progress)
    test = _embed(provider, restrict(splits.test, classes), cache, progress)
    clip = provider.get()
    config = adapter_config_for_width(clip.embed_dim)
    head = build_head("mma", clip.embed_dim, seed=train_config.seed, adapter_config=config)
    result = train_head(head, train, text, train_config, val, clip.logit_scale, progress=progress, desc="mma")
    test_acc = accuracy(result.head, test, text, clip.logit_scale)
    metrics = {"test_acc": test_acc, "test_images": len(test), **result.summary()}
    meta = checkpoint_meta(provider, config, clip.logit_scale, tuple(classes), dataset.template, train_config,
                           metrics, dataset.name)
    if base_only:
        meta.training["split"] = split
    if data_root is not None:  # where calibration for int8 exports finds the training images by default
        meta.training["data_root"] = str(Path(data_root).resolve())
    return save_checkpoint(out_path, result.head, meta, overwrite=overwrite), result, test_acc


__all__ = ["checkpoint_meta", "evaluate_base_to_novel", "open_dataset", "prepare_base_novel", "train_checkpoint"]
