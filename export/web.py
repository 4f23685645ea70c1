"""``export --web DIR``: a static folder that classifies images in the visitor's browser, offline.

The folder holds ``index.html``, ``app.js`` and ``style.css`` (from ``web_assets/``), the export's
graphs that the page runs (the smallest validated file of each: int8, fp16 or fp32), the tokenizer,
``model.json`` (label set, templates, preprocessing, graph files with their sha256, image size limits)
and onnxruntime-web's own files under ``ort/``. Nothing is fetched from another host when the page
runs; it opens from any static file server (``python -m http.server -d DIR``), not from ``file://``
(browsers refuse ES modules and WebAssembly there).

onnxruntime-web comes from its npm package at :data:`ORT_WEB_VERSION`: ``npm pack`` into a cache
folder, the tarball checked against the registry's sha512 pinned here, then only the three files the
page needs extracted, each checked against its pinned sha256. Offline, ``--ort-web DIR`` points at an
unpacked copy of that package (its root or its ``dist/``); its files are held to the same sha256s.

No torch here: a serving install can write the web folder from an existing export.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmadapter.errors import ExportError
from mmadapter.files import atomic_write_text, first_line, sha256_file, temp_name
from mmadapter.folders import Destination, Owner, check_folder, destination, owned_folder
from mmadapter.runtime.graphs import GRAPH_NAMES, IMAGE_CLASSIFIER
from mmadapter.runtime.images import MAX_ASPECT_RATIO, MAX_PIXELS, MAX_RESIZED_PIXELS
from mmadapter.runtime.manifest import Manifest, read_manifest, verified_file

ORT_WEB_VERSION = "1.30.0"
# The registry's ``dist.integrity`` of onnxruntime-web-1.30.0.tgz.
ORT_WEB_INTEGRITY = ("sha512-q0y+JrrtukXSzsBWEMccVfqX25LRmosXHF+CaRJmg8pZClzcV7svNc4rKY3jL02Vb7QmRMDs1SigqR4CXAfKYQ==")
# The WebGPU build: its WebAssembly module also carries the CPU (wasm) execution provider, so one
# ~27 MB module serves both backends (the plain wasm build would add another 14 MB for no gain).
ORT_WEB_FILES = {
    "ort.webgpu.min.mjs": "3dffff71811bc13a3a3d9591c57ca5ee5735b8f5f3eaf789510b02bb040ae3a0",
    "ort-wasm-simd-threaded.asyncify.mjs": "3d1c85995364bb643302fc6fd877a0c3ba5ae72401815e0f24828a53d9191e28",
    "ort-wasm-simd-threaded.asyncify.wasm": "39f9f0894d478800487ed9f7dbe92618498db320cf55c8e3d89adff8dce658da",
}
ORT_WEB_CACHE_ENV = "MMADAPTER_ORT_WEB_CACHE"
NPM_TIMEOUT_S = 300
ASSETS = ("index.html", "app.js", "style.css")
ASSET_DIR = Path(__file__).with_name("web_assets")
WEB_MARKER = "model.json"  # written last; with our format in it, it marks an earlier web folder (replaced whole)
WEB_FORMAT = "mmadapter-web"
PRECISIONS = ("fp32", "fp16", "int8")
KINDS = ("portable", "ort")  # not "openvino": onnxruntime-web reads ONNX files only


@dataclass
class WebResult:
    out_dir: Path
    graphs: dict[str, dict[str, Any]]  # graph -> {file, precision, bytes}
    ort_web_version: str
    files: list[str] = field(default_factory=list)

    @property
    def model_bytes(self) -> int:
        return int(self.graphs[IMAGE_CLASSIFIER]["bytes"])

    def summary(self) -> str:
        g = self.graphs[IMAGE_CLASSIFIER]
        text = sum(v["bytes"] for k, v in self.graphs.items() if k != IMAGE_CLASSIFIER)
        extra = f", text graphs for new label sets {text / 1e6:.2f} MB" if text else ""
        return (f"wrote the web page to {self.out_dir}: image classifier {g['file']} ({g['precision']}, "
                f"{g['bytes'] / 1e6:.2f} MB){extra}, onnxruntime-web {self.ort_web_version}; "
                f"serve it with: python -m http.server -d {self.out_dir}")


# onnxruntime-web -------------------------------------------------------------------------------------------

def default_cache_dir() -> Path:
    if os.environ.get(ORT_WEB_CACHE_ENV):
        return Path(os.environ[ORT_WEB_CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "mmadapter" / "onnxruntime-web"


def _integrity(path: Path) -> str:
    digest = hashlib.sha512()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return "sha512-" + base64.b64encode(digest.digest()).decode()


def _check_pinned(path: Path, name: str, where: str) -> Path:
    if not path.is_file():
        raise ExportError(f"{where} has no {name} (onnxruntime-web {ORT_WEB_VERSION}'s dist/ holds it)")
    if sha256_file(path) != ORT_WEB_FILES[name]:
        raise ExportError(f"{path} is not onnxruntime-web {ORT_WEB_VERSION}'s {name} (sha256 differs from the pinned "
                          "one); give an unpacked onnxruntime-web@" + ORT_WEB_VERSION)
    return path


def _from_folder(folder: Path) -> dict[str, Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise ExportError(f"--ort-web {folder} is not a folder (give an unpacked onnxruntime-web@{ORT_WEB_VERSION})")
    dist = folder / "dist" if (folder / "dist").is_dir() else folder
    return {name: _check_pinned(dist / name, name, str(dist)) for name in ORT_WEB_FILES}


def _npm_pack(cache: Path) -> Path:
    """The package tarball in ``cache``, from npm when it is not there yet; its sha512 checked."""
    tarball = cache / f"onnxruntime-web-{ORT_WEB_VERSION}.tgz"
    if tarball.is_file() and _integrity(tarball) == ORT_WEB_INTEGRITY:
        return tarball
    npm = shutil.which("npm")
    hint = f"or pass --ort-web DIR (an unpacked onnxruntime-web@{ORT_WEB_VERSION} package)"
    if npm is None:
        raise ExportError(f"cannot get onnxruntime-web {ORT_WEB_VERSION}: npm is not installed; install Node.js {hint}")
    try:
        cache.mkdir(parents=True, exist_ok=True)
        tarball.unlink(missing_ok=True)
        done = subprocess.run([npm, "pack", f"onnxruntime-web@{ORT_WEB_VERSION}", "--pack-destination", str(cache),
                               "--silent"], capture_output=True, text=True, timeout=NPM_TIMEOUT_S,
                              stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ExportError(f"cannot get onnxruntime-web {ORT_WEB_VERSION} with npm into {cache}: "
                          f"{first_line(exc)}; {hint}") from None
    if done.returncode != 0 or not tarball.is_file():
        reason = first_line(done.stderr.strip() or done.stdout.strip() or f"exit status {done.returncode}")
        raise ExportError(f"npm pack onnxruntime-web@{ORT_WEB_VERSION} failed ({reason}); {hint}")
    if _integrity(tarball) != ORT_WEB_INTEGRITY:
        tarball.unlink(missing_ok=True)
        raise ExportError(f"npm gave an onnxruntime-web {ORT_WEB_VERSION} tarball whose sha512 is not the pinned "
                          f"one; refusing it; {hint}")
    return tarball


def ort_web_files(ort_web: str | Path | None = None, cache: str | Path | None = None) -> dict[str, Path]:
    """onnxruntime-web's files by name, checked against the pinned sha256s: from ``ort_web`` (an
    unpacked package) if given, else from the cache, filled by ``npm pack`` on first use."""
    if ort_web is not None:
        return _from_folder(Path(ort_web))
    cache = Path(cache) if cache is not None else default_cache_dir()
    extracted = cache / ORT_WEB_VERSION
    if all((extracted / n).is_file() and sha256_file(extracted / n) == h for n, h in ORT_WEB_FILES.items()):
        return {n: extracted / n for n in ORT_WEB_FILES}
    tarball = _npm_pack(cache)
    try:
        extracted.mkdir(parents=True, exist_ok=True)
        with tarfile.open(tarball, "r:gz") as tar:
            for name in ORT_WEB_FILES:
                member = tar.getmember(f"package/dist/{name}")
                source = tar.extractfile(member)
                if source is None:
                    raise ExportError(f"{tarball}: package/dist/{name} is not a file")
                tmp = temp_name(extracted / name)
                with source, open(tmp, "wb") as out:
                    shutil.copyfileobj(source, out)
                os.replace(tmp, extracted / name)
    except (OSError, KeyError, tarfile.TarError) as exc:
        raise ExportError(f"cannot unpack onnxruntime-web from {tarball} into {extracted}: {first_line(exc)}") from None
    return {name: _check_pinned(extracted / name, name, str(extracted)) for name in ORT_WEB_FILES}


# The export's graphs -----------------------------------------------------------------------------------------

def choose_graph(folder: Path, manifest: Manifest, graph: str) -> dict[str, Any]:
    """The smallest ONNX file of ``graph`` that the export validated (every file it lists passed), with
    its precision and size."""
    entry = manifest.graphs.get(graph)
    if entry is None:
        raise ExportError(f"{folder} has no {graph} graph; export the checkpoint again with this version of mmadapter")
    candidates = []
    for precision in PRECISIONS:
        for kind in KINDS:
            name = entry.files[precision].get(kind) if precision in entry.files else None
            if name is not None and name in manifest.files:
                candidates.append((manifest.files[name].bytes, precision, kind, name))
    if not candidates:
        raise ExportError(f"{folder}: no ONNX file of {graph} is listed in its manifest")
    size, precision, kind, name = min(candidates)
    return {"file": name, "precision": precision, "kind": kind, "bytes": size}


def _check_validated(folder: Path, manifest: Manifest) -> None:
    if not manifest.validation.run or not manifest.validation.passed:
        raise ExportError(f"{folder} was exported without validation; the web page serves validated graphs only "
                          "(export again without --no-validate)")


def page_config(manifest: Manifest, graphs: dict[str, dict[str, Any]], hashes: dict[str, str]) -> dict[str, Any]:
    """What the page reads from ``model.json``."""
    tokenizer = manifest.tokenizer.to_dict()
    return {
        "format": WEB_FORMAT,
        "format_version": 1,
        "model": manifest.model_name,
        "export_manifest_sha256": manifest.manifest_sha256,
        "label_set": manifest.label_set.to_dict(),
        "preprocessing": manifest.preprocessing.to_dict(),
        "graphs": {g: {**v, "sha256": hashes[v["file"]], "io": manifest.graphs[g].io.to_dict()}
                   for g, v in graphs.items()},
        "tokenizer": ({**tokenizer, "sha256": hashes[tokenizer["file"]]} if "file" in tokenizer and
                      tokenizer["file"] in hashes else None),
        "limits": {"max_pixels": MAX_PIXELS, "max_aspect_ratio": MAX_ASPECT_RATIO,
                   "max_resized_pixels": MAX_RESIZED_PIXELS},
        "onnxruntime_web": {"version": ORT_WEB_VERSION, "files": sorted(ORT_WEB_FILES)},
    }


def _web_folder_proof(folder: Path) -> tuple[()] | None:
    """An earlier web folder is recognised by its ``model.json`` of our format (another program's
    model.json, TensorFlow.js's say, does not make a folder ours); it is then replaced as a whole."""
    try:
        config = json.loads((Path(folder) / WEB_MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    return () if isinstance(config, dict) and config.get("format") == WEB_FORMAT else None


WEB_FOLDER = Owner("web export", WEB_MARKER, _web_folder_proof, "holds files that no earlier web export wrote",
                   whole=True, error=ExportError)


def _destination(out: Path, export_dir: Path) -> Destination:
    dest = destination(out, "--web", WEB_FOLDER)
    if _is_inside(dest.path, export_dir.resolve()):
        raise ExportError(f"--web {out} is inside the export folder {export_dir}; give a folder outside it")
    check_folder(dest, overwrite=True, protected=[("export folder", export_dir.resolve())])
    return dest


def _is_inside(inner: Path, outer: Path) -> bool:
    return inner == outer or outer in inner.parents


def check_web_destination(out_dir: str | Path, export_dir: str | Path) -> None:
    """The cheap check for the CLI, before any export runs."""
    _destination(Path(out_dir), Path(export_dir))


def write_web(export_dir: str | Path, out_dir: str | Path, ort_web: str | Path | None = None,
              cache: str | Path | None = None) -> WebResult:
    """Write the web folder for an export folder. The folder is built beside ``out_dir`` and renamed into
    place when complete; an earlier web folder there is replaced, anything else refused."""
    export_dir, out = Path(export_dir), Path(out_dir)
    dest = _destination(out, export_dir)
    manifest = read_manifest(export_dir)
    _check_validated(export_dir, manifest)
    graphs = {g: choose_graph(export_dir, manifest, g) for g in GRAPH_NAMES if g in manifest.graphs}
    if IMAGE_CLASSIFIER not in graphs:
        raise ExportError(f"{export_dir} has no {IMAGE_CLASSIFIER} graph")
    tokenizer_file = manifest.tokenizer.file
    if any(g not in graphs for g in GRAPH_NAMES):
        graphs = {IMAGE_CLASSIFIER: graphs[IMAGE_CLASSIFIER]}  # the folded label set only
        tokenizer_file = None
    sources = {v["file"]: verified_file(export_dir, manifest, v["file"]) for v in graphs.values()}
    if tokenizer_file:
        sources[tokenizer_file] = verified_file(export_dir, manifest, tokenizer_file)
    ort_files = ort_web_files(ort_web, cache)
    missing = [a for a in ASSETS if not (ASSET_DIR / a).is_file()]
    if missing:
        raise ExportError(f"the installed mmadapter lacks its web page files {missing} in {ASSET_DIR}")

    with owned_folder(dest, overwrite=True, protected=[("export folder", export_dir.resolve())]) as tmp:
        try:
            (tmp / "models").mkdir()
            (tmp / "ort").mkdir()
            for asset in ASSETS:
                shutil.copyfile(ASSET_DIR / asset, tmp / asset)
            hashes = {}
            for name, path in sources.items():
                shutil.copyfile(path, tmp / "models" / name)
                hashes[name] = manifest.files[name].sha256
            for name, path in ort_files.items():
                shutil.copyfile(path, tmp / "ort" / name)
            config = page_config(manifest, graphs, hashes)
            atomic_write_text(tmp / WEB_MARKER, json.dumps(config, indent=1, ensure_ascii=False) + "\n")
        except OSError as exc:
            raise ExportError(f"cannot write the web folder {out}: {first_line(exc)}") from None
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    return WebResult(out, graphs, ORT_WEB_VERSION, files)


__all__ = ["ORT_WEB_FILES", "ORT_WEB_INTEGRITY", "ORT_WEB_VERSION", "WebResult", "check_web_destination",
           "choose_graph", "default_cache_dir", "ort_web_files", "page_config", "serve_folder", "write_web"]


# Serving the folder locally ---------------------------------------------------------------------------------

# Headless Chromium for the tests and the benchmark: no GPU, no network traffic of its own, a fresh profile.
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync")


@contextlib.contextmanager
def serve_folder(folder: str | Path, host: str = "127.0.0.1") -> Iterator[str]:
    """Serve ``folder`` over HTTP on ``host`` (loopback by default) on a free port, in a thread; yields
    the URL. The responses carry COOP/COEP headers, so the page is cross-origin isolated and
    onnxruntime-web may use WebAssembly threads."""
    import functools
    import http.server
    import threading

    class Handler(http.server.SimpleHTTPRequestHandler):
        extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map, ".mjs": "text/javascript",
                          ".js": "text/javascript", ".wasm": "application/wasm", ".onnx": "application/octet-stream"}

        def end_headers(self) -> None:
            self.send_header("Cross-Origin-Opener-Policy", "same-origin")
            self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
            self.send_header("Cache-Control", "no-store")
            super().end_headers()

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
            pass

    server = http.server.ThreadingHTTPServer((host, 0), functools.partial(Handler, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{host}:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
