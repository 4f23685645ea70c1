"""The ``mmadapter`` console script: thin argparse subcommands over typed functions.

Every problem with what the user gave (an :class:`MMAdapterError`, or an OS error reading or writing
their files) is printed as one line ``error: ...`` on stderr with exit status 2, never a traceback;
Ctrl-C exits with 130.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from mmadapter.config import ClipSpec, TrainConfig
from mmadapter.errors import DataError, MMAdapterError

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


def _add_clip_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--clip-model", default="ViT-B-16", help="open_clip model name (default: ViT-B-16, the paper's)")
    p.add_argument("--pretrained", default="openai", help="open_clip pretrained tag (default: openai)")
    p.add_argument("--clip-weights", type=Path, help="local CLIP weights file (used instead of --pretrained)")
    p.add_argument("--device", default="cpu")


def _add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", type=Path, required=True,
                   help="an image folder (one sub-folder per class), or the root holding a registered dataset")
    p.add_argument("--dataset", help="registered dataset name (ImageNet, OxfordPets, ...) under --data")
    p.add_argument("--template", help="prompt template with '{}' (default: the dataset's CoOp template)")
    p.add_argument("--shots", type=int, default=TrainConfig.shots)
    p.add_argument("--seed", type=int, default=TrainConfig.seed)
    p.add_argument("--epochs", type=int, default=TrainConfig.max_epochs, help="maximum epochs (early stopping)")
    p.add_argument("--lr", type=float, default=TrainConfig.lr)
    p.add_argument("--cache-dir", type=Path, default=Path(".mmadapter-cache"), help="embedding cache folder")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bars (default: when stderr is a terminal)")


def _clip_spec(args: argparse.Namespace) -> ClipSpec:
    if args.clip_weights is not None:
        return ClipSpec(args.clip_model, None, str(args.clip_weights.resolve()), None)
    return ClipSpec(args.clip_model, args.pretrained or None)


def _progress(args: argparse.Namespace) -> bool:
    return sys.stderr.isatty() if args.progress is None else args.progress


def _train_config(args: argparse.Namespace) -> TrainConfig:
    if args.shots < 1 or args.epochs < 1:
        raise DataError("--shots and --epochs must be at least 1")
    return TrainConfig(lr=args.lr, max_epochs=args.epochs, shots=args.shots, seed=args.seed)


def cmd_train(args: argparse.Namespace) -> int:
    from mmadapter.experiment import open_dataset, train_checkpoint
    from mmadapter.features import ClipProvider

    dataset = open_dataset(args.data, args.dataset, args.template)
    path, result, test_acc = train_checkpoint(
        dataset, ClipProvider(_clip_spec(args), args.device), args.out, _train_config(args),
        base_only=args.base_only, cache_dir=args.cache_dir, progress=_progress(args),
    )
    print(f"trained {len(result.history)} epochs (best {result.best_epoch}, val {result.best_val_acc:.2f}%), "
          f"test accuracy {test_acc:.2f}%; checkpoint {path}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from mmadapter.evaluate import write_report
    from mmadapter.experiment import evaluate_base_to_novel, open_dataset
    from mmadapter.features import ClipProvider

    dataset = open_dataset(args.data, args.dataset, args.template)
    report = evaluate_base_to_novel(dataset, ClipProvider(_clip_spec(args), args.device), _train_config(args),
                                    cache_dir=args.cache_dir, progress=_progress(args))
    paths = write_report(report, args.out)
    print(report.to_markdown())
    print("report: " + ", ".join(str(p) for p in paths.values()))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from mmadapter.predict import collect_images, format_predictions, parse_class_list, predict_images

    if (args.checkpoint is None) == (args.onnx is None):
        raise DataError("give exactly one of --checkpoint CKPT or --onnx DIR")
    if args.checkpoint is not None:
        from mmadapter.checkpoint import read_metadata

        read_metadata(args.checkpoint)  # a bad checkpoint is reported before any image is looked at
    images = collect_images(args.images)
    if args.onnx is not None:
        if args.classes is not None:
            raise DataError("--classes needs --checkpoint: an exported model's label set is fixed at export")
        try:
            from mmadapter.export.runtime import classify_images
        except ImportError as exc:
            raise DataError(f"ONNX prediction is unavailable ({exc}); install 'mmadapter[runtime]'") from None
        predictions = classify_images(args.onnx, images, args.top_k, precision=args.precision)
    else:
        classes = parse_class_list(args.classes) if args.classes is not None else None
        predictions = predict_images(args.checkpoint, images, args.top_k, classes, device=args.device)
    print(format_predictions(predictions))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from mmadapter.demo import run_demo

    run_demo(args.out, progress=_progress(args))
    return 0


def cmd_export(rest: list[str]) -> int:
    from mmadapter.export.cli import main as export_main  # lazy: export needs onnx, which is optional

    return export_main(rest)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mmadapter", description="Multi-Modal Adapter for CLIP")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="train the adapter on a few-shot dataset and save a checkpoint")
    _add_data_args(p)
    _add_clip_args(p)
    p.add_argument("--out", type=Path, required=True, help="checkpoint file to write (.safetensors)")
    p.add_argument("--base-only", action="store_true", help="train on the base half of the classes only")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="base-to-novel report: zero-shot CLIP, CLIP-Adapter, Multi-Modal Adapter")
    _add_data_args(p)
    _add_clip_args(p)
    p.add_argument("--out", type=Path, required=True, help="folder for report.json, report.md, report.png")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("predict", help="top-k classes for image files or folders")
    p.add_argument("images", nargs="+", help="image files and/or folders of images")
    p.add_argument("--checkpoint", type=Path, help="adapter checkpoint (.safetensors)")
    p.add_argument("--onnx", type=Path, help="exported model folder (ONNX Runtime; no torch needed)")
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--classes", help="comma-separated class names or a file with one per line (open vocabulary)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", choices=("fp32", "fp16", "int8"), default="fp32",
                   help="which exported graphs --onnx serves (fp16/int8 need export --fp16/--int8)")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("demo", help="the whole path offline on a tiny random CLIP and the digits dataset")
    p.add_argument("--out", type=Path, default=Path("demo-output"))
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None)
    p.set_defaults(func=cmd_demo)

    # Listed for --help only: `export` takes its own arguments (see `mmadapter export --help`).
    sub.add_parser("export", help="export a checkpoint to ONNX / TensorRT (see: mmadapter export --help)")
    return parser


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] == "export":
            return cmd_export(argv[1:])
        try:
            args = build_parser().parse_args(argv)
        except SystemExit as exc:  # argparse has printed usage (or --help): keep main() returning an int
            return exc.code if isinstance(exc.code, int) else EXIT_USER_ERROR
        func: Callable[[argparse.Namespace], int] = args.func
        return func(args)
    except MMAdapterError as exc:
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_USER_ERROR
    except OSError as exc:  # a file the user named cannot be read or written (permissions, full disk, ...)
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
