"""Nearest-codebook lookup: the Triton kernels against three PyTorch ways of doing it.

Methods, all on the same inputs in one process:
  original   the original Jukebox bottleneck: the whole N×K distance matrix, then min
  cdist      torch.cdist + argmin
  reference  jukebox_fast's chunked PyTorch reference (backend "torch")
  triton     the Triton kernel (vq_nearest, backend "triton")
  fused      the Triton kernel with the training outputs (vq_quantise: dequantised rows, commit
             sum, per-code counts and sums), against "reference-fused", its PyTorch reference

Each time is the median of ``--runs`` after a warm-up. TFLOP/s counts the 2·N·K·D of x·cᵀ and is
set against this device's own dense matmul rate in the same dtype, measured in the same run.
Methods that cannot run here (Triton without a GPU, a full matrix over ``--max-gb``) say why.

    python benchmarks/bench_vq.py --out benchmarks/results/vq_<device>.md
    python benchmarks/bench_vq.py --sizes 16384 --dtypes fp32 --runs 3     # a quick look
    python benchmarks/bench_vq.py --smoke                                   # checks the script

On a CPU without bf16 (fp16) instructions those rows are skipped unless ``--dtypes`` names them.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable

import torch

from common import add_smoke, cpu_dtypes, device_name, median_time, record, report, versions
from jukebox_fast import dispatch
from jukebox_fast.ops import costs, vq_nearest, vq_quantise

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
SIZES = (16_384, 330_750, 1_323_000)  # ~1.5 s, 60 s and 240 s of level-0 codes at hop 8
# The kernel methods, the op each is dispatched as, and the reference it would replace there.
KERNELS = {"triton": ("vq_nearest", "reference", costs.vq_nearest), "fused": ("vq_quantise", "reference-fused", costs.vq_quantise)}


def original(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """The original bottleneck's quantise: ‖x‖² − 2x·cᵀ + ‖c‖² as an N×K matrix, then min."""
    k_w = c.t()
    d = (x**2).sum(dim=-1, keepdim=True) - 2 * torch.matmul(x, k_w) + (k_w**2).sum(dim=0, keepdim=True)
    return torch.min(d, dim=-1).indices


def cdist(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    return torch.cdist(x, c).argmin(dim=1)


METHODS: dict[str, Callable[[torch.Tensor, torch.Tensor], object]] = {
    "original": original,
    "cdist": cdist,
    "reference": lambda x, c: vq_nearest(x, c, backend="torch")[0],
    "triton": lambda x, c: vq_nearest(x, c, backend="triton")[0],
    "reference-fused": lambda x, c: vq_quantise(x, c, backend="torch").codes,
    "fused": lambda x, c: vq_quantise(x, c, backend="triton").codes,
}


def make_inputs(n: int, k: int, d: int, dtype: torch.dtype, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(n, d, generator=g).to(device, dtype)  # [N, D]
    c = torch.randn(k, d, generator=g).to(device, dtype)  # [K, D]
    return x, c


def why_not(method: str, x: torch.Tensor, c: torch.Tensor, max_gb: float) -> str | None:
    """Why ``method`` cannot run these inputs here, or None."""
    if method in ("triton", "fused"):
        try:
            dispatch.resolve("vq_nearest", x, c, backend="triton")
        except dispatch.BackendUnavailableError as e:
            return str(e).split("cannot run these inputs: ")[-1]
    if method in ("original", "cdist"):
        gb = x.shape[0] * c.shape[0] * 4 * 2 / 1e9  # the matrix and one temporary of its size
        if gb > max_gb:
            return f"needs ~{gb:.0f} GB for the N×K matrix (over --max-gb {max_gb:g})"
    return None


def matmul_rate(dtype: torch.dtype, device: str, runs: int, m: int | None = None) -> float:
    """This device's dense matmul rate in TFLOP/s for ``dtype`` (square, large enough to saturate)."""
    m = m or (8192 if device.startswith("cuda") else 2048)
    a = torch.randn(m, m, device=device).to(dtype)
    b = torch.randn(m, m, device=device).to(dtype)
    seconds, _ = median_time(lambda: a @ b, runs, device)
    return 2 * m**3 / seconds / 1e12


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES), help="values of N")
    parser.add_argument("--k", type=int, default=2048)
    parser.add_argument("--d", type=int, default=64)
    parser.add_argument("--dtypes", nargs="+", default=None, choices=sorted(DTYPES),
                        help="default fp32 bf16 (bf16 on a CPU only where it has bf16 instructions)")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--runs", type=int, default=None, help="timed runs per cell (default 20 GPU, 3 CPU)")
    parser.add_argument("--max-gb", type=float, default=None,
                        help="largest N×K matrix to build (default: 60%% of GPU memory; 8 GB on CPU)")
    parser.add_argument("--out", type=Path, help="write the table (markdown) here as well")
    add_smoke(parser)
    args = parser.parse_args()
    if args.smoke:
        args.sizes, args.k, args.d, args.runs, args.dtypes = [300], 64, 8, 1, args.dtypes or ["fp32"]
    dtype_names, skipped = cpu_dtypes(args.dtypes or ["fp32", "bf16"], args.device, args.dtypes is not None, DTYPES)
    cuda = args.device.startswith("cuda")
    runs = args.runs or (20 if cuda else 3)
    max_gb = args.max_gb or (0.6 * torch.cuda.get_device_properties(args.device).total_memory / 1e9 if cuda else 8.0)

    lines = [
        "# Nearest-codebook lookup",
        "",
        f"Device: {device_name(args.device)}; {versions()}.",
        f"K = {args.k}, D = {args.d}; median of {runs} runs after a warm-up. Speed-up is over the "
        "original's full-matrix method; 'of matmul' is the share of this device's dense matmul rate "
        "in the same dtype, measured in this run. 'agree' is the share of indices equal to the "
        "reference's (near-ties may differ by rounding).",
        *(f"{note}." for note in skipped),
        "",
    ]
    records = []
    for name in dtype_names:
        dtype = DTYPES[name]
        peak = matmul_rate(dtype, args.device, runs, 128 if args.smoke else None)
        lines += [f"## {name} (dense matmul here: {peak:.1f} TFLOP/s)", "",
                  "| N | method | time (ms) | speed-up vs original | TFLOP/s | of matmul | agree |",
                  "|---|---|---|---|---|---|---|"]
        for n in args.sizes:
            x, c = make_inputs(n, args.k, args.d, dtype, args.device)
            flops = 2 * n * args.k * args.d
            ref_idx = vq_nearest(x, c, backend="torch")[0]
            base, times = None, {}
            for method in args.methods:
                reason = why_not(method, x, c, max_gb)
                if reason:
                    lines.append(f"| {n} | {method} | – | – | – | – | not run: {reason} |")
                    continue
                try:
                    seconds, idx = median_time(lambda: METHODS[method](x, c), runs, args.device)
                except (RuntimeError, NotImplementedError) as e:  # e.g. an op without this dtype
                    lines.append(f"| {n} | {method} | – | – | – | – | not run: {str(e).splitlines()[0]} |")
                    continue
                times[method] = seconds
                if method == "original":
                    base = seconds
                speedup = f"{base / seconds:.2f}x" if base else "–"
                rate = flops / seconds / 1e12
                agree = float((idx == ref_idx).float().mean())
                lines.append(f"| {n} | {method} | {seconds * 1e3:.3f} | {speedup} | {rate:.2f} | "
                             f"{rate / peak:.0%} | {agree:.4%} |")
                print(lines[-1], file=sys.stderr, flush=True)
            for method, (op, baseline, cost) in KERNELS.items():
                if method in times and baseline in times:
                    records.append(record(op, "triton", "torch", dtype, args.d, n, f"N={n}, K={args.k}, D={args.d}",
                                          times[method], times[baseline], cost(n, args.k, args.d, dtype), args.device))
        lines.append("")
    report("\n".join(lines) + "\n", args.out, records)


if __name__ == "__main__":
    main()
