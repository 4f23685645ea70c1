"""``export_checkpoint``: checkpoint -> validated ONNX graphs (+ TensorRT engines, + a Triton model
repository) in one folder, written atomically.

Everything is built in a temporary folder next to the destination and renamed into place only
when every step (validation included) succeeded; an error, Ctrl-C or SIGTERM removes the temporary
folder, so the destination never holds a half-written export.

Destinations are checked before anything is loaded: ``--overwrite`` replaces only what an earlier
export wrote (its manifest, or the serving repository's marker, lists it, and neither was edited
since), never a folder holding anything else or the export's own inputs; ``--out`` and
``--serving-repo`` are separate folders; a symbolic link is followed (its target is replaced, the
link kept) and a dangling one refused. A lock file beside each destination lets only one export
write it at a time. The folder handling is :mod:`mmadapter.folders`'s.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from mmadapter import interrupts
from mmadapter.errors import ExportError, MMAdapterError
from mmadapter.export import onnx_io
from mmadapter.export.defaults import DEFAULT_MAX_CLASSES, DEFAULT_PROVIDERS
from mmadapter.export.inference_server import MARKER as REPOSITORY_MARKER
from mmadapter.export.tensorrt import BatchProfile
from mmadapter.folders import Destination, Owner, check_folder, destination, owned_folder, write_error
from mmadapter.runtime.graphs import BATCH_AXES
from mmadapter.runtime.manifest import (
    MANIFEST,
    Bf16,
    CheckpointRef,
    Engine,
    GraphEntry,
    GraphFiles,
    GraphIO,
    LabelSet,
    Manifest,
    Report,
    TensorRT,
    TensorSpec,
    Validation,
    file_entry,
    listed_files,
    package_versions,
    sha256_file,
    write_manifest,
)
from mmadapter.server.bls import ONNXRUNTIME, TENSORRT

MAX_REPORTED_FAILURES = 6


@dataclass
class ExportResult:
    out_dir: Path
    manifest: Manifest
    validation: list[dict[str, Any]] = field(default_factory=list)
    serving_repo: Path | None = None
    tensorrt_error: str | None = None  # set when --tensorrt could not run here (ONNX files were written)

    @property
    def files(self) -> list[str]:
        return sorted(self.manifest.files)


# Arguments ------------------------------------------------------------------------------------------------

def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_export_arguments(*, opset: int = onnx_io.DEFAULT_OPSET, profile: BatchProfile | None = None,
                           max_classes: int = DEFAULT_MAX_CLASSES,
                           providers: Sequence[str] | None = DEFAULT_PROVIDERS, serving_graphs: str = ONNXRUNTIME,
                           tensorrt: bool = False) -> BatchProfile:
    """The cheap checks of an export's arguments (no model loaded); returns the batch profile to use.
    Raises one ExportError line naming the argument."""
    import warnings

    from mmadapter.runtime.engines.onnxruntime import resolve_providers

    if serving_graphs not in (ONNXRUNTIME, TENSORRT):
        raise ExportError(f"--serving-graphs is {ONNXRUNTIME} or {TENSORRT}, not {serving_graphs!r}")
    if serving_graphs == TENSORRT and not tensorrt:
        raise ExportError("--serving-graphs tensorrt calls the TensorRT engines' models: add --tensorrt")

    if not _is_int(opset) or opset not in onnx_io.SUPPORTED_OPSETS:
        raise ExportError(f"opset {opset!r} is not supported; choose {onnx_io.MIN_OPSET}-{onnx_io.MAX_OPSET}")
    profile = profile if profile is not None else BatchProfile()
    if not all(_is_int(v) for v in (profile.min, profile.opt, profile.max)):
        raise ExportError(f"TensorRT batch profile sizes must be integers, got {profile.min!r}/{profile.opt!r}/"
                          f"{profile.max!r}")
    if not _is_int(max_classes) or max_classes < 1:
        raise ExportError(f"max_classes must be an integer >= 1, got {max_classes!r}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a GPU provider missing here is reported when validation runs
        resolve_providers(providers)  # unknown names: one ExportError
    return profile


# Destinations ---------------------------------------------------------------------------------------------

def _repository_files(folder: Path) -> set[str] | None:
    from mmadapter.export.inference_server import written_files

    return written_files(folder)


# An export folder is ours when its manifest (hash checked) lists its files; a serving repository
# when its marker (hash checked) does. Only those files are replaced by --overwrite.
EXPORT_FOLDER = Owner("export", MANIFEST, listed_files, "holds files that no export wrote", error=ExportError)
SERVING_REPOSITORY = Owner("export", REPOSITORY_MARKER, _repository_files, "holds files that no export wrote",
                           error=ExportError)


def _is_within(inner: Path, outer: Path) -> bool:
    return inner == outer or outer in inner.parents


def _inputs(checkpoint: Path) -> list[tuple[str, Path]]:
    """The checkpoint and the CLIP weights file it names (from its header; no tensors loaded)."""
    found = [("checkpoint", checkpoint.resolve())]
    try:
        from mmadapter.model.checkpoint import read_metadata

        weights = read_metadata(checkpoint).get("clip", {}).get("weights_path")
    except (MMAdapterError, OSError, AttributeError):
        return found  # loading the checkpoint reports what is wrong with it
    if isinstance(weights, str) and weights:
        path = Path(weights)
        found.append(("CLIP weights file", (path if path.is_absolute() else checkpoint.parent / path).resolve()))
    return found


def check_destinations(checkpoint: str | Path, out_dir: str | Path, serving_repo: str | Path | None = None,
                       overwrite: bool = False) -> list[Destination]:
    """The destinations of an export after every check that needs no lock (see the module
    docstring); raises one ExportError line naming the argument and the file."""
    checkpoint = Path(checkpoint)
    out = destination(out_dir, "--out", EXPORT_FOLDER)
    dests = [out]
    if serving_repo is not None:
        repo = destination(serving_repo, "--serving-repo", SERVING_REPOSITORY)
        if _is_within(repo.path, out.path) or _is_within(out.path, repo.path):
            raise ExportError(f"--serving-repo {repo.given} and --out {out.given} must be separate folders, neither "
                              "inside the other")
        dests.append(repo)
    inputs = _inputs(checkpoint)
    for dest in dests:
        check_folder(dest, overwrite, inputs)
    return dests


def _summarise(failures: list[str]) -> str:
    shown = failures[:MAX_REPORTED_FAILURES]
    more = f" (+{len(failures) - len(shown)} more)" if len(failures) > len(shown) else ""
    return "; ".join(shown) + more


def export_checkpoint(
    checkpoint: str | Path,
    out_dir: str | Path,
    *,
    fp16: bool = False,
    int8: bool = False,
    openvino: bool = False,
    bf16: bool = False,
    ort_mobile: bool = False,
    executorch: bool = False,
    executorch_int8: str = "dynamic",
    calibration: str | Path | None = None,
    opset: int = onnx_io.DEFAULT_OPSET,
    validate: bool = True,
    overwrite: bool = False,
    tensorrt: bool = False,
    profile: BatchProfile | None = None,
    max_classes: int = DEFAULT_MAX_CLASSES,
    serving_repo: str | Path | None = None,
    serving_graphs: str = ONNXRUNTIME,
    providers: Sequence[str] | None = DEFAULT_PROVIDERS,
    progress: bool = True,
) -> ExportResult:
    """Export a checkpoint; see the module docstring. Raises one-line MMAdapterErrors; on any error
    or interruption the destinations are as they were and nothing is left beside them."""
    from tqdm import tqdm

    profile = check_export_arguments(opset=opset, profile=profile, max_classes=max_classes, providers=providers,
                                     serving_graphs=serving_graphs, tensorrt=tensorrt)
    if executorch:  # before anything is loaded: the extra is missing, one line
        from mmadapter.export.executorch import INT8_SCHEMES, require_executorch

        if executorch_int8 not in INT8_SCHEMES:
            raise ExportError(f"--executorch-int8 is {' or '.join(INT8_SCHEMES)}, not {executorch_int8!r}")
        require_executorch()
    checkpoint = Path(checkpoint)
    if bf16 and not openvino:
        raise ExportError("--bf16 is OpenVINO's precision (the fp32 IR computed in bfloat16): add --openvino")
    dests = check_destinations(checkpoint, out_dir, serving_repo, overwrite)
    inputs = _inputs(checkpoint)
    from mmadapter.export.calibration import calibration_folder_for

    calibration = calibration_folder_for(int8=int8, openvino=openvino, calibration=calibration, checkpoint=checkpoint,
                                         executorch=executorch)
    precisions = ["fp32"] + ["fp16"] * fp16 + ["int8"] * int8
    steps = 2 + 4 * len(precisions) + int(validate) + int(tensorrt) + int(serving_repo is not None) + 1
    # disable=None: no bar when stderr is not a terminal (logs, pipes), so errors stay one line there.
    bar = tqdm(total=steps, desc="export", unit="step", disable=None if progress else True, file=sys.stderr,
               leave=False)
    try:  # the bar is cleared before any error is printed, so the error is the only line left
        # Leaving the stack without an error swaps each folder into place (the repository first). The swaps
        # run as one commit (`committing`, entered once the work is done, left after both): a signal is
        # either before it (nothing is put in place) or waits until both folders are.
        with contextlib.ExitStack() as commit:
            with contextlib.ExitStack() as stack:
                temps = [stack.enter_context(owned_folder(d, overwrite=overwrite, protected=inputs)) for d in dests]
                try:
                    manifest, reports, tensorrt_error = _export(
                        checkpoint, temps[0], temps[1] if serving_repo is not None else None, bar,
                        export_path=os.path.relpath(dests[0].path, dests[-1].path), serving_graphs=serving_graphs,
                        fp16=fp16,
                        int8=int8, openvino=openvino, bf16=bf16, ort_mobile=ort_mobile,
                        executorch=executorch_int8 if executorch else None,
                        calibration=calibration, opset=opset, validate=validate, tensorrt=tensorrt,
                        profile=profile, max_classes=max_classes, providers=providers)
                except OSError as exc:
                    raise write_error(dests[0], exc) from None
                bar.set_postfix_str("move into place")
                commit.enter_context(interrupts.committing())
        bar.update()
    finally:
        bar.close()
    return ExportResult(dests[0].path, manifest, reports, dests[1].path if serving_repo is not None else None,
                        tensorrt_error)


def _export(checkpoint: Path, tmp: Path, repo_tmp: Path | None, bar: Any, *, export_path: str, serving_graphs: str,
            fp16: bool, int8: bool,
            openvino: bool, bf16: bool, ort_mobile: bool, executorch: str | None, calibration: Path | None,
            opset: int,
            validate: bool, tensorrt: bool, profile: BatchProfile, max_classes: int,
            providers: Sequence[str] | None) -> tuple[Manifest, list[dict[str, Any]], str | None]:
    """Every file of the export into ``tmp`` (and the repository into ``repo_tmp``, its pipeline model
    naming the export by ``export_path``, relative to the repository's destination, and calling the
    ``serving_graphs`` models). ``executorch``: None, or the int8 scheme of the ExecuTorch programs."""
    from mmadapter.export.calibration import load_calibration
    from mmadapter.export.specs import build_specs
    from mmadapter.export.tokenizer import write_tokenizer
    from mmadapter.runtime.preprocess import Preprocessing

    adapter, meta, clip, bank = _load(checkpoint, bar)
    interrupts.check()
    context_length = int(getattr(clip.tokenizer, "context_length", 77))
    tokenizer_fields = write_tokenizer(tmp, clip.tokenizer)  # serving tokenizes new label sets without torch
    specs = build_specs(clip.model, adapter, bank, meta.logit_scale, clip.image_size, context_length)
    bar.update()
    if calibration is not None:
        bar.set_postfix_str("calibration images")
        calibration = load_calibration(calibration, Preprocessing(clip.image_size, clip.image_mean, clip.image_std))
    bf16_record = _bf16_record() if bf16 else None
    graphs: dict[str, GraphEntry] = {}
    for spec in specs:
        bar.set_postfix_str(f"export {spec.name}")
        graphs[spec.name] = _export_graph(spec, tmp, opset, fp16=fp16, int8=int8, calibration=calibration,
                                          openvino=openvino)
        interrupts.check()  # torch.export may have caught a signal's exception and gone on: stop now
        bar.update(1 + int(fp16) + int(int8))
    if ort_mobile:
        from mmadapter.export.ort_mobile import write_ort_mobile

        bar.set_postfix_str("ort mobile")
        graphs = write_ort_mobile(tmp, graphs)
    if executorch:
        from mmadapter.export.executorch import write_programs

        bar.set_postfix_str("executorch")
        graphs = write_programs(specs, tmp, graphs, max_classes, int8, calibration if executorch == "static" else None)
    reports: list[dict[str, Any]] = []
    open_reports: list[dict[str, Any]] = []
    if validate:
        bar.set_postfix_str("validate")
        reports, open_reports = _validate(specs, graphs, tmp, tokenizer_fields, clip, adapter, bank, meta,
                                          providers, calibration, bf16_record is not None and bf16_record.measured,
                                          static_programs=int8 and executorch == "static")
        interrupts.check()
        bar.update()
    tensorrt_error = tensorrt_section = None
    if tensorrt:
        bar.set_postfix_str("tensorrt")
        from mmadapter.runtime.engines.tensorrt import tensorrt_unavailable_reason

        tensorrt_error = tensorrt_unavailable_reason()
        if tensorrt_error is None:
            tensorrt_section = _build_engines(tmp, graphs, profile, max_classes, len(bank.class_names), fp16)
        bar.update()
    files = {name: file_entry(tmp, name) for name in sorted(os.listdir(tmp))
             if (tmp / name).is_file() and (name == tokenizer_fields.file or name.endswith(".pte.json")
                                            or not name.endswith(".json"))}
    validation = Validation(validate, all(r["passed"] for r in reports) if validate else None,
                            tuple(map(Report.from_dict, reports)),
                            tuple(map(Report.from_dict, open_reports)) if validate else None)
    manifest = _manifest(checkpoint, meta, clip, graphs, opset, validation, files,
                         replace(tokenizer_fields, model_name=meta.clip.model_name),
                         calibration.to_dict() if calibration is not None else None, tensorrt_section, bf16_record)
    write_manifest(tmp, manifest)
    if repo_tmp is not None:
        bar.set_postfix_str("serving repository")
        from mmadapter.export.inference_server import write_model_repository

        write_model_repository(tmp, repo_tmp, manifest, profile.max, "fp16" if fp16 else "fp32", export_path,
                               serving_graphs)
        bar.update()
    return manifest, reports, tensorrt_error


def _load(checkpoint: Path, bar: Any) -> tuple[Any, Any, Any, Any]:
    """The checkpoint's adapter and description, the frozen CLIP it names, and its label set's class bank."""
    import torch

    from mmadapter.model.backbone import load_clip
    from mmadapter.model.checkpoint import load_checkpoint

    bar.set_postfix_str("load checkpoint")
    adapter, meta = load_checkpoint(checkpoint, backend="torch")
    clip = load_clip(meta.clip)
    if clip.embed_dim != meta.adapter.embed_dim:
        raise ExportError(f"adapter width {meta.adapter.embed_dim} does not match CLIP {meta.clip.model_name} "
                          f"(embedding width {clip.embed_dim})")
    bar.update()
    bar.set_postfix_str("class bank")
    with torch.no_grad():
        class_emb = clip.class_embeddings(meta.label_set.class_names, meta.label_set.templates)
        bank = adapter.class_bank(class_emb, meta.label_set.class_names)
    return adapter, meta, clip, bank


def _export_graph(spec: Any, tmp: Path, opset: int, *, fp16: bool, int8: bool, calibration: Any,
                  openvino: bool) -> GraphEntry:
    """One graph's files at every precision asked for, and its manifest entry."""
    from mmadapter.export.calibration import write_calibrated_graphs

    portable = onnx_io.export_graph(spec, tmp / f"{spec.name}.onnx", opset)
    files = {"fp32": {"portable": portable.name, "ort": f"{spec.name}.ort.onnx"}}
    fusions = onnx_io.optimize_for_ort(portable, tmp / files["fp32"]["ort"])
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
    calibrated = write_calibrated_graphs(tmp, spec, files, calibration, openvino)
    return GraphEntry(
        description=spec.description,
        batchable=spec.batchable,
        batch_inputs=tuple(t.name for t in spec.inputs if t.batch_axis in BATCH_AXES),
        io=GraphIO(*(tuple(TensorSpec(t.name, t.dtype, tuple(t.shape)) for t in ts)
                     for ts in (spec.inputs, spec.outputs))),
        files={precision: GraphFiles(**kinds) for precision, kinds in files.items()},
        ort_fusions=fusions,
        int8_matmuls=int8_matmuls or None,
        **calibrated,
    )


def _bf16_record() -> Bf16:
    """What this CPU says about bf16: validation runs the IR in bf16 only where it computes bf16 natively."""
    from mmadapter.runtime.engines.openvino import native_bf16, optimization_capabilities

    return Bf16(measured=native_bf16(), cpu=" ".join(optimization_capabilities()))


def _validate(specs, graphs, tmp, tokenizer_fields, clip, adapter, bank, meta, providers, calibration, bf16,
              static_programs=False):
    """Every file against torch (the fp32 IR in bf16 too, with ``bf16``) and the open-vocabulary path end to
    end; one ExportError naming the failures if any graph fails. ``static_programs``: the int8 ExecuTorch
    program was calibrated, and is validated as the other calibrated files are."""
    from mmadapter.export.validate import build_cases, validate_graph

    reports = _validate_all(specs, graphs, tmp, clip, adapter, bank, meta, providers, build_cases,
                            validate_graph, calibration, bf16, static_programs)
    open_reports = _validate_open_vocabulary(graphs, tmp, tokenizer_fields, clip, adapter, meta, providers)
    failures = [f for r in reports + open_reports for f in r["failures"]]
    if failures:
        raise ExportError(f"validation failed: {_summarise(failures)}")
    return reports, open_reports


def _opener(kind: str, precision: str, providers: list[str]) -> Callable[[Path], Any]:
    """How validation opens a file of this kind at its precision: OpenVINO for IR files (on the CPU),
    ONNX Runtime with the chosen providers otherwise."""
    import functools

    from mmadapter.runtime.engines import open_session

    if kind == "openvino":
        return functools.partial(open_session, engine="openvino", precision=precision)
    if kind == "executorch":
        return functools.partial(open_session, engine="executorch", precision=precision)
    return functools.partial(open_session, engine="onnxruntime", precision=precision, providers=providers)


def _validate_all(specs, graphs, folder, clip, adapter, bank, meta, providers, build_cases, validate_graph,
                  calibration=None, bf16=False, static_programs=False):
    from mmadapter.export.calibration import holdout_case, validate_static
    from mmadapter.runtime.engines.onnxruntime import resolve_providers

    chosen = resolve_providers(providers)
    cases = build_cases(specs, clip, adapter, bank, meta.logit_scale, meta.label_set.templates)
    # int8 graphs are also held to torch on real images that did not calibrate them.
    held_out = [holdout_case(clip, adapter, bank, meta.logit_scale, calibration.holdout)] if calibration else []
    reports = []
    for spec in specs:
        for precision, files in graphs[spec.name].files.items():
            for kind, name in files.items():
                factory = _opener(kind, precision, chosen)
                # Calibrated files (Q/DQ ONNX, OpenVINO IR, a static ExecuTorch program): see validate_static.
                # The dynamic int8 ones (ONNX Runtime's graph and its .ort, the default ExecuTorch program) are
                # held to every rule everywhere.
                dynamic = ("ort", "ort_mobile") + (() if static_programs else ("executorch",))
                if precision == "int8" and kind not in dynamic and held_out:
                    report = validate_static(validate_graph, folder / name, spec, cases[spec.name], held_out[0],
                                             factory)
                else:
                    extra = held_out if precision == "int8" and spec.int8_scopes else []
                    report = validate_graph(folder / name, spec, cases[spec.name] + extra, precision, factory)
                if kind == "ort_mobile":  # the same graph in another format: held to its source too
                    report.failures.extend(_against_source(folder, files, cases[spec.name], factory, precision))
                # TensorRT's ONNX parser knows the standard domain only: contrib ops there are a failure.
                if kind == "portable":
                    foreign = sorted({f"{d}.{op}" for d, op in onnx_io.op_types(folder / name) if d != "ai.onnx"})
                    if foreign:
                        report.failures.append(f"{name}: non-standard ops {foreign} in the portable graph")
                reports.append(report.to_dict())
        ir = graphs[spec.name].files["fp32"].openvino
        if bf16 and ir is not None:  # the fp32 IR computed in bfloat16, at bf16's own thresholds
            report = validate_graph(folder / ir, spec, cases[spec.name], "bf16", _opener("openvino", "bf16", chosen))
            reports.append(report.to_dict())
    return reports


def _against_source(folder: Path, files: GraphFiles, cases: Sequence[Any], factory: Callable[[Path], Any],
                    precision: str) -> list[str]:
    from mmadapter.export.ort_mobile import compare_to_source

    failures, _ = compare_to_source(folder / files.ort_mobile, folder / files.ort, [c.inputs for c in cases], factory,
                                    precision)
    return failures


def _validate_open_vocabulary(graphs, folder, tokenizer_fields, clip, adapter, meta, providers):
    from mmadapter.export.validate import validate_open_vocabulary
    from mmadapter.runtime.engines.onnxruntime import resolve_providers

    chosen = resolve_providers(providers)
    # The path runs .ort.onnx files of several precisions (int8 images, fp32 text): each opens at its own.
    precision_of = {files.ort: precision for entry in graphs.values()
                    for precision, files in entry.files.items() if files.ort is not None}

    def opener(path: Path) -> Any:
        return _opener("ort", precision_of.get(path.name, "fp32"), chosen)(path)

    return validate_open_vocabulary(folder, graphs, tokenizer_fields, clip, adapter, meta.logit_scale,
                                    meta.label_set.class_names, meta.label_set.templates, opener)


def _manifest(checkpoint, meta, clip, graphs, opset, validation, files, tokenizer, calibration,
              tensorrt, bf16) -> Manifest:
    from mmadapter.runtime.preprocess import Preprocessing

    return Manifest(
        created=datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        checkpoint=CheckpointRef(checkpoint.name, sha256_file(checkpoint)),
        clip=meta.clip.to_dict(),
        adapter=meta.adapter.to_dict(),
        logit_scale=meta.logit_scale,
        label_set=LabelSet(tuple(meta.label_set.class_names), tuple(meta.label_set.templates)),
        preprocessing=Preprocessing(clip.image_size, clip.image_mean, clip.image_std),
        tokenizer=tokenizer,
        opset=opset,
        versions=package_versions(),
        graphs=graphs,
        validation=validation,
        calibration=calibration,
        tensorrt=tensorrt,
        bf16=bf16,
        files=files,
    )


def _build_engines(folder: Path, graphs: dict[str, Any], profile: BatchProfile, max_classes: int, num_classes: int,
                   fp16: bool) -> TensorRT:
    import tensorrt as trt

    from mmadapter.export.tensorrt import build_engine, engine_filename
    from mmadapter.runtime.engines.tensorrt import cuda_gpu

    gpu = cuda_gpu()
    precision = "fp16" if fp16 else "fp32"
    engines = {}
    for graph, entry in graphs.items():
        onnx_path = folder / entry.files[precision].portable
        name = engine_filename(graph, sha256_file(onnx_path), trt.__version__, gpu.name, profile)
        build_engine(onnx_path, folder / name, entry.io.inputs, profile,
                     (1, min(num_classes, max_classes), max_classes), precision, folder / "timing.cache")
        engines[graph] = Engine(name, Path(name).with_suffix(".json").name, precision)
    from mmadapter.export.tensorrt import build_int8_engines

    engines.update(build_int8_engines(folder, graphs, profile, gpu.name, trt.__version__))  # untested: no GPU
    return TensorRT(engines, trt.__version__, gpu.name, gpu.compute_capability, vars(profile))
