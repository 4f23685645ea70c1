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
STAMP = {"machine", "cpu", "gpu", "python", "torch", "triton", "onnxruntime", "commit", "date", "cpu_vnni",
         "cpu_avx512_bf16", "cpu_amx"}

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


# The export benchmark's checks: a path that fails its check against torch, or raises, is a row ----------

SAPPHIRE_RAPIDS = ("processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Platinum 8480+\nflags\t\t: fpu sse avx2 avx512f "
                   "avx512_vnni avx512_bf16 amx_bf16 amx_tile amx_int8 avx_vnni\n\nprocessor\t: 1\nflags\t\t: fpu\n")


@pytest.mark.parametrize("cpuinfo, expected", [
    (SAPPHIRE_RAPIDS, ("avx512_vnni avx_vnni", "avx512_bf16", "amx_tile amx_bf16 amx_int8")),
    ("flags : fpu sse avx2 avx_vnni\n", ("avx_vnni", "no", "no")),  # Alder Lake: VNNI on 256 bits only
    ("flags : fpu sse avx2 avx512f\n", ("no", "no", "no")),  # Skylake-SP
    ("processor : 0\nFeatures : fp asimd\n", ("no", "no", "no")),  # arm64: no x86 flags line
])
def test_cpu_capabilities_from_cpuinfo_flags(cpuinfo: str, expected: tuple[str, str, str]) -> None:
    from benchmarks.common import cpu_capabilities, cpuinfo_flags

    caps = cpu_capabilities(cpuinfo_flags(cpuinfo))
    assert (caps["cpu_vnni"], caps["cpu_avx512_bf16"], caps["cpu_amx"]) == expected
    assert cpu_capabilities("avx512_bf16 amx_int8") == {"cpu_vnni": "no", "cpu_avx512_bf16": "avx512_bf16",
                                                        "cpu_amx": "amx_int8"}


def test_unreadable_cpuinfo_is_unknown(tmp_path: Path) -> None:
    from benchmarks.common import machine_capabilities

    assert set(machine_capabilities(tmp_path / "absent").values()) == {"unknown"}


class FakeSession:
    """A stand-in engine whose outputs are torch's plus an error (or which raises)."""

    def __init__(self, logits, emb, fails: Exception | None = None) -> None:
        self.outputs, self.fails = [logits, emb], fails

    def run(self, names, feeds):
        if self.fails is not None:
            raise self.fails
        return self.outputs


def test_failing_paths_are_rows_and_the_run_goes_on(tmp_path: Path) -> None:
    import numpy as np

    from benchmarks import bench_export
    from benchmarks.common import write_csv
    from benchmarks.plot_export import plot_export

    rng = np.random.default_rng(0)
    logits, emb = rng.standard_normal((2, 5)).astype(np.float32), rng.standard_normal((2, 8)).astype(np.float32)
    sessions = {
        "ort_tuned": FakeSession(logits + 1e-4, emb),
        "ov_fp32": FakeSession(logits + 0.5, emb),  # disagrees with torch
        "ort_int8": FakeSession(logits, -emb),  # cosine -1
        "ort_cuda": FakeSession(None, None, RuntimeError("CUDA driver missing\nmore detail")),
    }
    checks, fns = bench_export.check_sessions(sessions, np.zeros((2, 3)), logits, emb, 0.999)
    assert set(fns) == {"ort_tuned"}, "only paths that passed are timed"
    assert checks["ort_tuned"]["status"] == "ok"
    assert checks["ov_fp32"]["status"].startswith("failed: disagrees with torch")
    assert checks["ov_fp32"]["max_abs_diff_vs_torch"] == pytest.approx(0.5, rel=1e-3)
    assert checks["ort_int8"]["status"].startswith("failed: embedding cosine -1")
    assert checks["ort_cuda"]["status"] == "error: RuntimeError: CUDA driver missing"
    timing = {"median_ms": 10.0, "p20_ms": 9.0, "p80_ms": 11.0}
    checks = {"torch_eager": {"status": "ok"}, **checks}
    rows = bench_export.path_rows(2, checks, {"torch_eager": timing, "ort_tuned": timing},
                                  {"ov_int8": "OpenVINO unavailable (no module named openvino)"}, peak=1e12)
    by_name = {r["backend"]: r for r in rows}
    assert set(by_name) == {"torch_eager", "ort_tuned", "ov_fp32", "ort_int8", "ort_cuda", "ov_int8"}
    assert by_name["ort_tuned"]["speedup_vs_torch"] == 1.0 and "median_ms" not in by_name["ov_fp32"]
    assert by_name["ov_int8"]["status"].startswith("skipped: OpenVINO unavailable")
    path = write_csv(rows, tmp_path / "export.csv")
    png = plot_export(path)  # the plot draws the timed rows and passes over the others
    assert png.stat().st_size > 0
    with path.open(newline="") as f:
        assert {r["backend"]: r["status"].split(":")[0] for r in csv.DictReader(f)} == {
            "torch_eager": "ok", "ort_tuned": "ok", "ov_fp32": "failed", "ort_int8": "failed", "ort_cuda": "error",
            "ov_int8": "skipped"}
