"""NVIDIA Triton Inference Server for real: ``mmadapter serve`` over the tiny test export on loopback ports,
answered over HTTP v2 and gRPC (tritonclient's two clients, one module-wide server for both), compared
with ``ExportedModel.classify`` on the same PNG bytes; bad requests, concurrent clients and a SIGTERM drain
under load. ``serve``'s own one-line errors need no server."""

from __future__ import annotations

import importlib
import importlib.util
import io
import json
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
OTHER_LABELS = ("cat", "dog", "car", "a photo of a bird")


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

    def client(self, protocol: str = "http") -> Client:
        return Client(protocol, f"127.0.0.1:{self.ports[protocol]}")

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


PROTOCOLS = ("http", "grpc")


def client_missing(protocol: str) -> str | None:
    """Why tritonclient's client for ``protocol`` cannot be used here, or None."""
    try:
        importlib.import_module(f"tritonclient.{protocol}")
    except ImportError as exc:  # the gRPC client also needs grpcio and protobuf<7
        return f"tritonclient.{protocol} cannot be imported ({exc}): pip install 'tritonclient[{protocol}]==2.73.0'"
    return None


class Client:
    """tritonclient's HTTP or gRPC client: the two modules build requests and read results alike."""

    def __init__(self, protocol: str, url: str):
        self.protocol = protocol
        self.lib = importlib.import_module(f"tritonclient.{protocol}")
        if protocol == "http":
            self.raw = self.lib.InferenceServerClient(url, network_timeout=120)
            self.timeout = {}
        else:
            self.raw = self.lib.InferenceServerClient(url)
            self.timeout = {"client_timeout": 120}

    def tensor(self, name: str, value: np.ndarray, datatype: str):
        tensor = self.lib.InferInput(name, list(value.shape), datatype)
        tensor.set_data_from_numpy(value)
        return tensor

    def send(self, inputs: list, outputs: list[str] | None = None):
        requested = [self.lib.InferRequestedOutput(name) for name in outputs] if outputs else None
        return self.raw.infer("mmadapter", inputs, outputs=requested, **self.timeout)

    def infer(self, images: list[bytes], labels: tuple[str, ...] | None = None):
        """Top labels (str), their probabilities, and the whole result."""
        inputs = [self.tensor("IMAGE", np.array([[b] for b in images], dtype=object), "BYTES")]
        if labels is not None:
            inputs.append(self.tensor("LABELS", np.array([list(labels)] * len(images), dtype=object), "BYTES"))
        result = self.send(inputs)
        names = [[x.decode() for x in row] for row in result.as_numpy("LABEL")]
        return names, result.as_numpy("PROBABILITY"), result


@pytest.fixture(params=PROTOCOLS)
def client(request: pytest.FixtureRequest, server: Server) -> Client:
    """A client of the module's server over each protocol; gRPC skips where its client cannot import."""
    reason = client_missing(request.param)
    if reason is not None:
        pytest.skip(reason)
    return server.client(request.param)


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


def metric(server: Server, name: str) -> float:
    """One of the mmadapter model's counters, read from the Prometheus text of the metrics port."""
    with urllib.request.urlopen(f"http://127.0.0.1:{server.ports['metrics']}/metrics", timeout=10) as r:
        text = r.read().decode()
    rows = [line for line in text.splitlines() if line.startswith(name + "{") and 'model="mmadapter"' in line]
    assert len(rows) == 1, rows
    return float(rows[0].rsplit(" ", 1)[1])


@needs_server
def test_ready_line_and_http_health(server: Server) -> None:
    assert "http://127.0.0.1:" in server.ready_line and "(log: " in server.ready_line
    assert f"grpc://127.0.0.1:{server.ports['grpc']}" in server.ready_line
    with urllib.request.urlopen(f"http://{server.url}/v2/health/ready", timeout=10) as r:
        assert r.status == 200


@needs_server
def test_ready_and_metadata(client: Client) -> None:
    assert client.raw.is_server_live() and client.raw.is_server_ready()
    assert client.raw.is_model_ready("mmadapter")
    meta = client.raw.get_model_metadata("mmadapter")
    meta = meta if isinstance(meta, dict) else {"inputs": [{"name": t.name} for t in meta.inputs],
                                                "outputs": [{"name": t.name} for t in meta.outputs]}
    assert [t["name"] for t in meta["inputs"]] == ["IMAGE", "LABELS"]
    assert {t["name"] for t in meta["outputs"]} == {"LABEL", "PROBABILITY", "ADAPTED_EMBEDDING", "CLIP_EMBEDDING"}


@needs_server
def test_metrics_port_counts_answered_requests(server: Server, exported: ExportBundle) -> None:
    before = metric(server, "nv_inference_request_success")
    still_correct(server.client("http"), exported)
    deadline = time.monotonic() + 10
    while metric(server, "nv_inference_request_success") < before + 1 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert metric(server, "nv_inference_request_success") >= before + 1


@needs_server
def test_images_match_in_process_classify(client: Client, exported: ExportBundle) -> None:
    images = [png_bytes(i, (40 + 7 * i, 32 + 3 * i)) for i in range(4)]
    names, probs, result = client.infer(images)
    assert all(set(row) <= set(CLASS_NAMES) for row in names)
    check_same(names, probs, expected(exported, images))
    assert result.as_numpy("ADAPTED_EMBEDDING").shape[0] == 4 and result.as_numpy("CLIP_EMBEDDING").shape[0] == 4


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """The demo's images: the same scikit-learn digits ``mmadapter demo`` writes, one per class."""
    from mmadapter.data.digits import write_digits_folder

    return sorted(write_digits_folder(tmp_path_factory.mktemp("digits"), size=64, per_class=1).rglob("*.png"))


@needs_server
def test_demo_images_match_predict_onnx(client: Client, exported: ExportBundle, digits: list[Path],
                                        capsys: pytest.CaptureFixture[str]) -> None:
    """Reference: ``mmadapter predict --onnx --format json`` on the same files (full-precision floats)."""
    assert main(["predict", "--onnx", str(exported.out_dir), *map(str, digits), "--format", "json"]) == 0
    want = [[(t["label"], t["probability"]) for t in json.loads(line)["top"]]
            for line in capsys.readouterr().out.splitlines()]
    assert len(want) == len(digits) == 10
    for start in (0, 5):  # two requests of five: the server's --max-batch-size is 8
        names, probs, _ = client.infer([f.read_bytes() for f in digits[start:start + 5]])
        check_same(names, probs, want[start:start + 5])


@needs_server
def test_new_label_set_per_request(client: Client, exported: ExportBundle) -> None:
    images = [png_bytes(10 + i) for i in range(2)]
    for labels in (NEW_LABELS, OTHER_LABELS):
        names, probs, _ = client.infer(images, labels)
        assert all(set(row) == set(labels) for row in names)
        check_same(names, probs, expected(exported, images, labels))


def still_correct(client: Client, exported: ExportBundle) -> None:
    """After a refused request, the next good one is answered, and answered right."""
    good = [png_bytes(99)]
    names, probs, _ = client.infer(good)
    check_same(names, probs, expected(exported, good))


@needs_server
@pytest.mark.parametrize(("images", "labels", "words"), [
    ([b"not an image"], None, "cannot read image"),
    ([b"\x89PNG\r\n\x1a\n" + b"\0" * 64], None, "cannot read image"),
    ([png_bytes(1)], ("dog", "dog"), "twice"),
    ([png_bytes(1)], tuple(f"class {i}" for i in range(1001)), "at most 1000"),
    ([png_bytes(1)], tuple(f"class {i}" for i in range(10_000)), "10000 labels; at most 1000"),
], ids=["not_an_image", "truncated_png", "duplicate_label", "1001_labels", "10000_labels"])
def test_bad_requests_are_errors_and_the_server_goes_on(client: Client, exported: ExportBundle, images, labels,
                                                         words) -> None:
    from tritonclient.utils import InferenceServerException

    with pytest.raises(InferenceServerException, match=words):
        client.infer(images, labels)
    still_correct(client, exported)


# Requests a well-behaved client would not send, built when the test runs (one holds 20 MB). Each is
# (inputs, requested outputs, words of the error). The dtype, empty-batch and output-name checks are
# Triton's own; the oversized image reaches the model, which refuses it.
MALFORMED = {
    "image_as_fp32": lambda c: ([c.tensor("IMAGE", np.zeros((1, 1), np.float32), "FP32")], None,
                                "data-type is 'FP32', but model 'mmadapter' expects 'BYTES'"),
    "image_as_int32": lambda c: ([c.tensor("IMAGE", np.zeros((1, 1), np.int32), "INT32")], None,
                                 "data-type is 'INT32', but model 'mmadapter' expects 'BYTES'"),
    # Refused by Triton's front end (it counts the BYTES elements) before the model's own "holds no image".
    "empty_batch": lambda c: ([c.tensor("IMAGE", np.empty((0, 1), dtype=object), "BYTES")], None,
                              "string elements for inference input 'IMAGE'.*got 0"),
    # Over the model's 16 MB per image: the server's front ends must pass it on, not drop the connection.
    "image_of_20_mb": lambda c: ([c.tensor("IMAGE", np.array([[b"\x89PNG" + b"\0" * (20 << 20)]], dtype=object),
                                           "BYTES")], None, "over the 16777216-byte limit"),
    "unknown_output": lambda c: ([c.tensor("IMAGE", np.array([[png_bytes(3)]], dtype=object), "BYTES")],
                                 ["NO_SUCH_OUTPUT"], "NO_SUCH_OUTPUT"),
}


@needs_server
@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_requests_are_errors_and_the_server_goes_on(client: Client, exported: ExportBundle,
                                                              case: str) -> None:
    from tritonclient.utils import InferenceServerException

    inputs, outputs, words = MALFORMED[case](client)
    with pytest.raises(InferenceServerException, match=words):
        client.send(inputs, outputs)
    still_correct(client, exported)


@needs_server
def test_concurrent_clients_all_answered_correctly(server: Server, exported: ExportBundle) -> None:
    """Four threads, two over each protocol where both import, ten requests each."""
    images = [png_bytes(200 + i) for i in range(10)]
    want = expected(exported, images)
    protocols = [p for p in PROTOCOLS if client_missing(p) is None]
    failures: list[str] = []

    def worker(t: int) -> None:
        client = server.client(protocols[t % len(protocols)])
        for i in range(10):
            k = (t + i) % len(images)
            try:
                names, probs, _ = client.infer([images[k]])
                check_same(names, probs, [want[k]])
            except Exception as exc:  # noqa: BLE001 - collected and asserted below, in the main thread
                failures.append(f"thread {t} ({client.protocol}) request {i}: {exc}")

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not failures, failures[:3]


# How a request that the server did not accept ends once SIGTERM is in: serve drains by unloading the
# model, and Triton refuses requests for a model being unloaded. A dropped connection is not a refusal.
REFUSED = "unknown model"


@needs_server
def test_sigterm_under_load_loses_no_accepted_request(server: Server, exported: ExportBundle) -> None:
    """Last in this file: it stops the module's server. Four threads, over both protocols where both
    import, send request after request; SIGTERM comes once answers flow. Each request is answered right
    or refused, and those in flight when the signal went were answered right."""
    images = [png_bytes(300 + i) for i in range(3)]
    want = expected(exported, images)
    protocols = [p for p in PROTOCOLS if client_missing(p) is None]
    outcomes: list[tuple[float, float, str]] = []  # (sent, done, "ok" | "wrong: ..." | the error)

    def worker(t: int) -> None:
        client = server.client(protocols[t % len(protocols)])
        while True:
            sent = time.monotonic()
            try:
                names, probs, _ = client.infer(images)
            except Exception as exc:  # noqa: BLE001 - the first error ends this thread; judged below
                outcomes.append((sent, time.monotonic(), f"{client.protocol}: {exc}"))
                return
            try:
                check_same(names, probs, want)
                outcomes.append((sent, time.monotonic(), "ok"))
            except AssertionError as exc:
                outcomes.append((sent, time.monotonic(), f"wrong: {exc}"))

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 60
    while sum(o[2] == "ok" for o in outcomes) < 8 and time.monotonic() < deadline:
        time.sleep(0.01)
    signalled = time.monotonic()
    code = server.stop()
    stopped_after = time.monotonic() - signalled
    for t in threads:
        t.join(60)
    assert code == 143
    assert "terminated" in server.proc.stderr.read()
    assert not any(t.is_alive() for t in threads)
    errors = [o[2] for o in outcomes if o[2] != "ok"]
    assert len(errors) == 4, errors  # one per thread: the one that ended it
    assert all(REFUSED in e for e in errors), errors
    in_flight = [o for o in outcomes if o[0] < signalled < o[1]]
    assert any(o[2] == "ok" for o in in_flight), (in_flight, errors)
    # tritonserver's own account: no exit with requests still running (what SIGTERM alone led to once its
    # 30 s exit timeout ran out on busy keep-alive connections), and well within that timeout.
    log = Path(server.ready_line.rsplit("(log: ", 1)[1].rstrip(")\n")).read_text(errors="replace")
    assert "Exiting immediately" not in log and "Signal (11)" not in log
    assert stopped_after < 20, stopped_after


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


def test_a_port_in_time_wait_after_a_stop_is_free_again() -> None:
    """A server stopped a moment ago leaves the connections it closed in TIME_WAIT on its port for a minute;
    restarting ``serve`` right after Ctrl-C must not read that as "in use", while a listener still is."""
    from mmadapter.server.launch import check_port
    from mmadapter.server.repository import ServeError

    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as tritonserver's front ends bind
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    accepted, _ = listener.accept()
    with pytest.raises(ServeError, match="is in use"):
        check_port("127.0.0.1", port, "--http-port")
    accepted.close()  # the server's side closes first: its end of the connection goes to TIME_WAIT
    client.close()
    listener.close()
    with socket.socket() as plain, pytest.raises(OSError):  # the lingering state this is about
        plain.bind(("127.0.0.1", port))
    check_port("127.0.0.1", port, "--http-port")  # free: nothing listens


def test_servers_sharing_a_repository_keep_their_own_logs(tmp_path: Path) -> None:
    """Two servers over one repository (it is only read while they run) write their logs beside it, one per
    HTTP port, so the second does not truncate the first's."""
    from mmadapter.server.launch import default_log

    first, second = default_log(tmp_path / "repo", 8000), default_log(tmp_path / "repo", 8010)
    assert first != second and first.parent == second.parent == tmp_path
    assert first.name == "repo.8000.log"


def test_serve_refuses_a_missing_or_invalid_export(tmp_path: Path, capsys) -> None:
    assert main(["serve", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not found" in err
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "manifest.json").write_text("{}")
    assert main(["serve", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1


def test_stop_without_an_answering_server_falls_back_to_sigterm(exported: ExportBundle) -> None:
    """No server on the HTTP port: the drain reports failure at once, and ``stop`` still signals the
    process (here a stand-in that exits on SIGTERM) rather than killing it or waiting for nothing."""
    from mmadapter.server.launch import ServeOptions, drain, stop

    opts = ServeOptions(exported.out_dir, http_port=free_port())
    started = time.monotonic()
    assert drain(opts, timeout=5) is False
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    assert stop(proc, opts) == -signal.SIGTERM
    assert time.monotonic() - started < 10
