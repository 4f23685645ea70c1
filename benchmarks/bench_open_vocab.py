"""Cost of a label-set switch on an export, on CPU, without torch in the serving loop.

One export of a checkpoint with a 1,000-class label set (random CLIP weights, nothing downloaded;
exported with --no-validate: the serving cost is what is measured here), then in one run:

- ``switch``: a new 1,000-class label set (one template), cold: tokenize (``tokenizers``), text encoder,
  mean over templates, class-bank graph; each stage timed, and the total; ``switch_cached``: the same
  label set again from the on-disk bank cache (a new ``ExportedModel``, so nothing is in memory);
- ``classify``: per-image latency at batch 1 and 32 of the folded classifier (the exported label set,
  ``logits`` of the image classifier) against the open-vocabulary path (the image classifier's
  ``clip_image_embedding`` into ``adapter_head`` with the new 1,000-class bank), interleaved rounds.

CSV: benchmarks/results/open_vocab_cpu.csv (machine, versions, commit in every row); plot beside it.
Run: ``python -m benchmarks.bench_open_vocab`` (``--model mmadapter-tiny`` for a quick check).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import (
    RESULTS_DIR,
    print_table,
    pyplot,
    random_weights_export,
    read_csv,
    save_figure,
    summarize,
    write_csv,
)

NUM_CLASSES = 1000
TEMPLATE = "a photo of a {}."


def class_names(prefix: str, n: int) -> list[str]:
    # Varied lengths, like real label sets (1-6 words).
    words = ["red", "striped", "small", "wild", "northern", "giant", "spotted", "common"]
    return [f"{prefix} {' '.join(words[(i + k) % len(words)] for k in range(i % 5))} kind {i}" for i in range(n)]


def make_export(folder: Path, model_name: str) -> Path:
    return random_weights_export(folder, model_name, class_names("exported", NUM_CLASSES), TEMPLATE,
                                 validate=False, progress=False)


def time_switch(export: Path, names: list[str], cache: Path, threads: int) -> list[dict]:
    from mmadapter.runtime.model import ExportedModel

    model = ExportedModel(export, intra_op_threads=threads, bank_cache=cache)
    vocab = model.open_vocabulary
    for graph in ("text_encoder", "class_bank"):  # session creation is a one-off, not part of a switch
        model.session(graph)
    vocab.tokenizer(["warm-up"])  # ftfy and the Rust tokenizer initialise on first use
    prompts = [TEMPLATE.format(n) for n in names]
    stages = {}
    t0 = time.perf_counter()
    ids = vocab.tokenizer(prompts)
    stages["tokenize"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    emb = vocab.run("text_encoder", {"input_ids": ids})["text_embedding"]
    stages["text_encoder"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    emb = emb / np.linalg.norm(emb, axis=-1, keepdims=True)
    vocab.run("class_bank", {"class_embedding": emb.astype(np.float32)})
    stages["class_bank"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    vocab.bank(names, [TEMPLATE])  # the whole switch, as served (and written to the cache)
    stages["total_cold"] = time.perf_counter() - t0
    again = ExportedModel(export, intra_op_threads=threads, bank_cache=cache)
    t0 = time.perf_counter()
    again.open_vocabulary.bank(names, [TEMPLATE])
    stages["total_cached"] = time.perf_counter() - t0
    # A cached switch that still ran the text encoder is recorded as failed on its row, not a crash.
    cached_status = ("failed: the cached switch ran the text encoder"
                     if "text_encoder.ort.onnx" in again.session_providers() else "ok")
    return [{"benchmark": "switch", "stage": k, "num_classes": len(names), "batch": "", "path": "",
             "median_ms": v * 1e3, "per_image_ms": "", "status": cached_status if k == "total_cached" else "ok"}
            for k, v in stages.items()]


def time_classify(export: Path, names: list[str], threads: int, batches: tuple[int, ...],
                  rounds: dict[int, int]) -> list[dict]:
    from mmadapter.runtime.model import ExportedModel
    from mmadapter.runtime.open_vocab import CLIP_IMAGE_EMBEDDING

    model = ExportedModel(export, intra_op_threads=threads, bank_cache=None)
    vocab = model.open_vocabulary
    bank = vocab.bank(names, [TEMPLATE])
    size = model.preprocessing.image_size
    rng = np.random.default_rng(0)
    rows = []
    for b in batches:
        pixels = rng.standard_normal((b, 3, *size), dtype=np.float32)
        fns = {
            "folded": lambda p=pixels, b=b: model.classify_pixels(p, b)["logits"],
            "open_vocabulary": lambda p=pixels, b=b: vocab.logits(model.classify_pixels(p, b)[CLIP_IMAGE_EMBEDDING],
                                                                  bank),
        }
        for fn in fns.values():  # warm-up
            fn()
        times: dict[str, list[float]] = {k: [] for k in fns}
        for _ in range(rounds[b]):  # interleaved, so a shared machine's drifts hit both alike
            for name, fn in fns.items():
                t0 = time.perf_counter()
                fn()
                times[name].append((time.perf_counter() - t0) * 1e3)
        for name, t in times.items():
            s = summarize(t)
            rows.append({"benchmark": "classify", "stage": "", "num_classes": len(names), "batch": b, "path": name,
                         "median_ms": s["median_ms"], "p20_ms": s.get("p20_ms", ""), "p80_ms": s.get("p80_ms", ""),
                         "per_image_ms": s["median_ms"] / b, "status": "ok"})
    return rows


def plot(csv_path: Path) -> Path:
    rows = read_csv(csv_path)
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    switch = [r for r in rows if r["benchmark"] == "switch"]
    seconds = [float(r["median_ms"]) / 1e3 for r in switch]
    left.barh([r["stage"] for r in switch], seconds, color="tab:blue")
    for y, v in enumerate(seconds):
        left.text(v, y, f" {v:.3g} s", va="center", fontsize=8)
    left.set_xscale("log")  # stages span milliseconds (tokenize, bank, cache) to minutes (text encoder)
    left.set_xlim(right=max(seconds) * 20)
    left.set_xlabel("seconds (log scale)")
    left.set_title(f"switch to a {switch[0]['num_classes']}-class label set")
    classify = [r for r in rows if r["benchmark"] == "classify"]
    batches = sorted({int(r["batch"]) for r in classify})
    width = 0.38
    for i, path in enumerate(("folded", "open_vocabulary")):
        vals = [next(float(r["per_image_ms"]) for r in classify if r["path"] == path and int(r["batch"]) == b)
                for b in batches]
        right.bar([x + (i - 0.5) * width for x in range(len(batches))], vals, width, label=path)
    right.set_xticks(range(len(batches)), [f"batch {b}" for b in batches])
    right.set_ylabel("ms per image (median)")
    right.legend()
    right.set_title("per-image latency")
    r0 = rows[0]
    title = (f"{r0.get('model', '')} on {r0['cpu']} ({r0['cpu_threads']} threads), onnxruntime {r0['onnxruntime']}, "
             f"commit {r0['commit']}")
    return save_figure(fig, csv_path.with_suffix(".png"), title)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ViT-B-16", help="open_clip model, random weights (default ViT-B-16)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "open_vocab_cpu.csv")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        export = make_export(Path(tmp), args.model)
        print(f"export ({args.model}, {NUM_CLASSES} classes, --no-validate): {time.perf_counter() - t0:.0f} s",
              file=sys.stderr)
        names = class_names("switched", NUM_CLASSES)
        rows = time_switch(export, names, Path(tmp) / "banks", args.threads)
        rows += time_classify(export, names, args.threads, (1, 32), {1: 15, 32: 3})
    rows = [{"model": args.model, **r} for r in rows]
    print_table(rows, ["benchmark", "stage", "batch", "path", "median_ms", "per_image_ms"])
    path = write_csv(rows, args.out)
    print(path, plot(path))


if __name__ == "__main__":
    main()
