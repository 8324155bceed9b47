"""Which device this process works on, and how much memory it has left."""
from __future__ import annotations

import ctypes
import functools
import gc
import os
from typing import Mapping

import torch

__all__ = ["process_device", "available_memory", "size_text", "require_memory", "release_memory"]


def process_device(device: str | torch.device | None = None) -> torch.device:
    """``device``, or this process's default: its GPU when there is one (under torchrun, the
    one LOCAL_RANK names: one GPU per process), else the CPU."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def available_memory(device: str | torch.device | None = None) -> int | None:
    """Bytes a new allocation can still get on ``device``: free GPU memory, or the CPU's
    MemAvailable (Linux); None where it cannot be told."""
    device = torch.device(device or "cpu")
    if device.type == "cuda":  # (a plan for a GPU made on a machine without one: unknown)
        return int(torch.cuda.mem_get_info(device)[0]) if torch.cuda.is_available() else None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def size_text(nbytes: float) -> str:
    """1.5 GiB, 300 MiB, ... for messages."""
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20)):
        if nbytes >= scale:
            return f"{nbytes / scale:.3g} {unit}"
    return f"{nbytes:.0f} B"


def require_memory(parts: Mapping[str, float], device: str | torch.device | None, what: str, advice: str) -> None:
    """Refuse (ValueError), before anything is allocated, work whose plain lower bound on memory
    (the sum of ``parts``: bytes by name) exceeds what ``device`` has left; a request that cannot
    be served fails at once instead of after minutes of swapping."""
    left = available_memory(device)
    need = sum(parts.values())
    if left is not None and need > left:
        listed = ", ".join(f"{name} {size_text(n)}" for name, n in parts.items())
        raise ValueError(f"{what} needs at least {size_text(need)} ({listed}), and {size_text(left)} is free on "
                         f"{torch.device(device or 'cpu')}: {advice}")


def release_memory(device: str | torch.device | None = None) -> None:
    """Give back what freed models leave behind: objects in reference cycles (the decoder's),
    the CUDA caching allocator's blocks, and on the CPU glibc's freed heap (blocks under its
    mmap threshold, up to 32 MB each, stay resident after a free until trimmed)."""
    gc.collect()
    device = torch.device(device or "cpu")
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif _malloc_trim() is not None:
        _malloc_trim()(0)


@functools.lru_cache(maxsize=1)
def _malloc_trim():
    """glibc's malloc_trim from this process's own symbols (None elsewhere), looked up once, when
    first needed (not at import)."""
    return getattr(ctypes.CDLL(None), "malloc_trim", None)
