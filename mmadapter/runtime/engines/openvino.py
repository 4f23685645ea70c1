"""The OpenVINO engine: IR files (``.xml`` + ``.bin``) compiled and served with the same interface as
the ONNX Runtime session, without torch.

Devices: ``CPU`` (default), ``GPU``, ``NPU``, ``AUTO`` or any name OpenVINO knows (``GPU.1``) is passed
through; a device OpenVINO does not list here is one ExportError line naming those it lists.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mmadapter.errors import DataError, ExportError
from mmadapter.files import first_line

if TYPE_CHECKING:
    from mmadapter.runtime.manifest import GraphFiles, Manifest

XML_SUFFIX = ".openvino.xml"
DEFAULT_DEVICE = "CPU"
_VIRTUAL_DEVICES = ("AUTO", "HETERO", "MULTI", "BATCH")
_ORT_TYPES = {"f32": "tensor(float)", "f16": "tensor(float16)", "i64": "tensor(int64)", "i32": "tensor(int32)",
              "f64": "tensor(double)"}


def import_openvino() -> Any:
    try:
        import openvino
    except ImportError:
        raise ExportError("OpenVINO is not installed: pip install 'mmadapter[openvino]'") from None
    return openvino


def openvino_unavailable_reason() -> str | None:
    """None when OpenVINO (and NNCF, for the anchor) can be imported, else one line saying why not."""
    try:
        import openvino  # noqa: F401
    except ImportError:
        return "OpenVINO is not installed (pip install 'mmadapter[openvino]')"
    return None


def bin_name(xml_name: str) -> str:
    return Path(xml_name).with_suffix(".bin").name


def check_device(device: str | None, core: Any = None) -> str:
    """The device name to compile for; one ExportError line if OpenVINO does not have it here."""
    device = DEFAULT_DEVICE if device is None else device
    if not isinstance(device, str) or not device.strip():
        raise ExportError(f"OpenVINO device names are non-empty strings, got {device!r}")
    device = device.strip()
    if device.split(":")[0].upper() in _VIRTUAL_DEVICES:
        return device
    core = core if core is not None else import_openvino().Core()
    available = list(core.available_devices)
    if device.upper() not in [d.upper() for d in available] and device.split(".")[0].upper() not in available:
        raise ExportError(f"OpenVINO device {device!r} is not available here (available: {', '.join(available)})")
    return device


class _Port:
    """An input or output as ONNX Runtime describes it (``name``, ``type``, ``shape``)."""

    def __init__(self, port: Any):
        self.name = port.get_any_name()
        self.type = _ORT_TYPES.get(port.get_element_type().get_type_name(), str(port.get_element_type()))
        self.shape = [d.get_length() if d.is_static else "?" for d in port.get_partial_shape()]


class CompiledGraph:
    """An OpenVINO compiled model with ONNX Runtime's session interface (``get_inputs``, ``get_outputs``,
    ``run``, ``get_providers``), so validation and :class:`Session` use it unchanged."""

    def __init__(self, xml_path: Path, device: str | None = None, threads: int | None = None):
        ov = import_openvino()
        core = ov.Core()
        self.device = check_device(device, core)
        config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        try:
            self.compiled = core.compile_model(str(xml_path), self.device, config)
        except Exception as exc:  # noqa: BLE001 - OpenVINO raises RuntimeError for every load problem
            raise ExportError(f"OpenVINO cannot load {Path(xml_path).name} on {self.device}: {first_line(exc)}") \
                from None
        self.request = self.compiled.create_infer_request()
        self._inputs = [_Port(p) for p in self.compiled.inputs]
        self._outputs = [_Port(p) for p in self.compiled.outputs]

    def get_inputs(self) -> list[_Port]:
        return self._inputs

    def get_outputs(self) -> list[_Port]:
        return self._outputs

    def get_providers(self) -> list[str]:
        return [f"OpenVINO:{self.device}"]

    def run(self, output_names: Sequence[str] | None, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        try:
            result = self.request.infer({name: np.ascontiguousarray(v) for name, v in feeds.items()})
        except Exception as exc:  # noqa: BLE001 - feeds were checked; what is left is a runtime failure
            raise ExportError(f"OpenVINO cannot run the graph: {first_line(exc)}") from None
        names = list(output_names) if output_names else [p.name for p in self._outputs]
        by_name = {p.get_any_name(): result[p] for p in self.compiled.outputs}
        return [np.array(by_name[n], copy=True) for n in names]  # the request reuses its buffers


def make_session(xml_path: Path, device: str | None = None, intra_op_threads: int | None = None,
                 batch_axis_inputs: Sequence[str] | None = None) -> Any:
    """A :class:`mmadapter.runtime.model.Session` over an IR file: batching, feed checks and errors as
    for ONNX Runtime, OpenVINO underneath."""
    from mmadapter.runtime.model import Session

    class OpenVinoSession(Session):
        def __init__(self) -> None:  # Session's own __init__ opens ONNX Runtime; this opens OpenVINO
            self.path = Path(xml_path)
            self.sess = CompiledGraph(self.path, device, intra_op_threads)
            self.requested = self.providers = self.sess.get_providers()
            self._bind_io(batch_axis_inputs)
            self.on_gpu = False  # OpenVINO copies to its device itself

        def _run_once(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
            try:
                return self.sess.run(self.output_names, feeds)
            except ExportError as exc:
                raise ExportError(f"{self.path.name}: {first_line(exc)}") from None
            except (TypeError, ValueError) as exc:
                raise DataError(f"OpenVINO cannot run {self.path.name}: {first_line(exc)}") from None

    return OpenVinoSession()


def verified_ir(folder: Path, manifest: Manifest, files: GraphFiles, graph: str, precision: str) -> Path:
    """The checked IR file (its ``.bin`` checked too) of a graph at a precision, from the manifest."""
    from mmadapter.runtime.manifest import verified_file

    name = files.openvino
    if name is None:
        raise ExportError(f"{folder} has no OpenVINO {precision} {graph} (export with --openvino"
                          f"{' --int8' if precision == 'int8' else ''})")
    verified_file(folder, manifest, bin_name(name))
    return verified_file(folder, manifest, name)
