"""The Triton Python-backend model of the pipeline (copied into the repository as ``mmadapter/1/model.py``):
Triton's requests in, :class:`mmadapter.server.pipeline.Pipeline` over them, one response per request.

Imports of mmadapter wait for ``initialize``: the stub also imports this file once, to ask for a
config it may complete, and needs nothing of the pipeline for that. Where mmadapter comes from is the
stub's sys.path (see mmadapter/server/repository.py).

The config's ``graphs`` parameter says where the export's graphs run: ``in-process`` (ONNX Runtime in this
model's process; what ``mmadapter serve`` writes) or ``onnxruntime`` / ``tensorrt``, the repository's
per-graph models that ``export --serving-repo`` writes beside this one, called per request.
"""

import json


def _parameters(config: dict) -> dict:
    return {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}


def export_folder(export_dir: str, model_dir: str) -> str:
    """The export folder: a relative path is relative to the model repository (the parent of this
    model's folder), so that a repository and its export move, or are mounted, together. Links are
    resolved first, as export computed the path between the resolved folders."""
    import os

    if os.path.isabs(export_dir):
        return export_dir
    return os.path.normpath(os.path.join(os.path.dirname(os.path.realpath(model_dir)), export_dir))


def graph_opener(params: dict, pb_utils):
    """None (ONNX Runtime in this process) for ``graphs: in-process`` or no such parameter; else the
    repository's per-graph models, called through business-logic scripting (mmadapter/server/bls.py)."""
    from mmadapter.server.bls import IN_PROCESS, TritonModels, check_mode

    mode = check_mode(params.get("graphs") or IN_PROCESS)
    if mode == IN_PROCESS:
        return None
    return TritonModels(pb_utils, mode, int(params.get("graph_max_batch_size") or 1))


class TritonPythonModel:
    """Requests that share a label set are run as one batch: Triton's dynamic batcher hands the backend
    several requests at once, and the graphs run faster on one batch than on each alone."""

    def initialize(self, args):
        params = _parameters(json.loads(args["model_config"]))
        import triton_python_backend_utils as pb_utils

        from mmadapter.server.pipeline import Pipeline

        self.pb = pb_utils
        threads = int(params["intra_op_threads"]) if params.get("intra_op_threads") else None
        self.pipeline = Pipeline(export_folder(params["export_dir"], args["model_repository"]),
                                 top_k=int(params.get("top_k") or 5), precision=params.get("precision") or "fp32",
                                 threads=threads, opener=graph_opener(params, pb_utils))

    def execute(self, requests):
        groups, answers = {}, [None] * len(requests)
        for i, request in enumerate(requests):
            try:
                pixels, names = self._read(request)
            except Exception as exc:  # noqa: BLE001 - any bad input is this request's error, never the server's
                answers[i] = self._error(exc)
                continue
            groups.setdefault(names, []).append((i, pixels))
        for names, members in groups.items():
            self._run_group(names, members, answers)
        return answers

    def _read(self, request):
        image = self.pb.get_input_tensor_by_name(request, "IMAGE")
        if image is None:
            raise ValueError("the request has no IMAGE input")
        pixels = self.pipeline.pixels(image.as_numpy())
        labels = self.pb.get_input_tensor_by_name(request, "LABELS")
        return pixels, self.pipeline.label_set(labels.as_numpy() if labels is not None else None, len(pixels))

    def _run_group(self, names, members, answers):
        from mmadapter.server.pipeline import split

        try:
            import numpy as np

            merged = self.pipeline.run(np.concatenate([p for _, p in members]), names)
            parts = split(merged, [len(p) for _, p in members])
        except Exception as exc:  # noqa: BLE001 - e.g. a label set the text side refuses
            for i, _ in members:
                answers[i] = self._error(exc)
            return
        for (i, _), part in zip(members, parts):
            tensors = [self.pb.Tensor(name, value) for name, value in part.tensors().items()]
            answers[i] = self.pb.InferenceResponse(output_tensors=tensors)

    def _error(self, exc):
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return self.pb.InferenceResponse(output_tensors=[], error=self.pb.TritonError(text))
