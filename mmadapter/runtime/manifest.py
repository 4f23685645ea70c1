"""``manifest.json`` of an export folder as typed data: the frozen dataclasses below are what the
export writes (``Manifest.to_dict``) and what the runtime reads (``Manifest.from_dict``), one schema
for both. What every file is and its hash, the graphs' interfaces, the label set, the preprocessing
and tokenizer, versions and validation results.

The runtime serves whatever the manifest says (which label is which logit, how to scale pixels), so
reading is checking: ``from_dict`` collects every problem of the JSON into one ExportError line and
only then builds the objects, so a reader holding a ``Manifest`` holds fields of the right types.
The manifest carries ``manifest_sha256``, the sha256 of its own canonical JSON without that field:
an edit after the export (a reordered class list relabels every prediction) is refused instead of
served.

Read by the runtime on a serving machine, so this module imports neither torch nor open_clip.
"""

from __future__ import annotations

import copy
import json
import math
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, fields
from functools import cached_property
from importlib import metadata
from pathlib import Path
from typing import Any

from mmadapter.errors import ExportError, MMAdapterError
from mmadapter.files import (
    atomic_write_text,
    canonical_sha256,
    first_line,
    read_sealed_json,
    same_size,
    sha256_file,
)
from mmadapter.runtime.graphs import IMAGE_CLASSIFIER, LOGITS, PIXELS
from mmadapter.runtime.labels import check_class_names, check_template
from mmadapter.runtime.preprocess import Preprocessing

MANIFEST = "manifest.json"
FORMAT_NAME = "mmadapter-onnx-export"
# 2: manifest_sha256 and the schema check (version 1 manifests carry no hash). The typed reader reads
# the same JSON shape, so version 2 files written before it still load as they are.
FORMAT_VERSION = 2
HASH_FIELD = "manifest_sha256"
PRECISIONS = ("fp32", "fp16", "int8")
# openvino: an IR .xml, its weights in the .bin of the same name; ort_mobile: ONNX Runtime's .ort format (for
# its mobile and minimal builds); executorch: an ExecuTorch .pte program (XNNPACK delegate).
FILE_KINDS = ("portable", "ort", "openvino", "ort_mobile", "executorch")
# Kinds whose file names must end so: the runtimes pick their loader by the suffix.
KIND_SUFFIX = {"openvino": ".xml", "ort_mobile": ".ort", "executorch": ".pte"}
TENSOR_DTYPES = ("float32", "float16", "int64", "int32")
MAX_REPORTED = 6
_HEX64 = re.compile(r"[0-9a-f]{64}")


def package_versions() -> dict[str, str]:
    """Versions of the packages that made (or must read) the files; "absent" where not installed."""
    out = {}
    for dist in ("mmadapter", "torch", "onnx", "onnxscript", "onnxruntime", "onnxruntime-gpu", "open_clip_torch",
                 "tensorrt", "tokenizers", "ftfy", "openvino", "nncf", "executorch"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "absent"
    return out


def manifest_hash(data: Mapping[str, Any]) -> str:
    """sha256 of the canonical JSON (sorted keys, no spaces) of a manifest's dict without its hash field."""
    return canonical_sha256(dict(data), HASH_FIELD)


def _plain(value: Any) -> Any:
    """JSON-ready copy of a field: records through their ``to_dict``, tuples as lists."""
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


class _Record:
    """``to_dict`` for the dataclasses below: every field under its own name, except optional ones
    (default None) left unset, which the JSON leaves out rather than writing null."""

    def to_dict(self) -> dict[str, Any]:
        out = {}
        for f in fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if value is None and f.default is None:
                continue
            out[f.name] = _plain(value)
        return out


# The records ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class FileEntry(_Record):
    """A file of the export folder: what the runtime checks before it opens it."""

    sha256: str
    bytes: int


def file_entry(folder: Path, name: str) -> FileEntry:
    path = Path(folder) / name
    return FileEntry(sha256_file(path), path.stat().st_size)


@dataclass(frozen=True)
class TensorSpec(_Record):
    """One input or output of a graph; a dim is a size or the name of a dynamic axis."""

    name: str
    dtype: str
    shape: tuple[int | str, ...]


@dataclass(frozen=True)
class GraphIO(_Record):
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    def output(self, name: str) -> TensorSpec | None:
        return next((t for t in self.outputs if t.name == name), None)

    def input(self, name: str) -> TensorSpec | None:
        return next((t for t in self.inputs if t.name == name), None)


@dataclass(frozen=True)
class GraphFiles(_Record):
    """The files of one graph at one precision, one per kind that was exported (None: not this kind)."""

    portable: str | None = None  # standard ONNX ops only: TensorRT, Triton, the browser
    ort: str | None = None  # ONNX Runtime's fused graph
    openvino: str | None = None  # IR .xml (its .bin beside it)
    ort_mobile: str | None = None  # .ort: the ort graph in ONNX Runtime's mobile format
    executorch: str | None = None  # .pte: ExecuTorch program lowered to XNNPACK

    def get(self, kind: str) -> str | None:
        """The file of ``kind``; an unknown kind is a ValueError, so a misspelt one is not 'absent'."""
        if kind not in FILE_KINDS:
            raise ValueError(f"unknown file kind {kind!r} (expected one of {', '.join(FILE_KINDS)})")
        return getattr(self, kind)

    def items(self) -> Iterator[tuple[str, str]]:
        """(kind, file name) of the kinds present."""
        return ((kind, getattr(self, kind)) for kind in FILE_KINDS if getattr(self, kind) is not None)


@dataclass(frozen=True)
class GraphEntry(_Record):
    """One exported graph: interface, batching, and its files by precision (fp32 always there)."""

    batchable: bool
    batch_inputs: tuple[str, ...]  # inputs with a request batch axis
    io: GraphIO
    files: Mapping[str, GraphFiles]
    description: str | None = None
    ort_fusions: Mapping[str, int] | None = None  # ONNX Runtime fusion counts, for the record
    int8_matmuls: int | None = None  # dynamic int8: MatMuls quantized
    int8_static_ops: int | None = None  # calibrated Q/DQ int8: ops quantized
    # ExecuTorch plans its memory for bounded shapes: the largest size of each dynamic axis its .pte takes.
    executorch_max: Mapping[str, int] | None = None


@dataclass(frozen=True)
class CheckpointRef(_Record):
    file: str
    sha256: str


@dataclass(frozen=True)
class LabelSet(_Record):
    """The classes the image classifier's logits stand for, in logit order, and their prompts."""

    class_names: tuple[str, ...]
    templates: tuple[str, ...]


@dataclass(frozen=True)
class Tokenizer(_Record):
    """The torch-free tokenizer (``file``, one of the export's hashed files) and its special ids."""

    file: str
    kind: str
    context_length: int
    sot_token_id: int
    eot_token_id: int
    model_name: str | None = None
    library: str | None = None
    pad_token_id: int | None = None
    special_tokens: Mapping[str, int] | None = None
    vocab_size: int | None = None
    cleaning: str | None = None

    @classmethod
    def from_dict(cls, data: Any, source: str = "the tokenizer section") -> Tokenizer:
        """The section checked on its own (one ExportError line), for the export's validation."""
        c = _Checker()
        tokenizer = _parse_tokenizer(c, data, None)
        _raise_problems(c, f"{source} is invalid")
        assert tokenizer is not None
        return tokenizer


@dataclass(frozen=True)
class Report:
    """One validation run: which file (or open-vocabulary case), whether it passed and why not. The
    measurements (cosines, differences, thresholds) are kept as written, for people to read."""

    file: str
    precision: str
    passed: bool
    failures: tuple[str, ...] = ()
    measures: Mapping[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.file, "precision": self.precision, "passed": self.passed,
                "failures": list(self.failures), **(self.measures or {})}

    @classmethod
    def from_dict(cls, data: Any) -> Report:
        c = _Checker()
        report = _parse_report(c, data, "report")
        _raise_problems(c, "a validation report is invalid")
        assert report is not None
        return report


@dataclass(frozen=True)
class Validation(_Record):
    """Whether the export compared its graphs with the torch model, and the reports."""

    run: bool
    passed: bool | None  # None when not run
    reports: tuple[Report, ...] = ()
    open_vocabulary: tuple[Report, ...] | None = None


@dataclass(frozen=True)
class Engine(_Record):
    file: str
    sidecar: str | None = None  # <engine>.json beside it: build facts, not hashed
    precision: str | None = None


@dataclass(frozen=True)
class TensorRT(_Record):
    """The TensorRT engines built for this GPU and TensorRT version, by graph."""

    engines: Mapping[str, Engine]
    version: str | None = None
    gpu: str | None = None
    compute_capability: str | None = None
    profile: Mapping[str, int] | None = None


@dataclass(frozen=True)
class Bf16(_Record):
    """OpenVINO's bf16 precision (``export --openvino --bf16``): the fp32 IR compiled with a bf16 inference
    precision, offered by name only. ``measured``: whether the exporting CPU computes bf16 natively
    (AVX512_BF16 or AMX), so that validation ran the IR in bf16 (its reports have precision "bf16");
    otherwise OpenVINO ran it in f32 there and bf16 itself was not measured."""

    measured: bool
    cpu: str  # what the exporting CPU offers OpenVINO, e.g. "FP32 INT8 BF16"


# The provenance sections (clip, adapter, versions, calibration) stay plain JSON objects: they record
# what made the export for people and for the checkpoint's own typed classes (which need torch), and
# the runtime reads only clip.model_name from them (Manifest.model_name).
@dataclass(frozen=True, kw_only=True)
class Manifest(_Record):
    created: str
    checkpoint: CheckpointRef
    clip: Mapping[str, Any]
    adapter: Mapping[str, Any]
    logit_scale: float
    label_set: LabelSet
    preprocessing: Preprocessing
    tokenizer: Tokenizer
    opset: int
    versions: Mapping[str, str]
    graphs: Mapping[str, GraphEntry]
    validation: Validation
    calibration: Mapping[str, Any] | None = None
    tensorrt: TensorRT | None = None
    bf16: Bf16 | None = None
    files: Mapping[str, FileEntry]

    @property
    def model_name(self) -> str:
        return self.clip["model_name"]

    def _body(self) -> dict[str, Any]:
        return {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, **super().to_dict()}

    @cached_property
    def manifest_sha256(self) -> str:
        """The seal: computed from the fields (a manifest read from disk keeps the checked one)."""
        return manifest_hash(self._body())

    def to_dict(self) -> dict[str, Any]:
        """The JSON written to disk: format fields first, the hash last."""
        return {**self._body(), HASH_FIELD: self.manifest_sha256}

    @classmethod
    def from_dict(cls, data: Any, source: str | Path = MANIFEST) -> Manifest:
        """``data`` (parsed JSON) after the format, schema and hash checks; any problem is one
        ExportError line naming ``source`` and the problems."""
        check_format(data, source)
        c = _Checker()
        manifest = _parse_manifest(c, data)
        _raise_problems(c, f"{source} is invalid")
        if manifest_hash(data) != data[HASH_FIELD]:
            raise ExportError(f"{source} was modified after export (hash mismatch); export the checkpoint again")
        assert manifest is not None
        # Keep the checked hash rather than recomputing it: it is what the cache keys were made from.
        manifest.__dict__["manifest_sha256"] = data[HASH_FIELD]
        return manifest


def write_manifest(folder: Path, manifest: Manifest) -> Path:
    """Write ``manifest.json``, after reading it back: the export never writes what serving refuses."""
    data = manifest.to_dict()
    Manifest.from_dict(json.loads(json.dumps(data)), f"the manifest being written to {folder}")
    return atomic_write_text(Path(folder) / MANIFEST, json.dumps(data, indent=2) + "\n")


# Reading: every problem collected as ``field.path: problem``, the objects built only when there are none ---

class _Checker:
    """Collects every problem of a manifest as ``field.path: problem``."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def fail(self, where: str, problem: str) -> None:
        self.problems.append(f"{where}: {problem}")

    def get(self, data: Any, key: str, where: str, kinds: type | tuple[type, ...], required: bool = True) -> Any:
        """``data[key]`` if it has one of ``kinds`` (bool is never a number here), else None."""
        path = f"{where}.{key}" if where else key
        if not isinstance(data, dict):
            return None
        if key not in data:
            if required:
                self.fail(path, "missing")
            return None
        value = data[key]
        if isinstance(value, bool) and bool not in (kinds if isinstance(kinds, tuple) else (kinds,)):
            self.fail(path, f"expected {_kind_name(kinds)}, got bool")
            return None
        if not isinstance(value, kinds):
            self.fail(path, f"expected {_kind_name(kinds)}, got {_type_name(value)}")
            return None
        return value

    def object(self, data: Any, allowed: tuple[str, ...] | type, where: str) -> bool:
        """Whether ``data`` is a JSON object; its unknown fields are refused (:meth:`unknown`)."""
        if not isinstance(data, dict):
            self.fail(where, f"expected an object, got {_type_name(data)}")
            return False
        self.unknown(data, allowed, where)
        return True

    def unknown(self, data: Any, allowed: Callable[[str], bool] | tuple[str, ...] | type, where: str) -> None:
        """Keys no field reads: refused, so that nothing in the file is silently ignored (a typed
        reader that dropped a field would serve less than the export said)."""
        if not isinstance(data, dict):
            return
        names = {f.name for f in fields(allowed)} if isinstance(allowed, type) else set(allowed)
        extra = sorted(str(k)[:40] for k in data if k not in names)
        if extra:
            self.fail(where or "manifest", f"unknown fields {extra[:5]}")

    def number(self, value: Any, where: str, positive: bool = False) -> float | None:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            self.fail(where, f"expected a number, got {_type_name(value)}")
            return None
        if not math.isfinite(value):
            self.fail(where, f"{value!r} is not finite")
            return None
        if positive and not value > 0:
            self.fail(where, f"must be > 0, got {value!r}")
            return None
        return value

    def count(self, data: Any, key: str, where: str, required: bool = True, least: int = 0) -> int | None:
        """An integer ``>= least``."""
        value = self.get(data, key, where, int, required)
        if value is not None and value < least:
            self.fail(f"{where}.{key}", f"must be >= {least}, got {value}")
            return None
        return value

    def hex64(self, data: Any, key: str, where: str) -> str | None:
        value = self.get(data, key, where, str)
        if value is not None and not _HEX64.fullmatch(value):
            self.fail(f"{where}.{key}" if where else key, "is not 64 hex digits")
            return None
        return value

    def labels(self, check: Callable[..., Any], value: Any, where: str, *args: Any) -> Any:
        try:
            return check(value, *args)
        except MMAdapterError as exc:
            self.fail(where, first_line(exc))
            return None


def _kind_name(kinds: type | tuple[type, ...]) -> str:
    kinds = kinds if isinstance(kinds, tuple) else (kinds,)
    return " or ".join(dict.fromkeys(_NAMES.get(k, k.__name__) for k in kinds))


def _type_name(value: Any) -> str:
    return _NAMES.get(type(value), type(value).__name__)


_NAMES = {dict: "an object", list: "a list", str: "a string", int: "an integer", float: "a number",
          bool: "true/false", type(None): "null"}


def _summary(problems: list[str]) -> str:
    shown = problems[:MAX_REPORTED]
    more = f" (+{len(problems) - len(shown)} more)" if len(problems) > len(shown) else ""
    return "; ".join(" ".join(p.split()) for p in shown) + more


def _raise_problems(c: _Checker, prefix: str) -> None:
    if c.problems:
        raise ExportError(f"{prefix}: {_summary(c.problems)}")


def plain_file_name(name: object) -> bool:
    """A file directly in the export folder: no separators, no '..', nothing hidden."""
    return (isinstance(name, str) and 0 < len(name) <= 255 and "/" not in name and "\\" not in name
            and "\x00" not in name and not name.startswith("."))


def _int_map(c: _Checker, data: Any, key: str, where: str, least: int | None = None) -> dict[str, int] | None:
    """An optional object of integers (``>= least`` when given)."""
    value = c.get(data, key, where, dict, required=False)
    if value is not None and not all(isinstance(v, int) and not isinstance(v, bool) and (least is None or v >= least)
                                     for v in value.values()):
        c.fail(f"{where}.{key}", "counts must be integers" if least is None else f"ids must be integers >= {least}")
        return None
    return dict(value) if value is not None else None


# Graphs ------------------------------------------------------------------------------------------------------

def _parse_tensors(c: _Checker, value: Any, where: str) -> tuple[TensorSpec, ...]:
    if not isinstance(value, list) or not value:
        c.fail(where, f"expected a non-empty list of tensors, got {_type_name(value)}")
        return ()
    good = []
    for i, t in enumerate(value):
        at = f"{where}[{i}]"
        if not c.object(t, TensorSpec, at):
            continue
        name = c.get(t, "name", at, str)
        dtype = c.get(t, "dtype", at, str)
        shape = c.get(t, "shape", at, list)
        if dtype is not None and dtype not in TENSOR_DTYPES:
            c.fail(f"{at}.dtype", f"unknown dtype {dtype!r}")
        if shape is not None:
            bad = [d for d in shape if not ((isinstance(d, int) and not isinstance(d, bool) and 0 < d < 1 << 31)
                                            or (isinstance(d, str) and d))]
            if bad:
                c.fail(f"{at}.shape", f"dims must be positive integers or axis names, got {bad[0]!r}")
                shape = None
        if name is not None and dtype in TENSOR_DTYPES and shape is not None:
            good.append(TensorSpec(name, dtype, tuple(shape)))
    names = [t.name for t in good]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:  # a graph's tensors are fed and read by name: two of one name would make one of them unreachable
        c.fail(where, f"tensor names must be unique, {repeated} repeat")
    return tuple(good)


def _parse_graph_files(c: _Checker, entry: Any, where: str, files: Mapping[str, Any]) -> dict[str, GraphFiles]:
    """``files`` of a graph entry: precision -> kind -> a file listed under the manifest's files."""
    by_precision = c.get(entry, "files", where, dict)
    if by_precision is None:
        return {}
    if "fp32" not in by_precision:
        c.fail(f"{where}.files", "has no fp32 graphs")
    out = {}
    for precision, kinds in by_precision.items():
        at = f"{where}.files.{precision}"
        if precision not in PRECISIONS:
            c.fail(at, f"unknown precision (expected one of {', '.join(PRECISIONS)})")
            continue
        if not isinstance(kinds, dict) or not kinds:
            c.fail(at, f"expected a non-empty object, got {_type_name(kinds)}")
            continue
        for kind, file in kinds.items():
            if kind not in FILE_KINDS:
                c.fail(f"{at}.{kind}", f"unknown kind (expected one of {', '.join(FILE_KINDS)})")
            elif not plain_file_name(file):
                c.fail(f"{at}.{kind}", f"{file!r} is not a plain file name")
            elif file not in files:
                c.fail(f"{at}.{kind}", f"{file} is not listed under files")
            elif kind == "openvino" and (not file.endswith(".xml") or file[:-4] + ".bin" not in files):
                c.fail(f"{at}.{kind}", f"{file} is not an OpenVINO .xml with its .bin listed under files")
            elif kind in KIND_SUFFIX and not file.endswith(KIND_SUFFIX[kind]):
                c.fail(f"{at}.{kind}", f"{file} does not end in {KIND_SUFFIX[kind]}")
        out[precision] = GraphFiles(**{k: v for k, v in kinds.items() if k in FILE_KINDS})
    return out


def _parse_graph(c: _Checker, name: str, entry: Any, files: Mapping[str, Any]) -> GraphEntry | None:
    where = f"graphs.{name}"
    if not c.object(entry, GraphEntry, where):
        return None
    description = c.get(entry, "description", where, str, required=False)
    batchable = c.get(entry, "batchable", where, bool)
    io = c.get(entry, "io", where, dict)
    inputs = outputs = ()
    if io is not None:
        c.unknown(io, GraphIO, f"{where}.io")
        inputs = _parse_tensors(c, io.get("inputs"), f"{where}.io.inputs")
        outputs = _parse_tensors(c, io.get("outputs"), f"{where}.io.outputs")
    batch_inputs = c.get(entry, "batch_inputs", where, list)
    if batch_inputs is not None:
        names = {t.name for t in inputs}
        for i, b in enumerate(batch_inputs):
            if not isinstance(b, str) or (inputs and b not in names):
                c.fail(f"{where}.batch_inputs[{i}]", f"{b!r} is not an input of the graph")
    by_precision = _parse_graph_files(c, entry, where, files)
    fusions = _int_map(c, entry, "ort_fusions", where)
    matmuls = c.get(entry, "int8_matmuls", where, int, required=False)
    static_ops = c.get(entry, "int8_static_ops", where, int, required=False)
    executorch_max = _int_map(c, entry, "executorch_max", where)
    if c.problems:
        return None  # the manifest is refused anyway; nothing below needs this entry
    return GraphEntry(batchable, tuple(batch_inputs), GraphIO(inputs, outputs), by_precision, description, fusions,
                      matmuls, static_ops, executorch_max)


def _classifier_dims(c: _Checker, graphs: dict[str, Any], num_classes: int | None,
                     image_size: tuple[int, int] | None) -> None:
    """The label set and the preprocessing must fit the image classifier's interface (read from the
    JSON itself, so that this holds whatever else is wrong with the entry)."""
    entry = graphs.get(IMAGE_CLASSIFIER)
    if entry is None:
        c.fail("graphs", f"no {IMAGE_CLASSIFIER} graph")
        return
    io = entry.get("io") if isinstance(entry, dict) else None
    if not isinstance(io, dict):
        return
    tensors = {kind: {t["name"]: t.get("shape") for t in io.get(kind) or [] if isinstance(t, dict)
                      and isinstance(t.get("name"), str)}
               for kind in ("inputs", "outputs") if isinstance(io.get(kind), list)}
    logits = tensors.get("outputs", {}).get(LOGITS)
    pixels = tensors.get("inputs", {}).get(PIXELS)
    where = f"graphs.{IMAGE_CLASSIFIER}.io"
    if not isinstance(logits, list) or len(logits) != 2:
        c.fail(f"{where}.outputs", "needs a logits output of shape [batch, N]")
    elif num_classes is not None and logits[1] != num_classes:
        c.fail(f"{where}.outputs.logits", f"has {logits[1]!r} classes but label_set.class_names has {num_classes}")
    if not isinstance(pixels, list) or len(pixels) != 4:
        c.fail(f"{where}.inputs", "needs a pixels input of shape [batch, 3, H, W]")
    elif image_size is not None and (pixels[1] != 3 or tuple(pixels[2:]) != image_size):
        c.fail(f"{where}.inputs.pixels", f"shape {pixels} does not fit preprocessing.image_size "
               f"{list(image_size)} (RGB, 3 channels)")


# The other sections ------------------------------------------------------------------------------------------

def _parse_label_set(c: _Checker, data: Any) -> tuple[LabelSet | None, int | None]:
    """The label set, and the number of classes when the names are good (whatever the templates)."""
    label_set = c.get(data, "label_set", "", dict)
    if label_set is None:
        return None, None
    c.unknown(label_set, LabelSet, "label_set")
    names = c.get(label_set, "class_names", "label_set", list)
    if names is not None:
        names = c.labels(check_class_names, names, "label_set.class_names", "label_set.class_names")
    templates = c.get(label_set, "templates", "label_set", list)
    if templates is not None:
        if not templates:
            c.fail("label_set.templates", "is empty")
        checked = [c.labels(check_template, t, f"label_set.templates[{i}]", "template")
                   for i, t in enumerate(templates)]
        templates = None if None in checked else checked
    count = len(names) if names is not None else None
    if names is None or not templates:
        return None, count
    return LabelSet(tuple(names), tuple(templates)), count


_PREPROCESSING_FIELDS = ("image_size", "mean", "std", "resize_mode", "interpolation", "layout")


def _parse_preprocessing(c: _Checker, data: Any) -> tuple[Preprocessing | None, tuple[int, int] | None]:
    """The preprocessing, and the image size when it is good (whatever the other fields)."""
    pre = c.get(data, "preprocessing", "", dict)
    if pre is None:
        return None, None
    c.unknown(pre, _PREPROCESSING_FIELDS, "preprocessing")
    image_size = None
    size = c.get(pre, "image_size", "preprocessing", list)
    if size is not None:
        if len(size) == 2 and all(isinstance(s, int) and not isinstance(s, bool) and 0 < s <= 1 << 16 for s in size):
            image_size = (size[0], size[1])
        else:
            c.fail("preprocessing.image_size", f"expected two positive integers, got {size!r:.60}")
    rgb = {}
    for key in ("mean", "std"):
        values = c.get(pre, key, "preprocessing", list)
        if values is None:
            continue
        if len(values) != 3:
            c.fail(f"preprocessing.{key}", f"expected 3 numbers (RGB), got {len(values)}")
            continue
        checked = [c.number(v, f"preprocessing.{key}[{i}]", positive=key == "std") for i, v in enumerate(values)]
        if None not in checked:
            rgb[key] = tuple(checked)
    resize = c.get(pre, "resize_mode", "preprocessing", str, required=False)
    interpolation = c.get(pre, "interpolation", "preprocessing", str, required=False)
    c.get(pre, "layout", "preprocessing", str, required=False)  # always "NCHW float32 RGB"; for people
    if image_size is None or len(rgb) != 2:
        return None, image_size
    return (Preprocessing(image_size, rgb["mean"], rgb["std"], resize or "shortest", interpolation or "bicubic"),
            image_size)


def _parse_tokenizer(c: _Checker, data: Any, files: Mapping[str, Any] | None) -> Tokenizer | None:
    """The torch-free tokenizer's file is one of the export's hashed files (``files``; None: not
    checked), its special ids are ids."""
    if not c.object(data, Tokenizer, "tokenizer"):
        return None
    file = c.get(data, "file", "tokenizer", str)
    if file is not None and files is not None and (not plain_file_name(file) or file not in files):
        c.fail("tokenizer.file", f"{file!r} is not listed under files")
    kind = c.get(data, "kind", "tokenizer", str)
    length = c.count(data, "context_length", "tokenizer", least=1)
    sot, eot = (c.count(data, key, "tokenizer") for key in ("sot_token_id", "eot_token_id"))
    specials = _int_map(c, data, "special_tokens", "tokenizer", least=0)
    optional = {key: c.get(data, key, "tokenizer", str, required=False)
                for key in ("model_name", "library", "cleaning")}
    pad = c.count(data, "pad_token_id", "tokenizer", required=False)
    vocab = c.count(data, "vocab_size", "tokenizer", required=False, least=1)
    if None in (file, kind, length, sot, eot):
        return None
    return Tokenizer(file, kind, length, sot, eot, pad_token_id=pad, special_tokens=specials, vocab_size=vocab,
                     **optional)


def _parse_files(c: _Checker, data: Any) -> dict[str, FileEntry] | None:
    files = c.get(data, "files", "", dict)
    if files is None:
        return None
    out = {}
    for name, entry in files.items():
        where = f"files.{name}"
        if not plain_file_name(name):
            c.fail("files", f"{name!r} is not a plain file name")
            continue
        if not c.object(entry, FileEntry, where):
            continue
        sha = c.hex64(entry, "sha256", where)
        size = c.count(entry, "bytes", where)
        if sha is not None and size is not None:
            out[name] = FileEntry(sha, size)
    return out


def _parse_report(c: _Checker, data: Any, where: str) -> Report | None:
    if not isinstance(data, dict):
        c.fail(where, f"expected an object, got {_type_name(data)}")
        return None
    file = c.get(data, "file", where, str)
    precision = c.get(data, "precision", where, str)
    passed = c.get(data, "passed", where, bool)
    failures = c.get(data, "failures", where, list)
    if failures is not None and not all(isinstance(f, str) for f in failures):
        c.fail(f"{where}.failures", "expected a list of strings")
        failures = None
    if None in (file, precision, passed, failures):
        return None
    measures = {k: v for k, v in data.items() if k not in ("file", "precision", "passed", "failures")}
    return Report(file, precision, passed, tuple(failures), copy.deepcopy(measures))


def _parse_reports(c: _Checker, data: Any, key: str, required: bool = True) -> tuple[Report, ...] | None:
    values = c.get(data, key, "validation", list, required)
    if values is None:
        return None
    reports = [_parse_report(c, r, f"validation.{key}[{i}]") for i, r in enumerate(values)]
    return None if None in reports else tuple(reports)


def _parse_validation(c: _Checker, data: Any) -> Validation | None:
    validation = c.get(data, "validation", "", dict)
    if validation is None:
        return None
    c.unknown(validation, Validation, "validation")
    run = c.get(validation, "run", "validation", bool)
    passed = c.get(validation, "passed", "validation", (bool, type(None)))
    reports = _parse_reports(c, validation, "reports")
    open_vocabulary = _parse_reports(c, validation, "open_vocabulary", required=False)
    if run is None or reports is None:
        return None
    return Validation(run, passed, reports, open_vocabulary)


def _parse_tensorrt(c: _Checker, data: Any, files: Mapping[str, Any]) -> TensorRT | None:
    section = c.get(data, "tensorrt", "", dict, required=False)
    if section is None:
        return None
    c.unknown(section, TensorRT, "tensorrt")
    engines = {}
    for graph, engine in (c.get(section, "engines", "tensorrt", dict) or {}).items():
        where = f"tensorrt.engines.{graph}"
        if not c.object(engine, Engine, where):
            continue
        file = c.get(engine, "file", where, str)
        if file is not None and (not plain_file_name(file) or file not in files):
            c.fail(f"{where}.file", f"{file!r} is not listed under files")
        sidecar, precision = (c.get(engine, key, where, str, required=False) for key in ("sidecar", "precision"))
        engines[graph] = Engine(file, sidecar, precision)
    details = {key: c.get(section, key, "tensorrt", str, required=False)
               for key in ("version", "gpu", "compute_capability")}
    profile = _int_map(c, section, "profile", "tensorrt")
    return TensorRT(engines, profile=profile, **details)


def _parse_bf16(c: _Checker, data: Any) -> Bf16 | None:
    section = c.get(data, "bf16", "", dict, required=False)
    if section is None:
        return None
    c.unknown(section, Bf16, "bf16")
    measured, cpu = c.get(section, "measured", "bf16", bool), c.get(section, "cpu", "bf16", str)
    return None if None in (measured, cpu) else Bf16(measured, cpu)


def _parse_provenance(c: _Checker, data: dict[str, Any]) -> dict[str, Any]:
    """What made the export: checkpoint, CLIP, adapter, logit scale, opset, versions, calibration."""
    out: dict[str, Any] = {"created": c.get(data, "created", "", str)}
    checkpoint = c.get(data, "checkpoint", "", dict)
    if checkpoint is not None:
        c.unknown(checkpoint, CheckpointRef, "checkpoint")
        out["checkpoint"] = CheckpointRef(c.get(checkpoint, "file", "checkpoint", str),
                                          c.hex64(checkpoint, "sha256", "checkpoint"))
    clip = c.get(data, "clip", "", dict)
    if clip is not None:
        c.get(clip, "model_name", "clip", str)
    for key, value in (("clip", clip), ("adapter", c.get(data, "adapter", "", dict)),
                       ("versions", c.get(data, "versions", "", dict)),
                       ("calibration", c.get(data, "calibration", "", dict, required=False))):
        out[key] = copy.deepcopy(value)  # plain JSON objects: a copy, so the caller's dict cannot change them
    if "logit_scale" in data:
        out["logit_scale"] = c.number(data["logit_scale"], "logit_scale", positive=True)
    else:
        c.fail("logit_scale", "missing")
    out["opset"] = c.get(data, "opset", "", int)
    return out


_TOP_FIELDS = ("format", "format_version", HASH_FIELD)


def _parse_manifest(c: _Checker, data: Any) -> Manifest | None:
    """The typed manifest of ``data``, or None with the problems in ``c``."""
    if not isinstance(data, dict):
        c.fail("manifest", f"expected a JSON object, got {_type_name(data)}")
        return None
    c.unknown(data, _TOP_FIELDS + tuple(f.name for f in fields(Manifest)), "")
    c.hex64(data, HASH_FIELD, "")
    provenance = _parse_provenance(c, data)
    label_set, num_classes = _parse_label_set(c, data)
    preprocessing, image_size = _parse_preprocessing(c, data)
    files = _parse_files(c, data)
    # References are checked against the names listed, even where an entry itself is bad: that entry's
    # problem is reported once, not again by every reference to it.
    listed = data["files"] if isinstance(data.get("files"), dict) else {}
    tokenizer = c.get(data, "tokenizer", "", dict)
    tokenizer = _parse_tokenizer(c, tokenizer, listed) if tokenizer is not None else None
    graphs = c.get(data, "graphs", "", dict)
    typed_graphs = {}
    if graphs is not None:
        typed_graphs = {name: _parse_graph(c, name, entry, listed) for name, entry in graphs.items()}
        _classifier_dims(c, graphs, num_classes, image_size)
    validation = _parse_validation(c, data)
    tensorrt = _parse_tensorrt(c, data, listed)
    bf16 = _parse_bf16(c, data)
    if c.problems:
        return None
    return Manifest(**provenance, label_set=label_set, preprocessing=preprocessing, tokenizer=tokenizer,
                    graphs=typed_graphs, validation=validation, tensorrt=tensorrt, bf16=bf16, files=files)


def check_manifest(data: Any) -> list[str]:
    """Every schema problem of a parsed manifest (format fields and hash aside), as ``field: problem``."""
    c = _Checker()
    _parse_manifest(c, data)
    return c.problems


# Files on disk -----------------------------------------------------------------------------------------------

def load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except RecursionError:
        raise ExportError(f"{path} is not valid JSON: nested too deeply") from None
    except (OSError, ValueError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ExportError(f"{path} is not valid JSON: {first_line(exc)}") from None


def check_format(data: Any, path: str | Path) -> None:
    """One line for a file that is no manifest, or a manifest of a version this reader does not read."""
    if not isinstance(data, dict) or data.get("format") != FORMAT_NAME:
        raise ExportError(f"{path} is not an mmadapter export manifest")
    version = data.get("format_version")
    if version != FORMAT_VERSION or isinstance(version, bool):
        raise ExportError(f"{path} has format version {version!r:.40}; this mmadapter reads version "
                          f"{FORMAT_VERSION} (export the checkpoint again)")


def read_manifest(folder: str | Path) -> Manifest:
    """The checked manifest of an export folder; every problem is one ExportError line."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not folder.is_dir():
        raise ExportError(f"export folder not found: {folder}")
    if not path.is_file():
        raise ExportError(f"{folder} is not an mmadapter export (no {MANIFEST})")
    return Manifest.from_dict(load_json(path), path)


def listed_files(folder: Path) -> set[str] | None:
    """Names an earlier export wrote into ``folder``, from its manifest; None when ``folder`` holds no
    readable mmadapter manifest or one edited after the export (its hash differs), since an edited
    list could name the user's files. A listed file whose size differs from the manifest's is left
    out: it is not what the export wrote."""
    data = read_sealed_json(Path(folder) / MANIFEST, FORMAT_NAME, HASH_FIELD)
    if data is None:
        return None
    names = {n for n, entry in data["files"].items() if plain_file_name(n)
             and same_size(Path(folder) / n, entry.get("bytes") if isinstance(entry, dict) else None)}
    # TensorRT sidecars (<engine>.json) and the timing cache are written beside the engines.
    names |= {Path(n).with_suffix(".json").name for n in names if n.endswith(".plan")}
    return names | {MANIFEST, "timing.cache"}


def verified_file(folder: Path, manifest: Manifest, name: str) -> Path:
    """Path of a file listed in the manifest, after checking that it exists and its sha256 matches."""
    entry = manifest.files.get(name) if isinstance(name, str) else None
    if entry is None or not plain_file_name(name):
        raise ExportError(f"{name!r} is not listed in {Path(folder) / MANIFEST}")
    path = Path(folder) / name
    if not path.is_file():
        raise ExportError(f"{path} is missing from the export folder")
    try:
        digest = sha256_file(path)
    except OSError as exc:
        raise ExportError(f"{path} cannot be read: {first_line(exc)}") from None
    if digest != entry.sha256:
        raise ExportError(f"{path} does not match the sha256 in the manifest (modified or corrupt)")
    return path
