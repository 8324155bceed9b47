"""What every benchmark script shares: timing and a description of the run."""
from __future__ import annotations

import json
import platform
import shutil
import statistics
import subprocess
import time
from pathlib import Path
from typing import Callable

import torch


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


def report(text: str, out: Path | None) -> None:
    """Print the results, and with ``out`` write them there (markdown) and beside it as JSON
    (``out`` with .json: the run's metadata and every markdown table as a list of rows)."""
    print(text)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        out.with_suffix(".json").write_text(json.dumps({"meta": metadata(), "tables": tables(text)}, indent=1) + "\n")


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
