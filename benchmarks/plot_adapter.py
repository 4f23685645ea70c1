"""Plots of the adapter benchmarks, drawn from their CSVs (so a plot can be redrawn without rerunning).

    python -m benchmarks.plot_adapter [benchmarks/results/adapter_cpu.csv]      (from the repository root)
"""

from __future__ import annotations

from pathlib import Path

from benchmarks.common import RESULTS_DIR, plot_from_command_line, pyplot, read_csv, save_figure


def plot_adapter_cpu(csv_path: Path = RESULTS_DIR / "adapter_cpu.csv", png_path: Path | None = None) -> Path:
    """Time and peak memory against N, one line per implementation and batch size, log-log."""
    plt = pyplot()
    rows = read_csv(csv_path)
    png_path = png_path or Path(csv_path).with_suffix(".png")
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(10, 4))
    batches = sorted({int(r["batch"]) for r in rows})
    for impl, style in (("fast", "-o"), ("reference", "--s")):
        for b in batches:
            sel = sorted((r for r in rows if r["impl"] == impl and int(r["batch"]) == b),
                         key=lambda r: int(r["num_classes"]))
            ns = [int(r["num_classes"]) for r in sel]
            ax_t.plot(ns, [float(r["median_ms"]) for r in sel], style, label=f"{impl}, batch {b}")
            ax_m.plot(ns, [max(float(r["peak_bytes"]), 4096.0) / 2**20 for r in sel], style,
                      label=f"{impl}, batch {b}")
    for ax, ylabel in ((ax_t, "median time per call (ms)"), (ax_m, "peak added memory (MiB, floor 1 page)")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("classes N")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
    ax_t.legend(fontsize=7)
    env = rows[0]
    return save_figure(fig, png_path, f"Adapter head on CPU: fast path vs reference formulation "
                       f"({env.get('cpu', '')}, {env.get('cpu_threads', '?')} threads, torch {env.get('torch', '')}, "
                       f"commit {env.get('commit', '')})")


if __name__ == "__main__":
    plot_from_command_line(plot_adapter_cpu, RESULTS_DIR / "adapter_cpu.csv")
