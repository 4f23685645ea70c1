"""Session-scoped export of a tiny random CLIP + a "trained" (non-initial) adapter, shared by the
export tests: one checkpoint, one export with --fp16 --int8 (fp32, fp16 and int8 graphs) and a
Triton model repository."""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from mmadapter.model.adapter import MultiModalAdapter
from mmadapter.model.backbone import FrozenClip, load_clip
from mmadapter.model.checkpoint import CheckpointMeta, LabelSet, save_checkpoint
from mmadapter.model.config import AdapterConfig
from mmadapter.runtime.manifest import Manifest, read_manifest

from helpers import tiny_clip_spec

CLASS_NAMES = ("apple", "bicycle", "cloud", "dog", "engine", "forest", "guitar")


@dataclass
class ExportBundle:
    checkpoint: Path
    clip: FrozenClip
    adapter: MultiModalAdapter
    meta: CheckpointMeta
    out_dir: Path  # fp32 and fp16 graphs (one export with --fp16)
    serving_repo: Path
    result: Any  # ExportResult
    seconds: float

    def manifest(self) -> Manifest:
        return read_manifest(self.out_dir)

    def manifest_json(self) -> dict[str, Any]:
        """The file as written, for tests of the on-disk JSON itself."""
        return json.loads((self.out_dir / "manifest.json").read_text())


def make_checkpoint(folder: Path, seed: int = 0) -> tuple[Path, FrozenClip, MultiModalAdapter, CheckpointMeta]:
    """Tiny random CLIP (local weights file) + adapter with random non-initial weights (std 0.1)."""
    spec = tiny_clip_spec(folder, seed=seed)
    clip = load_clip(spec)
    adapter = MultiModalAdapter(AdapterConfig(embed_dim=clip.embed_dim), backend="torch")
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in adapter.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    adapter.eval()
    meta = CheckpointMeta(adapter.config, spec, float(clip.logit_scale),
                          LabelSet(CLASS_NAMES, ("a photo of a {}.", "a drawing of a {}.")))
    path = save_checkpoint(folder / "adapter.safetensors", adapter, meta)
    return path, clip, adapter, meta


@pytest.fixture(scope="session")
def exported(tmp_path_factory: pytest.TempPathFactory) -> ExportBundle:
    from mmadapter.export.pipeline import export_checkpoint

    root = tmp_path_factory.mktemp("export")
    ckpt, clip, adapter, meta = make_checkpoint(root)
    start = time.perf_counter()
    result = export_checkpoint(ckpt, root / "onnx", fp16=True, int8=True, serving_repo=root / "triton", progress=False)
    seconds = time.perf_counter() - start
    return ExportBundle(ckpt, clip, adapter, meta, root / "onnx", root / "triton", result, seconds)


def copying_exporter(bundle: ExportBundle):
    """Stand-ins for onnx_io.export_graph / optimize_for_ort that copy the session's files: the
    bad-input tests exercise the pipeline's control flow without paying for another export."""

    def export_graph(spec, path, opset=18):
        shutil.copyfile(bundle.out_dir / f"{spec.name}.onnx", path)
        return path

    def optimize_for_ort(src, dst):
        shutil.copyfile(bundle.out_dir / Path(dst).name, dst)
        return {}

    return export_graph, optimize_for_ort
