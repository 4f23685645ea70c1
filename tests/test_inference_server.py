"""NVIDIA Triton Inference Server for real: ``mmadapter serve`` over the tiny test export on loopback ports,
answered over HTTP v2 (tritonclient), compared with ``ExportedModel.classify`` on the same PNG bytes;
bad requests, concurrent clients and a SIGTERM drain. ``serve``'s own one-line errors need no server."""

from __future__ import annotations

import importlib.util
import io
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mmadapter.cli import main
from mmadapter.server.repository import STUB_PATH_ENV

from export_fixtures import CLASS_NAMES, ExportBundle

ROOT = Path(__file__).resolve().parent.parent
# Where .ci/run puts numpy<2 for the server's Python stub when this venv holds numpy 2.
STUB_SITE = ROOT / ".venv" / "triton-stub-site"
# Server and in-process runs share the graphs and the preprocessing: only the float32 cast of the
# probabilities (float64 in Classification) and the merged batch's ONNX Runtime kernels differ.
PROB_ATOL = 1e-5
NEW_LABELS = ("red car", "green tree", "blue sky")


def _missing() -> str | None:
    for module, package in (("pytriton", "nvidia-pytriton"), ("tritonclient.http", "tritonclient[http]")):
        try:
            if importlib.util.find_spec(module) is None:
                return f"{package} is not installed (pip install 'mmadapter[server]')"
        except ModuleNotFoundError:
            return f"{package} is not installed (pip install 'mmadapter[server]')"
    if np.__version__.startswith("2.") and not os.environ.get(STUB_PATH_ENV) and not STUB_SITE.is_dir():
        return f"the server's stub needs numpy<2: pip install --target {STUB_SITE} 'numpy<2'"
    return None


needs_server = pytest.mark.skipif(_missing() is not None, reason=str(_missing()))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def png_bytes(seed: int, size: tuple[int, int] = (40, 32)) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


class Server:
    def __init__(self, export_dir: Path, folder: Path):
        self.ports = {name: free_port() for name in ("http", "grpc", "metrics")}
        env = {**os.environ, "PYTHONPATH": str(ROOT), "MMADAPTER_BANK_CACHE": ""}
        if np.__version__.startswith("2.") and not env.get(STUB_PATH_ENV):
            env[STUB_PATH_ENV] = str(STUB_SITE)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mmadapter.cli", "serve", str(export_dir), "--model-repository", str(folder),
             "--http-port", str(self.ports["http"]), "--grpc-port", str(self.ports["grpc"]),
             "--metrics-port", str(self.ports["metrics"]), "--max-batch-size", "8"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        self.ready_line = self.proc.stdout.readline()  # serve prints one line when ready, or exits
        if not self.ready_line.startswith("serving"):
            self.proc.wait(10)
            raise AssertionError(f"serve did not start: {self.ready_line!r} {self.proc.stderr.read()!r}")
        self.url = f"127.0.0.1:{self.ports['http']}"

    def client(self):
        import tritonclient.http as http

        return http.InferenceServerClient(self.url, network_timeout=120)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(60)


@pytest.fixture(scope="module")
def server(exported: ExportBundle, tmp_path_factory: pytest.TempPathFactory):
    if _missing() is not None:
        pytest.skip(_missing())
    srv = Server(exported.out_dir, tmp_path_factory.mktemp("serve") / "repo")
    yield srv
    srv.stop()


def infer(client, images: list[bytes], labels: tuple[str, ...] | None = None):
    import tritonclient.http as http

    inputs = [http.InferInput("IMAGE", [len(images), 1], "BYTES")]
    inputs[0].set_data_from_numpy(np.array([[b] for b in images], dtype=object))
    if labels is not None:
        inputs.append(http.InferInput("LABELS", [len(images), len(labels)], "BYTES"))
        inputs[1].set_data_from_numpy(np.array([list(labels)] * len(images), dtype=object))
    result = client.infer("mmadapter", inputs)
    names = [[x.decode() for x in row] for row in result.as_numpy("LABEL")]
    return names, result.as_numpy("PROBABILITY"), result


def expected(exported: ExportBundle, images: list[bytes], labels=None):
    """ExportedModel.classify over the same bytes (decoded by the same loader)."""
    from mmadapter.runtime.images import decode_image
    from mmadapter.runtime.model import ExportedModel

    model = ExportedModel(exported.out_dir, bank_cache=None)
    pil = [decode_image(b, max(model.preprocessing.image_size)) for b in images]
    return model.classify(pil, class_names=labels).top(5)


def check_same(got_names, got_probs, want) -> None:
    for names, probs, top in zip(got_names, got_probs, want):
        assert names[0] == top[0][0]
        assert names == [n for n, _ in top]
        np.testing.assert_allclose(probs, [p for _, p in top], atol=PROB_ATOL, rtol=0)


@needs_server
def test_ready_health_and_metrics(server: Server) -> None:
    assert "http://127.0.0.1:" in server.ready_line and "(log: " in server.ready_line
    with urllib.request.urlopen(f"http://{server.url}/v2/health/ready", timeout=10) as r:
        assert r.status == 200
    with urllib.request.urlopen(f"http://127.0.0.1:{server.ports['metrics']}/metrics", timeout=10) as r:
        assert b"nv_inference_request_success" in r.read()


@needs_server
def test_images_match_in_process_classify(server: Server, exported: ExportBundle) -> None:
    images = [png_bytes(i, (40 + 7 * i, 32 + 3 * i)) for i in range(4)]
    names, probs, result = infer(server.client(), images)
    assert all(set(row) <= set(CLASS_NAMES) for row in names)
    check_same(names, probs, expected(exported, images))
    assert result.as_numpy("ADAPTED_EMBEDDING").shape[0] == 4 and result.as_numpy("CLIP_EMBEDDING").shape[0] == 4


@needs_server
def test_new_label_set_per_request(server: Server, exported: ExportBundle) -> None:
    images = [png_bytes(10 + i) for i in range(2)]
    names, probs, _ = infer(server.client(), images, NEW_LABELS)
    assert all(set(row) == set(NEW_LABELS) for row in names)
    check_same(names, probs, expected(exported, images, NEW_LABELS))


def still_correct(client, exported: ExportBundle) -> None:
    """After a refused request, the next good one is answered, and answered right."""
    good = [png_bytes(99)]
    names, probs, _ = infer(client, good)
    check_same(names, probs, expected(exported, good))


@needs_server
@pytest.mark.parametrize(("images", "labels", "words"), [
    ([b"not an image"], None, "cannot read image"),
    ([b"\x89PNG\r\n\x1a\n" + b"\0" * 64], None, "cannot read image"),
    ([png_bytes(1)], ("dog", "dog"), "twice"),
    ([png_bytes(1)], tuple(f"class {i}" for i in range(1001)), "at most 1000"),
    ([png_bytes(1)], tuple(f"class {i}" for i in range(10_000)), "10000 labels; at most 1000"),
])
def test_bad_requests_are_errors_and_the_server_goes_on(server: Server, exported: ExportBundle, images, labels,
                                                         words) -> None:
    from tritonclient.utils import InferenceServerException

    client = server.client()
    with pytest.raises(InferenceServerException, match=words):
        infer(client, images, labels)
    still_correct(client, exported)


def _tensor(name: str, value: np.ndarray, datatype: str):
    import tritonclient.http as http

    tensor = http.InferInput(name, list(value.shape), datatype)
    tensor.set_data_from_numpy(value)
    return tensor


# Requests a well-behaved client would not send, built when the test runs (one holds 20 MB). Each is
# (inputs, requested outputs, words of the error). The dtype, empty-batch and output-name checks are
# Triton's own; the oversized image reaches the model, which refuses it.
MALFORMED = {
    "image_as_fp32": lambda: ([_tensor("IMAGE", np.zeros((1, 1), np.float32), "FP32")], None,
                              "data-type is 'FP32', but model 'mmadapter' expects 'BYTES'"),
    "image_as_int32": lambda: ([_tensor("IMAGE", np.zeros((1, 1), np.int32), "INT32")], None,
                               "data-type is 'INT32', but model 'mmadapter' expects 'BYTES'"),
    # Refused by Triton's front end (it counts the BYTES elements) before the model's own "holds no image".
    "empty_batch": lambda: ([_tensor("IMAGE", np.empty((0, 1), dtype=object), "BYTES")], None,
                            "string elements for inference input 'IMAGE'.*got 0"),
    # Over the model's 16 MB per image: the server's HTTP front end must pass it on, not drop the connection.
    "image_of_20_mb": lambda: ([_tensor("IMAGE", np.array([[b"\x89PNG" + b"\0" * (20 << 20)]], dtype=object),
                                        "BYTES")], None, "over the 16777216-byte limit"),
    "unknown_output": lambda: ([_tensor("IMAGE", np.array([[png_bytes(3)]], dtype=object), "BYTES")],
                               ["NO_SUCH_OUTPUT"], "NO_SUCH_OUTPUT"),
}


@needs_server
@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_requests_are_errors_and_the_server_goes_on(server: Server, exported: ExportBundle,
                                                              case: str) -> None:
    import tritonclient.http as http
    from tritonclient.utils import InferenceServerException

    inputs, outputs, words = MALFORMED[case]()
    requested = [http.InferRequestedOutput(name) for name in outputs] if outputs else None
    client = server.client()
    with pytest.raises(InferenceServerException, match=words):
        client.infer("mmadapter", inputs, outputs=requested)
    still_correct(client, exported)


@needs_server
def test_concurrent_clients_all_answered_correctly(server: Server, exported: ExportBundle) -> None:
    images = [png_bytes(200 + i) for i in range(10)]
    want = expected(exported, images)
    failures: list[str] = []

    def worker(t: int) -> None:
        client = server.client()
        for i in range(10):
            k = (t + i) % len(images)
            try:
                names, probs, _ = infer(client, [images[k]])
                check_same(names, probs, [want[k]])
            except Exception as exc:  # noqa: BLE001 - collected and asserted below, in the main thread
                failures.append(f"thread {t} request {i}: {exc}")

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not failures, failures[:3]


@needs_server
def test_sigterm_drains_accepted_requests_and_exits_143(server: Server, exported: ExportBundle) -> None:
    """Last in this file: it stops the module's server."""
    images = [png_bytes(300 + i) for i in range(3)]
    want = expected(exported, images)
    answers: list[object] = []

    def worker() -> None:
        try:
            names, probs, _ = infer(server.client(), images)
            check_same(names, probs, want)
            answers.append("ok")
        except Exception as exc:  # noqa: BLE001 - refused before it was accepted: allowed, counted
            answers.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.05)
    code = server.stop()
    for t in threads:
        t.join(60)
    assert code == 143
    assert "terminated" in server.proc.stderr.read()
    # Every request got an answer; one that got any answer beyond a refused connection was correct.
    assert len(answers) == 4
    assert all(a == "ok" or "onnect" in str(a) or "unavailable" in str(a).lower() for a in answers), answers


def test_serve_refuses_a_port_in_use(exported: ExportBundle, tmp_path: Path, capsys) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        code = main(["serve", str(exported.out_dir), "--model-repository", str(tmp_path / "r"),
                     "--http-port", str(port), "--grpc-port", str(free_port()), "--metrics-port", str(free_port())])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and f"--http-port {port} on 127.0.0.1 is in use" in err
    assert not (tmp_path / "r").exists()


def test_serve_refuses_a_missing_or_invalid_export(tmp_path: Path, capsys) -> None:
    assert main(["serve", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not found" in err
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "manifest.json").write_text("{}")
    assert main(["serve", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
