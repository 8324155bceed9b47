"""Where ops allocate the outputs their implementations fill."""
from __future__ import annotations

import torch

__all__ = ["new_empty"]


def new_empty(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Every output an implementation writes in full starts here; tests replace this to poison
    them, so an element a kernel leaves unwritten fails its checks."""
    return torch.empty(shape, dtype=dtype, device=device)
