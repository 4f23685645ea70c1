"""The OpenVINO engine: ``CompiledGraph`` over an IR file (``.xml`` + ``.bin``), the engine contract's
OpenVINO side, at the inference precision asked for (never the plugin's own choice), without torch.

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
from mmadapter.runtime.engines import Port

if TYPE_CHECKING:
    from mmadapter.runtime.manifest import GraphFiles, Manifest

XML_SUFFIX = ".openvino.xml"
DEFAULT_DEVICE = "CPU"
_VIRTUAL_DEVICES = ("AUTO", "HETERO", "MULTI", "BATCH")
_ORT_TYPES = {"f32": "tensor(float)", "f16": "tensor(float16)", "i64": "tensor(int64)", "i32": "tensor(int32)",
              "f64": "tensor(double)"}
# The INFERENCE_PRECISION_HINT of each precision open_session takes for OpenVINO.
INFERENCE_PRECISION = {"fp32": "f32", "int8": "f32", "bf16": "bf16"}


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


def optimization_capabilities(device: str = DEFAULT_DEVICE) -> list[str]:
    """What OpenVINO says ``device`` computes natively (``FP32``, ``INT8``, ``BF16``, ...)."""
    return [str(c) for c in import_openvino().Core().get_property(device, "OPTIMIZATION_CAPABILITIES")]


def native_bf16(device: str = DEFAULT_DEVICE) -> bool:
    """Whether ``device`` computes bf16 itself (on a CPU: AVX512_BF16 or AMX). Elsewhere OpenVINO accepts the
    bf16 hint and runs f32, which is correct but measures nothing about bf16."""
    return "BF16" in optimization_capabilities(device)


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


def compile_config(precision: str, threads: int | None = None) -> dict[str, Any]:
    """What OpenVINO compiles a graph with. The inference precision is always named: without it the CPU
    plugin runs f32 IR in bf16 on CPUs with AVX512_BF16 or AMX, so an "fp32" graph would silently be bf16.
    An int8 IR's layers that are not quantized run in f32 too; bf16 only where it is the precision asked for."""
    config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": INFERENCE_PRECISION[precision]}
    if threads:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    return config


def _port(port: Any) -> Port:
    """An OpenVINO input or output as ONNX Runtime describes it."""
    kind = port.get_element_type().get_type_name()
    return Port(port.get_any_name(), _ORT_TYPES.get(kind, kind),
                [d.get_length() if d.is_static else "?" for d in port.get_partial_shape()])


class CompiledGraph:
    """An OpenVINO compiled model as an :class:`~mmadapter.runtime.engines.EngineSession`."""

    def __init__(self, xml_path: Path, precision: str = "fp32", device: str | None = None,
                 threads: int | None = None):
        ov = import_openvino()
        core = ov.Core()
        self.path, self.precision = Path(xml_path), precision
        self.device = check_device(device, core)
        try:
            self.compiled = core.compile_model(str(self.path), self.device, compile_config(precision, threads))
        except Exception as exc:  # noqa: BLE001 - OpenVINO raises RuntimeError for every load problem
            raise ExportError(f"OpenVINO cannot load {self.path.name} on {self.device}: {first_line(exc)}") \
                from None
        self.request = self.compiled.create_infer_request()
        self._inputs = [_port(p) for p in self.compiled.inputs]
        self._outputs = [_port(p) for p in self.compiled.outputs]
        self.providers = [f"OpenVINO:{self.device}"]

    def get_inputs(self) -> list[Port]:
        return self._inputs

    def get_outputs(self) -> list[Port]:
        return self._outputs

    def inference_precision(self) -> str:
        """The precision the compiled model reports it computes in (``f32``, ``bf16``, ...), read back
        rather than assumed; what was asked for where the device does not report it (AUTO, some GPUs)."""
        try:
            return str(self.compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name())
        except Exception:  # noqa: BLE001 - a plugin without the property raises RuntimeError
            return f"{INFERENCE_PRECISION[self.precision]} (asked; {self.device} does not report it)"

    def describe(self) -> str:
        return f"OpenVINO:{self.device} (inference precision {self.inference_precision()})"

    def run(self, output_names: Sequence[str] | None, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        try:
            result = self.request.infer({name: np.ascontiguousarray(v) for name, v in feeds.items()})
        except (TypeError, ValueError) as exc:  # the inputs, as OpenVINO's Python layer checks them
            raise DataError(f"OpenVINO cannot run {self.path.name}: {first_line(exc)}") from None
        except Exception as exc:  # noqa: BLE001 - feeds were checked; what is left is a runtime failure
            raise ExportError(f"OpenVINO cannot run {self.path.name}: {first_line(exc)}") from None
        names = list(output_names) if output_names else [p.name for p in self._outputs]
        by_name = {p.get_any_name(): result[p] for p in self.compiled.outputs}
        return [np.array(by_name[n], copy=True) for n in names]  # the request reuses its buffers


def verified_ir(folder: Path, manifest: Manifest, files: GraphFiles, graph: str, precision: str) -> Path:
    """The checked IR file (its ``.bin`` checked too) of a graph at a precision, from the manifest."""
    from mmadapter.runtime.manifest import verified_file

    name = files.openvino
    if name is None:
        raise ExportError(f"{folder} has no OpenVINO {precision} {graph} (export with --openvino"
                          f"{' --int8' if precision == 'int8' else ''})")
    verified_file(folder, manifest, bin_name(name))
    return verified_file(folder, manifest, name)
