"""Plot of the kernel benchmark, drawn from its CSV (so a plot can be redrawn without rerunning).

    python -m benchmarks.plot_kernel [benchmarks/results/kernel_cpu.csv]      (from the repository root)

One panel per batch size: median time against N, one line per provider (log-log), p20-p80 as a
band; a last panel gives each provider's achieved bandwidth as a fraction of the copy ceiling.
"""

from __future__ import annotations

from pathlib import Path

from benchmarks.common import RESULTS_DIR, plot_from_command_line, pyplot, read_csv, save_figure

PROVIDER_STYLE = {"reference": "--s", "torch-fast": "-o", "torch-compile": "-^", "sdpa": "-v", "triton": "-D"}


def plot_kernel(csv_path: Path = RESULTS_DIR / "kernel_cpu.csv", png_path: Path | None = None) -> Path:
    plt = pyplot()
    rows = [r for r in read_csv(csv_path) if r["status"] == "ok"]
    if not rows:
        raise ValueError(f"{csv_path} has no measured rows to plot")
    png_path = png_path or Path(csv_path).with_suffix(".png")
    batches = sorted({int(r["batch"]) for r in rows})
    fig, axes = plt.subplots(1, len(batches) + 1, figsize=(3.6 * (len(batches) + 1), 3.6), squeeze=False)
    axes = axes[0]
    for provider, style in PROVIDER_STYLE.items():
        for ax, b in zip(axes, batches):
            sel = sorted((r for r in rows if r["provider"] == provider and int(r["batch"]) == b),
                         key=lambda r: int(r["num_classes"]))
            if not sel:
                continue
            ns = [int(r["num_classes"]) for r in sel]
            ax.plot(ns, [float(r["median_ms"]) for r in sel], style, label=provider, ms=4)
            ax.fill_between(ns, [float(r["p20_ms"]) for r in sel], [float(r["p80_ms"]) for r in sel], alpha=0.2)
        big = max(batches)
        sel = sorted((r for r in rows if r["provider"] == provider and int(r["batch"]) == big),
                     key=lambda r: int(r["num_classes"]))
        if sel:
            axes[-1].plot([int(r["num_classes"]) for r in sel], [100 * float(r["roofline_frac"]) for r in sel],
                          style, label=provider, ms=4)
    for ax, b in zip(axes, batches):
        ax.set_title(f"batch {b}", fontsize=9)
        ax.set_yscale("log")
        ax.set_ylabel("median ms per call")
    axes[-1].set_title(f"batch {max(batches)}: achieved / copy bandwidth", fontsize=9)
    axes[-1].set_ylabel("% of measured copy ceiling")
    for ax in axes:
        ax.set_xscale("log")
        ax.set_xlabel("classes N")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=7)
    env = rows[0]
    where = env["gpu"] if env["device"] == "cuda" else f"CPU only ({env['cpu']}, {env['cpu_threads']} threads)"
    return save_figure(fig, png_path, f"Adapter head providers, {env['dtype']}, C={env['embed_dim']} on {where}; "
                       f"torch {env['torch']}, triton {env['triton']}, commit {env['commit']}", dpi=110)


if __name__ == "__main__":
    plot_from_command_line(plot_kernel, RESULTS_DIR / "kernel_cpu.csv")
