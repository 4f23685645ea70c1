"""The base-to-novel report (docs/design.md §2.2) on cached embeddings.

Each trainable head is trained on the base classes only. It is then tested on the base test images
with the base label set, on the novel test images with the novel label set (the Multi-Modal Adapter
through a new class bank: open vocabulary), and on all test images with all classes. Zero-shot CLIP,
CLIP-Adapter and the Multi-Modal Adapter go through the same code on the same embeddings.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mmadapter.files import atomic_write_text, atomic_write_with
from mmadapter.model.baselines import HEAD_KINDS, build_head
from mmadapter.model.config import AdapterConfig, TrainConfig
from mmadapter.training.train import EmbeddedSplit, accuracy, train_head

METHOD_TITLES = {"zero-shot-clip": "Zero-shot CLIP", "clip-adapter": "CLIP-Adapter", "mma": "Multi-Modal Adapter"}


@dataclass(frozen=True)
class BaseNovelData:
    """Everything the protocol needs, as embeddings. Labels index ``base_classes`` (train, val,
    test_base), ``novel_classes`` (test_novel) or ``base_classes + novel_classes`` (test_all)."""

    base_classes: tuple[str, ...]
    novel_classes: tuple[str, ...]
    text_base: torch.Tensor
    text_novel: torch.Tensor
    train: EmbeddedSplit
    val: EmbeddedSplit
    test_base: EmbeddedSplit
    test_novel: EmbeddedSplit
    test_all: EmbeddedSplit

    @property
    def text_all(self) -> torch.Tensor:
        return torch.cat([self.text_base, self.text_novel])


def harmonic_mean(base: float, novel: float) -> float:
    return 0.0 if base + novel <= 0 else 2 * base * novel / (base + novel)


@dataclass
class BaseToNovelReport:
    results: dict[str, dict[str, float]]  # method -> base, novel, hm, all (accuracy in percent)
    training: dict[str, dict[str, Any]]  # method -> training summary (epochs, best epoch, seconds)
    info: dict[str, Any] = field(default_factory=dict)  # dataset, CLIP, shots, seed, class lists, counts
    heads: dict[str, nn.Module] = field(default_factory=dict, repr=False)  # the trained heads (not serialised)

    def to_dict(self) -> dict[str, Any]:
        return {**self.info, "results": self.results, "training": self.training}

    def to_markdown(self) -> str:
        title = self.info.get("dataset", "dataset")
        lines = [
            f"### Base-to-novel accuracy (%) on {title}, {self.info.get('shots', '?')} shots, "
            f"seed {self.info.get('seed', '?')}",
            "",
            "| Method | Base | Novel | HM | All |",
            "|---|---:|---:|---:|---:|",
        ]
        for method, r in self.results.items():
            lines.append(f"| {METHOD_TITLES.get(method, method)} | {r['base']:.2f} | {r['novel']:.2f} | "
                         f"{r['hm']:.2f} | {r['all']:.2f} |")
        if self.info.get("note"):
            lines += ["", f"*{self.info['note']}*"]
        return "\n".join(lines) + "\n"


def run_base_to_novel(
    data: BaseNovelData,
    train_config: TrainConfig | None = None,
    adapter_config: AdapterConfig | None = None,
    logit_scale: float = 100.0,
    methods: tuple[str, ...] = HEAD_KINDS,
    progress: bool = True,
    info: dict[str, Any] | None = None,
) -> BaseToNovelReport:
    """Train every method on the base classes and measure base, novel, HM and all-class accuracy."""
    train_config = train_config or TrainConfig()
    embed_dim = data.text_base.shape[1]
    report = BaseToNovelReport({}, {}, dict(info or {}))
    for method in methods:
        head = build_head(method, embed_dim, seed=train_config.seed, adapter_config=adapter_config)
        trained = train_head(head, data.train, data.text_base, train_config, data.val, logit_scale,
                             progress=progress, desc=method)
        base = accuracy(trained.head, data.test_base, data.text_base, logit_scale)
        novel = accuracy(trained.head, data.test_novel, data.text_novel, logit_scale)
        report.results[method] = {
            "base": base,
            "novel": novel,
            "hm": harmonic_mean(base, novel),
            "all": accuracy(trained.head, data.test_all, data.text_all, logit_scale),
        }
        report.training[method] = trained.summary()
        report.heads[method] = trained.head
    report.info.setdefault("counts", {k: len(getattr(data, k)) for k in
                                      ("train", "val", "test_base", "test_novel", "test_all")})
    report.info.setdefault("base_classes", list(data.base_classes))
    report.info.setdefault("novel_classes", list(data.novel_classes))
    return report


def plot_report(report: BaseToNovelReport, path: str | Path) -> Path | None:
    """Grouped bars of base / novel / HM accuracy per method; ``None`` when matplotlib is absent."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only: never needs a display
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    path = Path(path)
    metrics = ("base", "novel", "hm")
    methods = list(report.results)
    width = 0.8 / len(methods)
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    for i, method in enumerate(methods):
        xs = [j + (i - (len(methods) - 1) / 2) * width for j in range(len(metrics))]
        ys = [report.results[method][m] for m in metrics]
        bars = ax.bar(xs, ys, width, label=METHOD_TITLES.get(method, method))
        ax.bar_label(bars, fmt="%.1f", fontsize=7)
    ax.set_xticks(range(len(metrics)), ["Base", "Novel", "HM"])
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 105)
    ax.set_title(f"Base-to-novel, {report.info.get('dataset', '')}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    try:
        # the suffix tells matplotlib the format of the temporary file
        atomic_write_with(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"), suffix=".png")
    finally:
        plt.close(fig)
    return path


def write_report(report: BaseToNovelReport, out_dir: str | Path, stem: str = "report") -> dict[str, Path]:
    """``<stem>.json``, ``<stem>.md`` and (with matplotlib) ``<stem>.png`` in ``out_dir``, each
    written atomically."""
    out_dir = Path(out_dir)
    paths = {"json": out_dir / f"{stem}.json", "markdown": out_dir / f"{stem}.md"}
    atomic_write_text(paths["json"], json.dumps(report.to_dict(), indent=2) + "\n")
    atomic_write_text(paths["markdown"], report.to_markdown())
    plot = plot_report(report, out_dir / f"{stem}.png")
    if plot is not None:
        paths["plot"] = plot
    return paths


__all__ = ["BaseNovelData", "BaseToNovelReport", "harmonic_mean", "plot_report", "run_base_to_novel", "write_report"]
