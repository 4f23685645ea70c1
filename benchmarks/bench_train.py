"""Few-shot training from cached embeddings on CPU: a 16-shot, 100-class Multi-Modal Adapter (and the
CLIP-Adapter baseline for comparison) with the paper's settings (Adam lr 1e-2, weight decay 1e-4,
batch 256), on synthetic unit-norm embeddings of width 512 that stand in for a CLIP's.

Two rows per head: a fixed number of epochs without early stopping (seconds per epoch, comparable
across machines) and a full run with early stopping on a 16-shot validation split (what a user
waits for). CSV: benchmarks/results/train_cpu.csv.

    python -m benchmarks.bench_train [--smoke] [--out CSV]      (from the repository root)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from benchmarks.common import RESULTS_DIR, print_table, write_csv

# Seconds: checks that the script runs and writes its CSV (classes, shots, epochs of both modes).
SMOKE = {"classes": 10, "shots": 2, "epochs": 2}


def synthetic(num_classes: int, shots: int, dim: int, seed: int):
    """Text embeddings and images that are a class prototype, a trace of the class text, and noise."""
    from mmadapter.training.train import EmbeddedSplit

    g = torch.Generator().manual_seed(0)
    text = F.normalize(torch.randn(num_classes, dim, generator=g), dim=-1)
    proto = F.normalize(torch.randn(num_classes, dim, generator=g), dim=-1)
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(num_classes).repeat_interleave(shots)
    noise = F.normalize(torch.randn(labels.numel(), dim, generator=g), dim=-1)
    return text, EmbeddedSplit(F.normalize(0.15 * text[labels] + proto[labels] + 0.5 * noise, dim=-1), labels)


def main(argv: list[str] | None = None) -> int:
    from mmadapter.model.baselines import build_head
    from mmadapter.model.config import TrainConfig
    from mmadapter.training.train import train_head

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--shots", type=int, default=16)
    parser.add_argument("--fixed-epochs", type=int, default=50)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "train_cpu.csv")
    parser.add_argument("--smoke", action="store_true",
                        help=f"seconds-long run that checks the script ({SMOKE['classes']} classes, {SMOKE['shots']} "
                             f"shots, {SMOKE['epochs']} epochs in both modes)")
    args = parser.parse_args(argv)
    early_stopping = TrainConfig()
    if args.smoke:
        args.classes, args.shots, args.fixed_epochs = SMOKE["classes"], SMOKE["shots"], SMOKE["epochs"]
        early_stopping = TrainConfig(max_epochs=SMOKE["epochs"])
    text, train = synthetic(args.classes, args.shots, 512, seed=1)
    _, val = synthetic(args.classes, args.shots, 512, seed=2)
    rows = []
    for kind in ("mma", "clip-adapter"):
        for mode, config in (
            ("fixed_epochs", TrainConfig(max_epochs=args.fixed_epochs, patience=args.fixed_epochs + 1)),
            ("early_stopping", early_stopping),
        ):
            result = train_head(build_head(kind, 512), train, text, config, val, progress=False)
            epochs = len(result.history)
            rows.append({
                "subject": "train", "head": kind, "mode": mode, "num_classes": args.classes, "shots": args.shots,
                "train_examples": len(train), "batch_size": config.batch_size, "epochs": epochs,
                "seconds": result.seconds, "ms_per_epoch": 1e3 * result.seconds / max(epochs, 1),
                "best_epoch": result.best_epoch, "best_val_acc": result.best_val_acc,
            })
            print(f"{kind:12s} {mode:14s} {epochs:4d} epochs {result.seconds:7.2f} s", flush=True)
    write_csv(rows, args.out)
    print()
    print_table(rows, ["head", "mode", "epochs", "seconds", "ms_per_epoch", "best_epoch", "best_val_acc"])
    print(f"CSV: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
