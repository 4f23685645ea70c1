"""The base-to-novel report: protocol, numbers that agree with direct computation, files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mmadapter.model.baselines import ZeroShotClip
from mmadapter.model.config import AdapterConfig, TrainConfig
from mmadapter.training.base_to_novel import BaseNovelData, harmonic_mean, run_base_to_novel, write_report
from mmadapter.training.train import EmbeddedSplit, accuracy
from tests.helpers import synthetic_embeddings

DIM = 64


def _split(images: torch.Tensor, labels: torch.Tensor, classes: list[int]) -> EmbeddedSplit:
    keep = torch.isin(labels, torch.tensor(classes))
    remap = {c: i for i, c in enumerate(classes)}
    return EmbeddedSplit(images[keep], torch.tensor([remap[int(y)] for y in labels[keep]]))


@pytest.fixture(scope="module")
def data() -> BaseNovelData:
    text, train_x, train_y = synthetic_embeddings(6, 8, DIM, seed=0)
    _, val_x, val_y = synthetic_embeddings(6, 8, DIM, seed=1)
    _, test_x, test_y = synthetic_embeddings(6, 10, DIM, seed=2)
    base, novel = [0, 1, 2], [3, 4, 5]
    return BaseNovelData(
        base_classes=("a", "b", "c"), novel_classes=("d", "e", "f"),
        text_base=text[base], text_novel=text[novel],
        train=_split(train_x, train_y, base), val=_split(val_x, val_y, base),
        test_base=_split(test_x, test_y, base), test_novel=_split(test_x, test_y, novel),
        test_all=EmbeddedSplit(test_x, test_y),
    )


def test_harmonic_mean() -> None:
    assert harmonic_mean(80.0, 40.0) == pytest.approx(53.3333, rel=1e-4)
    assert harmonic_mean(0.0, 0.0) == 0.0


def test_report_numbers(data: BaseNovelData) -> None:
    report = run_base_to_novel(data, TrainConfig(max_epochs=20, batch_size=8), AdapterConfig(embed_dim=DIM),
                               progress=False, info={"dataset": "synthetic", "shots": 8, "seed": 1})
    assert list(report.results) == ["zero-shot-clip", "clip-adapter", "mma"]
    for r in report.results.values():
        assert r["hm"] == pytest.approx(harmonic_mean(r["base"], r["novel"]))
        assert all(0 <= r[k] <= 100 for k in ("base", "novel", "all"))
    zs = report.results["zero-shot-clip"]
    assert zs["base"] == pytest.approx(accuracy(ZeroShotClip(), data.test_base, data.text_base))
    assert zs["all"] == pytest.approx(accuracy(ZeroShotClip(), data.test_all, data.text_all))
    # Trained on base classes only: base accuracy must rise well above zero-shot (the data is learnable).
    assert report.results["clip-adapter"]["base"] > zs["base"] + 5
    assert report.training["mma"]["epochs"] >= 1 and report.training["zero-shot-clip"]["epochs"] == 0
    # The novel number of the adapter is its accuracy with the novel label set (a new class bank).
    mma = report.heads["mma"]
    assert report.results["mma"]["novel"] == pytest.approx(accuracy(mma, data.test_novel, data.text_novel))
    assert report.info["counts"]["test_novel"] == 30


def test_report_files(data: BaseNovelData, tmp_path: Path) -> None:
    report = run_base_to_novel(data, TrainConfig(max_epochs=2), AdapterConfig(embed_dim=DIM), progress=False,
                               info={"dataset": "synthetic"})
    paths = write_report(report, tmp_path / "out")
    saved = json.loads(paths["json"].read_text())
    assert saved["results"]["mma"]["hm"] == pytest.approx(report.results["mma"]["hm"])
    assert saved["base_classes"] == ["a", "b", "c"]
    table = paths["markdown"].read_text()
    assert "| Method | Base | Novel | HM | All |" in table and table.count("\n| ") == 4
    assert paths["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["report.json", "report.md", "report.png"]
