"""``manifest.json`` of an export folder: what every file is, its hash, the graphs' interfaces, the
label set, the preprocessing and tokenizer, versions and validation results.

Read by the runtime on a serving machine, so this module imports neither torch nor open_clip.
"""

from __future__ import annotations

import json
from importlib import metadata
from pathlib import Path
from typing import Any

from mmadapter.errors import ExportError
from mmadapter.files import sha256_file

MANIFEST = "manifest.json"
FORMAT_NAME = "mmadapter-onnx-export"
FORMAT_VERSION = 1


def package_versions() -> dict[str, str]:
    """Versions of the packages that made (or must read) the files; "absent" where not installed."""
    out = {}
    for dist in ("mmadapter", "torch", "onnx", "onnxscript", "onnxruntime", "onnxruntime-gpu", "open_clip_torch",
                 "tensorrt"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "absent"
    return out


def file_entry(folder: Path, name: str, **extra: Any) -> dict[str, Any]:
    path = folder / name
    return {"sha256": sha256_file(path), "bytes": path.stat().st_size, **extra}


def write_manifest(folder: Path, manifest: dict[str, Any]) -> Path:
    manifest = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, **manifest}
    path = folder / MANIFEST
    path.write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")
    return path


def read_manifest(folder: str | Path) -> dict[str, Any]:
    """The manifest of an export folder; every problem is one ExportError line."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not folder.is_dir():
        raise ExportError(f"export folder not found: {folder}")
    if not path.is_file():
        raise ExportError(f"{folder} is not an mmadapter export (no {MANIFEST})")
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ExportError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT_NAME:
        raise ExportError(f"{path} is not an mmadapter export manifest")
    if data.get("format_version") != FORMAT_VERSION:
        raise ExportError(f"{path} has format version {data.get('format_version')!r}; expected {FORMAT_VERSION}")
    return data


def verified_file(folder: Path, manifest: dict[str, Any], name: str) -> Path:
    """Path of a file listed in the manifest, after checking that it exists and its sha256 matches."""
    entry = manifest.get("files", {}).get(name)
    path = Path(folder) / name
    if entry is None:
        raise ExportError(f"{name} is not listed in {Path(folder) / MANIFEST}")
    if not path.is_file():
        raise ExportError(f"{path} is missing from the export folder")
    if sha256_file(path) != entry["sha256"]:
        raise ExportError(f"{path} does not match the sha256 in the manifest (modified or corrupt)")
    return path
