"""``mmadapter serve``'s arguments (named as tritonserver and its model config name them) and the thin
command over :func:`mmadapter.server.launch.serve`."""

from __future__ import annotations

import argparse
from pathlib import Path

from mmadapter.cli.arguments import positive_int


def port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port number 1..65535, got {value}")
    return value


def add_serve_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("export_dir", type=Path, metavar="EXPORT_DIR", help="exported model folder (export --out)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    p.add_argument("--http-port", type=port, default=8000)
    p.add_argument("--grpc-port", type=port, default=8001)
    p.add_argument("--metrics-port", type=port, default=8002)
    p.add_argument("--model-repository", type=Path, default=None,
                   help="folder to write the model repository and backend into (default: one per export under "
                   "~/.cache/mmadapter/triton); reused when unchanged")
    p.add_argument("--log-file", type=Path, default=None,
                   help="tritonserver's log (default: beside the repository, named by --http-port)")
    p.add_argument("--instance-count", type=positive_int, default=1, help="model instances (instance_group count)")
    p.add_argument("--max-batch-size", type=positive_int, default=32, help="images per merged batch")
    p.add_argument("--max-queue-delay-microseconds", type=int, default=2000,
                   help="how long dynamic batching waits for more requests")
    p.add_argument("--top-k", type=positive_int, default=5)
    p.add_argument("--precision", choices=("fp32", "fp16", "int8"), default="fp32")
    p.add_argument("--intra-op-threads", type=positive_int, default=None, help="ONNX Runtime threads per instance")
    p.set_defaults(func=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    from mmadapter.server.launch import ServeOptions, serve
    from mmadapter.server.repository import Settings

    if args.max_queue_delay_microseconds < 0:
        from mmadapter.cli.contract import UsageError

        raise UsageError("--max-queue-delay-microseconds must be >= 0")
    settings = Settings(args.max_batch_size, args.max_queue_delay_microseconds, args.instance_count, args.top_k,
                        args.precision, args.intra_op_threads)
    opts = ServeOptions(args.export_dir, args.model_repository, args.host, args.http_port, args.grpc_port,
                        args.metrics_port, args.log_file, settings)
    return serve(opts, say=lambda line: print(line, flush=True))
