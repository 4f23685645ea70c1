"""Torch eager vs ONNX Runtime for the merged image classifier (ViT-B-16 image tower + adapter fast
path with a folded 1000-class bank), random weights (no download), at batch 1, 8 and 32: median
latency and throughput side by side in one run. CSV: benchmarks/results/export_<device>.csv;
plot: benchmarks/plot_export.py.

Rows per batch size:
- ``torch_eager``: ``torch.inference_mode()``, ``torch.set_num_threads(physical cores)``;
- ``ort_default``: the portable graph, default SessionOptions;
- ``ort_tuned``: the graph after ONNX Runtime's transformer fusions (the served ``.ort.onnx``),
  ORT_ENABLE_ALL, sequential execution, intra-op threads = cores, no thread spinning between calls;
- ``ort_cuda`` / ``ort_tensorrt`` where those providers exist (not on the CPU machine this ran on).

What helped on CPU (measured on this machine, see the CSV): see the notes printed at the end of the
run and the README of the export; in short, matching intra-op threads to the physical cores
matters most, the offline fusions (BiasGelu, LayerNorm) and ORT_ENABLE_ALL add a little, and
inter-op parallelism does not help a sequential transformer.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import RESULTS_DIR, print_table, time_cpu, write_csv  # noqa: E402


def build_model(num_classes: int):
    from mmadapter.export.specs import build_specs

    from mmadapter.adapter import MultiModalAdapter
    from mmadapter.backbone import load_clip
    from mmadapter.config import AdapterConfig, ClipSpec

    torch.manual_seed(0)
    clip = load_clip(ClipSpec("ViT-B-16"))  # pretrained=None: random weights, nothing downloaded
    adapter = MultiModalAdapter(AdapterConfig(embed_dim=clip.embed_dim), backend="torch").eval()
    bank = adapter.class_bank(torch.randn(num_classes, clip.embed_dim))
    specs = build_specs(clip.model, adapter, bank, 100.0, clip.image_size, 77)
    return clip, next(s for s in specs if s.name == "image_classifier")


def ort_session(path: Path, tuned: bool, providers: list[str], threads: int):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if tuned:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        # Spinning keeps cores busy between calls; off so torch and ORT get a fair, idle machine.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=providers)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)

    import onnxruntime as ort
    from mmadapter.export.onnx_io import export_graph, optimize_for_ort

    threads = len(os.sched_getaffinity(0))
    torch.set_num_threads(threads)
    clip, spec = build_model(args.classes)
    h, w = clip.image_size
    available = ort.get_available_providers()
    device = "cuda" if "CUDAExecutionProvider" in available else "cpu"
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        portable = export_graph(spec, Path(tmp) / "image_classifier.onnx")
        fused = Path(tmp) / "image_classifier.ort.onnx"
        fusions = optimize_for_ort(portable, fused)
        print(f"ORT fusions: {fusions}", file=sys.stderr)
        sessions = {
            "ort_default": ort_session(portable, False, ["CPUExecutionProvider"], threads),
            "ort_tuned": ort_session(fused, True, ["CPUExecutionProvider"], threads),
        }
        if "CUDAExecutionProvider" in available:
            sessions["ort_cuda"] = ort_session(fused, True, ["CUDAExecutionProvider"], threads)
        if "TensorrtExecutionProvider" in available:
            sessions["ort_tensorrt"] = ort_session(portable, True, ["TensorrtExecutionProvider"], threads)
        rng = np.random.default_rng(0)
        for batch in args.batches:
            pixels = rng.standard_normal((batch, 3, h, w), dtype=np.float32)
            tp = torch.from_numpy(pixels)
            repeats = max(3, args.repeats // max(1, batch // 8))
            with torch.inference_mode():
                ref = spec.module(tp)[0].numpy()
                results = {"torch_eager": time_cpu(lambda x=tp: spec.module(x), warmup=2, repeats=repeats)}
            for name, sess in sessions.items():
                got = sess.run(["logits"], {"pixels": pixels})[0]
                assert np.abs(got - ref).max() < 1e-2, f"{name} disagrees with torch"  # timing a wrong graph is useless
                results[name] = time_cpu(lambda s=sess, x=pixels: s.run(None, {"pixels": x}), warmup=2, repeats=repeats)
            base = results["torch_eager"]["median_ms"]
            for name, r in results.items():
                rows.append({
                    "model": "ViT-B-16 + adapter (random weights)", "classes": args.classes, "batch": batch,
                    "backend": name, "threads": threads, **{k: round(v, 3) for k, v in r.items()},
                    "images_per_s": round(batch / r["median_ms"] * 1e3, 2),
                    "speedup_vs_torch": round(base / r["median_ms"], 3),
                })
    path = write_csv(rows, args.out or RESULTS_DIR / f"export_{device}.csv")
    print_table(rows, ["batch", "backend", "median_ms", "p20_ms", "p80_ms", "images_per_s", "speedup_vs_torch"])
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
