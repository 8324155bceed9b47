"""CPU threads from the cores actually free.

OpenMP threads spin while they wait for each other; on cores that other processes keep busy, a
waiting thread spins through the time slice its partner needs. Measured
(``benchmarks/results/threads_cpu.md``, 2 cores, two busy processes): a tiny VQ-VAE training
step took 3.3x its quiet time with two threads (8.1x in an earlier run), 1.9x with one (the fair
share), while ``OMP_WAIT_POLICY=PASSIVE`` cost the quiet case 1.3x and did not help the busy
one. So the command line takes as many threads as cores are idle when it starts (2 quiet, 1
busy in that run: 0.9x and 2.1x).
"""
from __future__ import annotations

import os
import time

__all__ = ["idle_cores", "configure_threads"]


def _cpu_times() -> tuple[float, float] | None:
    try:
        with open("/proc/stat") as f:
            fields = [float(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)  # idle + iowait
    return idle, sum(fields)


def idle_cores(seconds: float = 0.2) -> float | None:
    """How many of this machine's cores were idle over the next ``seconds`` (None where
    /proc/stat is not there)."""
    first = _cpu_times()
    if first is None:
        return None
    time.sleep(seconds)
    second = _cpu_times()
    total = second[1] - first[1]
    if total <= 0:
        return None
    return (os.cpu_count() or 1) * (second[0] - first[0]) / total


def configure_threads() -> int | None:
    """Set torch's intra-op threads to the idle cores (at least one, at most the cores this
    process may use), unless the user chose: ``JUKEBOX_FAST_THREADS``, ``OMP_NUM_THREADS``.
    Returns the number set, or None when it left torch's choice alone."""
    import torch

    chosen = os.environ.get("JUKEBOX_FAST_THREADS")
    if chosen is None and os.environ.get("OMP_NUM_THREADS"):
        return None
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if chosen is not None:
        n = int(chosen)
    else:
        idle = idle_cores()
        if idle is None:
            return None
        n = int(idle + 0.5)
    n = max(1, min(usable, n))
    torch.set_num_threads(n)
    return n
