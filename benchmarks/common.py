"""Shared helpers for the benchmark scripts: timing, peak memory, environment stamp, CSV and plots.

Every result row carries the machine, versions and commit, so a CSV means something on its own.
Timing follows the usual rules: warm-up first, device synchronisation, medians with p20/p80.
"""

from __future__ import annotations

import csv
import gc
import os
import platform
import statistics
import subprocess
import threading
import time
from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).parent / "results"


def _version(module: str) -> str:
    try:
        mod = __import__(module)
    except Exception:  # noqa: BLE001 - absence (or a broken install) is a fact to record
        return "absent"
    return getattr(mod, "__version__", "unknown")


# The CPU features that decide which int8 and bf16 kernels ONNX Runtime, OpenVINO and torch can use,
# by the names Linux gives them in /proc/cpuinfo's flags.
VNNI_FLAGS = ("avx512_vnni", "avx_vnni")
BF16_FLAGS = ("avx512_bf16",)
AMX_FLAGS = ("amx_tile", "amx_bf16", "amx_int8")


def cpuinfo_flags(cpuinfo: str) -> set[str]:
    """The ``flags`` of the first processor in the text of /proc/cpuinfo (empty when there are none,
    as on a machine that is not x86)."""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return set(value.split())
    return set()


def cpu_capabilities(flags: set[str] | str) -> dict[str, str]:
    """The CPU's int8 and bf16 capabilities as CSV columns: each lists the flags present, or "no"."""
    present = set(flags.split()) if isinstance(flags, str) else set(flags)

    def having(names: tuple[str, ...]) -> str:
        return " ".join(n for n in names if n in present) or "no"

    return {"cpu_vnni": having(VNNI_FLAGS), "cpu_avx512_bf16": having(BF16_FLAGS), "cpu_amx": having(AMX_FLAGS)}


def machine_capabilities(path: Path = Path("/proc/cpuinfo")) -> dict[str, str]:
    try:
        text = path.read_text()
    except OSError:
        return {"cpu_vnni": "unknown", "cpu_avx512_bf16": "unknown", "cpu_amx": "unknown"}
    return cpu_capabilities(cpuinfo_flags(text))


def environment() -> dict[str, str]:
    """Machine, CPU capabilities, versions and commit, recorded in every CSV row."""
    import torch

    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True,
            cwd=Path(__file__).parent,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True,
            cwd=Path(__file__).parent,
        ).stdout.strip()
        commit += "-dirty" if dirty else ""
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return {
        "machine": platform.node() or "unknown",
        "cpu": platform.processor() or platform.machine(),
        "cpu_threads": str(torch.get_num_threads()),
        **machine_capabilities(),
        "gpu": gpu,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": _version("triton"),
        "onnxruntime": _version("onnxruntime"),
        "commit": commit,
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def time_cpu(fn: Callable[[], Any], warmup: int = 2, repeats: int = 10, min_time_s: float = 0.0) -> dict[str, float]:
    """Wall-clock milliseconds of ``fn`` on the CPU: median, p20, p80 over ``repeats`` runs."""
    for _ in range(warmup):
        fn()
    times: list[float] = []
    start_all = time.perf_counter()
    while len(times) < repeats or (time.perf_counter() - start_all) < min_time_s:
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
        if len(times) >= 10 * repeats:
            break
    return summarize(times)


def time_cuda(fn: Callable[[], Any], warmup: int = 5, repeats: int = 50) -> dict[str, float]:
    """Milliseconds of ``fn`` on the GPU measured with CUDA events, after warm-up."""
    import torch

    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return summarize(times)


def summarize(times_ms: list[float]) -> dict[str, float]:
    # "inclusive": quantiles within the measured range (the default extrapolates past it for few samples,
    # down to negative times).
    qs = statistics.quantiles(times_ms, n=5, method="inclusive") if len(times_ms) > 1 else [times_ms[0]] * 4
    return {"median_ms": statistics.median(times_ms), "p20_ms": qs[0], "p80_ms": qs[3]}


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_cpu_memory(fn: Callable[[], Any], interval_s: float = 0.0005) -> int:
    """Peak resident memory *added* while ``fn`` runs, in bytes, sampled by a watcher thread.

    torch's CPU allocator returns large blocks to the OS, so resident-set growth over the run
    start is a fair measure of the working memory of one call (it misses spikes shorter than the
    sampling interval, which matters only for tiny calls)."""
    gc.collect()
    base = _rss_bytes()
    peak = base
    done = threading.Event()

    def watch() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _rss_bytes())
            time.sleep(interval_s)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        fn()
    finally:
        done.set()
        watcher.join()
    peak = max(peak, _rss_bytes())
    return max(peak - base, 0)


def peak_cuda_memory(fn: Callable[[], Any]) -> int:
    """Peak CUDA memory allocated by ``fn`` beyond what was allocated before, in bytes."""
    import torch

    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - before


def random_weights_export(folder: Path, model_name: str, class_names: Iterable[str],
                          template: str = "a photo of a {}.", **export_options: Any) -> Path:
    """``export_checkpoint`` of an untrained adapter on a random-weights open_clip ``model_name`` (nothing is
    downloaded) over ``class_names``, into ``folder/onnx``; returns that folder. The random CLIP is saved to
    ``folder/clip.safetensors`` first, so the export and its validation load the very same weights."""
    import torch

    from mmadapter.export.pipeline import export_checkpoint
    from mmadapter.model.adapter import MultiModalAdapter
    from mmadapter.model.backbone import load_clip, save_clip_weights
    from mmadapter.model.checkpoint import CheckpointMeta, LabelSet, save_checkpoint
    from mmadapter.model.config import AdapterConfig, ClipSpec

    torch.manual_seed(0)
    spec = save_clip_weights(load_clip(ClipSpec(model_name)), folder / "clip.safetensors")
    clip = load_clip(spec)
    adapter = MultiModalAdapter(AdapterConfig(embed_dim=clip.embed_dim), backend="torch").eval()
    meta = CheckpointMeta(adapter.config, spec, float(clip.logit_scale), LabelSet(tuple(class_names), (template,)))
    checkpoint = save_checkpoint(folder / "adapter.safetensors", adapter, meta, overwrite=True)
    return export_checkpoint(checkpoint, folder / "onnx", overwrite=True, **export_options).out_dir


def write_csv(rows: Iterable[dict[str, Any]], path: Path) -> Path:
    """Write rows (each stamped with :func:`environment`) to ``path`` atomically."""
    rows = list(rows)
    if not rows:
        raise ValueError("no benchmark rows to write")
    env = environment()
    rows = [{**r, **env} for r in rows]
    fields: list[str] = []
    for r in rows:
        fields.extend(k for k in r if k not in fields)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)
    return path


def read_csv(path: Path) -> list[dict[str, str]]:
    with Path(path).open(newline="") as f:
        return list(csv.DictReader(f))


def pyplot():
    """``matplotlib.pyplot`` drawing to files only (the Agg backend: no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, png_path: Path, title: str, dpi: int = 120) -> Path:
    """Give ``fig`` its title (machine, versions, commit), lay it out, write it to ``png_path`` and close it."""
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(png_path, dpi=dpi)
    pyplot().close(fig)
    return png_path


def plot_from_command_line(plot: Callable[[Path], Path], default_csv: Path) -> None:
    """``python -m benchmarks.plot_<name> [CSV]``: draw ``plot`` from the CSV given (or the default), print the PNG."""
    import sys

    print(plot(Path(sys.argv[1]) if len(sys.argv) > 1 else default_csv))


def print_table(rows: list[dict[str, Any]], columns: list[str]) -> None:
    """A plain fixed-width table on stdout."""

    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v)

    cells = [[fmt(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    print("  ".join(c.rjust(w) for c, w in zip(columns, widths)))
    for row in cells:
        print("  ".join(v.rjust(w) for v, w in zip(row, widths)))


def copy_bandwidth_gbps(device: str = "cuda", nbytes: int = 1 << 30) -> float:
    """Measured device-to-device copy bandwidth in GB/s (bytes read + written per second): the
    practical memory roofline that achieved bandwidths are compared against."""
    import torch

    src = torch.empty(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    fn = lambda: dst.copy_(src)
    stats = time_cuda(fn, warmup=3, repeats=20) if device.startswith("cuda") else time_cpu(fn, warmup=1, repeats=5)
    return 2 * nbytes / (stats["median_ms"] / 1e3) / 1e9
