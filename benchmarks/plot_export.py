"""Plot of the export benchmark, drawn from its CSV: latency and throughput per backend and batch.

    python -m benchmarks.plot_export [benchmarks/results/export_cpu.csv]
"""

from __future__ import annotations

import sys
from pathlib import Path

from benchmarks.common import RESULTS_DIR, read_csv


def plot_export(csv_path: Path = RESULTS_DIR / "export_cpu.csv", png_path: Path | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # Failed, error and skipped paths have no timing to draw (CSVs from before the status column: all timed).
    rows = [r for r in read_csv(csv_path) if r.get("status", "ok") == "ok"]
    if not rows:
        raise ValueError(f"{csv_path} has no timed rows to plot")
    png_path = png_path or Path(csv_path).with_suffix(".png")
    backends = list(dict.fromkeys(r["backend"] for r in rows))
    batches = sorted({int(r["batch"]) for r in rows})
    fig, (ax_l, ax_t) = plt.subplots(1, 2, figsize=(10, 4))
    width = 0.8 / len(backends)
    for i, backend in enumerate(backends):
        sel = {int(r["batch"]): r for r in rows if r["backend"] == backend}
        xs = [j + i * width for j in range(len(batches))]
        # A path timed at some batch sizes only (it failed at the others) leaves gaps there.
        def cell(b: int, key: str, sel: dict = sel) -> float:
            return float(sel[b][key]) if b in sel else float("nan")

        med = [cell(b, "median_ms") for b in batches]
        lo = [m - cell(b, "p20_ms") if b in sel else 0.0 for m, b in zip(med, batches)]
        hi = [cell(b, "p80_ms") - m if b in sel else 0.0 for m, b in zip(med, batches)]
        ax_l.bar(xs, med, width, yerr=[lo, hi], label=backend, capsize=2)
        ax_t.bar(xs, [cell(b, "images_per_s") for b in batches], width, label=backend)
    for ax, ylabel in ((ax_l, "median latency (ms), p20-p80 bars"), (ax_t, "throughput (images/s)")):
        ax.set_xticks([j + width * (len(backends) - 1) / 2 for j in range(len(batches))])
        ax.set_xticklabels([f"batch {b}" for b in batches])
        ax.set_ylabel(ylabel)
        ax.grid(True, axis="y", alpha=0.3)
    ax_l.set_yscale("log")
    ax_t.legend(fontsize=8)
    env = rows[0]
    fig.suptitle(f"{env.get('model', '')}, {env.get('classes', '')} classes: torch eager vs ONNX Runtime vs OpenVINO "
                 f"({env.get('cpu', '')}, {env.get('threads', '?')} threads, gpu {env.get('gpu', '')}, "
                 f"commit {env.get('commit', '')})", fontsize=9)
    fig.tight_layout()
    fig.savefig(png_path, dpi=120)
    plt.close(fig)
    return png_path


if __name__ == "__main__":
    print(plot_export(Path(sys.argv[1]) if len(sys.argv) > 1 else RESULTS_DIR / "export_cpu.csv"))
