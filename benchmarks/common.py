"""What every benchmark script shares: timing and a description of the run."""
from __future__ import annotations

import platform
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
    """Print the results table, and write it to ``out`` as well when given."""
    print(text)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)


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
