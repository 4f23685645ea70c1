"""``ExportedModel``: an export folder served without torch (manifest, label set, preprocessing and a
session per graph), and ``classify_images``, what ``predict --onnx`` runs."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mmadapter.errors import DataError, ExportError
from mmadapter.files import first_line
from mmadapter.runtime.engines import EngineSession, open_session
from mmadapter.runtime.engines.onnxruntime import PROVIDER_ORDER, resolve_providers
from mmadapter.runtime.graphs import IMAGE_CLASSIFIER, LOGITS, PIXELS
from mmadapter.runtime.labels import name_list
from mmadapter.runtime.manifest import Manifest, read_manifest, verified_file
from mmadapter.runtime.preprocess import Preprocessing, preprocess_batch
from mmadapter.runtime.session import Session, check_batch_size

# The engines an export folder's manifest names files for; TensorRT engines are served by Triton
# (export --serving-repo), not from here.
SERVED_ENGINES = ("onnxruntime", "openvino", "executorch")  # executorch: .pte programs, for checking
# Opens a graph somewhere other than this process (manifest, graph name, precision -> session): Triton's
# pipeline model hands one in that calls the repository's per-graph models, so that the preprocessing,
# tokenizer, bank cache and open-vocabulary code stay these, and no graph file is opened here.
SessionOpener = Callable[[Manifest, str, str], EngineSession]


class ExportedModel:
    """An export folder: manifest, label set, preprocessing, and sessions over its graphs."""

    def __init__(self, folder: str | Path, providers: Sequence[str] | None = None, precision: str = "fp32",
                 intra_op_threads: int | None = None, bank_cache: str | Path | bool | None = True,
                 engine: str = "onnxruntime", device: str | None = None, opener: SessionOpener | None = None):
        self.folder = Path(folder)
        if engine not in SERVED_ENGINES:
            raise ExportError(f"unknown engine {engine!r}; choose {' or '.join(SERVED_ENGINES)}")
        self.engine, self.device = engine, device  # device: OpenVINO's (CPU, GPU, NPU, ...), passed through
        if opener is not None and engine != "onnxruntime":
            raise ExportError(f"the graphs are opened elsewhere (opener): engine {engine!r} would not be used")
        self.opener = opener  # None: the graph files of the folder, opened on ``engine``
        # True: the default folder (open_vocab.default_cache_dir); a path; None/False: no class bank cache.
        self.bank_cache = bank_cache
        self.manifest = read_manifest(self.folder)
        self.providers = providers
        self.precision = precision
        self.intra_op_threads = intra_op_threads
        # read_manifest checked the schema and the hash: the fields below exist and have their types.
        self.class_names: list[str] = list(self.manifest.label_set.class_names)
        self.preprocessing: Preprocessing = self.manifest.preprocessing
        self._sessions: dict[tuple[str, str], Session] = {}
        self._open_vocabulary: Any = None

    def graph_file(self, graph: str, provider: str | None = None, precision: str | None = None) -> Path:
        precision = precision or self.precision
        entry = self.manifest.graphs.get(graph)
        if entry is None:
            raise ExportError(f"{self.folder} has no graph {graph!r}; it has {sorted(self.manifest.graphs)}")
        files = entry.files.get(self._stored_precision(precision))
        if files is None:
            raise ExportError(f"{self.folder} has no {precision} {graph} (export with --{precision} for "
                              f"{precision} graphs; int8 exists for the image classifier only)")
        if self.engine == "openvino":
            from mmadapter.runtime.engines.openvino import verified_ir

            return verified_ir(self.folder, self.manifest, files, graph, precision)
        if self.engine == "executorch":
            if files.executorch is None:
                raise ExportError(f"{self.folder} has no {precision} ExecuTorch program for {graph} (export with "
                                  "--executorch)")
            verified_file(self.folder, self.manifest, files.executorch + ".json")  # its tensor names
            return verified_file(self.folder, self.manifest, files.executorch)
        # TensorRT's parser takes standard ONNX ops only; other providers get the fused graph.
        kind = "portable" if provider == PROVIDER_ORDER[0] else "ort"
        if files.get(kind) is None:
            raise ExportError(f"{self.precision} graphs run on ONNX Runtime's CPU provider, not TensorRT: "
                              "choose fp32 or fp16, or --providers cpu")
        return verified_file(self.folder, self.manifest, files.get(kind))

    def _stored_precision(self, precision: str) -> str:
        """The files a precision runs from: bf16 is OpenVINO's, computed from the fp32 IR, and only where the
        export offered it (``--openvino --bf16``: validated in bf16 or recorded as not measured)."""
        if precision != "bf16":
            return precision
        if self.engine != "openvino":
            raise ExportError("bf16 is an OpenVINO precision: serve it with --engine openvino")
        if self.manifest.bf16 is None:
            raise ExportError(f"{self.folder} does not offer bf16 (export with --openvino --bf16)")
        return "fp32"

    def session(self, graph: str, precision: str | None = None) -> Session:
        key = (graph, precision or self.precision)
        if key not in self._sessions:
            if graph not in self.manifest.graphs:
                raise ExportError(f"{self.folder} has no graph {graph!r}; it has {sorted(self.manifest.graphs)}")
            graph_session = (self.opener(self.manifest, graph, key[1]) if self.opener is not None
                             else self._open_file(graph, key[1]))
            session = Session(graph_session, batch_axis_inputs=self.manifest.graphs[graph].batch_inputs)
            if graph == IMAGE_CLASSIFIER:
                self._check_classifier(session)
            self._sessions[key] = session
        return self._sessions[key]

    def _open_file(self, graph: str, precision: str) -> EngineSession:
        """The graph's file of this folder (sha256 checked) on this model's engine."""
        on_ort = self.engine == "onnxruntime"
        path = self.graph_file(graph, resolve_providers(self.providers)[0] if on_ort else None, precision)
        where = ({"providers": self.providers} if on_ort else {"device": self.device} if self.engine == "openvino"
                 else {})
        return open_session(path, engine=self.engine, precision=precision, threads=self.intra_op_threads, **where)

    def session_providers(self) -> dict[str, list[str]]:
        """The execution providers each session opened so far really got, by graph file."""
        return {s.path.name: list(s.providers) for s in self._sessions.values()}

    def session_runs(self) -> dict[str, str]:
        """What each session opened so far really runs (engine, providers or device, precision), by graph file."""
        return {s.path.name: s.describe() for s in self._sessions.values()}

    @property
    def open_vocabulary(self) -> Any:
        """Tokenizer, text encoder, class bank and adapter head for label sets other than the folded one
        (:class:`mmadapter.runtime.open_vocab.OpenVocabulary`)."""
        if self._open_vocabulary is None:
            from mmadapter.runtime.open_vocab import OpenVocabulary

            self._open_vocabulary = OpenVocabulary.for_model(self)
        return self._open_vocabulary

    def classify(self, images: Any, class_names: Sequence[str] | None = None, templates: Sequence[str] | None = None,
                 batch_size: int = 32) -> Any:
        """Logits over ``class_names`` (default: the exported label set) for images (file paths, PIL
        images, or preprocessed pixels [B, 3, H, W]); a :class:`~mmadapter.runtime.open_vocab.Classification`.
        New class names (or templates) go through the tokenizer, text encoder, class bank (cached on
        disk) and adapter head; ``templates`` default to the checkpoint's."""
        from mmadapter.runtime.open_vocab import classify

        return classify(self, images, class_names, templates, batch_size)

    def _check_classifier(self, session: Session) -> None:
        """The graph itself (not only the manifest) must give one logit per class name and take
        images of the preprocessing's size: a label set of another length would mislabel."""
        outputs = {o.name: o.shape for o in session.graph.get_outputs()}
        inputs = {i.name: i.shape for i in session.graph.get_inputs()}
        logits, pixels = outputs.get(LOGITS), inputs.get(PIXELS)
        name = session.path.name
        if logits is None or len(logits) != 2 or logits[1] != len(self.class_names):
            raise ExportError(f"{name} gives logits of shape {logits}, but the manifest names "
                              f"{len(self.class_names)} classes")
        size = list(self.preprocessing.image_size)
        if pixels is None or len(pixels) != 4 or list(pixels[1:]) != [3, *size]:
            raise ExportError(f"{name} takes pixels of shape {pixels}, but the manifest's preprocessing gives "
                              f"[batch, 3, {size[0]}, {size[1]}]")

    def classify_pixels(self, pixels: np.ndarray, batch_size: int = 32) -> dict[str, np.ndarray]:
        batch_size = check_batch_size(batch_size)
        try:
            pixels = np.asarray(pixels, dtype=np.float32)
        except (TypeError, ValueError) as exc:
            raise DataError(f"pixels must be a float array [batch, 3, H, W]: {first_line(exc)}") from None
        return self.session(IMAGE_CLASSIFIER).run({PIXELS: pixels}, batch_size)


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def classify_images(
    onnx_dir: Path, image_paths: list[Path], top_k: int = 5, *, providers: Sequence[str] | None = None,
    batch_size: int = 32, precision: str = "fp32", strict: bool = False, class_names: Sequence[str] | None = None,
    templates: Sequence[str] | None = None, on_sessions: Callable[[dict[str, str]], None] | None = None,
    engine: str = "onnxruntime", device: str | None = None,
) -> list[Any]:
    """Top-k (class name, probability) per image, probabilities from the softmax of the logits
    over the exported label set (or ``class_names``: open vocabulary), in input order.
    ``on_sessions`` receives what each session really ran (``ExportedModel.session_runs``). An unreadable, corrupt or
    oversized image is an ``ImageSkip`` in its place (``strict``: a DataError naming it); if none can be
    read, a DataError naming the first. Non-finite logits are an ExportError, never printed as nan."""
    from mmadapter.runtime.images import ImageSkip, read_images
    from mmadapter.runtime.open_vocab import scores
    from mmadapter.runtime.ranking import check_some_read, in_order, rank

    if top_k < 1:
        raise DataError(f"top_k must be at least 1, got {top_k}")
    batch_size = check_batch_size(batch_size)
    class_names = name_list(class_names)
    model = ExportedModel(onnx_dir, providers, precision, engine=engine, device=device)
    if class_names is not None or templates is not None:  # the label set's problems before any image is read
        model.open_vocabulary.bank(class_names if class_names is not None else model.class_names, templates)
    short_side = max(model.preprocessing.image_size)
    results: list[Any] = []
    for start in range(0, len(image_paths), batch_size):
        loaded = read_images(image_paths[start:start + batch_size], short_side, strict)
        good = [(Path(p), img) for p, img in zip(image_paths[start:start + batch_size], loaded)
                if not isinstance(img, ImageSkip)]
        ranked = []
        if good:
            pixels = preprocess_batch([img for _, img in good], model.preprocessing)
            names, logits = scores(model, pixels, class_names, templates, batch_size)
            ranked = rank(logits, [p for p, _ in good], names, top_k, ExportError)
        results.extend(in_order(loaded, ranked))
    if on_sessions is not None:
        on_sessions(model.session_runs())
    return check_some_read(results)
