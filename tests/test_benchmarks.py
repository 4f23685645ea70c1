"""Each benchmark runs from a checkout as ``python -m benchmarks.<name>`` (repository root as working
directory, nothing put on sys.path by the script) in its ``--smoke`` mode, writes its CSV where it is
told, and stamps every row with the machine, the versions and the commit. The plots redraw from the
CSVs as ``python -m benchmarks.plot_<name>``. Timings are not checked: they are what is measured."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STAMP = {"machine", "cpu", "gpu", "python", "torch", "triton", "onnxruntime", "commit", "date"}

pytestmark = pytest.mark.slow


def run_module(module: str, *args: str | Path, env: dict[str, str] | None = None) -> str:
    done = subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=300)
    assert done.returncode == 0, f"python -m {module} exited {done.returncode}:\n{done.stderr[-3000:]}"
    return done.stdout


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows, f"{path} has no rows"
    missing = STAMP - set(rows[0])
    assert not missing, f"{path.name} lacks the stamp columns {sorted(missing)}"
    for row in rows:
        assert all(row[k] for k in STAMP), f"{path.name}: empty stamp in {row}"
        assert row["commit"] != "unknown", "the commit of a checkout must be recorded"
    return rows


def test_bench_kernel_smoke_without_open_clip(tmp_path: Path) -> None:
    """The GPU machines have torch and Triton but no open_clip: the kernel benchmark must not import it."""
    blocker = tmp_path / "blocked"
    blocker.mkdir()
    (blocker / "open_clip.py").write_text("raise ImportError('the kernel benchmark must not import open_clip')\n")
    out = tmp_path / "kernel.csv"
    providers = ("reference", "torch-fast", "sdpa")  # torch-compile's compile takes most of a minute on CPU
    run_module("benchmarks.bench_kernel", "--smoke", "--repeats", "3", "--providers", ",".join(providers), "--cpu",
               "--no-plot", "--out", out, env={"PYTHONPATH": str(blocker)})
    rows = read_rows(out)
    assert {r["provider"] for r in rows} == set(providers)
    assert len(rows) == 3 * 2 * 2, "providers x batch sizes x class counts of --smoke"
    assert all(r["status"] == "ok" for r in rows), [r["status"] for r in rows if r["status"] != "ok"]
    assert all(float(r["p20_ms"]) <= float(r["median_ms"]) <= float(r["p80_ms"]) for r in rows)
    png = tmp_path / "kernel.png"
    assert run_module("benchmarks.plot_kernel", out).strip() == str(png) and png.stat().st_size > 0


def test_bench_adapter_smoke(tmp_path: Path) -> None:
    out = tmp_path / "adapter.csv"
    stdout = run_module("benchmarks.bench_adapter", "--smoke", "--no-plot", "--out", out)
    assert "no verdict" in stdout, "the smoke grid does not hold the target shape, so no verdict is given"
    rows = read_rows(out)
    assert sorted({r["impl"] for r in rows}) == ["fast", "reference"] and len(rows) == 2 * 2 * 1
    png = tmp_path / "adapter.png"
    assert run_module("benchmarks.plot_adapter", out).strip() == str(png) and png.stat().st_size > 0


def test_bench_train_smoke(tmp_path: Path) -> None:
    out = tmp_path / "train.csv"
    run_module("benchmarks.bench_train", "--smoke", "--out", out)
    rows = read_rows(out)
    assert {(r["head"], r["mode"]) for r in rows} == {
        (h, m) for h in ("mma", "clip-adapter") for m in ("fixed_epochs", "early_stopping")
    }
    assert all(int(r["epochs"]) <= 2 and r["num_classes"] == "10" for r in rows)


@pytest.mark.parametrize("script", [p.name for p in sorted((ROOT / "benchmarks").glob("*.py"))])
def test_benchmark_does_not_edit_sys_path(script: str) -> None:
    """The benchmarks run as modules of the checkout; a sys.path edit would hide a broken import."""
    assert "sys.path" not in (ROOT / "benchmarks" / script).read_text(), f"benchmarks/{script} edits sys.path"
