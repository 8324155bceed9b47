"""What every benchmark script shares: timing and a description of the run."""
from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import subprocess
import time
from pathlib import Path
from typing import Callable

import torch


SMOKE_HELP = ("tiny sizes, one run, fp32: checks that the script runs and writes its table and JSON, in "
              "seconds on any CPU (what the tests run); the numbers mean nothing")


def add_smoke(parser: argparse.ArgumentParser) -> None:
    """The ``--smoke`` switch every benchmark script has."""
    parser.add_argument("--smoke", action="store_true", help=SMOKE_HELP)


def cpu_dtypes(names: list[str], device: str | torch.device, asked: bool,
               dtypes: dict[str, torch.dtype]) -> tuple[list[str], list[str]]:
    """The dtype names to run on ``device`` and a note per name skipped.

    On a CPU without native bf16 (or fp16) arithmetic, PyTorch and oneDNN emulate it, and a
    released-size 16-bit row can take half an hour; such rows are skipped, saying so, unless the
    user named the dtypes (``asked``)."""
    from jukebox_fast.cpu_features import no_native_16bit_reason

    if asked or str(device).startswith("cuda"):
        return names, []
    kept, notes = [], []
    for name in names:
        why = no_native_16bit_reason(dtypes[name])
        if why:
            notes.append(f"{name} rows skipped: {why} (pass --dtypes {name} to run them anyway)")
        else:
            kept.append(name)
    return kept, notes


def sync(device: str | torch.device) -> None:
    """Wait for queued GPU work, so a timer measures it."""
    if str(device).startswith("cuda"):
        torch.cuda.synchronize(device)


def median_time(fn: Callable[[], object], runs: int, device: str | torch.device = "cpu") -> tuple[float, object]:
    """Median seconds of ``runs`` calls after one warm-up (compilation, caches, allocator), and
    the last call's result."""
    out = fn()
    sync(device)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        out = fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def git_commit() -> str:
    """The commit the numbers belong to, marked when the working tree differs from it."""
    here = Path(__file__).parent
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                check=True, cwd=here).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, check=True, cwd=here).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + (" with uncommitted changes" if dirty else "")


def device_name(device: str | torch.device) -> str:
    if str(device).startswith("cuda"):
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def record(op: str, impl: str, baseline: str, dtype: torch.dtype | str, width: int, batch: int, shape: str,
           seconds: float, baseline_seconds: float, cost, device: str | torch.device) -> dict:
    """One kernel-against-baseline measurement, as the GPU evidence summary reads it: ``op`` and
    ``impl`` as the dispatch names them (``baseline`` the implementation it would replace), the
    call's dtype, width and batch as :mod:`jukebox_fast.measured` rules read them, a label of the
    shape, both times from this process, and the op's unique bytes and FLOPs
    (:mod:`jukebox_fast.ops.costs`)."""
    name = str(dtype).removeprefix("torch.")
    name = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}.get(name, name)
    return {"op": op, "impl": impl, "baseline": baseline, "dtype": name, "width": int(width), "batch": int(batch),
            "shape": shape, "seconds": seconds, "baseline_seconds": baseline_seconds, "bytes": int(cost.bytes),
            "flops": int(cost.flops), "device": "cuda" if str(device).startswith("cuda") else "cpu"}


def report(text: str, out: Path | None, records: list[dict] | None = None, **extra) -> None:
    """Print the results, and with ``out`` write them there (markdown) and beside it as JSON
    (``out`` with .json: the run's metadata, every markdown table as a list of rows, the
    kernel-against-baseline ``records`` and any ``extra`` keys)."""
    print(text)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        data = {"meta": metadata(), "tables": tables(text), "records": records or [], **extra}
        out.with_suffix(".json").write_text(json.dumps(data, indent=1) + "\n")


def tables(text: str) -> list[list[dict[str, str]]]:
    """The markdown tables in ``text``, each as rows keyed by the header."""
    found, header, rows = [], None, []
    for line in text.splitlines() + [""]:
        cells = [c.strip() for c in line.strip().strip("|").split("|")] if line.lstrip().startswith("|") else None
        if cells is None:
            if header and rows:
                found.append(rows)
            header, rows = None, []
        elif header is None:
            header = cells
        elif not all(set(c) <= set("-: ") for c in cells):
            rows.append(dict(zip(header, cells)))
    return found


def metadata() -> dict[str, str]:
    """What the numbers belong to: device, driver, library versions, commit."""
    import jukebox_fast

    meta = {"device": device_name("cuda" if torch.cuda.is_available() else "cpu"), "torch": torch.__version__,
            "cuda": torch.version.cuda or "", "jukebox_fast": jukebox_fast.__version__, "commit": git_commit(),
            "driver": ""}
    try:
        import triton

        meta["triton"] = triton.__version__
    except ImportError:
        meta["triton"] = "not installed"
    if torch.cuda.is_available() and shutil.which("nvidia-smi"):
        done = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                              capture_output=True, text=True)
        meta["driver"] = done.stdout.strip().splitlines()[0] if done.returncode == 0 and done.stdout.strip() else ""
    return meta


def versions() -> str:
    """Library versions and the commit, for the heading of a results file."""
    import jukebox_fast

    parts = [f"torch {torch.__version__}", f"jukebox_fast {jukebox_fast.__version__}"]
    try:
        import triton

        parts.append(f"triton {triton.__version__}")
    except ImportError:
        parts.append("triton not installed")
    if torch.version.cuda:
        parts.append(f"CUDA {torch.version.cuda}")
    return ", ".join(parts) + f", commit {git_commit()}"
