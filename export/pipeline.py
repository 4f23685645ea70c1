"""``export_checkpoint``: checkpoint -> validated ONNX graphs (+ TensorRT engines, + a Triton model
repository) in one folder, written atomically.

Everything is built in a temporary folder next to the destination and renamed into place only
when every step (validation included) succeeded; an error or Ctrl-C removes the temporary folder,
so the destination never holds a half-written export.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from mmadapter.export import onnx_io
from mmadapter.export.manifest import file_entry, package_versions, sha256_file, write_manifest
from mmadapter.export.tensorrt import BatchProfile

from mmadapter.errors import ExportError

MAX_REPORTED_FAILURES = 6


@dataclass
class ExportResult:
    out_dir: Path
    manifest: dict[str, Any]
    validation: list[dict[str, Any]] = field(default_factory=list)
    serving_repo: Path | None = None
    tensorrt_error: str | None = None  # set when --tensorrt could not run here (ONNX files were written)

    @property
    def files(self) -> list[str]:
        return sorted(self.manifest["files"])


def _check_destination(path: Path, overwrite: bool, what: str) -> None:
    if path.exists() and not path.is_dir():
        raise ExportError(f"{what} {path} exists and is not a folder")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise ExportError(f"{what} {path} is not empty (use --overwrite to replace it)")
    parent = path.resolve().parent
    probe = parent
    while not probe.exists():
        probe = probe.parent
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ExportError(f"{what} {path} cannot be written: {probe} is not writable")


def _temp_beside(path: Path) -> Path:
    parent = path.resolve().parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = parent / f".{path.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    return tmp


def _move_into_place(tmp: Path, dest: Path) -> None:
    """Replace ``dest`` by ``tmp`` with renames only (an old export survives until the last step)."""
    old = None
    if dest.exists():
        old = dest.parent / f".{dest.name}.old-{os.getpid()}"
        dest.rename(old)
    tmp.rename(dest)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _summarise(failures: list[str]) -> str:
    shown = failures[:MAX_REPORTED_FAILURES]
    more = f" (+{len(failures) - len(shown)} more)" if len(failures) > len(shown) else ""
    return "; ".join(shown) + more


def export_checkpoint(
    checkpoint: Path,
    out_dir: Path,
    *,
    fp16: bool = False,
    int8: bool = False,
    opset: int = onnx_io.DEFAULT_OPSET,
    validate: bool = True,
    overwrite: bool = False,
    tensorrt: bool = False,
    profile: BatchProfile | None = None,
    max_classes: int = 4096,
    serving_repo: Path | None = None,
    providers: Sequence[str] | None = ("cpu",),
    progress: bool = True,
) -> ExportResult:
    """Export a checkpoint; see the module docstring. Raises one-line MMAdapterErrors."""
    import torch
    from mmadapter.export.specs import build_specs
    from mmadapter.export.validate import build_cases, validate_graph
    from tqdm import tqdm

    from mmadapter.backbone import load_clip
    from mmadapter.checkpoint import load_checkpoint

    checkpoint, out_dir = Path(checkpoint), Path(out_dir)
    profile = profile or BatchProfile()
    _check_destination(out_dir, overwrite, "output folder")
    if serving_repo is not None:
        _check_destination(Path(serving_repo), overwrite, "serving repository")
    precisions = ["fp32"] + ["fp16"] * fp16 + ["int8"] * int8
    steps = 2 + 4 * len(precisions) + int(validate) + int(tensorrt) + int(serving_repo is not None) + 1
    # disable=None: no bar when stderr is not a terminal (logs, pipes), so errors stay one line there.
    bar = tqdm(total=steps, desc="export", unit="step", disable=None if progress else True, file=sys.stderr,
               leave=False)

    def step(name: str) -> None:
        bar.set_postfix_str(name)

    try:  # the bar is cleared before any error is printed, so the error is the only line left
        step("load checkpoint")
        adapter, meta = load_checkpoint(checkpoint, backend="torch")
        clip = load_clip(meta.clip)
        if clip.embed_dim != meta.adapter.embed_dim:
            raise ExportError(f"adapter width {meta.adapter.embed_dim} does not match CLIP {meta.clip.model_name} "
                              f"(embedding width {clip.embed_dim})")
        bar.update()
        step("class bank")
        with torch.no_grad():
            class_emb = clip.class_embeddings(meta.label_set.class_names, meta.label_set.templates)
            bank = adapter.class_bank(class_emb, meta.label_set.class_names)
        context_length = int(getattr(clip.tokenizer, "context_length", 77))
        specs = build_specs(clip.model, adapter, bank, meta.logit_scale, clip.image_size, context_length)
        bar.update()
    except BaseException:
        bar.close()
        raise

    tmp = _temp_beside(out_dir)
    repo_tmp = None
    try:
        repo_tmp = _temp_beside(Path(serving_repo)) if serving_repo is not None else None
        graphs: dict[str, Any] = {}
        fusions: dict[str, dict[str, int]] = {}
        for spec in specs:
            step(f"export {spec.name}")
            portable = onnx_io.export_graph(spec, tmp / f"{spec.name}.onnx", opset)
            files = {"fp32": {"portable": portable.name, "ort": f"{spec.name}.ort.onnx"}}
            fusions[spec.name] = onnx_io.optimize_for_ort(portable, tmp / files["fp32"]["ort"])
            if fp16:
                files["fp16"] = {"portable": f"{spec.name}.fp16.onnx", "ort": f"{spec.name}.fp16.ort.onnx"}
                onnx_io.to_fp16(portable, tmp / files["fp16"]["portable"])
                # fp16 after fusion, as ONNX Runtime recommends: the fused ops get fp16 kernels.
                onnx_io.to_fp16(tmp / files["fp32"]["ort"], tmp / files["fp16"]["ort"])
            int8_matmuls = 0
            if int8 and spec.int8_scopes:
                # From the fused graph: the quantizer keeps ORT's fusions. No portable int8 file:
                # its DynamicQuantize/MatMulInteger ops are for ONNX Runtime on CPU, not TensorRT.
                files["int8"] = {"ort": f"{spec.name}.int8.ort.onnx"}
                int8_matmuls = onnx_io.quantize_int8(tmp / files["fp32"]["ort"], tmp / files["int8"]["ort"],
                                                     spec.int8_scopes)
            graphs[spec.name] = {
                "description": spec.description,
                "batchable": spec.batchable,
                "batch_inputs": [t.name for t in spec.inputs if t.batch_axis in ("batch", "text_batch")],
                "io": {"inputs": [t.to_dict() for t in spec.inputs], "outputs": [t.to_dict() for t in spec.outputs]},
                "files": files,
                "ort_fusions": fusions[spec.name],
                **({"int8_matmuls": int8_matmuls} if int8_matmuls else {}),
            }
            bar.update(len(precisions))

        reports: list[dict[str, Any]] = []
        if validate:
            step("validate")
            reports = _validate_all(specs, graphs, tmp, clip, adapter, bank, meta, providers, build_cases,
                                    validate_graph)
            failures = [f for r in reports for f in r["failures"]]
            if failures:
                raise ExportError(f"validation failed: {_summarise(failures)}")
            bar.update()

        manifest = _manifest(tmp, checkpoint, meta, clip, graphs, opset, reports, validate, context_length)
        tensorrt_error = None
        if tensorrt:
            step("tensorrt")
            from mmadapter.export.tensorrt import tensorrt_unavailable_reason

            tensorrt_error = tensorrt_unavailable_reason()
            if tensorrt_error is None:
                manifest["tensorrt"] = _build_engines(tmp, graphs, profile, max_classes, len(bank.class_names), fp16)
            bar.update()
        manifest["files"] = {name: file_entry(tmp, name) for name in sorted(os.listdir(tmp))
                             if (tmp / name).is_file() and not name.endswith(".json")}
        write_manifest(tmp, manifest)
        if repo_tmp is not None:
            step("serving repository")
            from mmadapter.export.serving import write_model_repository

            write_model_repository(tmp, repo_tmp, manifest, profile.max, "fp16" if fp16 else "fp32")
            bar.update()
        step("move into place")
        _move_into_place(tmp, out_dir)
        if repo_tmp is not None:
            _move_into_place(repo_tmp, Path(serving_repo))
        bar.update()
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if repo_tmp is not None:
            shutil.rmtree(repo_tmp, ignore_errors=True)
        raise
    finally:
        bar.close()
    return ExportResult(out_dir, manifest, reports, Path(serving_repo) if serving_repo else None, tensorrt_error)


def _validate_all(specs, graphs, folder, clip, adapter, bank, meta, providers, build_cases, validate_graph):
    import onnxruntime as ort
    from mmadapter.export.runtime import resolve_providers, session_options

    chosen = resolve_providers(providers)
    cases = build_cases(clip, adapter, bank, meta.logit_scale, meta.label_set.templates)
    reports = []
    for spec in specs:
        for precision, files in graphs[spec.name]["files"].items():
            for kind, name in files.items():
                report = validate_graph(folder / name, spec, cases[spec.name], precision,
                                        lambda p: ort.InferenceSession(str(p), session_options(), providers=chosen))
                # TensorRT's ONNX parser knows the standard domain only: contrib ops there are a failure.
                if kind == "portable":
                    foreign = sorted({f"{d}.{op}" for d, op in onnx_io.op_types(folder / name) if d != "ai.onnx"})
                    if foreign:
                        report.failures.append(f"{name}: non-standard ops {foreign} in the portable graph")
                reports.append(report.to_dict())
    return reports


def _manifest(folder, checkpoint, meta, clip, graphs, opset, reports, validated, context_length) -> dict[str, Any]:
    from mmadapter.export.preprocess import Preprocessing

    tok = clip.tokenizer
    return {
        "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "checkpoint": {"file": checkpoint.name, "sha256": sha256_file(checkpoint)},
        "clip": meta.clip.to_dict(),
        "adapter": meta.adapter.to_dict(),
        "logit_scale": meta.logit_scale,
        "label_set": meta.label_set.to_dict(),
        "preprocessing": Preprocessing(clip.image_size, clip.image_mean, clip.image_std).to_dict(),
        "tokenizer": {
            "kind": f"open_clip {type(tok).__name__}",
            "model_name": meta.clip.model_name,
            "context_length": context_length,
            "sot_token_id": getattr(tok, "sot_token_id", None),
            "eot_token_id": getattr(tok, "eot_token_id", None),
            "note": "byte-level BPE of open_clip (bpe_simple_vocab_16e6); lower-cased, padded with 0",
        },
        "opset": opset,
        "versions": package_versions(),
        "graphs": graphs,
        "validation": {"run": validated, "passed": all(r["passed"] for r in reports) if validated else None,
                       "reports": reports},
    }


def _build_engines(folder: Path, graphs: dict[str, Any], profile: BatchProfile, max_classes: int, num_classes: int,
                   fp16: bool) -> dict[str, Any]:
    import tensorrt as trt
    from mmadapter.export.tensorrt import build_engine, cuda_gpu, engine_filename

    gpu = cuda_gpu()
    precision = "fp16" if fp16 else "fp32"
    engines = {}
    for graph, entry in graphs.items():
        onnx_path = folder / entry["files"][precision]["portable"]
        name = engine_filename(graph, sha256_file(onnx_path), trt.__version__, gpu.name, profile)
        build_engine(onnx_path, folder / name, entry["io"]["inputs"], profile,
                     (1, min(num_classes, max_classes), max_classes), precision, folder / "timing.cache")
        engines[graph] = {"file": name, "sidecar": Path(name).with_suffix(".json").name, "precision": precision}
    return {"version": trt.__version__, "gpu": gpu.name, "compute_capability": gpu.compute_capability,
            "profile": vars(profile), "engines": engines}
