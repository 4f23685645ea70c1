"""Validation of exported graphs against the torch model, run by default after every export.

Every check runs and every failure is collected before anything is reported (names, shapes and
dtypes first, then values). Values are compared against the *torch model* (open_clip's encoders
and :class:`MultiModalAdapter` with a class bank), not against the wrapper that was traced, on
real preprocessed images made here (PIL images through the model's own preprocess), at batch sizes
other than the exported one. The cases and the thresholds come from each graph's spec
(``GraphSpec.cases``, ``GraphSpec.tolerances``: the table ``graphs.TOLERANCES``, docs/design.md §6.5
and §8.2): embedding cosine >= 0.99999 in fp32 and >= 0.999 in fp16; top-1 identical on >= 99.9% of
inputs. int8 graphs (opt-in, CPU serving) are held to the fp16 cosine, and their top-1 check skips
near ties.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmadapter.export.specs import EXPORT_BATCH, Case, GraphSpec, Reference
from mmadapter.files import first_line
from mmadapter.model.adapter import ClassBank, MultiModalAdapter
from mmadapter.model.backbone import FrozenClip, format_prompt
from mmadapter.runtime.engines import PORT_TYPES
from mmadapter.runtime.graphs import (
    CLIP_IMAGE_EMBEDDING,
    IMAGE_CLASSIFIER,
    IMAGE_EMBEDDING,
    KEYS,
    LOGITS,
    PIXELS,
    TEXT_EMB,
    TOLERANCES,
    TOP1_MIN,
    VALUES,
    Tolerance,
)
from mmadapter.runtime.labels import check_class_names
from mmadapter.runtime.open_vocab import OpenVocabulary, head
from mmadapter.runtime.tokenizer import ClipTokenizer

VALIDATION_BATCHES = (1, 3, 17)
# Views of graphs.TOLERANCES (the one table), for tests and benchmarks; change the table, not these.
COSINE_MIN = {p: t.cosine_min for p, t in TOLERANCES.items()}
TIE_MARGIN = {p: t.tie_margin for p, t in TOLERANCES.items()}
LOGITS_ATOL_FP32 = TOLERANCES["fp32"].logits_atol


@dataclass
class GraphReport:
    file: str
    precision: str
    failures: list[str] = field(default_factory=list)
    min_cosine: dict[str, float] = field(default_factory=dict)
    max_abs_diff: dict[str, float] = field(default_factory=dict)
    top1_agreement: float | None = None
    near_ties: int = 0
    batch_sizes: list[int] = field(default_factory=list)
    tolerance: Tolerance | None = None  # None: TOLERANCES[precision]

    def __post_init__(self) -> None:
        if self.tolerance is None:
            self.tolerance = TOLERANCES[self.precision]

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict[str, Any]:
        return {
            "file": self.file, "precision": self.precision, "passed": self.passed, "failures": self.failures,
            "min_cosine": self.min_cosine, "max_abs_diff": self.max_abs_diff,
            "top1_agreement": self.top1_agreement, "near_ties": self.near_ties, "batch_sizes": self.batch_sizes,
            "thresholds": {"cosine": self.tolerance.cosine_min, "top1": TOP1_MIN,
                           "tie_margin": self.tolerance.tie_margin},
        }


def sample_images(count: int, seed: int = 0) -> list[Any]:
    """Deterministic, varied PIL images: non-square sizes above and below the crop, gradients,
    discs, stripes, noise and flat colour, in RGB, L and RGBA modes."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    images = []
    for i in range(count):
        w, h = int(rng.integers(40, 300)), int(rng.integers(40, 300))
        kind = i % 5
        if kind == 0:
            x = np.linspace(0, 255, w)[None, :, None] * rng.random(3)
            y = np.linspace(0, 255, h)[:, None, None] * rng.random(3)
            arr = np.clip(x + y, 0, 255).astype(np.uint8)
            img = Image.fromarray(np.broadcast_to(arr, (h, w, 3)).copy())
        elif kind == 1:
            img = Image.new("RGB", (w, h), tuple(int(c) for c in rng.integers(0, 256, 3)))
            draw = ImageDraw.Draw(img)
            for _ in range(4):
                x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
                r = int(rng.integers(5, max(w, h) // 2))
                draw.ellipse((x0 - r, y0 - r, x0 + r, y0 + r), fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
        elif kind == 2:
            period = int(rng.integers(3, 20))
            stripes = ((np.arange(w) // period) % 2 * 255).astype(np.uint8)
            img = Image.fromarray(np.broadcast_to(stripes, (h, w)).copy(), mode="L")
        elif kind == 3:
            img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        else:
            arr = rng.integers(0, 256, (h, w, 4), dtype=np.uint8)
            arr[..., 3] = 255
            img = Image.fromarray(arr, mode="RGBA")
        images.append(img)
    return images


def _split(total: Sequence[Any], sizes: Sequence[int]) -> list[Sequence[Any]]:
    out, start = [], 0
    for s in sizes:
        out.append(total[start:start + s])
        start += s
    return out


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().float().numpy()


@torch.no_grad()
def build_cases(
    specs: Sequence[GraphSpec],
    clip: FrozenClip,
    adapter: MultiModalAdapter,
    bank: ClassBank,
    logit_scale: float,
    templates: Sequence[str],
    batch_sizes: Sequence[int] = VALIDATION_BATCHES,
) -> dict[str, list[Case]]:
    """Validation cases per graph name (each spec's ``cases``), with expected outputs from the torch model."""
    if EXPORT_BATCH in batch_sizes:
        raise ValueError(f"validate at batch sizes other than the exported one ({EXPORT_BATCH})")
    total = sum(batch_sizes)
    adapter = adapter.eval()
    pixels = torch.stack([clip.preprocess(img) for img in sample_images(total)])
    image_emb = clip.encode_images(pixels)
    out = adapter(image_emb, bank, logit_scale)

    names = list(bank.class_names) or [f"class {i}" for i in range(bank.num_classes)]
    prompts = [format_prompt(t, c) for t in templates for c in names]
    prompts += [f"a photo of thing number {i}, which is {'very ' * (i % 4)}odd." for i in range(total)]
    tokens = clip.tokenizer(prompts[:total])
    text_emb = clip.encode_texts(prompts[:total])
    ref = Reference(batch_sizes, adapter, bank, logit_scale, pixels, image_emb, out, tokens, text_emb)
    return {spec.name: spec.cases(ref) if spec.cases is not None else [] for spec in specs}


def _row_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a2 = a.reshape(a.shape[0], -1).astype(np.float64)
    b2 = b.reshape(b.shape[0], -1).astype(np.float64)
    num = (a2 * b2).sum(-1)
    den = np.linalg.norm(a2, axis=-1) * np.linalg.norm(b2, axis=-1)
    return num / np.maximum(den, 1e-30)


def _top2_margin(logits: np.ndarray) -> np.ndarray:
    """Best minus second-best logit per row (infinite with a single class)."""
    if logits.shape[-1] < 2:
        return np.full(logits.shape[0], np.inf)
    top2 = np.partition(logits, -2, axis=-1)[:, -2:]
    return top2[:, 1] - top2[:, 0]


def _shape_matches(actual: Sequence[Any], declared: Sequence[int | str]) -> bool:
    if len(actual) != len(declared):
        return False
    return all(not isinstance(d, int) or a == d for a, d in zip(actual, declared))


def validate_graph(
    path: Path,
    spec: GraphSpec,
    cases: Sequence[Case],
    precision: str,
    session_factory: Callable[[Path], Any],
) -> GraphReport:
    """Run every case through the engine session ``session_factory`` opens (see
    :func:`mmadapter.runtime.engines.open_session`) and collect every failure."""
    report = GraphReport(path.name, precision, tolerance=spec.tolerances[precision])
    fail = report.failures.append
    try:
        sess = session_factory(path)
    except Exception as exc:  # noqa: BLE001 - a graph the engine cannot load is one failure among others
        fail(f"{path.name}: cannot be loaded ({first_line(exc)})")  # the message names the engine
        return report
    # 1. Interface: names, dtypes, declared shapes.
    for kind, declared, actual in (("input", spec.inputs, sess.get_inputs()), ("output", spec.outputs,
                                                                                 sess.get_outputs())):
        if [t.name for t in declared] != [a.name for a in actual]:
            fail(f"{path.name}: {kind} names {[a.name for a in actual]} != {[t.name for t in declared]}")
            continue
        for t, a in zip(declared, actual):
            if a.type != PORT_TYPES[t.dtype]:
                fail(f"{path.name}: {kind} {t.name} has type {a.type}, expected {PORT_TYPES[t.dtype]}")
            if not _shape_matches(a.shape, t.shape):
                fail(f"{path.name}: {kind} {t.name} has shape {a.shape}, expected {list(t.shape)}")
    if report.failures:
        return report
    # 2. Values against torch, at every case; record worst cosine and abs diff per output.
    tally = [0, 0]
    for case in cases:
        report.batch_sizes.append(next(iter(case.inputs.values())).shape[0])
        try:
            got = dict(zip([o.name for o in spec.outputs], sess.run(None, case.inputs)))
        except Exception as exc:  # noqa: BLE001 - a runtime failure at one batch size is a failure to report
            fail(f"{path.name} [{case.label}]: run failed ({first_line(exc)})")
            continue
        _compare(report, path.name, case.label, got, case.expected, tally)
    _check_top1(report, path.name, tally)
    return report


def _compare(report: GraphReport, what: str, label: str, got: dict[str, np.ndarray], expected: dict[str, np.ndarray],
             tally: list[int]) -> None:
    """Outputs ``got`` against torch's ``expected`` at ``report.precision``'s thresholds; failures and the
    worst cosine and abs diff go into ``report``, top-1 counts (agreeing, decisive) into ``tally``."""
    fail = report.failures.append
    tol = report.tolerance
    thr = tol.cosine_min
    for name, ref in expected.items():
        out = got[name]
        if out.shape != ref.shape:
            fail(f"{what} [{label}]: {name} shape {list(out.shape)}, torch gives {list(ref.shape)}")
            continue
        if out.dtype != np.float32:
            fail(f"{what} [{label}]: {name} dtype {out.dtype}, expected float32")
        if not np.isfinite(out).all():
            fail(f"{what} [{label}]: {name} has NaN or infinite values")
            continue
        diff = float(np.abs(out.astype(np.float64) - ref).max())
        report.max_abs_diff[name] = max(report.max_abs_diff.get(name, 0.0), diff)
        if name == LOGITS:
            decisive = _top2_margin(ref) > tol.tie_margin * max(1.0, float(np.abs(ref).max()))
            report.near_ties += int((~decisive).sum())
            tally[0] += int((out.argmax(-1) == ref.argmax(-1))[decisive].sum())
            tally[1] += int(decisive.sum())
            atol = None if tol.logits_atol is None else tol.logits_atol * max(1.0, float(np.abs(ref).max()))
            if atol is not None and diff > atol:
                fail(f"{what} [{label}]: logits differ from torch by {diff:.3g} > {atol:.3g}")
            continue
        cos = float(_row_cosines(out, ref).min())
        report.min_cosine[name] = min(report.min_cosine.get(name, math.inf), cos)
        if cos < thr:
            fail(f"{what} [{label}]: {name} cosine {cos:.7f} < {thr}")


def _check_top1(report: GraphReport, what: str, tally: list[int]) -> None:
    agree, seen = tally
    compared = seen + report.near_ties
    # Near ties are set aside, but a run of mostly ties would judge top-1 on almost nothing and pass.
    if compared and 2 * seen < compared:
        report.failures.append(f"{what}: only {seen} of {compared} inputs are decisive (the rest near ties): "
                               "top-1 agreement cannot be judged on these inputs")
    if seen:
        report.top1_agreement = agree / seen
        if report.top1_agreement < TOP1_MIN:
            share = report.top1_agreement
            report.failures.append(f"{what}: top-1 identical on {agree}/{seen} inputs ({share:.2%} < {TOP1_MIN:.1%})")


# The open-vocabulary path, end to end -----------------------------------------------------------------------

# A label set unlike any checkpoint's: accents, non-Latin script, punctuation, an HTML entity, underscores.
OPEN_VOCABULARY_NAMES = ("zebra", "lighthouse", "violin", "thunderstorm", "Café crème", "ナイフ", "x-ray machine",
                         "rock &amp; roll", "golden_retriever", "teapot", "glacier")
OPEN_VOCABULARY_SEED = 1  # other sample images than the graph cases


def open_vocabulary_names(checkpoint_names: Sequence[str]) -> list[str]:
    """:data:`OPEN_VOCABULARY_NAMES` less any the checkpoint's label set already has (in prompt terms)."""
    names: list[str] = []
    for name in OPEN_VOCABULARY_NAMES:
        try:
            check_class_names([*checkpoint_names, *names, name])
        except ValueError:
            continue
        names.append(name)
    return names


@torch.no_grad()
def validate_open_vocabulary(
    folder: Path,
    graphs: dict[str, Any],
    tokenizer_fields: dict[str, Any],
    clip: FrozenClip,
    adapter: MultiModalAdapter,
    logit_scale: float,
    checkpoint_names: Sequence[str],
    templates: Sequence[str],
    session_factory: Callable[[Path], Any],
    batch_sizes: Sequence[int] = VALIDATION_BATCHES,
) -> list[dict[str, Any]]:
    """A label set other than the checkpoint's, through what the runtime runs (the export's tokenizer,
    ``text_encoder``, ``class_bank``, the image classifier's CLIP embedding, ``adapter_head``; the
    ``.ort.onnx`` files), against the torch model (open_clip's tokenizer and encoders, the adapter with
    a class bank) at the graphs' thresholds. One report per precision of the image classifier (int8
    runs its text side in fp32, as the runtime does)."""
    names = open_vocabulary_names(checkpoint_names)
    adapter = adapter.eval()
    pixels = torch.stack([clip.preprocess(img) for img in sample_images(sum(batch_sizes), OPEN_VOCABULARY_SEED)])
    image_emb = clip.encode_images(pixels)
    ref_bank = adapter.class_bank(clip.class_embeddings(names, templates), names)
    ref = adapter(image_emb, ref_bank, logit_scale)
    tokenizer = ClipTokenizer.from_manifest(folder, tokenizer_fields)
    prompts = [format_prompt(t, c) for t in templates for c in names]
    tokens_match = bool((tokenizer(prompts) == clip.tokenizer(prompts).numpy()).all())
    width = (int(ref_bank.text_emb.shape[1]), int(ref_bank.keys.shape[1]))
    reports = []
    for precision in graphs[IMAGE_CLASSIFIER].files:
        text_precision = "fp32" if precision == "int8" else precision
        sessions: dict[str, Any] = {}

        def run(graph: str, feeds: dict[str, np.ndarray], precision: str = precision,
                text_precision: str = text_precision, sessions: dict[str, Any] = sessions) -> dict[str, np.ndarray]:
            file = graphs[graph].files[precision if graph == IMAGE_CLASSIFIER else text_precision].ort
            if file not in sessions:
                sessions[file] = session_factory(folder / file)
            sess = sessions[file]
            return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))

        what = f"open vocabulary ({len(names)} new classes, {precision})"
        report = GraphReport(what, precision)
        if not tokens_match:
            report.failures.append(f"{what}: the exported tokenizer's ids differ from open_clip's")
        tally = [0, 0]
        try:
            bank = OpenVocabulary(tokenizer, run, templates, "validation", precision, None, width).bank(names)
            _compare(report, what, "class bank", bank.feeds,
                     {TEXT_EMB: _np(ref_bank.text_emb), KEYS: _np(ref_bank.keys), VALUES: _np(ref_bank.values)}, tally)
            for b, px, lg, emb in zip(batch_sizes, _split(pixels, batch_sizes), _split(ref.logits, batch_sizes),
                                      _split(ref.image_emb, batch_sizes)):
                report.batch_sizes.append(b)
                raw = run(IMAGE_CLASSIFIER, {PIXELS: _np(px)})[CLIP_IMAGE_EMBEDDING]
                got = head(run, raw, bank)
                _compare(report, what, f"batch {b}", got, {LOGITS: _np(lg), IMAGE_EMBEDDING: _np(emb)}, tally)
        except Exception as exc:  # noqa: BLE001 - a failure anywhere on the path is a failure to report
            report.failures.append(f"{what}: run failed ({first_line(exc)})")
        _check_top1(report, what, tally)
        reports.append(report.to_dict())
    return reports
