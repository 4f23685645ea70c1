"""``export --web``: the static folder (graphs chosen, hashes, model.json), onnxruntime-web's pinned files,
and the one-line errors. No browser and no network here: onnxruntime-web's files are stand-ins whose
sha256s replace the pinned ones (tests/test_web_browser.py runs the real page in Chromium)."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

import pytest

from mmadapter import cli
from mmadapter.errors import ExportError
from mmadapter.export import web
from mmadapter.files import sha256_file
from mmadapter.runtime.graphs import GRAPH_NAMES
from mmadapter.runtime.manifest import read_manifest

from export_fixtures import make_checkpoint


@pytest.fixture(scope="session")
def web_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A validated export of the tiny random CLIP with fp32 and fp16 graphs (shared with the browser test)."""
    from mmadapter.export.pipeline import export_checkpoint

    root = tmp_path_factory.mktemp("web-export")
    ckpt, *_ = make_checkpoint(root)
    return export_checkpoint(ckpt, root / "onnx", fp16=True, progress=False).out_dir


@pytest.fixture
def fake_ort(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An unpacked-package stand-in (dist/ with the three files), its sha256s pinned in their place."""
    dist = tmp_path / "ort-package" / "dist"
    dist.mkdir(parents=True)
    pins = {}
    for name in web.ORT_WEB_FILES:
        (dist / name).write_bytes(f"stand-in for {name}".encode())
        pins[name] = sha256_file(dist / name)
    monkeypatch.setattr(web, "ORT_WEB_FILES", pins)
    return dist.parent


def test_web_folder_holds_page_model_and_runtime(web_export: Path, fake_ort: Path, tmp_path: Path) -> None:
    result = web.write_web(web_export, tmp_path / "site", ort_web=fake_ort)
    site = result.out_dir
    for name in ("index.html", "app.js", "style.css", "model.json", *(f"ort/{n}" for n in web.ORT_WEB_FILES)):
        assert (site / name).is_file(), name
    config = json.loads((site / "model.json").read_text())
    manifest = read_manifest(web_export)
    on_disk = json.loads((web_export / "manifest.json").read_text())  # the page gets the manifest's own JSON
    assert config["label_set"] == manifest.label_set.to_dict() == on_disk["label_set"]
    assert config["preprocessing"] == manifest.preprocessing.to_dict() == on_disk["preprocessing"]
    assert config["export_manifest_sha256"] == manifest.manifest_sha256 == on_disk["manifest_sha256"]
    # Every graph the page loads is the export's file, byte for byte (sha256 as in the export's manifest).
    assert set(config["graphs"]) == {"image_classifier", "text_encoder", "class_bank", "adapter_head"}
    for graph, entry in config["graphs"].items():
        path = site / "models" / entry["file"]
        assert sha256_file(path) == manifest.files[entry["file"]].sha256 == entry["sha256"], graph
        assert entry["io"] == on_disk["graphs"][graph]["io"]
    assert sha256_file(site / "models" / config["tokenizer"]["file"]) == config["tokenizer"]["sha256"]
    assert config["onnxruntime_web"]["version"] == web.ORT_WEB_VERSION
    assert "MB" in result.summary() and str(site) in result.summary()


def test_smallest_validated_graph_is_chosen(web_export: Path) -> None:
    """The page gets the smallest ONNX file of each graph among those the export validated (fp16 here
    for the image classifier: half the bytes of fp32), never an OpenVINO or foreign file."""
    manifest = read_manifest(web_export)
    for graph in GRAPH_NAMES:
        chosen = web.choose_graph(web_export, manifest, graph)
        files = manifest.graphs[graph].files
        sizes = [manifest.files[n].bytes for p in files.values() for k, n in p.items() if k in web.KINDS]
        assert chosen["bytes"] == min(sizes)
        assert chosen["file"] == files[chosen["precision"]].get(chosen["kind"])
    assert web.choose_graph(web_export, manifest, "image_classifier")["precision"] == "fp16"


def test_earlier_web_folder_replaced_foreign_folder_refused(web_export: Path, fake_ort: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    web.write_web(web_export, site, ort_web=fake_ort)
    (site / "stale.txt").write_text("from the earlier run")
    web.write_web(web_export, site, ort_web=fake_ort)
    assert not (site / "stale.txt").exists() and (site / "model.json").is_file()
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "holiday.jpg").write_bytes(b"x")
    with pytest.raises(ExportError, match="holds files that no earlier web export wrote"):
        web.write_web(web_export, foreign, ort_web=fake_ort)
    assert sorted(p.name for p in foreign.iterdir()) == ["holiday.jpg"]
    with pytest.raises(ExportError, match="inside the export folder"):
        web.write_web(web_export, web_export / "web", ort_web=fake_ort)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".site")], "a temporary folder was left"


def test_ort_web_folder_checked_against_pins(fake_ort: Path) -> None:
    files = web.ort_web_files(fake_ort)  # the package root or its dist/ both work
    assert files == web.ort_web_files(fake_ort / "dist")
    (fake_ort / "dist" / "ort-wasm-simd-threaded.asyncify.wasm").write_bytes(b"tampered")
    with pytest.raises(ExportError, match="sha256 differs from the pinned one") as err:
        web.ort_web_files(fake_ort)
    assert "\n" not in str(err.value)
    with pytest.raises(ExportError, match="is not a folder"):
        web.ort_web_files(fake_ort / "missing")


def _fake_npm(folder: Path, payload: bytes) -> None:
    """An ``npm`` on PATH whose ``pack`` writes ``payload`` as the tarball."""
    folder.mkdir(exist_ok=True)
    script = folder / "npm"
    script.write_text("#!/bin/sh\n# npm pack PKG --pack-destination DIR --silent\n"
                      f"printf '%s' '{payload.decode()}' > \"$4/onnxruntime-web-{web.ORT_WEB_VERSION}.tgz\"\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)


def test_npm_tarball_with_wrong_integrity_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_npm(tmp_path / "bin", b"not the package")
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    cache = tmp_path / "cache"
    with pytest.raises(ExportError, match="sha512 is not the pinned one") as err:
        web.ort_web_files(cache=cache)
    assert "--ort-web" in str(err.value) and "\n" not in str(err.value)
    assert not (cache / f"onnxruntime-web-{web.ORT_WEB_VERSION}.tgz").exists(), "a refused tarball was kept"


def test_no_npm_is_one_line_naming_the_offline_option(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(ExportError, match="npm is not installed.*--ort-web DIR"):
        web.ort_web_files(cache=tmp_path / "cache")


def test_integrity_pin_format() -> None:
    """The pinned integrity is npm's form: sha512, base64 of 64 bytes."""
    import base64

    algo, _, digest = web.ORT_WEB_INTEGRITY.partition("-")
    assert algo == "sha512" and len(base64.b64decode(digest)) == hashlib.sha512().digest_size


def test_cli_export_web_checks_before_exporting(web_export: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """A bad --ort-web or --web destination is one line and exit 2 before any export runs: --out stays absent."""
    ckpt = web_export.parent / "adapter.safetensors"
    out = tmp_path / "out"
    code = cli.main(["export", "--checkpoint", str(ckpt), "--out", str(out), "--web", str(tmp_path / "site"),
                     "--ort-web", str(tmp_path / "nowhere"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and "--ort-web" in err
    assert not out.exists()
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    code = cli.main(["export", "--checkpoint", str(ckpt), "--out", str(out), "--web", str(busy), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "holds files that no earlier web export wrote" in err and err.count("\n") == 1
    assert not out.exists()


def test_assets_are_package_data() -> None:
    """pyproject's package data lists the page's files (a wheel without them could not write the page)."""
    text = (Path(__file__).parents[1] / "pyproject.toml").read_text()
    for asset in web.ASSETS:
        assert (web.ASSET_DIR / asset).is_file()
        assert f"web_assets/*{os.path.splitext(asset)[1]}" in text
