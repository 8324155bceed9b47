"""Launch settings every kernel module shares."""
from __future__ import annotations

import os

import torch

__all__ = ["upcast_dot", "dot_precision"]


def upcast_dot(dtype: torch.dtype) -> bool:
    """Whether ``tl.dot`` operands of this dtype must go in as fp32.

    Triton's interpreter multiplies bf16 tiles as their raw 16-bit integers (it stores bf16 as
    uint16 and hands both to numpy.matmul), so there they go in as fp32. The products of bf16
    values are exact in fp32 either way; only the order of the fp32 sums may differ.
    """
    return dtype == torch.bfloat16 and os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def dot_precision(dtype: torch.dtype) -> str:
    """fp32 inputs follow PyTorch's matmul setting, so a kernel agrees with torch's own matmuls."""
    if dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32:
        return "ieee"
    return "tf32"
