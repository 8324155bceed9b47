"""Which device this process works on."""
from __future__ import annotations

import os

import torch

__all__ = ["process_device"]


def process_device(device: str | torch.device | None = None) -> torch.device:
    """``device``, or this process's default: its GPU when there is one (under torchrun, the
    one LOCAL_RANK names: one GPU per process), else the CPU."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device
