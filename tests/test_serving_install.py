"""The serving install: pyproject's base dependencies name no torch, and ``mmadapter predict --onnx`` (with
and without ``--classes``) runs in a process where torch, torchvision, open_clip, triton, safetensors, tqdm
and onnx cannot be imported; commands that need them say in one line what to install. (.ci/run installs
the wheel into a fresh venv and runs the same commands there.)"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

from export_fixtures import CLASS_NAMES, ExportBundle
from helpers import write_sample_images

ROOT = Path(__file__).resolve().parents[1]
TRAINING_ONLY = ("torch", "torchvision", "open_clip", "triton", "safetensors", "tqdm", "onnx", "onnxscript")

# Runs mmadapter's CLI with the training-only modules made unimportable, then reports which of them
# were imported anyway (none may be) on its last stderr line.
BLOCKED_RUN = """
import importlib.abc, sys
BLOCKED = set(sys.argv[1].split(","))
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, Block())
from mmadapter.cli import main
rc = main(sys.argv[2:])
print("imported:", ",".join(sorted({m.split(".")[0] for m in sys.modules} & BLOCKED)), file=sys.stderr)
sys.exit(rc)
"""


def _run_blocked(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "MMADAPTER_BANK_CACHE": str(tmp_path / "banks")}
    return subprocess.run([sys.executable, "-c", BLOCKED_RUN, ",".join(TRAINING_ONLY), *args], capture_output=True,
                          text=True, env=env, cwd=tmp_path, timeout=300, stdin=subprocess.DEVNULL)


def _requirement_names(requirements: list[str]) -> set[str]:
    return {re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0].lower().replace("_", "-") for r in requirements}


def test_base_and_runtime_installs_name_no_torch() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    forbidden = {"torch", "torchvision", "open-clip-torch", "triton", "safetensors"}
    for what, reqs in (("base", project["dependencies"]), ("runtime", extras["runtime"]),
                       ("runtime-gpu", extras["runtime-gpu"])):
        assert not _requirement_names(reqs) & forbidden, what
    assert {"numpy", "pillow", "tokenizers", "ftfy"} <= _requirement_names(project["dependencies"])
    assert _requirement_names(extras["runtime"]) == {"onnxruntime"}
    assert _requirement_names(extras["runtime-gpu"]) == {"onnxruntime-gpu"}
    # The training extra keeps the pinned torch/torchvision pair, which ./dev installs first.
    assert {"torch==2.14.1", "torchvision==0.29.1"} <= set(extras["train"])
    dev = (ROOT / "dev").read_text()
    assert '"torch==2.14.1" "torchvision==0.29.1"' in dev and ".[train," in dev


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_sample_images(tmp_path_factory.mktemp("serving-images"), 3, seed=4)


@pytest.mark.parametrize("classes", [None, "zero,one,two"])
def test_predict_onnx_imports_no_training_module(exported: ExportBundle, images: Path, tmp_path: Path,
                                                 classes: str | None) -> None:
    args = ["predict", "--onnx", str(exported.out_dir), str(images), "--top-k", "2"]
    args += ["--classes", classes] if classes else []
    proc = _run_blocked(args, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == "imported:"  # none of TRAINING_ONLY
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 3
    allowed = {"zero", "one", "two"} if classes else set(CLASS_NAMES)
    for line in lines:
        names = {part.split(" (")[0] for part in line.split(": ", 1)[1].split(", ")}
        assert names <= allowed, line


@pytest.mark.parametrize(("command", "extras"), [
    (["train", "--data", ".", "--out", "x.safetensors"], "train"),
    (["evaluate", "--data", ".", "--out", "report"], "train"),
    # The demo exports, and export validates with ONNX Runtime: both installs (README's "Installs").
    (["demo", "--out", "demo"], "train,runtime"),
])
def test_training_commands_name_the_install_in_one_line(tmp_path: Path, command: list[str], extras: str) -> None:
    proc = _run_blocked(command, tmp_path)
    assert proc.returncode == 2
    err = proc.stderr.strip().splitlines()
    assert len(err) == 2 and err[1].startswith("imported:"), proc.stderr  # the error line, then the probe's
    assert err[0].startswith(f"error: `mmadapter {command[0]}` needs the training install")
    assert err[0].endswith(f"pip install 'mmadapter[{extras}]'")
    assert not list(tmp_path.glob("x.safetensors*")) and not (tmp_path / "report").exists()


def test_predict_with_checkpoint_names_the_install(exported: ExportBundle, images: Path, tmp_path: Path) -> None:
    proc = _run_blocked(["predict", "--checkpoint", str(exported.checkpoint), str(images)], tmp_path)
    assert proc.returncode == 2
    first = proc.stderr.strip().splitlines()[0]
    assert first.startswith("error: `mmadapter predict` needs the training install") and "'mmadapter[train]'" in first
