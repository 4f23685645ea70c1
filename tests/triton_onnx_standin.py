"""Tests only: a Python-backend stand-in for Triton's ``onnxruntime_onnx`` backend, which the
nvidia-pytriton wheel lacks. Copied as ``<graph>/1/model.py`` beside the graph's ``1/model.onnx`` of a
repository that ``export --serving-repo`` wrote; runs that file with ONNX Runtime (through the runtime's
engine), by the graph's tensor names, one request at a time (each request's error is its own)."""

import os

import triton_python_backend_utils as pb_utils

from mmadapter.runtime.engines import open_session


class TritonPythonModel:
    def initialize(self, args):
        path = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
        self.session = open_session(path, engine="onnxruntime", providers=["cpu"])
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.outputs = [o.name for o in self.session.get_outputs()]

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                feeds = {n: pb_utils.get_input_tensor_by_name(request, n).as_numpy() for n in self.inputs}
                values = self.session.run(self.outputs, feeds)
            except Exception as exc:  # noqa: BLE001 - the request's error, as the real backend answers it
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(str(exc))))
                continue
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor(n, v) for n, v in zip(self.outputs, values)]))
        return responses
