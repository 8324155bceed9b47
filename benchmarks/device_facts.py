"""The device and its two measured ceilings: copy bandwidth and the bf16 matmul rate.

Every GPU number this project reports is a fraction of one of these, measured in the same run:
a device-to-device copy of a buffer several times the L2 (bytes read plus bytes written over
the median time), and an 8192³ bf16 matrix product on random data (2·n³ over the median time).

    python benchmarks/device_facts.py --out benchmarks/results/facts_h200.md
    python benchmarks/device_facts.py --smoke        # tiny sizes, on any machine (also --dry-run)
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
from pathlib import Path

import torch

from common import SMOKE_HELP, device_name, median_time, report, versions


def nvidia_smi() -> dict[str, str]:
    """The driver's view of GPU 0 (empty without nvidia-smi)."""
    if not shutil.which("nvidia-smi"):
        return {}
    fields = ["name", "driver_version", "memory.total", "clocks.max.sm", "clocks.max.memory", "power.limit"]
    done = subprocess.run(["nvidia-smi", f"--query-gpu={','.join(fields)}", "--format=csv,noheader"],
                          capture_output=True, text=True)
    if done.returncode:
        return {}
    return dict(zip(fields, (v.strip() for v in done.stdout.splitlines()[0].split(","))))


def copy_gbs(device: str, nbytes: int, runs: int) -> float:
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    seconds, _ = median_time(lambda: dst.copy_(src), runs, device)
    return 2 * nbytes / seconds / 1e9  # read + write


def matmul_tflops(device: str, n: int, dtype: torch.dtype, runs: int) -> float:
    a, b = (torch.randn(n, n, device=device).to(dtype) for _ in range(2))  # random data: zeros run faster
    seconds, _ = median_time(lambda: a @ b, runs, device)
    return 2 * n**3 / seconds / 1e12


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--smoke", "--dry-run", dest="dry_run", action="store_true", help=SMOKE_HELP)
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    dev = args.device
    # Several times the L2 and a product that fills the chip on a GPU; a CPU gets sizes it measures in seconds.
    size, n, runs = (1 << 22, 256, 2) if args.dry_run else (4 << 30, 8192, 10) if dev == "cuda" else (1 << 28, 2048, 3)
    smi = nvidia_smi() if dev == "cuda" else {}
    facts = {"device": device_name(dev), **{f"nvidia-smi {k}": v for k, v in smi.items()}}
    if dev == "cuda":
        props = torch.cuda.get_device_properties(dev)
        facts.update({"multiprocessors": props.multi_processor_count, "memory GiB": round(props.total_memory / 2**30, 1),
                      "compute capability": f"{props.major}.{props.minor}",
                      "L2 MiB": round(getattr(props, "L2_cache_size", 0) / 2**20, 1)})
    ceilings = {"bytes_per_s": copy_gbs(dev, size, runs) * 1e9, "flops_per_s": {}}
    facts["copy GB/s (read + write)"] = round(ceilings["bytes_per_s"] / 1e9)
    # The matmul rate per dtype: the compute ceiling of a kernel in that dtype (fp32 without TF32).
    for name, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16), ("fp32", torch.float32)):
        if dev != "cuda" and dtype != torch.float32:
            continue  # a CPU's 16-bit rate is not a ceiling any kernel here aims at
        torch.backends.cuda.matmul.allow_tf32 = False
        rate = matmul_tflops(dev, n, dtype, runs)
        ceilings["flops_per_s"][name] = rate * 1e12
        facts[f"{str(dtype).removeprefix('torch.')} matmul TFLOP/s ({n}³)"] = float(f"{rate:.3g}")
    lines = ["# Device facts and measured ceilings", "", f"{versions()}.", "", "| fact | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in facts.items()]
    report("\n".join(lines) + "\n", args.out, ceilings=ceilings)


if __name__ == "__main__":
    main()
