"""Load on ``mmadapter serve`` (NVIDIA Triton, the pipeline model, HTTP v2) against in-process
``ExportedModel.classify`` on the same images, on CPU; and a soak run that checks every answer.

Load: client threads (tritonclient.http, one client each) send one PNG per request at concurrency
1, 4, 16 and 64, a bounded number of requests per level (and a time limit per level), against two
servers in turn: dynamic batching on (``--max-batch-size 32``, the default) and off
(``--max-batch-size 1``: the backend gets one request per call). Throughput (images/s, client
included), p50/p95/p99 latency and failed requests per level. The in-process baseline decodes the same
bytes with the same loader and classifies them at batch 1, 8 and 32, sequentially. The server's cost
per request is its p50 at concurrency 1 minus the in-process p50 at batch 1 (with batching on, that
includes the 2 ms a lone request waits for company: serve's --max-queue-delay-microseconds).

Soak (``--soak N``): N requests at concurrency 4 against one server (default settings), each answer's
top-5 labels and probabilities compared with in-process ``classify`` of the same image (probabilities
within PROB_ATOL); the resident memory of tritonserver and its Python stubs (VmRSS in /proc) is sampled
every 500 requests, and its growth from request 1,000 to the end is reported.

Run: ``mmadapter demo --out D`` first, then ``python -m benchmarks.bench_server --export D/onnx``
and ``python -m benchmarks.bench_server --export D/onnx --soak 10000`` (needs mmadapter[server], and on
a numpy 2 environment $MMADAPTER_SERVER_PYTHONPATH, see the README). The full-size run exports ViT-B-16
(random weights) with a 1,000-class adapter and its calibrated int8 classifier first, then loads both
precisions: ``python -m benchmarks.bench_server --model ViT-B-16 --classes 1000 --precisions fp32,int8
--image-px 256 --requests 64 --out benchmarks/results/server_vit_b16_cpu.csv``. The targets it prints, per
precision: server throughput at concurrency 16 (batching on) >= 0.85x in-process at its best batch size,
and p99 <= 3x p50 there. CSVs: benchmarks/results/server_cpu.csv (or --out) and server_soak_cpu.csv
(machine, versions and commit in every row); plot: ``python -m benchmarks.plot_server CSV``.
"""

from __future__ import annotations

import argparse
import io
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from benchmarks.common import RESULTS_DIR, print_table, write_csv

LEVELS = (1, 4, 16, 64)
IN_PROCESS_BATCHES = (1, 8, 32)
BATCHING = {"on": 32, "off": 1}  # dynamic batching on/off as serve's --max-batch-size
# The same tolerance as tests/test_inference_server.py: server and in-process runs share graphs and
# preprocessing; only the float32 cast of the probabilities and a merged batch's kernels differ.
PROB_ATOL = 1e-5
SOAK_CONCURRENCY = 4
TARGET_CONCURRENCY = 16
THROUGHPUT_TARGET = 0.85  # server images/s at TARGET_CONCURRENCY over in-process at its best batch
TAIL_TARGET = 3.0  # p99 over p50 at TARGET_CONCURRENCY
SOAK_SAMPLE_EVERY = 500
SOAK_BASE_REQUEST = 1000  # memory growth is measured from here: before it, sessions and caches settle
ROOT = Path(__file__).resolve().parent.parent
STUB_SITE = ROOT / ".venv" / "triton-stub-site"  # where .ci/run puts numpy<2 for the server's stub


def png(seed: int, side: int = 64) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(export: Path, folder: Path, max_batch: int, precision: str = "fp32") -> tuple[subprocess.Popen, str]:
    """``mmadapter serve`` on loopback ports; returns once it printed its ready line."""
    env = dict(os.environ)
    if np.__version__.startswith("2.") and not env.get("MMADAPTER_SERVER_PYTHONPATH") and STUB_SITE.is_dir():
        env["MMADAPTER_SERVER_PYTHONPATH"] = str(STUB_SITE)
    http = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "mmadapter.cli", "serve", str(export), "--model-repository",
                             str(folder), "--http-port", str(http), "--grpc-port", str(free_port()),
                             "--metrics-port", str(free_port()), "--max-batch-size", str(max_batch),
                             "--precision", precision],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    line = proc.stdout.readline()
    if not line.startswith("serving"):
        proc.wait(30)
        sys.exit(f"bench_server: serve did not start (status {proc.returncode}): {proc.stderr.read().strip()}")
    return proc, f"127.0.0.1:{http}"


def stop_server(proc: subprocess.Popen) -> None:
    # serve's only stderr line then is the expected "terminated": it stays in the pipe.
    proc.send_signal(signal.SIGTERM)
    proc.wait(60)


def stats(latencies_ms: list[float], wall_s: float, images: int) -> dict[str, float]:
    lat = np.array(latencies_ms) if latencies_ms else np.array([np.nan])
    p50, p95, p99 = np.percentile(lat, [50, 95, 99])
    return {"requests": len(latencies_ms), "images_per_s": images / wall_s, "p50_ms": float(p50),
            "p95_ms": float(p95), "p99_ms": float(p99)}


def run_clients(concurrency: int, per_thread: int, deadline: float, send: Callable[[object, int, int], None],
                url: str) -> tuple[list[float], int, float]:
    """``send(client, thread, i)`` from ``concurrency`` threads, ``per_thread`` times each or until
    ``deadline`` (monotonic); returns the latencies of answered requests, the failures and the wall time."""
    import tritonclient.http as http

    latencies: list[float] = []
    failures = [0]
    lock = threading.Lock()

    def worker(t: int) -> None:
        client = http.InferenceServerClient(url, network_timeout=120, concurrency=1)
        for i in range(per_thread):
            if time.monotonic() > deadline:
                return
            t0 = time.perf_counter()
            try:
                send(client, t, i)
            except Exception:  # noqa: BLE001 - a failed request is counted, and the load goes on
                with lock:
                    failures[0] += 1
                continue
            with lock:
                latencies.append((time.perf_counter() - t0) * 1000)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(concurrency)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies, failures[0], time.perf_counter() - start


def image_input(data: bytes):
    import tritonclient.http as http

    inp = http.InferInput("IMAGE", [1, 1], "BYTES")
    inp.set_data_from_numpy(np.array([[data]], dtype=object))
    return inp


def load(url: str, images: list[bytes], concurrency: int, requests: int, seconds: float) -> dict[str, float]:
    import tritonclient.http as http

    def send(client, t: int, i: int) -> None:
        client.infer("mmadapter", [image_input(images[(t + i) % len(images)])],
                     outputs=[http.InferRequestedOutput("LABEL")])

    per_thread = max(1, requests // concurrency)
    latencies, failed, wall = run_clients(concurrency, per_thread, time.monotonic() + seconds, send, url)
    return {**stats(latencies, wall, len(latencies)), "failed": failed}


def in_process(export: Path, images: list[bytes], requests: int, batch: int, precision: str) -> dict[str, float]:
    from mmadapter.runtime.images import decode_image
    from mmadapter.runtime.model import ExportedModel

    model = ExportedModel(export, bank_cache=None, precision=precision)
    side = max(model.preprocessing.image_size)
    model.classify([decode_image(images[0], side)] * batch)  # sessions opened before timing
    latencies = []
    calls = max(1, requests // batch)
    start = time.perf_counter()
    for c in range(calls):
        chunk = [images[(c * batch + j) % len(images)] for j in range(batch)]
        t0 = time.perf_counter()
        model.classify([decode_image(b, side) for b in chunk]).top(5)
        latencies.append((time.perf_counter() - t0) * 1000)
    return {**stats(latencies, time.perf_counter() - start, calls * batch), "failed": 0}


def levels(export: Path, images: list[bytes], requests: int, seconds: float, precision: str) -> list[dict]:
    rows = [{"mode": "in_process", "batching": "-", "batch": b, "concurrency": 1,
             **in_process(export, images, requests, b, precision)} for b in IN_PROCESS_BATCHES]
    for name, max_batch in BATCHING.items():
        with tempfile.TemporaryDirectory() as tmp:
            proc, url = start_server(export, Path(tmp) / "repo", max_batch, precision)
            try:
                load(url, images, 4, 40, seconds)  # warm-up: the first requests open sessions
                rows += [{"mode": "server_http", "batching": name, "batch": 1, "concurrency": c,
                          **load(url, images, c, requests, seconds)} for c in LEVELS]
            finally:
                stop_server(proc)
    return [{**r, "precision": precision} for r in rows]


def target_lines(rows: list[dict]) -> list[str]:
    """The server against in-process, per precision: throughput at concurrency TARGET_CONCURRENCY (batching on)
    over the best in-process batch size, p99 over p50 there, and the cost per request at concurrency 1."""
    lines = []
    for precision in dict.fromkeys(r["precision"] for r in rows):
        sel = [r for r in rows if r["precision"] == precision]
        best = max((r for r in sel if r["mode"] == "in_process"), key=lambda r: r["images_per_s"])
        at = next(r for r in sel if r["mode"] == "server_http" and r["batching"] == "on"
                  and r["concurrency"] == TARGET_CONCURRENCY)
        lines.append(f"{precision}: server at concurrency {TARGET_CONCURRENCY} (batching on) "
                     f"{at['images_per_s']:.2f} images/s = {at['images_per_s'] / best['images_per_s']:.3f}x in-process "
                     f"at its best batch ({best['batch']}: {best['images_per_s']:.2f} images/s; target >= "
                     f"{THROUGHPUT_TARGET}); p99/p50 there {at['p99_ms'] / at['p50_ms']:.2f} (target <= {TAIL_TARGET})")
        single = next(r for r in sel if r["mode"] == "in_process" and r["batch"] == 1)
        for r in (r for r in sel if r["mode"] == "server_http" and r["concurrency"] == 1):
            # With batching on, a lone request also waits out --max-queue-delay-microseconds (2 ms).
            lines.append(f"{precision}: server cost per request at concurrency 1 (p50), dynamic batching "
                         f"{r['batching']}: {r['p50_ms'] - single['p50_ms']:.2f} ms")
    return lines


def descendants(root: int) -> list[int]:
    """Every process below ``root`` (by the parent field of /proc/<pid>/stat)."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue  # gone meanwhile
            parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = [], [root]
    while frontier:
        children = [p for p, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


def rss_mib(pids: list[int]) -> float:
    total_kib = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total_kib += int(line.split()[1])
        except OSError:
            continue
    return total_kib / 1024


def expected_tops(export: Path, images: list[bytes]) -> list[list[tuple[str, float]]]:
    from mmadapter.runtime.images import decode_image
    from mmadapter.runtime.model import ExportedModel

    model = ExportedModel(export, bank_cache=None)
    side = max(model.preprocessing.image_size)
    return [model.classify([decode_image(b, side)]).top(5)[0] for b in images]


def soak_answer_ok(result, want: list[tuple[str, float]]) -> bool:
    names = [x.decode() for x in result.as_numpy("LABEL")[0]]
    probs = result.as_numpy("PROBABILITY")[0]
    return names == [n for n, _ in want] and bool(np.allclose(probs, [p for _, p in want], atol=PROB_ATOL, rtol=0))


def soak(export: Path, images: list[bytes], n: int, seconds: float) -> list[dict]:
    """N checked requests at SOAK_CONCURRENCY; a row per memory sample (every SOAK_SAMPLE_EVERY requests)."""
    want = expected_tops(export, images)
    counts = {"done": 0, "wrong": 0}
    samples: list[dict] = []
    lock = threading.Lock()
    with tempfile.TemporaryDirectory() as tmp:
        proc, url = start_server(export, Path(tmp) / "repo", BATCHING["on"])
        server_pids = lambda: descendants(proc.pid)  # tritonserver and its stubs, not serve's own Python
        start = time.monotonic()

        def sample(done: int) -> None:
            samples.append({"requests_done": done, "seconds": time.monotonic() - start,
                            "rss_mib": rss_mib(server_pids())})

        def send(client, t: int, i: int) -> None:
            k = (t * 7 + i) % len(images)
            ok = soak_answer_ok(client.infer("mmadapter", [image_input(images[k])]), want[k])
            with lock:
                counts["done"] += 1
                counts["wrong"] += 0 if ok else 1
                if counts["done"] % SOAK_SAMPLE_EVERY == 0:
                    sample(counts["done"])

        try:
            sample(0)
            _, failed, wall = run_clients(SOAK_CONCURRENCY, -(-n // SOAK_CONCURRENCY), start + seconds, send, url)
            if samples[-1]["requests_done"] != counts["done"]:
                sample(counts["done"])
        finally:
            stop_server(proc)
    base = next((s["rss_mib"] for s in samples if s["requests_done"] >= SOAK_BASE_REQUEST), float("nan"))
    summary = {"soak_requests": counts["done"] + failed, "failed": failed, "wrong": counts["wrong"],
               "concurrency": SOAK_CONCURRENCY, "wall_s": wall, "prob_atol": PROB_ATOL,
               "rss_growth_pct_from_1000": 100 * (samples[-1]["rss_mib"] - base) / base}
    return [{**s, **summary} for s in samples]


def model_export(work: Path, model_name: str, classes: int) -> Path:
    """``work/onnx``: a random-weights ``model_name`` with an adapter over ``classes`` class names, exported
    with its calibrated int8 image classifier (calibrated on the project's digit images); reused when
    ``work/onnx`` already holds a manifest."""
    if (work / "onnx" / "manifest.json").is_file():
        return work / "onnx"
    from benchmarks.common import random_weights_export
    from mmadapter.data.digits import write_digits_folder

    work.mkdir(parents=True, exist_ok=True)
    digits = write_digits_folder(work / "digits", per_class=8)
    names = [f"class {i}" for i in range(classes)]
    print(f"bench_server: exporting {model_name} (random weights) + {classes} classes, fp32 and int8, into "
          f"{work / 'onnx'} (minutes)", file=sys.stderr)
    return random_weights_export(work, model_name, names, int8=True, calibration=digits)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--export", type=Path, help="export folder (e.g. the demo's D/onnx)")
    source.add_argument("--model", help="instead: export this open_clip model with random weights (e.g. ViT-B-16) "
                        "and --classes classes into --work first")
    parser.add_argument("--classes", type=int, default=1000, help="class count of the --model export")
    parser.add_argument("--work", type=Path, default=None,
                        help="folder for the --model export (default: ~/.cache/mmadapter/bench-server/MODEL-CLASSES); "
                        "reused when it holds one")
    parser.add_argument("--precisions", default="fp32", help="comma-separated: fp32, int8 (the export must hold them)")
    parser.add_argument("--image-px", type=int, default=64, help="side of the square PNG each request sends")
    parser.add_argument("--requests", type=int, default=256, help="requests per concurrency level (bounded load)")
    parser.add_argument("--seconds", type=float, default=120, help="time limit per concurrency level")
    parser.add_argument("--soak", type=int, default=None, metavar="N",
                        help="run the soak instead: N checked requests (10000 in the README)")
    parser.add_argument("--soak-seconds", type=float, default=1800, help="time limit of the soak")
    parser.add_argument("--out", type=Path, default=None,
                        help="CSV (default: results/server_cpu.csv, or server_soak_cpu.csv for --soak)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.model:
        work = args.work or Path.home() / ".cache" / "mmadapter" / "bench-server" / f"{args.model}-{args.classes}"
        args.export = model_export(work, args.model, args.classes)
    label = f"{args.model} + {args.classes} classes" if args.model else args.export.name
    images = [png(i, args.image_px) for i in range(16)]
    if args.soak is not None:
        rows = soak(args.export, images, args.soak, args.soak_seconds)
        print_table(rows, ["requests_done", "seconds", "rss_mib"])
        last = rows[-1]
        print(f"soak: {last['soak_requests']} requests, {last['failed']} failed, {last['wrong']} wrong; resident "
              f"memory {last['rss_growth_pct_from_1000']:+.2f}% from request {SOAK_BASE_REQUEST} to the end",
              file=sys.stderr)
        write_csv([{**r, "export": label, "cpus": os.cpu_count()} for r in rows],
                  args.out or RESULTS_DIR / "server_soak_cpu.csv")
        return 0
    rows = [r for precision in args.precisions.split(",")
            for r in levels(args.export, images, args.requests, args.seconds, precision.strip())]
    for r in rows:
        r["export"], r["cpus"], r["image_px"] = label, os.cpu_count(), args.image_px
    print_table(rows, ["precision", "mode", "batching", "batch", "concurrency", "requests", "failed", "images_per_s",
                       "p50_ms", "p95_ms", "p99_ms"])
    for line in target_lines(rows):
        print(line, file=sys.stderr)
    write_csv(rows, args.out or RESULTS_DIR / "server_cpu.csv")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
