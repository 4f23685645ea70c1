"""Load on ``mmadapter serve`` (NVIDIA Triton, the pipeline model, HTTP v2) against in-process
``ExportedModel.classify`` on the same images, on CPU.

Client threads (tritonclient.http, one client each) send one PNG per request at concurrency 1, 4 and 8,
for a bounded number of requests per level; the in-process baseline decodes the same bytes with the
same loader and classifies one image per call, sequentially. Throughput (images/s) and p50/p95 latency
per level; the server's cost per request is its p50 at concurrency 1 minus the in-process p50.

Run: ``mmadapter demo --out D`` first, then ``python -m benchmarks.bench_server --export D/onnx``
(needs mmadapter[server], and on a numpy 2 environment $MMADAPTER_SERVER_PYTHONPATH, see the README).
CSV: benchmarks/results/server_cpu.csv (machine, versions and commit in every row).
"""

from __future__ import annotations

import argparse
import io
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from benchmarks.common import RESULTS_DIR, print_table, write_csv

LEVELS = (1, 4, 8)


def png(seed: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(export: Path, folder: Path) -> tuple[subprocess.Popen, str]:
    http = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "mmadapter.cli", "serve", str(export), "--model-repository",
                             str(folder), "--http-port", str(http), "--grpc-port", str(free_port()),
                             "--metrics-port", str(free_port())], stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if not line.startswith("serving"):
        proc.wait(30)
        sys.exit(f"bench_server: serve did not start (status {proc.returncode})")
    return proc, f"127.0.0.1:{http}"


def stats(latencies_ms: list[float], wall_s: float, images: int) -> dict[str, float]:
    lat = np.array(latencies_ms)
    return {"requests": len(lat), "images_per_s": images / wall_s, "p50_ms": float(np.percentile(lat, 50)),
            "p95_ms": float(np.percentile(lat, 95))}


def load(url: str, images: list[bytes], concurrency: int, requests: int) -> dict[str, float]:
    import tritonclient.http as http

    latencies: list[float] = []
    lock = threading.Lock()
    per_thread = requests // concurrency

    def worker(t: int) -> None:
        client = http.InferenceServerClient(url, network_timeout=120)
        for i in range(per_thread):
            data = np.array([[images[(t + i) % len(images)]]], dtype=object)
            inp = http.InferInput("IMAGE", [1, 1], "BYTES")
            inp.set_data_from_numpy(data)
            t0 = time.perf_counter()
            client.infer("mmadapter", [inp], outputs=[http.InferRequestedOutput("LABEL")])
            with lock:
                latencies.append((time.perf_counter() - t0) * 1000)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(concurrency)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return stats(latencies, time.perf_counter() - start, per_thread * concurrency)


def in_process(export: Path, images: list[bytes], requests: int) -> dict[str, float]:
    from mmadapter.runtime.images import decode_image
    from mmadapter.runtime.model import ExportedModel

    model = ExportedModel(export, bank_cache=None)
    side = max(model.preprocessing.image_size)
    model.classify([decode_image(images[0], side)])  # sessions opened before timing
    latencies = []
    start = time.perf_counter()
    for i in range(requests):
        t0 = time.perf_counter()
        model.classify([decode_image(images[i % len(images)], side)]).top(5)
        latencies.append((time.perf_counter() - t0) * 1000)
    return stats(latencies, time.perf_counter() - start, requests)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--export", type=Path, required=True, help="export folder (e.g. the demo's D/onnx)")
    parser.add_argument("--requests", type=int, default=200, help="requests per concurrency level (bounded load)")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "server_cpu.csv")
    args = parser.parse_args(argv)
    images = [png(i) for i in range(16)]
    rows = [{"mode": "in_process", "concurrency": 1, **in_process(args.export, images, args.requests)}]
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        proc, url = start_server(args.export, Path(tmp) / "repo")
        try:
            load(url, images, 1, 10)  # warm-up: first requests open sessions
            rows += [{"mode": "server_http", "concurrency": c, **load(url, images, c, args.requests)} for c in LEVELS]
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
    for r in rows:
        r["export"], r["cpus"] = args.export.name, os.cpu_count()
    print_table(rows, ["mode", "concurrency", "requests", "images_per_s", "p50_ms", "p95_ms"])
    base = rows[0]["p50_ms"]
    print(f"server cost per request at concurrency 1 (p50): {rows[1]['p50_ms'] - base:.2f} ms", file=sys.stderr)
    write_csv(rows, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
