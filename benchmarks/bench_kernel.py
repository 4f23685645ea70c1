"""The adapter head's providers side by side: reference, torch-fast, torch-compile, sdpa, triton.

Each provider maps (image embeddings [B, C], the cached class bank: text embeddings [N, C] and
keys/values [N, D]) to logits [B, N] (plus v' and s); ``reference`` is the paper's masked attention
(``ReferenceMultiModalAdapter``), which recomputes everything from the texts and costs O(B N^2).
Times are medians with p20/p80 (CUDA events on a GPU). Achieved bandwidth counts the bytes a fused
head must move once: keys, values, text embeddings, weights and images read, logits, v' and s
written; it is compared with the copy bandwidth of the same device, measured in the same run (the
practical roofline).

    python -m benchmarks.bench_kernel [--quick | --smoke] [--dtype float16] [--out CSV]

from the repository root. On a machine without CUDA only the CPU providers run; the rows of the others
say why they were skipped. CSV: benchmarks/results/kernel_<device>.csv; plot: ``python -m
benchmarks.plot_kernel CSV``. Needs torch (and Triton for the Triton row) only: no open_clip.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from benchmarks.common import RESULTS_DIR, copy_bandwidth_gbps, print_table, time_cpu, time_cuda, write_csv
from mmadapter.model import functional
from mmadapter.model.config import AdapterConfig
from mmadapter.reference import ReferenceMultiModalAdapter

BATCHES = (1, 8, 64, 256, 1024)
CLASS_COUNTS = (10, 100, 1000, 10000, 21843)
QUICK_BATCHES = (1, 8, 64)
QUICK_CLASS_COUNTS = (10, 100, 1000)
# Seconds: checks that the script runs and writes its CSV, measures nothing worth keeping.
SMOKE_BATCHES = (1, 4)
SMOKE_CLASS_COUNTS = (10, 33)
PROVIDERS = ("reference", "torch-fast", "torch-compile", "sdpa", "triton")
# The reference materialises several [B * heads, N+1, N+1] tensors (mask, scores, weights).
REFERENCE_BUDGET_BYTES = {"cpu": 2 << 30, "cuda": 24 << 30}


def sdpa_head(image_emb, text_emb, keys, values, p, num_heads, blend, logit_scale=100.0):
    """The fast path with its attention done by torch's scaled_dot_product_attention (one query)."""
    wq, _, wv, bq, _, bv = functional._split_in_proj(p)
    v = F.normalize(image_emb, dim=-1)
    d = F.linear(v, p.down_weight, p.down_bias)
    b, n, hd = d.shape[0], keys.shape[0], d.shape[1] // num_heads
    q = F.linear(d, wq, bq).view(b, num_heads, 1, hd)
    k = keys.view(1, n, num_heads, hd).transpose(1, 2).expand(b, -1, -1, -1)
    val = values.view(1, n, num_heads, hd).transpose(1, 2).expand(b, -1, -1, -1)
    attended = F.scaled_dot_product_attention(q, k, val).reshape(b, -1)
    a_img = F.linear(F.linear(attended, p.out_proj_weight, p.out_proj_bias), p.up_weight, p.up_bias)
    v_adapted = F.normalize((1 - blend) * v + blend * F.normalize(a_img, dim=-1), dim=-1)
    shift = F.linear(F.linear(F.linear(d, wv, bv), p.out_proj_weight, p.out_proj_bias), p.up_weight, p.up_bias)
    shift = F.normalize(shift, dim=-1)
    return functional.adapted_logits(v_adapted, shift, text_emb, blend, logit_scale), v_adapted, shift


def head_bytes(b: int, n: int, c: int, d: int, elem: int) -> int:
    weights = c * d + d + 3 * d * d + 3 * d + d * d + d + c * d + c
    return elem * (2 * n * d + n * c + b * c + weights + b * n + 2 * b * c)


def skip_reason(provider: str, device: str, b: int, n: int, heads: int, elem: int) -> str | None:
    if provider == "triton":
        if device != "cuda":
            return "no CUDA GPU: Triton runs only in its CPU interpreter here (a correctness tool, not timed)"
        try:
            import triton  # noqa: F401
        except ImportError:
            return "triton not installed"
    if provider == "reference":
        need = 3 * b * heads * (n + 1) ** 2 * elem
        budget = REFERENCE_BUDGET_BYTES[device]
        if need > budget:
            return f"O(B*N^2) reference needs ~{need / 2**30:.0f} GiB > {budget / 2**30:.0f} GiB budget"
    return None


def build(width: int, device: str, dtype: torch.dtype):
    torch.manual_seed(0)
    cfg = AdapterConfig(embed_dim=width)
    ref = ReferenceMultiModalAdapter(cfg)
    with torch.no_grad():  # trained-looking weights, not the initialisation
        for prm in ref.parameters():
            prm.copy_(torch.randn_like(prm) * 0.1)
    ref = ref.to(device=device, dtype=dtype).eval()
    p = functional.AdapterParams(
        ref.down.weight, ref.down.bias, ref.attn.in_proj_weight, ref.attn.in_proj_bias,
        ref.attn.out_proj.weight, ref.attn.out_proj.bias, ref.up.weight, ref.up.bias,
    )
    return cfg, ref, p


def grid(args: argparse.Namespace) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(batch sizes, class counts) of this run."""
    if args.smoke:
        return SMOKE_BATCHES, SMOKE_CLASS_COUNTS
    if args.quick:
        return QUICK_BATCHES, QUICK_CLASS_COUNTS
    return BATCHES, CLASS_COUNTS


def run(args: argparse.Namespace) -> list[dict]:
    device = "cuda" if torch.cuda.is_available() and not args.cpu else "cpu"
    dtype = getattr(torch, args.dtype)
    elem = torch.finfo(dtype).bits // 8
    cfg, ref, p = build(args.width, device, dtype)
    heads, blend = cfg.num_heads, cfg.blend
    copy_bytes = (16 << 20) if args.smoke else (1 << 30) if device == "cuda" else (256 << 20)
    ceiling = copy_bandwidth_gbps(device, copy_bytes)
    print(f"device {device} ({torch.cuda.get_device_name(0) if device == 'cuda' else 'CPU'}), {args.dtype}, "
          f"C={args.width}, copy ceiling {ceiling:.0f} GB/s", flush=True)
    timer = (lambda fn: time_cuda(fn, warmup=5, repeats=args.repeats)) if device == "cuda" else (
        lambda fn: time_cpu(fn, warmup=1, repeats=max(3, args.repeats // 5)))
    compiled = None
    compile_error = None
    if "torch-compile" in args.providers:
        try:
            compiled = torch.compile(functional.adapter_head, dynamic=True)
        except Exception as exc:  # noqa: BLE001 - recorded as the skip reason
            compile_error = f"torch.compile unavailable: {type(exc).__name__}"
    heads_fns = {"torch-fast": functional.adapter_head, "sdpa": sdpa_head}
    if "triton" in args.providers and device == "cuda":
        from mmadapter.kernels import triton_adapter_head

        heads_fns["triton"] = triton_adapter_head
    rows = []
    started = time.monotonic()
    batches, counts = grid(args)
    for n in counts:
        text = F.normalize(torch.randn(n, args.width, device=device), dim=-1).to(dtype)
        with torch.no_grad():
            keys, values = functional.class_keys_values(text, p)
        for b in batches:
            image = torch.randn(b, args.width, device=device).to(dtype)
            nbytes = head_bytes(b, n, args.width, cfg.bottleneck_dim, elem)
            with torch.no_grad():
                baseline = functional.adapter_head(image, text, keys, values, p, heads, blend)[0].float()
            for provider in args.providers:
                row = {"subject": "adapter_head", "provider": provider, "device": device, "dtype": args.dtype,
                       "embed_dim": args.width, "batch": b, "num_classes": n, "bytes": nbytes,
                       "copy_ceiling_GBps": round(ceiling, 1)}
                reason = skip_reason(provider, device, b, n, heads, elem)
                if reason is None and args.time_budget_s and time.monotonic() - started > args.time_budget_s:
                    reason = f"run's time budget of {args.time_budget_s:.0f} s spent"
                if provider == "torch-compile" and compile_error:
                    reason = compile_error
                if reason is None:
                    if provider == "reference":
                        fn = lambda: ref(image, text)[0]  # noqa: B023 - used within this iteration
                    else:
                        head = compiled if provider == "torch-compile" else heads_fns[provider]
                        fn = lambda head=head: head(image, text, keys, values, p, heads, blend)[0]  # noqa: B023
                    try:
                        with torch.no_grad():
                            diff = (fn().float() - baseline).abs().max().item()
                            stats = timer(fn)
                    except Exception as exc:  # noqa: BLE001 - one failing provider must not lose the run
                        reason = f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
                        if provider == "torch-compile":
                            compile_error = reason
                if reason is not None:
                    row["status"] = f"skipped: {reason}"
                    print(f"N={n:6d} B={b:5d} {provider:13s} {row['status']}", flush=True)
                else:
                    gbps = nbytes / (stats["median_ms"] / 1e3) / 1e9
                    row.update(status="ok", **stats, achieved_GBps=gbps, roofline_frac=gbps / ceiling,
                               max_abs_logit_diff_vs_torch_fast=diff)
                    print(f"N={n:6d} B={b:5d} {provider:13s} {stats['median_ms']:9.4f} ms "
                          f"{gbps:9.1f} GB/s ({100 * gbps / ceiling:5.1f}% of copy)  diff {diff:.2e}", flush=True)
                rows.append(row)
    return rows


def summary(rows: list[dict]) -> list[dict]:
    """One line per shape: each provider's median time and the fastest provider."""
    out = []
    shapes = sorted({(r["num_classes"], r["batch"]) for r in rows})
    for n, b in shapes:
        ok = {r["provider"]: r["median_ms"] for r in rows
              if r["num_classes"] == n and r["batch"] == b and r["status"] == "ok"}
        line = {"N": n, "batch": b, **{f"{k}_ms": v for k, v in ok.items()}}
        line["fastest"] = min(ok, key=ok.get) if ok else "-"
        out.append(line)
    return out


def default_out(device: str, dtype: str) -> Path:
    name = "cpu" if device == "cpu" else re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name(0).lower()).strip("-")
    return RESULTS_DIR / f"kernel_{name}{'' if dtype == 'float32' else '_' + dtype}.csv"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help=f"small grid: batch {QUICK_BATCHES}, N {QUICK_CLASS_COUNTS}")
    size.add_argument("--smoke", action="store_true",
                      help=f"seconds-long run that checks the script (batch {SMOKE_BATCHES}, N {SMOKE_CLASS_COUNTS})")
    parser.add_argument("--dtype", default="float32", choices=("float32", "float16", "bfloat16"))
    parser.add_argument("--width", type=int, default=512, help="CLIP embedding width C")
    parser.add_argument("--providers", default=",".join(PROVIDERS), type=lambda s: tuple(s.split(",")))
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--time-budget-s", type=float, default=0.0,
                        help="skip (and say so) the measurements left once this many seconds have passed")
    parser.add_argument("--cpu", action="store_true", help="benchmark the CPU even when a GPU is present")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--no-plot", action="store_true")
    args = parser.parse_args(argv)
    unknown = set(args.providers) - set(PROVIDERS)
    if unknown:
        parser.error(f"unknown providers {sorted(unknown)}; choose from {PROVIDERS}")
    rows = run(args)
    device = rows[0]["device"]
    out = args.out or default_out(device, args.dtype)
    write_csv(rows, out)
    print()
    table = summary(rows)
    print_table(table, ["N", "batch", *[f"{p}_ms" for p in args.providers], "fastest"])
    print(f"CSV: {out}")
    if not args.no_plot:
        try:
            from benchmarks.plot_kernel import plot_kernel

            print(f"plot: {plot_kernel(out)}")
        except ImportError as exc:
            print(f"no plot ({exc}); draw it later with python -m benchmarks.plot_kernel {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
