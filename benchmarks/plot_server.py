"""Plot of the inference-server benchmark, drawn from its CSV (so a plot can be redrawn without rerunning).

    python -m benchmarks.plot_server [benchmarks/results/server_cpu.csv]      (from the repository root)

One row per precision. Left: throughput against concurrency, dynamic batching on and off, with in-process
``classify`` at each batch size as a horizontal line. Right: p50, p95 and p99 latency against concurrency (log-log).
"""

from __future__ import annotations

from pathlib import Path

from benchmarks.common import RESULTS_DIR, plot_from_command_line, pyplot, read_csv, save_figure

BATCHING_STYLE = {"on": ("-o", "C0"), "off": ("--s", "C1")}
PERCENTILE_ALPHA = {"p50_ms": 1.0, "p95_ms": 0.6, "p99_ms": 0.3}


def plot_server(csv_path: Path = RESULTS_DIR / "server_cpu.csv", png_path: Path | None = None) -> Path:
    plt = pyplot()
    rows = read_csv(csv_path)
    if not rows:
        raise ValueError(f"{csv_path} has no rows to plot")
    png_path = png_path or Path(csv_path).with_suffix(".png")
    precisions = list(dict.fromkeys(r.get("precision") or "fp32" for r in rows))
    fig, axes = plt.subplots(len(precisions), 2, figsize=(10, 4 * len(precisions)), squeeze=False)
    for (left, right), precision in zip(axes, precisions):
        _plot_precision(left, right, [r for r in rows if (r.get("precision") or "fp32") == precision], precision)
    env = rows[0]
    return save_figure(fig, png_path, f"mmadapter serve (Triton, HTTP), {env['export']}, CPU only "
                       f"({env['cpu']}, {env['cpus']} CPUs); onnxruntime {env['onnxruntime']}, commit {env['commit']}")


def _plot_precision(left, right, rows: list[dict[str, str]], precision: str) -> None:
    """Throughput (left) and latency percentiles (right) against concurrency for one precision's rows."""
    conc: list[int] = []
    for batching, (style, color) in BATCHING_STYLE.items():
        sel = sorted((r for r in rows if r["mode"] == "server_http" and r["batching"] == batching),
                     key=lambda r: int(r["concurrency"]))
        if not sel:
            continue
        conc = [int(r["concurrency"]) for r in sel]
        left.plot(conc, [float(r["images_per_s"]) for r in sel], style, color=color,
                  label=f"server, dynamic batching {batching}")
        for key, alpha in PERCENTILE_ALPHA.items():
            right.plot(conc, [float(r[key]) for r in sel], style, color=color, alpha=alpha,
                       label=f"batching {batching}, {key.removesuffix('_ms')}")
    for r in (r for r in rows if r["mode"] == "in_process"):
        left.axhline(float(r["images_per_s"]), linestyle=":", linewidth=1, color="gray")
        left.annotate(f"in-process, batch {r['batch']}", (1, float(r["images_per_s"])), fontsize=7,
                      va="bottom", color="gray")
    left.set_ylim(bottom=0)  # ratios, not differences, are what the targets are about
    left.set_ylabel(f"{precision}: images/s (client included)")
    right.set_ylabel(f"{precision}: latency per request, ms")
    right.set_yscale("log")
    for ax in (left, right):
        ax.set_xscale("log", base=2)
        ax.set_xticks(conc, [str(c) for c in conc])
        ax.set_xlabel("concurrent clients")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)


if __name__ == "__main__":
    plot_from_command_line(plot_server, RESULTS_DIR / "server_cpu.csv")
