"""``mmadapter serve``: check the export, the install and the ports, write (or reuse) the server folder,
run ``tritonserver`` in the foreground and stop it cleanly on Ctrl-C or SIGTERM.

Stopping drains through the model-repository API before tritonserver is signalled: on SIGTERM alone,
tritonserver keeps answering on every open keep-alive connection (HTTP and gRPC clients hold them) until
its exit timeout, then exits at once with requests still running. Unloading the models first refuses new
requests ("unknown model") while those already accepted finish; once no model is left, nothing a client
sent can be lost, and only idle connections would hold the server up.

Everything the server prints goes to a log file: its CUDA, NVML and DCGM lines are expected on a machine
without a GPU and would bury the one line the user needs (where it listens). On failure the first error
line of the log that is not one of those is shown, with the log's path.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from mmadapter.runtime.graphs import IMAGE_CLASSIFIER
from mmadapter.server.repository import (
    MODEL,
    ServeError,
    Settings,
    TritonInstall,
    check_stub_numpy,
    find_triton,
    prepare_folder,
    python_path,
)

# Lines of a CPU-only server that say nothing is wrong (there is no GPU, no DCGM).
HARMLESS = ("CudaDriverHelper has not been initialized", "NVML", "DCGM", "pinned memory pool",
            "CUDA memory pool", "CUDA driver")
READY_TIMEOUT_S = 300.0  # loading a ViT-L export and opening its sessions takes tens of seconds on CPU
DRAIN_TIMEOUT_S = 30  # accepted requests finish within this (the unload's wait; tritonserver's --exit-timeout-secs)
# After the drain tritonserver only waits for idle client connections to close: not worth waiting long for.
EXIT_GRACE_S = 5.0


@dataclass
class ServeOptions:
    export_dir: Path
    folder: Path | None = None  # None: a folder per export under the cache
    host: str = "127.0.0.1"
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    log_file: Path | None = None
    settings: Settings = field(default_factory=Settings)


def default_folder(export_dir: Path) -> Path:
    """``$XDG_CACHE_HOME/mmadapter/triton/<hash of the export's path>``: one folder per export."""
    import hashlib

    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    key = hashlib.sha256(str(export_dir.resolve()).encode()).hexdigest()[:16]
    return base / "mmadapter" / "triton" / key


def check_export(export_dir: Path, precision: str) -> None:
    """The manifest's schema and hash, and the image classifier's sha256: an invalid export is refused
    here, in one line, not as a model the server failed to load."""
    from mmadapter.runtime.model import ExportedModel

    if not export_dir.is_dir():
        raise ServeError(f"export folder {export_dir} not found")
    ExportedModel(export_dir, precision=precision, bank_cache=None).graph_file(IMAGE_CLASSIFIER)


def check_port(host: str, port: int, what: str) -> None:
    """A ServeError when something listens on ``port``. SO_REUSEADDR, as servers bind: the connections of a
    server stopped a moment ago linger in TIME_WAIT for a minute and would otherwise read as "in use"
    (restarting `serve` right after Ctrl-C), while a socket that listens still refuses the bind."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            taken = exc.errno == errno.EADDRINUSE
            raise ServeError(f"{what} {port} on {host} " + ("is in use; choose another port" if taken
                                                            else f"cannot be used: {exc.strerror}")) from None


def _die_with_parent() -> None:
    # The server must not outlive a `serve` that was killed outright (SIGKILL runs no cleanup).
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def default_log(folder: Path, http_port: int) -> Path:
    """Beside the repository, named by the HTTP port: servers may share one repository (it is only read
    while they run), but never a port, so each keeps its own log instead of truncating another's."""
    return folder.with_name(f"{folder.name}.{http_port}.log")


def start(opts: ServeOptions, folder: Path, install: TritonInstall, log: Path) -> subprocess.Popen:
    joined = lambda *parts: os.pathsep.join(p for p in parts if p)
    env = {**os.environ, "LD_LIBRARY_PATH": joined(str(install.libs), os.environ.get("LD_LIBRARY_PATH", "")),
           "PYTHONPATH": joined(*python_path(), os.environ.get("PYTHONPATH", ""))}
    command = [str(install.binary), "--model-repository", str(folder / "models"),
               "--backend-directory", str(folder / "backends"), "--http-address", opts.host,
               "--grpc-address", opts.host, "--metrics-address", opts.host,
               "--http-port", str(opts.http_port), "--grpc-port", str(opts.grpc_port),
               "--metrics-port", str(opts.metrics_port), "--exit-timeout-secs", str(DRAIN_TIMEOUT_S),
               # Explicit control, every model loaded at start: the repository API can unload them on stop.
               "--model-control-mode", "explicit", "--load-model", "*"]
    with open(log, "wb") as out:
        # A session of its own: the terminal's Ctrl-C reaches `serve`, which stops the server once.
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                start_new_session=True, preexec_fn=_die_with_parent)


def first_error(log: Path) -> str:
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return "no log"
    bad = [line for line in lines if line[:1] == "E" or "error" in line.lower() or "failed" in line.lower()]
    useful = [line for line in bad if not any(h in line for h in HARMLESS)]
    return (useful or bad or ["no error line"])[0].strip()[:400]


def wait_ready(proc: subprocess.Popen, opts: ServeOptions, log: Path, timeout: float = READY_TIMEOUT_S) -> None:
    url = f"http://{opts.host}:{opts.http_port}/v2/models/{MODEL}/ready"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServeError(f"tritonserver exited with status {proc.returncode} before it was ready: "
                             f"{first_error(log)} (log: {log})")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise ServeError(f"tritonserver was not ready after {timeout:.0f} s (log: {log})")


def _repository(opts: ServeOptions, path: str) -> object:
    host = "127.0.0.1" if opts.host in ("0.0.0.0", "") else opts.host  # noqa: S104 - a wildcard is local too
    request = urllib.request.Request(f"http://{host}:{opts.http_port}/v2/repository/{path}", data=b"{}",
                                     method="POST", headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=DRAIN_TIMEOUT_S) as response:
        body = response.read()
    return json.loads(body) if body else None


def drain(opts: ServeOptions, timeout: float = DRAIN_TIMEOUT_S) -> bool:
    """Unload every model, the pipeline first, and wait until none is left: new requests are refused from
    the moment an unload begins, accepted ones finish. False when the server did not let that happen."""
    deadline = time.monotonic() + timeout
    try:
        loaded = [m["name"] for m in _repository(opts, "index") if m.get("state") == "READY"]
        for name in sorted(set(loaded), key=lambda n: n != MODEL):
            _repository(opts, f"models/{name}/unload")
        while time.monotonic() < deadline:
            if not any(m.get("state") in ("READY", "LOADING", "UNLOADING") for m in _repository(opts, "index")):
                return True
            time.sleep(0.1)
    except (OSError, ValueError, KeyError, TypeError):
        pass  # not answering as it should: SIGTERM and tritonserver's own exit timeout are what is left
    return False


def stop(proc: subprocess.Popen, opts: ServeOptions | None = None, timeout: float = DRAIN_TIMEOUT_S + 10) -> int:
    """Drain (see the module's docstring), then SIGTERM; tritonserver unloads what is left and exits.
    Drained, a server still up after EXIT_GRACE_S is waiting on idle connections only and is killed."""
    if proc.poll() is None:
        drained = opts is not None and drain(opts)
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(EXIT_GRACE_S if drained else timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def serve(opts: ServeOptions, say: Callable[[str], None] = print) -> int:
    """Run the server until it is stopped; Ctrl-C and SIGTERM (raised as exceptions by the CLI's
    contract) drain it first and are raised again, for exit status 130 or 143."""
    check_export(opts.export_dir, opts.settings.precision)
    for what, port in (("--http-port", opts.http_port), ("--grpc-port", opts.grpc_port),
                       ("--metrics-port", opts.metrics_port)):
        check_port(opts.host, port, what)
    install = find_triton()
    check_stub_numpy(python_path())
    folder = (opts.folder or default_folder(opts.export_dir)).resolve()
    prepare_folder(folder, opts.export_dir, opts.settings, install)
    log = opts.log_file or default_log(folder, opts.http_port)
    proc = start(opts, folder, install, log)
    try:
        wait_ready(proc, opts, log)
        say(f"serving {opts.export_dir} as model '{MODEL}': http://{opts.host}:{opts.http_port} "
            f"grpc://{opts.host}:{opts.grpc_port} metrics http://{opts.host}:{opts.metrics_port}/metrics "
            f"(log: {log})")
        code = proc.wait()
    finally:
        stop(proc, opts)
    raise ServeError(f"tritonserver exited with status {code}: {first_error(log)} (log: {log})")
