"""The pipeline model in business-logic-scripting mode (``graphs: onnxruntime``, what ``export --serving-repo``
writes): each graph run by calling the repository's per-graph model. On this machine's real tritonserver
(nvidia-pytriton's, CPU), with the per-graph models as Python-backend stand-ins (tests/triton_onnx_standin.py)
for the onnxruntime_onnx backend the wheel lacks, compared with ``predict --onnx`` (``classify_images``) in
process; a failure of a called model answered as the request's error. Also: the repository's pipeline config,
read with Triton's own protobuf, and the pipeline running without onnxruntime in its process."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_inference_server import (
    NEW_LABELS,
    ROOT,
    STUB_SITE,
    Client,
    _missing,
    check_same,
    free_port,
    needs_server,
    png_bytes,
    still_correct,
)

from mmadapter.server.repository import MODEL, STUB_PATH_ENV

from export_fixtures import ExportBundle

GRAPHS = ("image_classifier", "text_encoder", "class_bank", "adapter_head")
STANDIN = Path(__file__).with_name("triton_onnx_standin.py")
# The pipeline is told that the graph models take 16 rows per call; the text encoder's stand-in takes 8, so
# a label set of more than 8 prompts (4 classes x the export's 2 templates) is refused by that model.
GRAPH_BATCH = 16
TEXT_ENCODER_BATCH = 8
TOO_MANY_PROMPTS = ("cat", "boat", "house", "lamp", "river")  # 10 prompts


def write_bls_repository(exported: ExportBundle, models: Path) -> None:
    """``export --serving-repo``'s repository (pipeline and per-graph models) for the fp32 graphs, with each
    per-graph model served by the stand-in instead of the onnxruntime_onnx backend."""
    from mmadapter.export.inference_server import write_model_repository

    write_model_repository(exported.out_dir, models, exported.manifest(), GRAPH_BATCH, "fp32",
                           os.path.relpath(exported.out_dir, models))
    for graph in GRAPHS:
        config = models / graph / "config.pbtxt"
        text = config.read_text().replace('platform: "onnxruntime_onnx"', 'backend: "python"')
        if graph == "text_encoder":
            text = text.replace(f"max_batch_size: {GRAPH_BATCH}", f"max_batch_size: {TEXT_ENCODER_BATCH}")
        config.write_text(text)
        shutil.copyfile(STANDIN, models / graph / "1" / "model.py")


@pytest.fixture(scope="module")
def bls_server(exported: ExportBundle, tmp_path_factory: pytest.TempPathFactory):
    """tritonserver over that repository, started by ``mmadapter serve``'s launcher (same backend copy,
    environment and readiness check); the Python backend comes from the folder ``prepare_folder`` writes."""
    if _missing() is not None:
        pytest.skip(_missing())
    from mmadapter.server import launch
    from mmadapter.server.repository import Settings, find_triton, prepare_folder

    folder = tmp_path_factory.mktemp("bls") / "server"
    install = find_triton()
    with pytest.MonkeyPatch.context() as env:
        env.setenv("MMADAPTER_BANK_CACHE", "")
        if np.__version__.startswith("2.") and not os.environ.get(STUB_PATH_ENV):
            env.setenv(STUB_PATH_ENV, str(STUB_SITE))
        prepare_folder(folder, exported.out_dir, Settings(), install)  # its in-process pipeline is replaced below
        write_bls_repository(exported, folder / "models")
        opts = launch.ServeOptions(exported.out_dir, folder, http_port=free_port(), grpc_port=free_port(),
                                   metrics_port=free_port())
        log = folder.with_name("server.log")
        proc = launch.start(opts, folder, install, log)
    try:
        launch.wait_ready(proc, opts, log)
        yield opts
    finally:
        launch.stop(proc)


def client(opts) -> Client:
    return Client("http", f"{opts.host}:{opts.http_port}")


def calls(c, model: str) -> int:
    """Requests the model has answered successfully so far (Triton's statistics)."""
    stats = c.raw.get_inference_statistics(model)["model_stats"][0]
    return int(stats["inference_stats"]["success"]["count"])


def predict_onnx(exported: ExportBundle, images: list[bytes], folder: Path, labels=None):
    """What ``predict --onnx`` gives for the same image files: top-5 per image."""
    from mmadapter.runtime.model import classify_images

    paths = []
    for i, data in enumerate(images):
        paths.append(folder / f"image{i}.png")
        paths[-1].write_bytes(data)
    return [top for _, top in classify_images(exported.out_dir, paths, 5, class_names=labels)]


@pytest.fixture
def no_bank_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MMADAPTER_BANK_CACHE", "")


@needs_server
def test_images_match_predict_onnx_through_the_graph_models(bls_server, exported: ExportBundle, tmp_path: Path,
                                                            no_bank_cache) -> None:
    c = client(bls_server)
    before = calls(c, "image_classifier")
    images = [png_bytes(i, (40 + 7 * i, 32 + 3 * i)) for i in range(4)]
    names, probs, result = c.infer(images)
    check_same(names, probs, predict_onnx(exported, images, tmp_path))  # top-1, order, probabilities 1e-5
    assert result.as_numpy("ADAPTED_EMBEDDING").shape[0] == 4 and result.as_numpy("CLIP_EMBEDDING").shape[0] == 4
    assert calls(c, "image_classifier") > before  # the graph ran in its own model, not in the pipeline


@needs_server
def test_a_new_label_set_per_request(bls_server, exported: ExportBundle, tmp_path: Path, no_bank_cache) -> None:
    c = client(bls_server)
    before = {g: calls(c, g) for g in GRAPHS[1:]}
    images = [png_bytes(10 + i) for i in range(2)]
    for labels in (NEW_LABELS, ("lamp", "river")):
        names, probs, _ = c.infer(images, labels)
        assert all(set(row) == set(labels) for row in names)
        check_same(names, probs, predict_onnx(exported, images, tmp_path, labels))
    # Text encoder, class bank and adapter head each called for both label sets.
    assert all(calls(c, g) >= before[g] + 2 for g in GRAPHS[1:]), before


@needs_server
def test_a_called_model_failure_is_the_request_error(bls_server, exported: ExportBundle) -> None:
    from tritonclient.utils import InferenceServerException

    c = client(bls_server)
    with pytest.raises(InferenceServerException, match="Triton model text_encoder failed: .*batch"):
        c.infer([png_bytes(5)], TOO_MANY_PROMPTS)
    still_correct(c, exported)  # the server goes on, and answers right


def model_config_pb2():
    """Triton's ModelConfig message as tritonclient ships it (its grpc package needs grpcio to import, so
    the generated module is loaded from its file); None when tritonclient or protobuf is missing."""
    spec = importlib.util.find_spec("tritonclient")
    if spec is None or importlib.util.find_spec("google.protobuf") is None:
        return None
    path = Path(spec.origin).parent / "grpc" / "model_config_pb2.py"
    if not path.is_file():
        return None
    module_spec = importlib.util.spec_from_file_location("triton_model_config_pb2", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def test_serving_repo_pipeline_config_parses_and_names_the_export(exported: ExportBundle) -> None:
    pb2 = model_config_pb2()
    if pb2 is None:
        pytest.skip("tritonclient's model_config_pb2 (or protobuf) is not installed")
    from google.protobuf import text_format

    from mmadapter.server.triton_model import export_folder

    repo = exported.serving_repo
    config = text_format.Parse((repo / MODEL / "config.pbtxt").read_text(), pb2.ModelConfig())
    params = {k: v.string_value for k, v in config.parameters.items()}
    assert config.name == MODEL and config.backend == "python"
    assert [i.name for i in config.input] == ["IMAGE", "LABELS"] and config.input[1].optional
    assert params["graphs"] == "onnxruntime" and params["precision"] == "fp16"  # the fixture exported --fp16
    # Relative to the repository, so that mounting the common parent keeps them together; it resolves.
    assert not os.path.isabs(params["export_dir"])
    assert (repo / params["export_dir"]).resolve() == exported.out_dir.resolve()
    assert Path(export_folder(params["export_dir"], str(repo / MODEL))).resolve() == exported.out_dir.resolve()
    assert (repo / MODEL / "1" / "model.py").read_bytes() == (ROOT / "mmadapter/server/triton_model.py").read_bytes()
    for graph in GRAPHS:  # the per-graph models parse too, and take the batch the pipeline sends them
        graph_config = text_format.Parse((repo / graph / "config.pbtxt").read_text(), pb2.ModelConfig())
        assert graph_config.platform == "onnxruntime_onnx"
        assert graph_config.max_batch_size in (0, int(params["graph_max_batch_size"])), graph


# The pipeline in BLS mode in a process where onnxruntime cannot be imported, its graph models faked: each
# answers zeros of the manifest's output shapes (symbolic dims sized from the inputs), and records its name.
NO_ORT_SCRIPT = r"""
import sys
sys.modules["onnxruntime"] = None  # importing it now raises ImportError
import numpy as np
from mmadapter.runtime.manifest import read_manifest
from mmadapter.server.bls import TritonModels
from mmadapter.server.pipeline import Pipeline

export_dir, image_file = sys.argv[1], sys.argv[2]
graphs = read_manifest(export_dir).graphs
called = []

class Tensor:
    def __init__(self, name, value):
        self._name, self.value = name, value
    def name(self):
        return self._name
    def as_numpy(self):
        return self.value

class Response:
    def __init__(self, outputs):
        self.outputs = outputs
    def has_error(self):
        return False

class InferenceRequest:
    def __init__(self, model_name, requested_output_names, inputs):
        self.model, self.names, self.inputs = model_name, requested_output_names, inputs
    def exec(self):
        called.append(self.model)
        io = graphs[self.model].io
        sizes = {}
        for spec in io.inputs:
            value = next(t.value for t in self.inputs if t.name() == spec.name)
            sizes.update({d: n for d, n in zip(spec.shape, value.shape) if isinstance(d, str)})
        return Response({o.name: np.zeros([sizes.get(d, d) for d in o.shape], np.float32) for o in io.outputs})

class pb:
    Tensor = Tensor
    InferenceRequest = InferenceRequest
    @staticmethod
    def get_output_tensor_by_name(response, name):
        return Tensor(name, response.outputs[name])

pipeline = Pipeline(export_dir, opener=TritonModels(pb, "onnxruntime", 16))
pixels = pipeline.pixels(np.array([[open(image_file, "rb").read()]], dtype=object))
answer = pipeline.run(pixels, ("red car", "green tree", "blue sky"))
assert "onnxruntime" not in {m.split(".")[0] for m, v in sys.modules.items() if v is not None}
print(sorted(set(called)), answer.labels.shape, answer.probabilities.shape)
"""


def test_bls_pipeline_needs_no_onnxruntime(exported: ExportBundle, tmp_path: Path) -> None:
    image = tmp_path / "image.png"
    image.write_bytes(png_bytes(7))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MMADAPTER_BANK_CACHE": ""}
    done = subprocess.run([sys.executable, "-c", NO_ORT_SCRIPT, str(exported.out_dir), str(image)],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == f"{sorted(GRAPHS)} (1, 3) (1, 3)"


def test_tensorrt_pipeline_calls_the_engine_models_that_exist(exported: ExportBundle, tmp_path: Path) -> None:
    """``--serving-graphs tensorrt``: the pipeline calls ``<graph>_trt`` where the export built an engine and
    the graph's ONNX Runtime model elsewhere; every model it names is in the repository. A fake engine file
    stands in (no TensorRT here), as in test_export_serving."""
    import dataclasses

    from mmadapter.export.inference_server import write_model_repository
    from mmadapter.runtime.manifest import Engine, TensorRT
    from mmadapter.server.bls import TritonModels

    export_dir, repo = tmp_path / "export", tmp_path / "repo"
    shutil.copytree(exported.out_dir, export_dir)
    (export_dir / "image_classifier.fake.plan").write_bytes(b"engine bytes")
    manifest = dataclasses.replace(exported.manifest(),
                                   tensorrt=TensorRT({"image_classifier": Engine("image_classifier.fake.plan")}))
    write_model_repository(export_dir, repo, manifest, 16, "fp32", "../export", graphs="tensorrt")
    assert 'key: "graphs"\n    value: { string_value: "tensorrt" }' in (repo / MODEL / "config.pbtxt").read_text()
    opener = TritonModels(pb=None, mode="tensorrt", max_batch_size=16)
    called = {graph: opener(manifest, graph, "fp32").name for graph in GRAPHS}
    assert called == {"image_classifier": "image_classifier_trt", **{g: g for g in GRAPHS[1:]}}
    assert all((repo / name / "config.pbtxt").is_file() for name in called.values())


def test_serving_graphs_tensorrt_needs_tensorrt(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from mmadapter.cli import main

    code = main(["export", "--checkpoint", str(tmp_path / "x.safetensors"), "--out", str(tmp_path / "out"),
                 "--serving-repo", str(tmp_path / "repo"), "--serving-graphs", "tensorrt"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "add --tensorrt" in err
    assert not (tmp_path / "out").exists() and not (tmp_path / "repo").exists()


def test_serving_graphs_needs_a_serving_repo(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from mmadapter.cli import main

    code = main(["export", "--checkpoint", str(tmp_path / "x.safetensors"), "--out", str(tmp_path / "out"),
                 "--serving-graphs", "onnxruntime"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "add --serving-repo" in err
    assert not (tmp_path / "out").exists()
