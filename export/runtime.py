"""Serving an export folder with ONNX Runtime, without torch or open_clip.

- Execution providers are tried in the order TensorRT, CUDA, CPU (or as asked); the providers a
  session really got are reported, with a warning when a GPU provider was asked for and dropped
  (onnxruntime-gpu silently falls back to CPU when CUDA fails to load).
- On CUDA, outputs are bound to device memory with IO binding and copied once per batch.
- Inputs with a batch axis are split into batches of ``batch_size``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mmadapter.errors import DataError, ExportError
from mmadapter.export.defaults import DEFAULT_PROVIDERS  # noqa: F401 - validation's providers, re-exported
from mmadapter.export.graphs import IMAGE_CLASSIFIER, LOGITS, PIXELS
from mmadapter.export.manifest import read_manifest, verified_file
from mmadapter.export.preprocess import Preprocessing, preprocess_batch
from mmadapter.files import first_line

_NUMPY_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int64)": np.int64,
                 "tensor(int32)": np.int32, "tensor(double)": np.float64}

ENGINES = ("onnxruntime", "openvino")
PROVIDER_ORDER = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
_SHORT = {"tensorrt": PROVIDER_ORDER[0], "trt": PROVIDER_ORDER[0], "cuda": PROVIDER_ORDER[1], "cpu": PROVIDER_ORDER[2]}
_GPU = set(PROVIDER_ORDER[:2])


def _ort() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise ExportError("onnxruntime is not installed: pip install 'mmadapter[runtime]'") from None
    return onnxruntime


def resolve_providers(requested: Sequence[str] | None = None) -> list[str]:
    """Full provider names, available ones only, in preference order. ``None``: all of
    TensorRT, CUDA, CPU that this onnxruntime build has. CPU is always appended as a last resort."""
    available = set(_ort().get_available_providers())
    if requested is None:
        wanted = list(PROVIDER_ORDER)
    else:
        wanted = []
        if isinstance(requested, str):
            requested = [requested]
        for name in requested:
            if not isinstance(name, str):
                raise ExportError(f"execution provider names are strings, got {name!r}")
            full = _SHORT.get(name.lower(), name)
            if full not in PROVIDER_ORDER and full not in available:
                raise ExportError(f"unknown execution provider {name!r}; choose from tensorrt, cuda, cpu")
            wanted.append(full)
    chosen = [p for p in wanted if p in available]
    missing = [p for p in wanted if p not in available and p in _GPU]
    if requested is not None and missing:
        warnings.warn(f"onnxruntime here has no {', '.join(missing)}; using {chosen or ['CPUExecutionProvider']}",
                      RuntimeWarning, stacklevel=2)
    if "CPUExecutionProvider" not in chosen:
        chosen.append("CPUExecutionProvider")
    return chosen


def session_options(intra_op_threads: int | None = None) -> Any:
    ort = _ort()
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # One request at a time per session: sequential execution, all threads on the operators.
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if intra_op_threads:
        opts.intra_op_num_threads = intra_op_threads
    opts.log_severity_level = 3  # warnings about unused initializers etc. are not the user's concern
    return opts


class Session:
    """An ONNX Runtime session over one graph file, with batching and provider reporting."""

    def __init__(self, path: Path, providers: Sequence[str] | None = None, intra_op_threads: int | None = None,
                 batch_axis_inputs: Sequence[str] | None = None):
        ort = _ort()
        self.path = Path(path)
        self.requested = resolve_providers(providers)
        try:
            self.sess = ort.InferenceSession(str(self.path), session_options(intra_op_threads),
                                             providers=self.requested)
        except Exception as exc:  # noqa: BLE001 - ORT raises its own exception types; all mean "cannot load"
            raise ExportError(f"ONNX Runtime cannot load {self.path.name}: {first_line(exc)}") from None
        self.providers: list[str] = list(self.sess.get_providers())
        dropped = [p for p in self.requested if p in _GPU and p not in self.providers]
        if dropped:
            warnings.warn(f"{self.path.name}: asked for {', '.join(dropped)} but ONNX Runtime fell back to "
                          f"{self.providers} (check the CUDA/cuDNN/TensorRT libraries)", RuntimeWarning, stacklevel=2)
        self._bind_io(batch_axis_inputs)
        self.on_gpu = self.providers[0] in _GPU

    def _bind_io(self, batch_axis_inputs: Sequence[str] | None) -> None:
        """Input/output names from the open graph, and the inputs whose first axis is the request batch
        (the class bank of adapter_head is not); shared with the OpenVINO session."""
        self.input_names = [i.name for i in self.sess.get_inputs()]
        self.output_names = [o.name for o in self.sess.get_outputs()]
        batch_inputs = list(batch_axis_inputs) if batch_axis_inputs is not None else self.input_names
        unknown = [n for n in batch_inputs if n not in self.input_names]
        if unknown:
            raise ExportError(f"{self.path.name} has no inputs {unknown} (it takes {self.input_names})")
        self.batch_inputs = batch_inputs

    def check_feeds(self, feeds: dict[str, Any]) -> dict[str, np.ndarray]:
        """Feeds as arrays after checking names, dtypes, ranks and fixed dims against the graph, so
        that a wrong input is one DataError naming it rather than ONNX Runtime's multi-line message."""
        if not isinstance(feeds, dict):
            raise DataError(f"{self.path.name}: inputs must be a dict of arrays by name")
        missing = sorted(set(self.input_names) - set(feeds))
        if missing:
            raise ExportError(f"{self.path.name}: missing inputs {missing}")
        unknown = sorted(set(feeds) - set(self.input_names))
        if unknown:
            raise DataError(f"{self.path.name}: unknown inputs {unknown}; the graph takes {self.input_names}")
        out = {}
        for meta in self.sess.get_inputs():
            value = feeds[meta.name]
            want = _NUMPY_DTYPES.get(meta.type)
            if not isinstance(value, np.ndarray) or (want is not None and value.dtype != want):
                got = value.dtype if isinstance(value, np.ndarray) else type(value).__name__
                want_name = np.dtype(want).name if want is not None else meta.type
                raise DataError(f"{self.path.name}: input {meta.name} must be a {want_name} array, got {got}")
            if value.ndim != len(meta.shape):
                raise DataError(f"{self.path.name}: input {meta.name} needs {len(meta.shape)} dims "
                                f"{list(meta.shape)}, got shape {list(value.shape)}")
            for axis, (dim, size) in enumerate(zip(meta.shape, value.shape)):
                if (isinstance(dim, int) and dim != size) or size == 0:
                    raise DataError(f"{self.path.name}: input {meta.name} has shape {list(value.shape)}, the graph "
                                    f"takes {list(meta.shape)} (axis {axis})")
            out[meta.name] = value
        return out

    def _run_once(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        try:
            return self._run_unchecked(feeds)
        except MemoryError:
            raise
        except Exception as exc:  # noqa: BLE001 - ORT raises its own types; feeds were checked already
            error = DataError if type(exc).__name__ == "InvalidArgument" else ExportError
            raise error(f"ONNX Runtime cannot run {self.path.name}: {first_line(exc)}") from None

    def _run_unchecked(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        if not self.on_gpu:
            return self.sess.run(self.output_names, feeds)
        # IO binding: inputs copied to the device once, outputs left there until the final copy.
        binding = self.sess.io_binding()
        for name, value in feeds.items():
            binding.bind_cpu_input(name, np.ascontiguousarray(value))
        for name in self.output_names:
            binding.bind_output(name, "cuda")
        self.sess.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()

    def run(self, feeds: dict[str, np.ndarray], batch_size: int = 64) -> dict[str, np.ndarray]:
        """Outputs by name; inputs with a batch axis are processed ``batch_size`` rows at a time."""
        if isinstance(feeds, dict) and any(getattr(feeds.get(n), "shape", (1,))[:1] == (0,)
                                           for n in self.batch_inputs):
            raise DataError("nothing to run: the batch is empty")
        feeds = self.check_feeds(feeds)
        sizes = {feeds[n].shape[0] for n in self.batch_inputs}
        if len(sizes) > 1:
            raise DataError(f"{self.path.name}: inputs {self.batch_inputs} have different batch sizes {sorted(sizes)}")
        total = sizes.pop() if sizes else 1
        chunks: list[list[np.ndarray]] = []
        for start in range(0, total, max(1, batch_size)):
            part = {n: (v[start:start + batch_size] if n in self.batch_inputs else v) for n, v in feeds.items()}
            chunks.append(self._run_once(part))
        return {name: np.concatenate([c[i] for c in chunks]) for i, name in enumerate(self.output_names)}


class ExportedModel:
    """An export folder: manifest, label set, preprocessing, and sessions over its graphs."""

    def __init__(self, folder: str | Path, providers: Sequence[str] | None = None, precision: str = "fp32",
                 intra_op_threads: int | None = None, bank_cache: str | Path | bool | None = True,
                 engine: str = "onnxruntime", device: str | None = None):
        self.folder = Path(folder)
        if engine not in ENGINES:
            raise ExportError(f"unknown engine {engine!r}; choose {' or '.join(ENGINES)}")
        self.engine, self.device = engine, device  # device: OpenVINO's (CPU, GPU, NPU, ...), passed through
        # True: the default folder (open_vocab.default_cache_dir); a path; None/False: no class bank cache.
        self.bank_cache = bank_cache
        self.manifest = read_manifest(self.folder)
        self.providers = providers
        self.precision = precision
        self.intra_op_threads = intra_op_threads
        # read_manifest checked the schema and the hash: the fields below exist and have their types.
        self.class_names: list[str] = list(self.manifest["label_set"]["class_names"])
        self.preprocessing = Preprocessing.from_dict(self.manifest["preprocessing"])
        self._sessions: dict[tuple[str, str], Session] = {}
        self._open_vocabulary: Any = None

    def graph_file(self, graph: str, provider: str | None = None, precision: str | None = None) -> Path:
        precision = precision or self.precision
        entry = self.manifest["graphs"].get(graph)
        if entry is None:
            raise ExportError(f"{self.folder} has no graph {graph!r}; it has {sorted(self.manifest['graphs'])}")
        files = entry["files"].get(precision)
        if files is None:
            raise ExportError(f"{self.folder} has no {precision} {graph} (export with --{precision} for "
                              f"{precision} graphs; int8 exists for the image classifier only)")
        if self.engine == "openvino":
            from mmadapter.export.openvino import verified_ir

            return verified_ir(self.folder, self.manifest, files, graph, precision)
        # TensorRT's parser takes standard ONNX ops only; other providers get the fused graph.
        kind = "portable" if provider == PROVIDER_ORDER[0] else "ort"
        if kind not in files:
            raise ExportError(f"{self.precision} graphs run on ONNX Runtime's CPU provider, not TensorRT: "
                              "choose fp32 or fp16, or --providers cpu")
        return verified_file(self.folder, self.manifest, files[kind])

    def session(self, graph: str, precision: str | None = None) -> Session:
        key = (graph, precision or self.precision)
        if key not in self._sessions:
            first = resolve_providers(self.providers)[0]
            path = self.graph_file(graph, first, key[1])
            batch_inputs = self.manifest["graphs"][graph]["batch_inputs"]
            if self.engine == "openvino":
                from mmadapter.export.openvino import make_session

                session = make_session(path, self.device, self.intra_op_threads, batch_inputs)
            else:
                session = Session(path, self.providers, self.intra_op_threads, batch_inputs)
            if graph == IMAGE_CLASSIFIER:
                self._check_classifier(session)
            self._sessions[key] = session
        return self._sessions[key]

    def session_providers(self) -> dict[str, list[str]]:
        """The execution providers each session opened so far really got, by graph file."""
        return {s.path.name: list(s.providers) for s in self._sessions.values()}

    @property
    def open_vocabulary(self) -> Any:
        """Tokenizer, text encoder, class bank and adapter head for label sets other than the folded one
        (:class:`mmadapter.export.open_vocab.OpenVocabulary`)."""
        if self._open_vocabulary is None:
            from mmadapter.export.open_vocab import OpenVocabulary

            self._open_vocabulary = OpenVocabulary.for_model(self)
        return self._open_vocabulary

    def classify(self, images: Any, class_names: Sequence[str] | None = None, templates: Sequence[str] | None = None,
                 batch_size: int = 32) -> Any:
        """Logits over ``class_names`` (default: the exported label set) for images (file paths, PIL
        images, or preprocessed pixels [B, 3, H, W]); a :class:`~mmadapter.export.open_vocab.Classification`.
        New class names (or templates) go through the tokenizer, text encoder, class bank (cached on
        disk) and adapter head; ``templates`` default to the checkpoint's."""
        from mmadapter.export.open_vocab import classify

        return classify(self, images, class_names, templates, batch_size)

    def _check_classifier(self, session: Session) -> None:
        """The graph itself (not only the manifest) must give one logit per class name and take
        images of the preprocessing's size: a label set of another length would mislabel."""
        outputs = {o.name: o.shape for o in session.sess.get_outputs()}
        inputs = {i.name: i.shape for i in session.sess.get_inputs()}
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
    templates: Sequence[str] | None = None, on_providers: Callable[[dict[str, list[str]]], None] | None = None,
    engine: str = "onnxruntime", device: str | None = None,
) -> list[Any]:
    """Top-k (class name, probability) per image, probabilities from the softmax of the logits
    over the exported label set (or ``class_names``: open vocabulary), in input order.
    ``on_providers`` receives the execution providers each session really got. An unreadable, corrupt or
    oversized image is an ``ImageSkip`` in its place (``strict``: a DataError naming it); if none can be
    read, a DataError naming the first. Non-finite logits are an ExportError, never printed as nan."""
    from mmadapter.export.open_vocab import scores
    from mmadapter.images import ImageSkip, read_images
    from mmadapter.predictions import check_some_read, in_order, rank

    if top_k < 1:
        raise DataError(f"top_k must be at least 1, got {top_k}")
    if batch_size < 1:
        raise DataError(f"batch size must be at least 1, got {batch_size}")
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
    if on_providers is not None:
        on_providers(model.session_providers())
    return check_some_read(results)
