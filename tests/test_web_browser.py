"""The web page in a real browser: Debian's Chromium (headless, no GPU, loopback only) driven by
Playwright loads images into the page written by ``export --web`` and its answers are compared with
``mmadapter predict --onnx`` and the Python runtime on the same graph.

Skips cleanly without /usr/bin/chromium, without the playwright package, or without onnxruntime-web's
files (cached by ``python -c "from mmadapter.export.web import ort_web_files; ort_web_files()"``, which CI
runs, or an unpacked package named by $MMADAPTER_ORT_WEB). No network: the page is served on 127.0.0.1.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from test_web import web_export  # noqa: F401 - the shared session fixture

from mmadapter import cli
from mmadapter.errors import MMAdapterError
from mmadapter.export import web

pytestmark = pytest.mark.slow
playwright_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install "
                                     "'mmadapter[web]')")
if not os.access(web.CHROMIUM, os.X_OK):
    pytest.skip(f"no Chromium at {web.CHROMIUM} (apt-get install chromium)", allow_module_level=True)

# Reference: mmadapter predict --onnx / ExportedModel on the same fp16 graph; the page differs only by
# its JS preprocessing and onnxruntime-web's kernels. The page's bound on probabilities:
PROB_TOL = 1e-2
PRINTED_DIGITS = 5e-4  # predict prints probabilities with 3 decimals
NEW_LABELS = ["zero", "one", "two", "golden retriever"]


def _ort_files() -> dict[str, Path]:
    try:
        return web.ort_web_files(os.environ.get("MMADAPTER_ORT_WEB"), cache=None) if (
            os.environ.get("MMADAPTER_ORT_WEB") or _cached()) else {}
    except MMAdapterError as exc:
        pytest.skip(f"onnxruntime-web's files are not available: {exc}")


def _cached() -> bool:
    folder = web.default_cache_dir() / web.ORT_WEB_VERSION
    return all((folder / name).is_file() for name in web.ORT_WEB_FILES)


def write_images(folder: Path) -> list[Path]:
    """The demo's kind of images (digits at the model's size) and others that make the page resize:
    RGB, grey, JPEG, transparent and palette images of other sizes."""
    from mmadapter.data.digits import digit_images

    folder.mkdir()
    paths = []
    for i, (img, name) in enumerate(digit_images(64, 1)):
        paths.append(folder / f"{name}_{i}.png")
        img.save(paths[-1])
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:97, 0:150]
    rgb = np.stack([x * 1.7, y * 2.5, (x + y) % 256], -1) + rng.normal(0, 20, (97, 150, 3))
    rgb = np.clip(rgb, 0, 255).astype(np.uint8)
    Image.fromarray(rgb).save(folder / "rgb_150x97.png")
    Image.fromarray(rgb).resize((200, 130)).save(folder / "photo_200x130.jpg", quality=92)
    Image.fromarray(rgb[:, :80, 0].T.copy()).save(folder / "grey_97x80.png")
    rgba = np.dstack([rgb[:90, :90], np.tile(np.linspace(40, 255, 90).astype(np.uint8), (90, 1))])
    Image.fromarray(rgba, "RGBA").save(folder / "alpha_90x90.png")
    Image.fromarray(rgb[:70, :100]).quantize(32).save(folder / "palette_100x70.png")
    return sorted(folder.glob("*.png")) + sorted(folder.glob("*.jpg"))


@pytest.fixture(scope="module")
def site(web_export: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:  # noqa: F811
    files = _ort_files()
    if not files:
        pytest.skip("onnxruntime-web's files are not cached; run: python -c \"from mmadapter.export.web import "
                    "ort_web_files; ort_web_files()\" (or set MMADAPTER_ORT_WEB to an unpacked package)")
    ort_dir = next(iter(files.values())).parent
    return web.write_web(web_export, tmp_path_factory.mktemp("site") / "web", ort_web=ort_dir).out_dir


@pytest.fixture(scope="module")
def browser_page(site: Path) -> Iterator[tuple[Any, list[str]]]:
    """The page loaded in Chromium; the list collects console errors and uncaught page errors."""
    problems: list[str] = []
    with web.serve_folder(site) as url, playwright_api.sync_playwright() as p, \
            tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        context = p.chromium.launch_persistent_context(profile, executable_path=web.CHROMIUM,
                                                       args=list(web.CHROMIUM_ARGS), headless=True)
        page = context.new_page()
        page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
        page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
        page.goto(url)
        assert page.evaluate("window.mmadapter.ready") is True, page.inner_text("body")
        yield page, problems
        context.close()


def _classify(page: Any, paths: list[Path]) -> list[dict[str, Any]]:
    before = page.evaluate("window.mmadapter.done || 0")
    page.set_input_files("#files", [str(p) for p in paths])
    page.wait_for_function(f"(window.mmadapter.done || 0) >= {before + len(paths)}", timeout=120_000)
    return page.evaluate("window.mmadapter.results")


def _predict_cli(export: Path, paths: list[Path], capsys: pytest.CaptureFixture[str]) -> dict[str, list]:
    capsys.readouterr()
    assert cli.main(["predict", "--onnx", str(export), "--precision", "fp16", "--top-k", "5",
                     *map(str, paths)]) == 0
    out = {}
    for line in capsys.readouterr().out.splitlines():
        path, _, rest = line.rpartition(": ")
        if path:
            out[Path(path).name] = [(n, float(p)) for n, p in re.findall(r"\s*([^,]+?) \(([0-9.]+)\)", rest)]
    return out


def test_page_matches_predict_onnx(browser_page, web_export: Path, tmp_path: Path,  # noqa: F811
                                   capsys: pytest.CaptureFixture[str]) -> None:
    from mmadapter.runtime.model import ExportedModel

    page, problems = browser_page
    paths = write_images(tmp_path / "images")
    results = {r["name"]: r for r in _classify(page, paths)}
    assert sorted(results) == sorted(p.name for p in paths)
    printed = _predict_cli(web_export, paths, capsys)
    model = ExportedModel(web_export, precision="fp16", bank_cache=None)
    exact = model.classify(paths).probabilities
    diffs = {}
    for path, probs in zip(paths, exact):
        mine = results[path.name]
        assert mine["class_names"] == list(model.class_names)
        assert mine["top"][0][0] == printed[path.name][0][0] == model.class_names[int(np.argmax(probs))], path.name
        cli_probs = dict(printed[path.name])
        for name, p in mine["top"]:
            if name in cli_probs:  # the 5th place may differ between near ties
                assert abs(p - cli_probs[name]) <= PROB_TOL + PRINTED_DIGITS, (path.name, name)
        diffs[path.name] = float(np.max(np.abs(np.asarray(mine["probabilities"]) - probs)))
    worst = max(diffs, key=diffs.get)
    print(f"\npage vs Python runtime, max |probability difference|: {diffs[worst]:.2e} ({worst}); per image: "
          + ", ".join(f"{k} {v:.1e}" for k, v in sorted(diffs.items())))
    assert diffs[worst] <= PROB_TOL
    assert "WebAssembly" in page.inner_text("#backend") or "WebGPU" in page.inner_text("#backend")
    assert not problems, problems
    shot = tmp_path / "web-page.png"
    page.screenshot(path=str(shot), full_page=True)
    print(f"screenshot: {shot}")
    assert shot.stat().st_size > 0


def test_new_label_set_without_reload(browser_page, web_export: Path, tmp_path: Path) -> None:  # noqa: F811
    from mmadapter.runtime.model import ExportedModel

    page, problems = browser_page
    paths = write_images(tmp_path / "images")[:4]
    _classify(page, paths)
    page.fill("#labels", ", ".join(NEW_LABELS))
    page.click("#apply-labels")
    page.wait_for_function(f"window.mmadapter.results.every(r => r.class_names.length === {len(NEW_LABELS)})",
                           timeout=120_000)
    results = {r["name"]: r for r in page.evaluate("window.mmadapter.results")}
    expected = ExportedModel(web_export, precision="fp16", bank_cache=None).classify(paths, NEW_LABELS)
    for path, probs in zip(paths, expected.probabilities):
        mine = results[path.name]
        assert mine["class_names"] == NEW_LABELS
        assert mine["top"][0][0] == NEW_LABELS[int(np.argmax(probs))], path.name
        assert np.max(np.abs(np.asarray(mine["probabilities"]) - probs)) <= PROB_TOL, path.name
    page.click("#reset-labels")
    page.wait_for_function("window.mmadapter.results.every(r => r.class_names.length !== 4)", timeout=60_000)
    assert not problems, problems


def test_tokenizer_matches_python(browser_page, web_export: Path) -> None:  # noqa: F811
    """The page's BPE gives the export's tokenizer's ids (mmadapter.runtime.tokenizer) on ordinary label text,
    punctuation, accents, curly quotes, HTML entities, digits and a text over the context length."""
    from mmadapter.runtime.model import ExportedModel

    page, _ = browser_page
    texts = ["a photo of a golden retriever.", "Hello  World’s &amp; café", "t-shirt (XL), 3 pcs!",
             "naïve Ünïcödé 東京 タワー", "can't won't i'll", "<start_of_text>x", "emoji 🐈 cat", "word " * 90]
    ids = page.evaluate("texts => window.mmadapter.tokenize(texts)", texts)
    tokenizer = ExportedModel(web_export, bank_cache=None).open_vocabulary.tokenizer
    assert np.array_equal(np.asarray(ids), tokenizer(texts))


def test_bad_inputs_show_messages(browser_page, tmp_path: Path) -> None:
    page, problems = browser_page
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    fake = tmp_path / "fake.png"
    fake.write_bytes(b"\x89PNG\r\n\x1a\n but not really")
    huge = tmp_path / "huge.png"
    Image.new("L", (9000, 5000)).save(huge)  # 45 megapixels, a few KB on disk
    thin = tmp_path / "thin.png"
    Image.new("RGB", (1, 300)).save(thin)  # 300:1
    before = len(page.evaluate("window.mmadapter.messages"))
    page.set_input_files("#files", [str(text), str(fake), str(huge), str(thin)])
    page.wait_for_function(f"window.mmadapter.messages.length >= {before + 4}", timeout=60_000)
    messages = page.evaluate("window.mmadapter.messages")[before:]
    assert any(m.startswith("notes.txt: skipped (not an image") for m in messages), messages
    assert any(m.startswith("fake.png: skipped (not an image") for m in messages), messages
    assert any(m.startswith("huge.png: skipped (9000x5000 is 45 megapixels") for m in messages), messages
    assert any(m.startswith("thin.png: skipped (1x300 has an aspect ratio of 300:1") for m in messages), messages
    page.fill("#labels", " , ,  ")
    page.click("#apply-labels")
    page.wait_for_function(f"window.mmadapter.messages.length >= {before + 5}", timeout=30_000)
    assert "label list is empty" in page.evaluate("window.mmadapter.messages")[-1]
    page.fill("#labels", "cat, Cat")
    page.click("#apply-labels")
    page.wait_for_function(f"window.mmadapter.messages.length >= {before + 6}", timeout=30_000)
    assert "give the same prompt" in page.evaluate("window.mmadapter.messages")[-1]
    assert page.inner_text("#messages").count("skipped") >= 4  # shown on the page, not only recorded
    assert "Ready" in page.inner_text("#status")
    assert not problems, problems
