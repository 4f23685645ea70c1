"""``manifest.json`` of an export folder: what every file is, its hash, the graphs' interfaces, the
label set, the preprocessing and tokenizer, versions and validation results.

The runtime serves whatever the manifest says (which label is which logit, how to scale pixels), so
a manifest is read through a schema check that collects every problem, and it carries
``manifest_sha256``, the sha256 of its own canonical JSON without that field: an edit after the
export (a reordered class list relabels every prediction) is refused instead of served.

Read by the runtime on a serving machine, so this module imports neither torch nor open_clip.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

from mmadapter.errors import ExportError, MMAdapterError
from mmadapter.files import atomic_write_text, first_line, sha256_file
from mmadapter.runtime.graphs import IMAGE_CLASSIFIER, LOGITS, PIXELS
from mmadapter.runtime.labels import check_class_names, check_template

MANIFEST = "manifest.json"
FORMAT_NAME = "mmadapter-onnx-export"
FORMAT_VERSION = 2  # 2: manifest_sha256 and the schema check; version 1 manifests carry no hash
HASH_FIELD = "manifest_sha256"
PRECISIONS = ("fp32", "fp16", "int8")
FILE_KINDS = ("portable", "ort", "openvino")  # openvino: an IR .xml, its weights in the .bin of the same name
TENSOR_DTYPES = ("float32", "float16", "int64", "int32")
MAX_REPORTED = 6
_HEX64 = re.compile(r"[0-9a-f]{64}")


def package_versions() -> dict[str, str]:
    """Versions of the packages that made (or must read) the files; "absent" where not installed."""
    out = {}
    for dist in ("mmadapter", "torch", "onnx", "onnxscript", "onnxruntime", "onnxruntime-gpu", "open_clip_torch",
                 "tensorrt", "tokenizers", "ftfy", "openvino", "nncf"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "absent"
    return out


def file_entry(folder: Path, name: str, **extra: Any) -> dict[str, Any]:
    path = folder / name
    return {"sha256": sha256_file(path), "bytes": path.stat().st_size, **extra}


def manifest_hash(manifest: dict[str, Any]) -> str:
    """sha256 of the canonical JSON (sorted keys, no spaces) of ``manifest`` without its hash field."""
    body = {k: v for k, v in manifest.items() if k != HASH_FIELD}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def seal(manifest: dict[str, Any]) -> dict[str, Any]:
    """``manifest`` with the format fields first and its hash last, as written to disk."""
    body = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION,
            **{k: v for k, v in manifest.items() if k not in ("format", "format_version", HASH_FIELD)}}
    return {**body, HASH_FIELD: manifest_hash(body)}


def write_manifest(folder: Path, manifest: dict[str, Any]) -> Path:
    return atomic_write_text(Path(folder) / MANIFEST, json.dumps(seal(manifest), indent=2) + "\n")


# Schema ---------------------------------------------------------------------------------------------------

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
        return float(value)

    def labels(self, check: Callable[..., Any], value: Any, where: str, *args: Any) -> Any:
        try:
            return check(value, *args)
        except MMAdapterError as exc:
            self.fail(where, first_line(exc))
            return None


def _kind_name(kinds: type | tuple[type, ...]) -> str:
    names = {dict: "an object", list: "a list", str: "a string", int: "an integer", float: "a number",
             bool: "true/false", type(None): "null"}
    kinds = kinds if isinstance(kinds, tuple) else (kinds,)
    return " or ".join(dict.fromkeys(names.get(k, k.__name__) for k in kinds))


def _type_name(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", int: "an integer", float: "a number",
            bool: "true/false", type(None): "null"}.get(type(value), type(value).__name__)


def plain_file_name(name: object) -> bool:
    """A file directly in the export folder: no separators, no '..', nothing hidden."""
    return (isinstance(name, str) and 0 < len(name) <= 255 and "/" not in name and "\\" not in name
            and "\x00" not in name and not name.startswith("."))


def _check_tensors(c: _Checker, value: Any, where: str) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not value:
        c.fail(where, f"expected a non-empty list of tensors, got {_type_name(value)}")
        return []
    good = []
    for i, t in enumerate(value):
        at = f"{where}[{i}]"
        if not isinstance(t, dict):
            c.fail(at, f"expected an object, got {_type_name(t)}")
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
            good.append(t)
    return good


def _check_graph(c: _Checker, name: str, entry: Any, files: dict[str, Any]) -> None:
    where = f"graphs.{name}"
    if not isinstance(entry, dict):
        c.fail(where, f"expected an object, got {_type_name(entry)}")
        return
    c.get(entry, "description", where, str, required=False)
    c.get(entry, "batchable", where, bool)
    io = c.get(entry, "io", where, dict)
    inputs = _check_tensors(c, io.get("inputs"), f"{where}.io.inputs") if io is not None else []
    if io is not None:
        _check_tensors(c, io.get("outputs"), f"{where}.io.outputs")
    batch_inputs = c.get(entry, "batch_inputs", where, list)
    if batch_inputs is not None:
        names = {t["name"] for t in inputs}
        for i, b in enumerate(batch_inputs):
            if not isinstance(b, str) or (inputs and b not in names):
                c.fail(f"{where}.batch_inputs[{i}]", f"{b!r} is not an input of the graph")
    by_precision = c.get(entry, "files", where, dict)
    if by_precision is not None:
        if "fp32" not in by_precision:
            c.fail(f"{where}.files", "has no fp32 graphs")
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
    fusions = c.get(entry, "ort_fusions", where, dict, required=False)
    if fusions is not None and not all(isinstance(v, int) and not isinstance(v, bool) for v in fusions.values()):
        c.fail(f"{where}.ort_fusions", "counts must be integers")
    c.get(entry, "int8_matmuls", where, int, required=False)


def _classifier_dims(c: _Checker, graphs: dict[str, Any], num_classes: int | None,
                     image_size: tuple[int, int] | None) -> None:
    """The label set and the preprocessing must fit the image classifier's interface."""
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


def _check_tokenizer(c: _Checker, tokenizer: dict[str, Any], files: dict[str, Any]) -> None:
    """The torch-free tokenizer's file is one of the export's hashed files; its special ids are ids."""
    file = c.get(tokenizer, "file", "tokenizer", str)
    if file is not None and (not plain_file_name(file) or file not in files):
        c.fail("tokenizer.file", f"{file!r} is not listed under files")
    c.get(tokenizer, "kind", "tokenizer", str)
    for key in ("sot_token_id", "eot_token_id"):
        value = c.get(tokenizer, key, "tokenizer", int)
        if value is not None and value < 0:
            c.fail(f"tokenizer.{key}", f"must be >= 0, got {value}")
    specials = c.get(tokenizer, "special_tokens", "tokenizer", dict, required=False)
    if specials is not None and not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0
                                        for v in specials.values()):
        c.fail("tokenizer.special_tokens", "ids must be integers >= 0")


def check_manifest(data: Any) -> list[str]:
    """Every schema problem of a parsed manifest (format fields aside), as ``field: problem``."""
    c = _Checker()
    if not isinstance(data, dict):
        return [f"expected a JSON object, got {_type_name(data)}"]
    c.get(data, "created", "", str)
    digest = c.get(data, HASH_FIELD, "", str)
    if digest is not None and not _HEX64.fullmatch(digest):
        c.fail(HASH_FIELD, "is not 64 hex digits")
    checkpoint = c.get(data, "checkpoint", "", dict)
    if checkpoint is not None:
        c.get(checkpoint, "file", "checkpoint", str)
        sha = c.get(checkpoint, "sha256", "checkpoint", str)
        if sha is not None and not _HEX64.fullmatch(sha):
            c.fail("checkpoint.sha256", "is not 64 hex digits")
    clip = c.get(data, "clip", "", dict)
    if clip is not None:
        c.get(clip, "model_name", "clip", str)
    c.get(data, "adapter", "", dict)
    if "logit_scale" in data:
        c.number(data["logit_scale"], "logit_scale", positive=True)
    else:
        c.fail("logit_scale", "missing")

    num_classes = None
    label_set = c.get(data, "label_set", "", dict)
    if label_set is not None:
        names = c.get(label_set, "class_names", "label_set", list)
        if names is not None and c.labels(check_class_names, names, "label_set.class_names",
                                          "label_set.class_names") is not None:
            num_classes = len(names)
        templates = c.get(label_set, "templates", "label_set", list)
        if templates is not None:
            if not templates:
                c.fail("label_set.templates", "is empty")
            for i, t in enumerate(templates):
                c.labels(check_template, t, f"label_set.templates[{i}]", "template")

    image_size = None
    pre = c.get(data, "preprocessing", "", dict)
    if pre is not None:
        size = c.get(pre, "image_size", "preprocessing", list)
        if size is not None:
            if len(size) == 2 and all(isinstance(s, int) and not isinstance(s, bool) and 0 < s <= 1 << 16
                                      for s in size):
                image_size = (size[0], size[1])
            else:
                c.fail("preprocessing.image_size", f"expected two positive integers, got {size!r:.60}")
        for key in ("mean", "std"):
            values = c.get(pre, key, "preprocessing", list)
            if values is None:
                continue
            if len(values) != 3:
                c.fail(f"preprocessing.{key}", f"expected 3 numbers (RGB), got {len(values)}")
                continue
            for i, v in enumerate(values):
                c.number(v, f"preprocessing.{key}[{i}]", positive=key == "std")
        c.get(pre, "resize_mode", "preprocessing", str, required=False)
        c.get(pre, "interpolation", "preprocessing", str, required=False)
    tokenizer = c.get(data, "tokenizer", "", dict)
    if tokenizer is not None:
        length = c.get(tokenizer, "context_length", "tokenizer", int)
        if length is not None and length < 1:
            c.fail("tokenizer.context_length", f"must be >= 1, got {length}")
    c.get(data, "opset", "", int)
    c.get(data, "versions", "", dict)

    files = c.get(data, "files", "", dict)
    if files is not None:
        for name, entry in files.items():
            where = f"files.{name}"
            if not plain_file_name(name):
                c.fail("files", f"{name!r} is not a plain file name")
                continue
            if not isinstance(entry, dict):
                c.fail(where, f"expected an object, got {_type_name(entry)}")
                continue
            sha = c.get(entry, "sha256", where, str)
            if sha is not None and not _HEX64.fullmatch(sha):
                c.fail(f"{where}.sha256", "is not 64 hex digits")
            size = c.get(entry, "bytes", where, int)
            if size is not None and size < 0:
                c.fail(f"{where}.bytes", f"must be >= 0, got {size}")
    if tokenizer is not None:
        _check_tokenizer(c, tokenizer, files or {})
    graphs = c.get(data, "graphs", "", dict)
    if graphs is not None:
        for name, entry in graphs.items():
            _check_graph(c, name, entry, files or {})
        _classifier_dims(c, graphs, num_classes, image_size)

    validation = c.get(data, "validation", "", dict)
    if validation is not None:
        c.get(validation, "run", "validation", bool)
        c.get(validation, "passed", "validation", (bool, type(None)))
        c.get(validation, "reports", "validation", list)
    engines = c.get(data, "tensorrt", "", dict, required=False)
    if engines is not None:
        for graph, engine in (c.get(engines, "engines", "tensorrt", dict) or {}).items():
            where = f"tensorrt.engines.{graph}"
            file = c.get(engine, "file", where, str) if isinstance(engine, dict) else None
            if not isinstance(engine, dict):
                c.fail(where, f"expected an object, got {_type_name(engine)}")
            elif file is not None and (not plain_file_name(file) or file not in (files or {})):
                c.fail(f"{where}.file", f"{file!r} is not listed under files")
    return c.problems


def _summary(problems: list[str]) -> str:
    shown = problems[:MAX_REPORTED]
    more = f" (+{len(problems) - len(shown)} more)" if len(problems) > len(shown) else ""
    return "; ".join(" ".join(p.split()) for p in shown) + more


def load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except RecursionError:
        raise ExportError(f"{path} is not valid JSON: nested too deeply") from None
    except (OSError, ValueError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ExportError(f"{path} is not valid JSON: {first_line(exc)}") from None


def check_format(data: Any, path: Path) -> dict[str, Any]:
    if not isinstance(data, dict) or data.get("format") != FORMAT_NAME:
        raise ExportError(f"{path} is not an mmadapter export manifest")
    version = data.get("format_version")
    if version != FORMAT_VERSION or isinstance(version, bool):
        raise ExportError(f"{path} has format version {version!r:.40}; this mmadapter reads version "
                          f"{FORMAT_VERSION} (export the checkpoint again)")
    return data


def parse_manifest(data: Any, path: Path) -> dict[str, Any]:
    """``data`` (parsed JSON) after the format, schema and hash checks; raises one ExportError line."""
    check_format(data, path)
    problems = check_manifest(data)
    if problems:
        raise ExportError(f"{path} is invalid: {_summary(problems)}")
    if manifest_hash(data) != data[HASH_FIELD]:
        raise ExportError(f"{path} was modified after export (hash mismatch); export the checkpoint again")
    return data


def read_manifest(folder: str | Path) -> dict[str, Any]:
    """The checked manifest of an export folder; every problem is one ExportError line."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not folder.is_dir():
        raise ExportError(f"export folder not found: {folder}")
    if not path.is_file():
        raise ExportError(f"{folder} is not an mmadapter export (no {MANIFEST})")
    return parse_manifest(load_json(path), path)


def listed_files(folder: Path) -> set[str] | None:
    """Names an earlier export wrote into ``folder``, from its manifest; None when ``folder`` holds no
    readable mmadapter manifest or one edited after the export (its hash differs), since an edited
    list could name the user's files. A listed file whose size differs from the manifest's is left
    out: it is not what the export wrote."""
    try:
        data = json.loads((Path(folder) / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    if not isinstance(data, dict) or data.get("format") != FORMAT_NAME or not isinstance(data.get("files"), dict):
        return None
    if data.get(HASH_FIELD) != manifest_hash(data):
        return None
    names = {n for n, entry in data["files"].items() if plain_file_name(n) and _same_size(Path(folder) / n, entry)}
    # TensorRT sidecars (<engine>.json) and the timing cache are written beside the engines.
    names |= {Path(n).with_suffix(".json").name for n in names if n.endswith(".plan")}
    return names | {MANIFEST, "timing.cache"}


def _same_size(path: Path, entry: Any) -> bool:
    size = entry.get("bytes") if isinstance(entry, dict) else None
    try:
        return size is None or (not path.is_symlink() and path.stat().st_size == size)
    except OSError:
        return False


def verified_file(folder: Path, manifest: dict[str, Any], name: str) -> Path:
    """Path of a file listed in the manifest, after checking that it exists and its sha256 matches."""
    files = manifest.get("files")
    entry = files.get(name) if isinstance(files, dict) and isinstance(name, str) else None
    if not isinstance(entry, dict) or not plain_file_name(name):
        raise ExportError(f"{name!r} is not listed in {Path(folder) / MANIFEST}")
    path = Path(folder) / name
    if not path.is_file():
        raise ExportError(f"{path} is missing from the export folder")
    try:
        digest = sha256_file(path)
    except OSError as exc:
        raise ExportError(f"{path} cannot be read: {first_line(exc)}") from None
    if digest != entry.get("sha256"):
        raise ExportError(f"{path} does not match the sha256 in the manifest (modified or corrupt)")
    return path
