"""Phones, measured on this CPU: ExecuTorch XNNPACK programs (fp32 and PT2E int8) of the image classifier beside
ONNX Runtime's and OpenVINO's int8 files, in one run: batch-1 latency, file sizes and agreement with torch. CSV:
benchmarks/results/mobile_cpu.csv.

The model is bench_export's (ViT-B-16 random weights + adapter with a 1,000-class bank). The calibrated int8
files (ONNX Q/DQ and the OpenVINO IR converted from it) are calibrated on real images, the project's digits
(``mmadapter.data.digits``), preprocessed as served, and so is ``--executorch-int8 static``'s program; the
default int8 ExecuTorch program has dynamic int8 activations and needs none. Timing and the check against torch
use other digits. XNNPACK runs here with its x86 kernels: phone latency is not measured by this.

Rows: ``torch_eager``; ``ort_int8`` (``export --int8``'s dynamic int8 graph), ``ort_int8_static`` (the
calibrated Q/DQ graph); ``ov_fp32`` and ``ov_int8`` (``export --openvino [--int8]``'s IR of the portable and of
the Q/DQ graph, OpenVINO's CPU plugin; left out with a message when OpenVINO is not installed); ``et_fp32``,
``et_int8`` and ``et_int8_static`` (``export --executorch [--int8 [--executorch-int8 static]]``'s programs, run
by ExecuTorch's Python runtime). Every engine gets the same thread count (the CPUs this process may use). Each
row has its file size (an IR counts its ``.bin``), its ratio to the Q/DQ int8 ONNX graph's size, and its batch-1
median relative to the fastest int8 path of the run, whichever engine that is (the targets: int8 ``.pte`` <=
1.1x the int8 ONNX size; latency within 1.5x of the fastest int8 path).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.bench_export import build_model, interleaved, min_cosine, openvino_ir
from benchmarks.common import RESULTS_DIR, print_table, write_csv
from mmadapter.errors import ExportError
from mmadapter.files import first_line

ENGINES = {".pte": "executorch", ".xml": "openvino"}  # by file suffix; the rest are ONNX Runtime's graphs


def file_size(path: Path) -> int:
    """Bytes a path ships as: an OpenVINO IR is its ``.xml`` and the ``.bin`` beside it."""
    return path.stat().st_size + (path.with_suffix(".bin").stat().st_size if path.suffix == ".xml" else 0)


def digits_pixels(root: Path, pre, count: int) -> np.ndarray:
    """``count`` digit images preprocessed as served (the digits folder's images, in their sorted order)."""
    from mmadapter.data.digits import write_digits_folder
    from mmadapter.export.calibration import image_files
    from mmadapter.runtime.images import read_images
    from mmadapter.runtime.preprocess import preprocess_batch

    files = image_files(write_digits_folder(root / "digits", per_class=8))
    order = np.random.default_rng(0).permutation(len(files))[:count]
    return preprocess_batch(read_images([files[i] for i in order], max(pre.image_size)), pre)


def build_files(tmp: Path, spec, calib: np.ndarray) -> dict[str, tuple[Path, str, float]]:
    """Every benchmarked file: (path, precision, seconds it took to build) by path name."""
    from mmadapter.export.executorch import write_program
    from mmadapter.export.onnx_io import export_graph, optimize_for_ort, quantize_int8, quantize_static_int8

    built = {}
    t0 = time.perf_counter()
    portable = export_graph(spec, tmp / "image_classifier.onnx")
    fused = tmp / "image_classifier.ort.onnx"
    optimize_for_ort(portable, fused)
    quantize_int8(fused, tmp / "image_classifier.int8.ort.onnx", spec.int8_scopes)
    built["ort_int8"] = (tmp / "image_classifier.int8.ort.onnx", "int8", time.perf_counter() - t0)
    t0 = time.perf_counter()
    qdq = tmp / "image_classifier.int8.onnx"
    quantize_static_int8(portable, qdq, spec.int8_scopes, [{"pixels": p[None]} for p in calib])
    built["ort_int8_static"] = (qdq, "int8", time.perf_counter() - t0)
    try:
        t0 = time.perf_counter()
        ir = openvino_ir(tmp, portable, qdq)
        built.update({k: (path, precision, time.perf_counter() - t0) for k, (path, precision) in ir.items()})
    except (ImportError, ExportError) as exc:  # OpenVINO missing: the run goes on without its rows
        print(f"OpenVINO rows skipped: {first_line(exc)}", file=sys.stderr)
    # The default int8 program (dynamic activations) and --executorch-int8 static's (calibrated on ``calib``),
    # each in a folder of its own: both are named image_classifier.int8.pte.
    for name, precision, images in (("et_fp32", "fp32", None), ("et_int8", "int8", None),
                                    ("et_int8_static", "int8", calib)):
        t0 = time.perf_counter()
        (tmp / name).mkdir()
        pte, _ = write_program(spec, tmp / name, precision, 1, images)  # the classifier's only axis: batch
        built[name] = (tmp / name / pte, precision, time.perf_counter() - t0)
        print(f"{name}: lowered in {built[name][2]:.0f} s", file=sys.stderr)
    return built


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--calibration-images", type=int, default=32)
    p.add_argument("--check-images", type=int, default=8)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--out", type=Path, default=RESULTS_DIR / "mobile_cpu.csv")
    args = p.parse_args(argv)

    from mmadapter.runtime.engines import open_session
    from mmadapter.runtime.preprocess import Preprocessing

    threads = len(os.sched_getaffinity(0))
    torch.set_num_threads(threads)
    clip, spec = build_model(args.classes)
    pre = Preprocessing(clip.image_size, clip.image_mean, clip.image_std)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        pixels = digits_pixels(Path(tmp), pre, args.calibration_images + args.check_images)
        calib, check = pixels[:args.calibration_images], pixels[args.calibration_images:]
        built = build_files(Path(tmp), spec, calib)
        sessions = {name: open_session(path, engine=ENGINES.get(path.suffix, "onnxruntime"), precision=precision,
                                       threads=threads)
                    for name, (path, precision, _) in built.items()}
        with torch.inference_mode():
            ref_logits, ref_emb = (t.numpy() for t in spec.module(torch.from_numpy(check))[:2])
        checks = {}
        for name, sess in sessions.items():  # agreement with torch on the held-out digits, batch by batch of 1
            out = [sess.run(["logits", "image_embedding"], {"pixels": check[i:i + 1]}) for i in range(len(check))]
            logits, emb = (np.concatenate([o[k] for o in out]) for k in (0, 1))
            checks[name] = {"min_cosine_vs_torch": round(min_cosine(emb, ref_emb), 7),
                            "top1_agreement_vs_torch": float((logits.argmax(-1) == ref_logits.argmax(-1)).mean())}
        one = check[:1]
        with torch.inference_mode():
            fns = {"torch_eager": lambda: spec.module(torch.from_numpy(one))}
            fns.update({k: (lambda s=s: s.run(None, {"pixels": one})) for k, s in sessions.items()})
            results = interleaved(fns, args.repeats)
        rows = result_rows(results, checks, built, sessions)
    path = write_csv([{"model": "ViT-B-16 + adapter (random weights)", "classes": args.classes, "batch": 1,
                       "threads": threads, "calibration": f"{args.calibration_images} digits",
                       **r} for r in rows], args.out)
    print_table(rows, ["backend", "median_ms", "p20_ms", "p80_ms", "vs_fastest_int8", "file_mb",
                       "size_vs_int8_onnx", "min_cosine_vs_torch", "top1_agreement_vs_torch", "build_s"])
    print(f"wrote {path}")
    return 0


def result_rows(results: dict, checks: dict, built: dict, sessions: dict) -> list[dict]:
    """One row per path: timing, its ratio to the fastest int8 path, file size and its ratio to the Q/DQ
    int8 ONNX graph (the int8 ONNX file a phone would otherwise ship), agreement with torch."""
    fastest = min(r["median_ms"] for k, r in results.items() if k in built and built[k][1] == "int8")
    onnx_int8 = file_size(built["ort_int8_static"][0])
    rows = []
    for name, r in results.items():
        row = {"backend": name, **{k: round(v, 2) for k, v in r.items()},
               "vs_fastest_int8": round(r["median_ms"] / fastest, 3)}
        if name in built:
            path, precision, seconds = built[name]
            size = file_size(path)
            row.update(precision=precision, file=path.name, file_mb=round(size / 1e6, 1),
                       size_vs_int8_onnx=round(size / onnx_int8, 3), build_s=round(seconds, 1),
                       runs=sessions[name].describe(), **checks[name])
        rows.append(row)
    return rows


if __name__ == "__main__":
    sys.exit(main())
