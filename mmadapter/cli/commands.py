"""The ``mmadapter`` subcommands (train, evaluate, predict, demo, convert, export, serve) and their parsers: thin
argparse layers over typed functions."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from mmadapter.cli.arguments import (
    check_device,
    device_name,
    existing_file,
    positive_float,
    positive_int,
    seed_int,
    template_text,
)
from mmadapter.cli.contract import EXIT_OK, ArgumentParser, UsageError
from mmadapter.errors import DataError


def _add_clip_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--clip-model", default="ViT-B-16", help="open_clip model name (default: ViT-B-16, the paper's)")
    p.add_argument("--pretrained", default="openai", help="open_clip pretrained tag (default: openai)")
    p.add_argument("--clip-weights", type=Path, help="local CLIP weights file (used instead of --pretrained)")
    p.add_argument("--device", type=device_name, default="cpu", help="cpu, cuda or cuda:N (default: cpu)")


def _add_data_args(p: argparse.ArgumentParser) -> None:
    from mmadapter.data.fewshot import BASE_NOVEL_SPLITS
    from mmadapter.model.config import TrainConfig

    p.add_argument("--data", type=Path, required=True,
                   help="an image folder (one sub-folder per class), or the root holding a registered dataset")
    p.add_argument("--dataset", help="registered dataset name (ImageNet, OxfordPets, ...) under --data")
    p.add_argument("--template", type=template_text,
                   help="prompt template with exactly one '{}' (default: the dataset's CoOp template)")
    p.add_argument("--shots", type=positive_int, default=TrainConfig.shots)
    p.add_argument("--seed", type=seed_int, default=TrainConfig.seed)
    p.add_argument("--epochs", type=positive_int, default=TrainConfig.max_epochs,
                   help="maximum epochs (early stopping)")
    p.add_argument("--lr", type=positive_float, default=TrainConfig.lr)
    p.add_argument("--cache-dir", type=Path, default=Path(".mmadapter-cache"),
                   help="embedding cache folder (if it cannot be written, the run goes on without it)")
    p.add_argument("--split", choices=BASE_NOVEL_SPLITS, default="coop",
                   help="base-to-novel split: 'coop' (default) takes the first ceil(n/2) labels in the dataset's "
                        "label order as base, as CoOp's protocol and published tables do; 'authors' floor(n/2), as "
                        "the Multi-Modal Adapter authors' code")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bars (default: when stderr is a terminal)")


def _clip_spec(args: argparse.Namespace) -> Any:
    from mmadapter.model.config import ClipSpec

    if args.clip_weights is not None:
        existing_file(args.clip_weights, "--clip-weights")
        return ClipSpec(args.clip_model, None, str(args.clip_weights.resolve()), None)
    return ClipSpec(args.clip_model, args.pretrained or None)


def _progress(args: argparse.Namespace) -> bool:
    return sys.stderr.isatty() if args.progress is None else args.progress


def _train_config(args: argparse.Namespace) -> Any:
    from mmadapter.model.config import TrainConfig

    return TrainConfig(lr=args.lr, max_epochs=args.epochs, shots=args.shots, seed=args.seed)


def _check_data(args: argparse.Namespace) -> None:
    if not args.data.is_dir():
        raise UsageError(f"--data {args.data}: folder not found")
    check_device(args.device)


def cmd_train(args: argparse.Namespace) -> int:
    from mmadapter.data.embeddings import ClipProvider
    from mmadapter.model.checkpoint import check_output_file
    from mmadapter.training.workflow import open_dataset, train_checkpoint

    config, spec = _train_config(args), _clip_spec(args)
    _check_data(args)
    check_output_file(args.out, args.overwrite)
    dataset = open_dataset(args.data, args.dataset, args.template)
    path, result, test_acc = train_checkpoint(
        dataset, ClipProvider(spec, args.device), args.out, config,
        base_only=args.base_only, cache_dir=args.cache_dir, progress=_progress(args), overwrite=args.overwrite,
        split=args.split, data_root=args.data,
    )
    print(f"trained {len(result.history)} epochs (best {result.best_epoch}, val {result.best_val_acc:.2f}%), "
          f"test accuracy {test_acc:.2f}%; checkpoint {path}")
    return EXIT_OK


def cmd_evaluate(args: argparse.Namespace) -> int:
    if args.onnx is not None:  # an export's graphs on a labelled folder: no torch, no CLIP
        from mmadapter.export.accuracy import check, evaluate_export, format_table

        result = evaluate_export(args.onnx, args.data)
        print(format_table(result))
        check(result)
        return EXIT_OK
    if args.out is None:
        raise UsageError("evaluate needs --out FOLDER for the report (or --onnx DIR to evaluate an export)")
    from mmadapter.data.embeddings import ClipProvider
    from mmadapter.training.base_to_novel import write_report
    from mmadapter.training.workflow import evaluate_base_to_novel, open_dataset

    config, spec = _train_config(args), _clip_spec(args)
    _check_data(args)
    if args.out.exists() and not args.out.is_dir():
        raise UsageError(f"--out {args.out} is a file; give a folder for the report")
    dataset = open_dataset(args.data, args.dataset, args.template)
    report = evaluate_base_to_novel(dataset, ClipProvider(spec, args.device), config,
                                    cache_dir=args.cache_dir, progress=_progress(args), split=args.split)
    paths = write_report(report, args.out)
    print(report.to_markdown())
    print("report: " + ", ".join(str(p) for p in paths.values()))
    return EXIT_OK


def cmd_predict(args: argparse.Namespace) -> int:
    from mmadapter.runtime.ranking import (
        collect_images,
        count_skipped,
        format_json_lines,
        format_predictions,
        parse_class_list,
    )

    if (args.checkpoint is None) == (args.onnx is None):
        raise UsageError("give exactly one of --checkpoint CKPT or --onnx DIR")
    if args.onnx is not None and args.device != "cpu":
        # Silently running on the CPU would answer a question that was not asked.
        raise UsageError(f"--device {args.device} applies to --checkpoint; --onnx runs on ONNX Runtime's providers "
                         "(the CUDA provider is used when onnxruntime-gpu is installed), so leave --device out")
    if args.checkpoint is not None:
        from mmadapter.model.checkpoint import read_metadata

        existing_file(args.checkpoint, "--checkpoint")
        read_metadata(args.checkpoint)  # a bad checkpoint is reported before any image is looked at
        check_device(args.device)
    classes = parse_class_list(args.classes) if args.classes is not None else None
    images = collect_images(args.images)
    if args.onnx is not None:
        try:
            from mmadapter.runtime.model import classify_images
        except ImportError as exc:
            raise DataError(f"ONNX prediction is unavailable ({exc}); install 'mmadapter[runtime]'") from None

        def show_sessions(runs: dict[str, str]) -> None:
            print("providers: " + "; ".join(f"{name}: {what}" for name, what in runs.items()), file=sys.stderr)

        # Only what was asked for: the runtime's other keywords keep their defaults.
        extra: dict[str, Any] = {"class_names": classes} if classes is not None else {}
        if args.verbose:
            extra["on_sessions"] = show_sessions
        if args.engine != "onnxruntime":
            extra.update(engine=args.engine, device=args.openvino_device if args.engine == "openvino" else None)
        results = classify_images(args.onnx, images, args.top_k, precision=args.precision, strict=args.strict,
                                  **extra)
    else:
        from mmadapter.model.classify import predict_images

        results = predict_images(args.checkpoint, images, args.top_k, classes, device=args.device,
                                 strict=args.strict)
    print(format_json_lines(results) if args.format == "json" else format_predictions(results))
    skipped = count_skipped(results)
    if skipped:
        print(f"warning: {skipped} of {len(results)} images skipped (unreadable, corrupt or too large; "
              "--strict makes that an error)", file=sys.stderr)
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from mmadapter.cli.demo import run_demo

    if args.web:  # onnxruntime-web's files first: a missing npm is one line before the demo's minute of work
        from mmadapter.export.web import ort_web_files

        ort_web_files(args.ort_web)
    run_demo(args.out, progress=_progress(args), web=args.web, ort_web=args.ort_web)
    return EXIT_OK


def add_convert_arguments(p: argparse.ArgumentParser) -> None:
    from mmadapter.runtime.labels import DEFAULT_TEMPLATE

    p.add_argument("source", type=Path,
                   help="the authors' adapter: a .pt/.pth(.tar) torch file or a .safetensors file")
    p.add_argument("--out", type=Path, required=True, help="checkpoint file to write (.safetensors)")
    p.add_argument("--classes", required=True,
                   help="the class names it was trained on: comma-separated, or a file with one per line")
    p.add_argument("--template", type=template_text, action="append", dest="templates",
                   help=f"prompt template with exactly one '{{}}'; repeat for several (default: {DEFAULT_TEMPLATE!r})")
    p.add_argument("--clip-model", default="ViT-B-16", help="open_clip model name (default: ViT-B-16)")
    p.add_argument("--pretrained", default="openai", help="open_clip pretrained tag (default: openai)")
    p.add_argument("--clip-weights", type=Path, help="local CLIP weights file (used instead of --pretrained)")
    p.add_argument("--logit-scale", type=positive_float,
                   help="CLIP's logit scale (default: the one saved with the adapter, else the CLIP's)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.set_defaults(func=cmd_convert)


def cmd_convert(args: argparse.Namespace) -> int:
    from mmadapter.model.authors_checkpoint import convert_authors_state_dict
    from mmadapter.model.checkpoint import check_output_file, read_metadata
    from mmadapter.runtime.labels import DEFAULT_TEMPLATE
    from mmadapter.runtime.ranking import parse_class_list

    existing_file(args.source, "source")
    existing_file(args.clip_weights, "--clip-weights")
    check_output_file(args.out, args.overwrite)
    path = convert_authors_state_dict(
        args.source, clip_model=args.clip_model, pretrained=args.pretrained, clip_weights=args.clip_weights,
        class_names=parse_class_list(args.classes), templates=args.templates or (DEFAULT_TEMPLATE,),
        logit_scale=args.logit_scale, out=args.out, overwrite=args.overwrite,
    )
    meta = read_metadata(path)
    done = meta["training"]
    prefix = repr(done["source_prefix"]) if done["source_prefix"] else "no prefix"
    print(f"converted the adapter under {prefix} (width {meta['adapter']['embed_dim']}, "
          f"{len(meta['label_set']['class_names'])} classes, logit scale {meta['logit_scale']:.4g} from the "
          f"{done['logit_scale_from']}); ignored {done['ignored_entries']} other entries; checkpoint {path}")
    return EXIT_OK


def add_export_arguments(p: argparse.ArgumentParser) -> None:
    """The export's arguments, shared by ``mmadapter export`` and ``python export.py``. Defaults come
    from the modules that use them (opset, batch profile, providers), defined there once."""
    from mmadapter.export.defaults import (
        DEFAULT_MAX_CLASSES,
        DEFAULT_OPSET,
        DEFAULT_PROFILE,
        DEFAULT_PROVIDERS,
        SUPPORTED_OPSETS,
    )

    p.add_argument("--checkpoint", type=Path, required=True, help="adapter checkpoint (.safetensors)")
    p.add_argument("--out", type=Path, required=True, help="output folder (must be empty unless --overwrite)")
    p.add_argument("--fp16", action="store_true", help="also write fp16 graphs (fp32 LayerNorm/softmax, fp32 I/O)")
    p.add_argument("--int8", action="store_true", help="also write an int8 image classifier for ONNX Runtime on CPU "
                   "(dynamic quantization of the image tower's transformer blocks; validated, see README); a "
                   "calibrated Q/DQ int8 graph is added only when calibration images are there (--calibration, or "
                   "the checkpoint's training images when reachable)")
    p.add_argument("--openvino", action="store_true", help="also write OpenVINO IR files (with --int8: the "
                   "calibrated int8 image classifier; needs mmadapter[openvino])")
    p.add_argument("--bf16", action="store_true", help="with --openvino: also offer bf16, the fp32 IR computed in "
                   "bfloat16 (validated at fp16's thresholds where the CPU has AVX512_BF16 or AMX; recorded as not "
                   "measured elsewhere, where OpenVINO computes f32)")
    p.add_argument("--ort-mobile", action="store_true", help="also write each ONNX Runtime graph in its mobile .ort "
                   "format and the reduced-operator config for a minimal ONNX Runtime build (validated)")
    p.add_argument("--executorch", action="store_true", help="also write ExecuTorch .pte programs lowered to "
                   "XNNPACK (fp32; with --int8 also the int8 image classifier, dynamic int8 activations, held to "
                   "int8's rules on --calibration's held-out real images; validated with ExecuTorch's runtime; "
                   "needs mmadapter[mobile])")
    p.add_argument("--executorch-int8", choices=("dynamic", "static"), default=None,
                   help="with --executorch --int8: the int8 program's activations, dynamic (default: ranges computed "
                   "per inference, fastest on XNNPACK) or static (ranges calibrated on the real calibration images: "
                   "the fully integer program NPU delegates expect)")
    p.add_argument("--calibration", type=Path, default=None, help="folder of real images to calibrate int8 with "
                   "(default: the checkpoint's training images when reachable)")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET,
                   help=f"ONNX opset, {SUPPORTED_OPSETS.start}-{SUPPORTED_OPSETS.stop - 1} (default {DEFAULT_OPSET})")
    p.add_argument("--no-validate", dest="validate", action="store_false", help="skip validation against torch")
    p.add_argument("--tensorrt", action="store_true", help="also build TensorRT engines (needs TensorRT and a GPU)")
    p.add_argument("--min-batch", type=positive_int, default=DEFAULT_PROFILE[0])
    p.add_argument("--opt-batch", type=positive_int, default=DEFAULT_PROFILE[1])
    p.add_argument("--max-batch", type=positive_int, default=DEFAULT_PROFILE[2])
    p.add_argument("--max-classes", type=positive_int, default=DEFAULT_MAX_CLASSES,
                   help="largest class bank for the adapter_head engine")
    p.add_argument("--serving-repo", type=Path, default=None, help="also write a Triton model repository here")
    p.add_argument("--serving-graphs", choices=("onnxruntime", "tensorrt"), default=None,
                   help="the models of --serving-repo that its pipeline model calls: the ONNX Runtime ones "
                   "(default) or the TensorRT engines' (needs --tensorrt)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a previous export in --out (never a folder holding anything else)")
    p.add_argument("--providers", nargs="+", default=list(DEFAULT_PROVIDERS),
                   help=f"ONNX Runtime providers for validation: tensorrt, cuda, cpu (default: "
                        f"{' '.join(DEFAULT_PROVIDERS)})")
    p.add_argument("--web", type=Path, default=None, help="also write a static web page that classifies in the "
                   "browser (onnxruntime-web, the smallest validated graphs) into this folder")
    p.add_argument("--ort-web", type=Path, default=None, help="an unpacked onnxruntime-web npm package for --web "
                   "(default: npm pack into the cache folder)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    from mmadapter.export.pipeline import check_destinations, check_export_arguments, export_checkpoint
    from mmadapter.export.tensorrt import BatchProfile

    # Everything that needs no model, before the checkpoint is loaded: the values, then the folders.
    if args.executorch_int8 is not None and not (args.executorch and args.int8):
        raise UsageError("--executorch-int8 chooses the int8 ExecuTorch program's scheme: add --executorch --int8")
    if args.serving_graphs is not None and args.serving_repo is None:
        raise UsageError("--serving-graphs chooses what the --serving-repo pipeline calls: add --serving-repo")
    args.serving_graphs = args.serving_graphs or "onnxruntime"
    profile = check_export_arguments(opset=args.opset, profile=BatchProfile(args.min_batch, args.opt_batch,
                                     args.max_batch), max_classes=args.max_classes, providers=args.providers,
                                     serving_graphs=args.serving_graphs, tensorrt=args.tensorrt)
    existing_file(args.checkpoint, "--checkpoint")
    check_destinations(args.checkpoint, args.out, args.serving_repo, args.overwrite)
    if args.web is not None:
        from mmadapter.export.web import check_web_destination, ort_web_files

        check_web_destination(args.web, args.out)
        ort_web_files(args.ort_web)
    result = export_checkpoint(
        args.checkpoint, args.out, fp16=args.fp16, int8=args.int8, openvino=args.openvino, bf16=args.bf16,
        ort_mobile=args.ort_mobile, executorch=args.executorch, executorch_int8=args.executorch_int8 or "dynamic",
        calibration=args.calibration, opset=args.opset, validate=args.validate,
        overwrite=args.overwrite, tensorrt=args.tensorrt, profile=profile, max_classes=args.max_classes,
        serving_repo=args.serving_repo, serving_graphs=args.serving_graphs, providers=args.providers,
        progress=not args.quiet,
    )
    v = result.manifest.validation
    status = "validated" if v.run and v.passed else "NOT validated (--no-validate)"
    print(f"wrote {len(result.files)} files to {result.out_dir} ({status})")
    if result.serving_repo:
        print(f"wrote a Triton model repository to {result.serving_repo}")
    if args.web is not None:
        from mmadapter.export.web import write_web

        print(write_web(result.out_dir, args.web, args.ort_web).summary())
    if result.tensorrt_error:
        raise UsageError(f"--tensorrt: {result.tensorrt_error}; the ONNX files were written to {result.out_dir}")
    return EXIT_OK


def build_export_parser(prog: str = "export.py") -> ArgumentParser:
    """``python export.py``: the export subcommand's arguments as a parser of their own."""
    p = ArgumentParser(prog=prog, description="Export an mmadapter checkpoint to validated ONNX graphs "
                       "(and TensorRT engines / a Triton model repository).")
    add_export_arguments(p)
    return p


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="mmadapter", description="Multi-Modal Adapter for CLIP")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=ArgumentParser)

    p = sub.add_parser("train", help="train the adapter on a few-shot dataset and save a checkpoint")
    _add_data_args(p)
    _add_clip_args(p)
    p.add_argument("--out", type=Path, required=True, help="checkpoint file to write (.safetensors)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.add_argument("--base-only", action="store_true", help="train on the base half of the classes only")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="base-to-novel report: zero-shot CLIP, CLIP-Adapter, Multi-Modal Adapter")
    _add_data_args(p)
    _add_clip_args(p)
    p.add_argument("--out", type=Path, help="folder for report.json, report.md, report.png")
    p.add_argument("--onnx", type=Path, help="instead: top-1 of an export's fp32 and int8 graphs on --data (one "
                   "sub-folder per class) and their agreement with fp32")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("predict", help="top-k classes for image files or folders")
    p.add_argument("images", nargs="+", help="image files and/or folders of images")
    p.add_argument("--checkpoint", type=Path, help="adapter checkpoint (.safetensors)")
    p.add_argument("--onnx", type=Path, help="exported model folder (ONNX Runtime; no torch needed)")
    p.add_argument("--top-k", type=positive_int, default=5)
    p.add_argument("--classes", help="comma-separated class names, or a file with one per line (open vocabulary)")
    p.add_argument("--device", type=device_name, default="cpu", help="cpu, cuda or cuda:N (--checkpoint only)")
    p.add_argument("--precision", choices=("fp32", "fp16", "int8", "bf16"), default="fp32",
                   help="which exported graphs --onnx serves (fp16/int8 need export --fp16/--int8; bf16: the fp32 "
                   "IR computed in bfloat16 by OpenVINO, needs export --openvino --bf16 and --engine openvino)")
    p.add_argument("--engine", choices=("onnxruntime", "openvino", "executorch"), default="onnxruntime",
                   help="what runs --onnx's graphs (openvino needs export --openvino and mmadapter[openvino]; "
                   "executorch: the .pte programs of export --executorch, needs mmadapter[mobile])")
    p.add_argument("--openvino-device", default="CPU", help="OpenVINO device: CPU, GPU, NPU, AUTO, GPU.1, ...")
    p.add_argument("--format", choices=("text", "json"), default="text",
                   help="text (default): one line per image for people, names escaped; json: JSON Lines, one "
                   "object per image (path, top: [{label, probability}] or skipped: reason) for programs")
    p.add_argument("--strict", action="store_true",
                   help="an unreadable, corrupt or oversized image is an error (default: skipped and counted)")
    p.add_argument("--verbose", action="store_true",
                   help="--onnx: print what each session really runs: ONNX Runtime's providers or OpenVINO's "
                   "device, and the precision (stderr)")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("convert", help="turn an adapter trained with the authors' code (dqmis/clip-mma) into a "
                       "checkpoint of this project")
    add_convert_arguments(p)

    p = sub.add_parser("demo", help="the whole path offline on a tiny random CLIP and the digits dataset")
    p.add_argument("--out", type=Path, default=Path("demo-output"))
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--web", action="store_true", help="also write OUT/web, a static page that classifies the demo "
                   "images in the browser (serve it with: python -m http.server -d OUT/web)")
    p.add_argument("--ort-web", type=Path, default=None, help="an unpacked onnxruntime-web npm package for --web")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("export", help="export a checkpoint to validated ONNX graphs (TensorRT engines, a Triton "
                       "model repository)", description="Export an mmadapter checkpoint to validated ONNX graphs.")
    add_export_arguments(p)

    from mmadapter.server.cli import add_serve_arguments  # argparse only: nothing of the server loads here

    p = sub.add_parser("serve", help="run NVIDIA Triton Inference Server over an export (image bytes in, labels "
                       "out); needs mmadapter[server]")
    add_serve_arguments(p)
    return parser


