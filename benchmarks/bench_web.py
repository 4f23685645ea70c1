"""The web page's per-image latency in headless Chromium (onnxruntime-web, WebAssembly) against ONNX
Runtime in Python on the same graph file at batch 1, on CPU.

For each model (random CLIP weights, nothing downloaded): a validated export with fp16 graphs, the web
folder from it (``write_web``: the smallest validated image classifier), then

- ``browser_model``: the page's image classifier alone on preprocessed pixels (``mmadapter.timeModel``),
  WebAssembly backend forced (``?backend=wasm``), threads as the page picks them (cross-origin isolated:
  up to 4, capped by the browser's core count);
- ``browser_page``: what the page reports per image for the generated images (preprocessing + model);
- ``python_ort``: ``mmadapter.runtime.model.Session`` over the same file, batch 1, the same thread count.

Medians and p20/p80 after warm-up. CSV: benchmarks/results/web_cpu.csv (machine, versions, commit in
every row). Run: ``python -m benchmarks.bench_web`` (``--models mmadapter-tiny ViT-B-16``).
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import RESULTS_DIR, environment, print_table, random_weights_export, summarize, write_csv

CLASSES = tuple(f"class {i}" for i in range(10))


def make_export(folder: Path, model_name: str) -> Path:
    return random_weights_export(folder, model_name, CLASSES, fp16=True, progress=False)


def write_images(folder: Path, n: int) -> list[Path]:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        path = folder / f"img{i}.png"
        Image.fromarray(rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def browser_times(site: Path, images: list[Path], repeats: int, warmup: int) -> tuple[dict[str, Any], list[float]]:
    import playwright.sync_api as pw

    from mmadapter.export import web

    with web.serve_folder(site) as url, pw.sync_playwright() as p, tempfile.TemporaryDirectory() as profile:
        context = p.chromium.launch_persistent_context(profile, executable_path=web.CHROMIUM,
                                                       args=list(web.CHROMIUM_ARGS), headless=True)
        page = context.new_page()
        page.goto(url + "?backend=wasm")
        if page.evaluate("window.mmadapter.ready") is not True:
            raise SystemExit(f"the page did not load: {page.inner_text('#messages')}")
        info = {"backend": page.evaluate("window.mmadapter.backend"),
                "threads": page.evaluate("self.crossOriginIsolated ? Math.min(4, navigator.hardwareConcurrency) : 1")}
        model = page.evaluate(f"window.mmadapter.timeModel({repeats}, {warmup})", )
        page.set_input_files("#files", [str(x) for x in images])
        page.wait_for_function(f"(window.mmadapter.done || 0) >= {len(images)}", timeout=600_000)
        results = page.evaluate("window.mmadapter.results")
        context.close()
    # The first image pays for nothing the model run above did not already warm; still, drop it.
    page_ms = [r["ms"] + r["preprocess_ms"] for r in results[1:]]
    return {**info, "model": model}, page_ms


def python_times(path: Path, size: tuple[int, int], threads: int, repeats: int, warmup: int) -> list[float]:
    import time

    from mmadapter.runtime.model import Session

    session = Session(path, ["cpu"], intra_op_threads=threads)
    pixels = np.sin(np.arange(3 * size[0] * size[1], dtype=np.float32)).reshape(1, 3, *size) * np.float32(1.5)
    for _ in range(warmup):
        session.run({"pixels": pixels})
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        session.run({"pixels": pixels})
        times.append((time.perf_counter() - t0) * 1e3)
    return times


def bench_model(model_name: str, work: Path, repeats: int, warmup: int, ort_web: Path | None) -> list[dict[str, Any]]:
    import json

    from mmadapter.export import web

    export = make_export(work, model_name)
    site = web.write_web(export, work / "web", ort_web=ort_web)
    config = json.loads((site.out_dir / "model.json").read_text())
    graph = config["graphs"]["image_classifier"]
    size = tuple(config["preprocessing"]["image_size"])
    info, page_ms = browser_times(site.out_dir, write_images(work / "images", 6), repeats, warmup)
    python_ms = python_times(site.out_dir / "models" / graph["file"], size, info["threads"], repeats, warmup)
    common = {"model": f"{model_name} + adapter (random weights)", "graph": graph["file"],
              "precision": graph["precision"], "model_mb": round(graph["bytes"] / 1e6, 2),
              "page_mb": round(sum(p.stat().st_size for p in site.out_dir.rglob("*") if p.is_file()) / 1e6, 1),
              "threads": info["threads"], "batch": 1}
    rows = []
    for runtime, times in (("browser_model (onnxruntime-web wasm)", info["model"]),
                           ("browser_page (preprocess + model)", page_ms),
                           ("python_ort (onnxruntime cpu)", python_ms)):
        s = summarize(list(times))
        rows.append({**common, "runtime": runtime, "median_ms": round(s["median_ms"], 2),
                     "p20_ms": round(s["p20_ms"], 2), "p80_ms": round(s["p80_ms"], 2), "n": len(times)})
    ratio = rows[0]["median_ms"] / rows[2]["median_ms"]
    for row in rows:
        row["browser_model_over_python"] = round(ratio, 2)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["mmadapter-tiny", "ViT-B-16"])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--ort-web", type=Path, default=None, help="unpacked onnxruntime-web (default: the cache)")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "web_cpu.csv")
    args = parser.parse_args()
    if not os.access("/usr/bin/chromium", os.X_OK):
        raise SystemExit("bench_web needs /usr/bin/chromium (apt-get install chromium) and playwright")
    rows = []
    env = environment()
    for name in args.models:
        with tempfile.TemporaryDirectory(prefix=f"bench-web-{name}-") as tmp:
            rows += [{**r, **env} for r in bench_model(name, Path(tmp), args.repeats, args.warmup, args.ort_web)]
    write_csv(rows, args.out)
    print_table(rows, ["model", "precision", "model_mb", "page_mb", "runtime", "threads", "median_ms", "p20_ms",
                       "p80_ms", "browser_model_over_python"])
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
