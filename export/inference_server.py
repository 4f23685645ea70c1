"""An NVIDIA Triton Inference Server model repository for an export folder.

Layout (what the server expects): ``REPO/<model>/config.pbtxt`` and ``REPO/<model>/1/model.onnx``
(platform ``onnxruntime_onnx``) or ``REPO/<model>/1/model.plan`` (platform ``tensorrt_plan``).
Models with a request batch axis get ``max_batch_size`` and dynamic batching, and their dims are
written without the batch axis; the adapter head takes a class bank without a batch axis, so it is
served with ``max_batch_size: 0`` and full dims.

Beside them, the pipeline model ``mmadapter`` (Python backend; the model ``mmadapter serve`` runs, same
config writer and model file): image bytes and an optional label set in, labels out. Here it runs each
graph by calling the per-graph model (business-logic scripting, ``graphs: onnxruntime``; ``tensorrt``
calls the ``<graph>_trt`` models), and it finds the export folder (manifest, tokenizer) by a path relative
to the repository, so that mounting their common parent keeps the two together.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from mmadapter.files import atomic_write_text, atomic_write_with
from mmadapter.folders import read_listing, write_listing
from mmadapter.runtime.manifest import GraphIO, Manifest, TensorSpec
from mmadapter.server.bls import ONNXRUNTIME, TRT_SUFFIX
from mmadapter.server.repository import MODEL, MODEL_FILE, Settings, pipeline_config

# What a repository written here holds (sealed by its own sha256), so that a later --overwrite
# replaces only that.
MARKER = ".mmadapter-serving.json"
MARKER_FORMAT = "mmadapter-serving-repository"

TRITON_DTYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "int64": "TYPE_INT64", "int32": "TYPE_INT32"}


def _tensor_block(t: TensorSpec, drop_batch: bool) -> str:
    dims = t.shape[1:] if drop_batch else t.shape
    dims_txt = ", ".join(str(d) if isinstance(d, int) else "-1" for d in dims)
    return f'  {{\n    name: "{t.name}"\n    data_type: {TRITON_DTYPES[t.dtype]}\n    dims: [ {dims_txt} ]\n  }}'


def config_pbtxt(name: str, platform: str, io: GraphIO, batchable: bool, max_batch_size: int,
                 gpu: bool = False) -> str:
    lines = [f'name: "{name}"', f'platform: "{platform}"', f"max_batch_size: {max_batch_size if batchable else 0}"]
    lines.append("input [\n" + ",\n".join(_tensor_block(t, batchable) for t in io.inputs) + "\n]")
    lines.append("output [\n" + ",\n".join(_tensor_block(t, batchable) for t in io.outputs) + "\n]")
    if batchable:
        # Requests are merged up to the profile's preferred size, waiting at most 0.5 ms for company.
        lines.append("dynamic_batching {\n  max_queue_delay_microseconds: 500\n}")
    lines.append(f"instance_group [\n  {{\n    count: 1\n    kind: {'KIND_GPU' if gpu else 'KIND_AUTO'}\n  }}\n]")
    return "\n".join(lines) + "\n"


def write_pipeline_model(repo: Path, export_path: str, max_batch_size: int, precision: str,
                         graphs: str = ONNXRUNTIME) -> list[str]:
    """The pipeline model, calling the per-graph models (``graphs``: onnxruntime or tensorrt); ``export_path``:
    the export folder, relative to ``repo``. Returns the files written, relative to ``repo``."""
    settings = Settings(precision=precision, graphs=graphs, graph_max_batch_size=max_batch_size)
    atomic_write_text(repo / MODEL / "config.pbtxt", pipeline_config(export_path, settings))
    atomic_write_with(repo / MODEL / "1" / "model.py", lambda tmp: shutil.copyfile(MODEL_FILE, tmp))
    return [f"{MODEL}/config.pbtxt", f"{MODEL}/1/model.py"]


def write_model_repository(export_dir: Path, repo: Path, manifest: Manifest, max_batch_size: int = 64,
                           precision: str = "fp32", export_path: str | None = None,
                           graphs: str = ONNXRUNTIME) -> list[Path]:
    """Write one ONNX model per graph, and one TensorRT model per engine in the manifest, plus the
    :data:`MARKER` listing every file written. With ``export_path`` (where the export folder will be,
    relative to ``repo``), also the pipeline model. Write errors are one FileWriteError line."""
    written = []
    files: list[str] = []
    if export_path is not None:
        files += write_pipeline_model(repo, export_path, max_batch_size, precision, graphs)
        written.append(repo / MODEL / "config.pbtxt")
    for graph, entry in manifest.graphs.items():
        paths = entry.files.get(precision) or entry.files["fp32"]
        # The portable graph: Triton's ORT backend applies its own fusions, and a portable file
        # does not depend on the contrib ops of the ONNX Runtime version that Triton bundles.
        models = [(graph, "onnxruntime_onnx", paths.portable, "model.onnx", False)]
        engine = manifest.tensorrt.engines.get(graph) if manifest.tensorrt is not None else None
        if engine:
            models.append((graph + TRT_SUFFIX, "tensorrt_plan", engine.file, "model.plan", True))
        for name, platform, src, dst_name, gpu in models:
            model_file = repo / name / "1" / dst_name
            atomic_write_with(model_file, lambda tmp, src=src: shutil.copyfile(Path(export_dir) / src, tmp))
            cfg = atomic_write_text(repo / name / "config.pbtxt",
                                    config_pbtxt(name, platform, entry.io, entry.batchable, max_batch_size, gpu))
            files += [f"{name}/1/{dst_name}", f"{name}/config.pbtxt"]
            written.append(cfg)
    write_listing(repo, MARKER, MARKER_FORMAT, files)
    return written


def written_files(repo: Path) -> set[str] | None:
    """Paths (relative, '/'-separated) that :func:`write_model_repository` wrote into ``repo`` and that
    are still as written (size), from its marker; None when ``repo`` has no marker, or one edited
    since (its own sha256 differs)."""
    return read_listing(Path(repo), MARKER, MARKER_FORMAT)
