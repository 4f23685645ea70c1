"""``python export.py`` / ``mmadapter export``: argparse over :func:`export_checkpoint`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mmadapter.errors import MMAdapterError


def build_parser(prog: str = "export.py") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="Export an mmadapter checkpoint to validated ONNX graphs "
                                "(and TensorRT engines / a Triton model repository).")
    p.add_argument("--checkpoint", type=Path, required=True, help="adapter checkpoint (.safetensors)")
    p.add_argument("--out", type=Path, required=True, help="output folder (must be empty unless --overwrite)")
    p.add_argument("--fp16", action="store_true", help="also write fp16 graphs (fp32 LayerNorm/softmax, fp32 I/O)")
    p.add_argument("--int8", action="store_true", help="also write an int8 image classifier for ONNX Runtime on CPU "
                   "(dynamic quantization of the image tower's transformer blocks; validated, see README)")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset, 17-23 (default 18)")
    p.add_argument("--no-validate", dest="validate", action="store_false", help="skip validation against torch")
    p.add_argument("--tensorrt", action="store_true", help="also build TensorRT engines (needs TensorRT and a GPU)")
    p.add_argument("--min-batch", type=int, default=1)
    p.add_argument("--opt-batch", type=int, default=8)
    p.add_argument("--max-batch", type=int, default=64)
    p.add_argument("--max-classes", type=int, default=4096, help="largest class bank for the adapter_head engine")
    p.add_argument("--serving-repo", type=Path, default=None, help="also write a Triton model repository here")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    p.add_argument("--providers", nargs="+", default=["cpu"], help="ONNX Runtime providers for validation "
                   "(tensorrt, cuda, cpu; default cpu)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        from mmadapter.export.pipeline import export_checkpoint
        from mmadapter.export.tensorrt import BatchProfile

        result = export_checkpoint(
            args.checkpoint, args.out, fp16=args.fp16, int8=args.int8, opset=args.opset, validate=args.validate,
            overwrite=args.overwrite, tensorrt=args.tensorrt,
            profile=BatchProfile(args.min_batch, args.opt_batch, args.max_batch), max_classes=args.max_classes,
            serving_repo=args.serving_repo, providers=args.providers, progress=not args.quiet,
        )
    except MMAdapterError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"error: interrupted; nothing was written to {args.out}", file=sys.stderr)
        return 130
    v = result.manifest["validation"]
    status = "validated" if v["run"] and v["passed"] else "NOT validated (--no-validate)"
    print(f"wrote {len(result.files)} files to {result.out_dir} ({status})")
    if result.serving_repo:
        print(f"wrote a Triton model repository to {result.serving_repo}")
    if result.tensorrt_error:
        print(f"error: --tensorrt: {result.tensorrt_error}; the ONNX files were written to {result.out_dir}",
              file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
