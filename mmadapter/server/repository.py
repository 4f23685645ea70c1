"""The folder ``mmadapter serve`` runs tritonserver from: ``models/`` (the model repository, holding the
pipeline model) and ``backends/python/`` (the Python backend and its stub), written as an owned folder
(``mmadapter.folders``) and reused as long as it holds exactly what would be written again.

The backend is copied out of the ``nvidia-pytriton`` wheel instead of pointing the server into
site-packages: its stub must sit beside ``libtriton_python.so``, and the wheel ships one stub per
Python version in another folder; copying leaves the installed wheel untouched.

The stub embeds Python in isolated mode, which ignores ``PYTHONPATH``, and imports
``triton_python_backend_utils`` (which imports numpy) before any model file. So the copy of that
module gets a prelude that puts ``PYTHONPATH`` on ``sys.path`` first: the launcher sets it to this
environment (mmadapter, numpy, onnxruntime), and the repository names no path of this machine but
the export's.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import mmadapter
from mmadapter.errors import MMAdapterError
from mmadapter.files import atomic_write_text, atomic_write_with
from mmadapter.folders import Owner, destination, owned_folder, read_listing, write_listing

MODEL = "mmadapter"  # the pipeline's name in the repository, and in clients' URLs
MARKER = ".mmadapter-server.json"
MARKER_FORMAT = "mmadapter-server-folder"
MODEL_FILE = Path(__file__).with_name("triton_model.py")  # the pipeline model's 1/model.py
INSTALL_HINT = "pip install 'mmadapter[server]'"


class ServeError(MMAdapterError):
    """Something that keeps the server from starting: one error line, exit 2."""


@dataclass(frozen=True)
class Settings:
    """The pipeline's knobs, named as Triton's config names them."""

    max_batch_size: int = 32
    max_queue_delay_microseconds: int = 2000  # how long the first request waits for company
    instance_count: int = 1
    top_k: int = 5
    precision: str = "fp32"
    intra_op_threads: int | None = None
    # Where the graphs run (mmadapter.server.bls.GRAPH_MODES): in this model's process, or the repository's
    # per-graph models, which take at most graph_max_batch_size rows per request.
    graphs: str = "in-process"
    graph_max_batch_size: int | None = None


@dataclass(frozen=True)
class TritonInstall:
    """Where the ``nvidia-pytriton`` wheel keeps the server, its Python backend and libraries."""

    binary: Path
    backend: Path  # libtriton_python.so and triton_python_backend_utils.py
    stub: Path  # triton_python_backend_stub built for this Python
    libs: Path  # the shared libraries the binary was linked against (auditwheel's folder)


def find_triton() -> TritonInstall:
    """The server of the installed ``nvidia-pytriton``; a ServeError naming the install when it is absent."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise ServeError(f"`mmadapter serve` needs NVIDIA Triton Inference Server (nvidia-pytriton is not "
                         f"installed): {INSTALL_HINT}")
    root = Path(list(spec.submodule_search_locations)[0]) / "tritonserver"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    install = TritonInstall(root / "bin" / "tritonserver", root / "backends" / "python",
                            root / "python_backend_stubs" / version / "triton_python_backend_stub",
                            root.parent.parent / "nvidia_pytriton.libs")
    for path in (install.binary, install.backend / "libtriton_python.so", install.stub, install.libs):
        if not path.exists():
            raise ServeError(f"the nvidia-pytriton install lacks {path} (Python {version}); reinstall it: "
                             f"{INSTALL_HINT}")
    return install


PRELUDE = """# Prepended by `mmadapter serve`: the stub's isolated Python ignores PYTHONPATH; honour it here.
import os as _os
import sys as _sys

for _entry in reversed([_p for _p in _os.environ.get("PYTHONPATH", "").split(_os.pathsep) if _p]):
    if _entry not in _sys.path:
        _sys.path.insert(0, _entry)
"""


# Folders put before everything else on the stub's sys.path. The stub of nvidia-pytriton 0.7.0 was built
# for numpy 1 (it garbles every BYTES input under numpy 2), so an environment with numpy 2 (torch's
# dev set-up) names a folder holding numpy<2 here: pip install --target DIR 'numpy<2'.
STUB_PATH_ENV = "MMADAPTER_SERVER_PYTHONPATH"


def python_path() -> list[str]:
    """What the stub's Python needs on sys.path: $MMADAPTER_SERVER_PYTHONPATH, this mmadapter's folder,
    then this environment's packages."""
    paths = [p for p in os.environ.get(STUB_PATH_ENV, "").split(os.pathsep) if p]
    paths.append(str(Path(mmadapter.__file__).resolve().parent.parent))
    for key in ("purelib", "platlib"):
        path = sysconfig.get_paths()[key]
        if path not in paths:
            paths.append(path)
    return paths


def check_stub_numpy(paths: list[str]) -> None:
    """The first numpy on the stub's path must be numpy 1 (see :data:`STUB_PATH_ENV`)."""
    for entry in paths:
        version_file = Path(entry) / "numpy" / "version.py"
        if version_file.is_file():
            found = re.search(r"""^(?:__)?version(?:__)?\s*(?::\s*str)?\s*=\s*["']([^"']+)""",
                              version_file.read_text(), re.M)
            version = found.group(1) if found else "unknown"
            if not version.startswith("1."):
                raise ServeError(f"tritonserver's Python backend (nvidia-pytriton 0.7.0) needs numpy<2, but its path "
                                 f"holds numpy {version} ({entry}); install numpy<2 into a folder and name it: "
                                 f"pip install --target DIR 'numpy<2'; export {STUB_PATH_ENV}=DIR")
            return
    raise ServeError(f"numpy is not on tritonserver's Python path ({os.pathsep.join(paths)})")


def _parameter(key: str, value: object) -> str:
    return f"  {{\n    key: {json.dumps(key)}\n    value: {{ string_value: {json.dumps(str(value))} }}\n  }}"


def pipeline_config(export_dir: Path | str, settings: Settings) -> str:
    """config.pbtxt of the pipeline model: IMAGE (encoded bytes, one per batch row) and an optional
    LABELS set in; top-k LABEL and PROBABILITY, and both image embeddings, out. ``export_dir`` is written
    as given: absolute, or relative to the model repository (see triton_model.export_folder)."""
    params = {"export_dir": export_dir, "top_k": settings.top_k, "precision": settings.precision,
              "intra_op_threads": settings.intra_op_threads or "", "graphs": settings.graphs}
    if settings.graph_max_batch_size is not None:
        params["graph_max_batch_size"] = settings.graph_max_batch_size
    tensors = [("IMAGE", "TYPE_STRING", "1", ""), ("LABELS", "TYPE_STRING", "-1", "\n    optional: true")]
    outputs = [("LABEL", "TYPE_STRING"), ("PROBABILITY", "TYPE_FP32"), ("ADAPTED_EMBEDDING", "TYPE_FP32"),
               ("CLIP_EMBEDDING", "TYPE_FP32")]
    block = "  {{\n    name: \"{}\"\n    data_type: {}\n    dims: [ {} ]{}\n  }}"
    return "\n".join([
        f'name: "{MODEL}"', 'backend: "python"', f"max_batch_size: {settings.max_batch_size}",
        "input [\n" + ",\n".join(block.format(*t) for t in tensors) + "\n]",
        "output [\n" + ",\n".join(block.format(n, d, "-1", "") for n, d in outputs) + "\n]",
        f"dynamic_batching {{\n  max_queue_delay_microseconds: {settings.max_queue_delay_microseconds}\n}}",
        f"instance_group [\n  {{\n    count: {settings.instance_count}\n    kind: KIND_CPU\n  }}\n]",
        "parameters [\n" + ",\n".join(_parameter(k, v) for k, v in params.items()) + "\n]",
    ]) + "\n"


def _files(export_dir: Path, settings: Settings, install: TritonInstall) -> dict[str, Path | str]:
    """What the folder holds: relative path -> text to write or file to copy."""
    return {
        f"models/{MODEL}/config.pbtxt": pipeline_config(export_dir.resolve(), settings),
        f"models/{MODEL}/1/model.py": MODEL_FILE,
        "backends/python/libtriton_python.so": install.backend / "libtriton_python.so",
        "backends/python/triton_python_backend_utils.py":
            PRELUDE + (install.backend / "triton_python_backend_utils.py").read_text(),
        "backends/python/triton_python_backend_stub": install.stub,
    }


def _same(folder: Path, files: dict[str, Path | str]) -> bool:
    if read_listing(folder, MARKER, MARKER_FORMAT) != set(files):
        return False
    for name, source in files.items():
        want = source.read_bytes() if isinstance(source, Path) else source.encode()
        if (folder / name).read_bytes() != want:
            return False
    return True


# whole=True: the running server adds files of its own (the stub's __pycache__ folders), so a proven
# marker makes the whole folder ours, not only the files it lists.
OWNER = Owner("serve", MARKER, lambda f: read_listing(f, MARKER, MARKER_FORMAT),
              "holds files that `mmadapter serve` did not write", whole=True, error=ServeError)


def prepare_folder(folder: Path, export_dir: Path, settings: Settings, install: TritonInstall) -> bool:
    """Write ``folder`` (or keep it when it already holds the same files); True when it was written."""
    files = _files(export_dir, settings, install)
    if folder.is_dir() and _same(folder, files):
        return False
    with owned_folder(destination(folder, "--model-repository", OWNER), overwrite=True) as tmp:
        for name, source in files.items():
            if isinstance(source, Path):
                atomic_write_with(tmp / name, lambda t, s=source: shutil.copyfile(s, t))
            else:
                atomic_write_text(tmp / name, source)
        (tmp / "backends/python/triton_python_backend_stub").chmod(0o755)
        write_listing(tmp, MARKER, MARKER_FORMAT, files)
    return True
