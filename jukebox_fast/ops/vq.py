"""Vector-quantisation ops. ``vq_nearest``: the index of the nearest codebook row for every input row.

x[N, D], codebook[K, D] -> (indices int64 [N], squared distances fp32 [N]).

Distances use the original's expansion ``‖x‖² − 2·x·c + ‖c‖²`` in fp32 whatever the input dtype,
so a distance may come out slightly negative through rounding, exactly as in the original. Ties
go to the lowest index, as ``torch.argmin``; identical codebook rows always count as tied.
"""
from __future__ import annotations

import torch

from .. import dispatch

__all__ = ["vq_nearest", "vq_nearest_reference", "TILE_ELEMENTS"]

# The reference never holds more than this many distances at once (16 MiB of fp32), where the
# original materialises all N×K of them (2.7 GB for 60 s of level-0 codes).
TILE_ELEMENTS = 1 << 22

_FLOATS = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def check_inputs(x: torch.Tensor, codebook: torch.Tensor) -> None:
    """Raise ValueError, naming what was expected and what came, for inputs no backend takes."""
    for name, t in (("x", x), ("codebook", codebook)):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"vq_nearest: {name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 2:
            raise ValueError(f"vq_nearest: {name} must be 2-D [rows, D], got shape {tuple(t.shape)}")
        if t.dtype not in _FLOATS:
            raise ValueError(f"vq_nearest: {name} must be a float tensor, got {t.dtype}")
    if x.shape[1] != codebook.shape[1]:
        raise ValueError(
            f"vq_nearest: x is [N, {x.shape[1]}] but codebook is [K, {codebook.shape[1]}]; "
            "the widths must match"
        )
    if codebook.shape[0] == 0 or codebook.shape[1] == 0:
        raise ValueError(f"vq_nearest: the codebook must be non-empty, got shape {tuple(codebook.shape)}")
    if x.device != codebook.device:
        raise ValueError(f"vq_nearest: x is on {x.device} but codebook is on {codebook.device}")


def new_outputs(n: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Uninitialised (indices int64 [N], distances fp32 [N]); tests replace this to poison them."""
    return (torch.empty(n, dtype=torch.int64, device=device),
            torch.empty(n, dtype=torch.float32, device=device))


def first_duplicates(codebook: torch.Tensor) -> torch.Tensor:
    """For each row, the lowest index of a row equal to it: int64 [K].

    A BLAS may compute two equal columns of x·cᵀ through different code paths (vector body and
    tail), so equal rows can get distances one ulp apart; this map restores the tie rule.
    """
    k = codebook.shape[0]
    _, group = torch.unique(codebook, dim=0, return_inverse=True)  # [K] group of each row, < K
    order = torch.arange(k, device=codebook.device)
    first = torch.full((k,), k, dtype=torch.int64, device=codebook.device)
    return first.scatter_reduce_(0, group, order, reduce="amin")[group]


@torch.no_grad()
def vq_nearest_reference(x: torch.Tensor, codebook: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """PyTorch reference: the oracle for the kernels and the CPU implementation."""
    n, k = x.shape[0], codebook.shape[0]
    c = codebook.float()
    c_sq = (c * c).sum(dim=1)  # [K]
    indices, dists = new_outputs(n, x.device)
    rows = max(1, TILE_ELEMENTS // k)
    for start in range(0, n, rows):
        xs = x[start : start + rows].float()
        d = xs @ c.t()  # [rows, K]
        # Same order of operations as the original: (‖x‖² − 2·x·c) + ‖c‖², in place.
        d.mul_(-2).add_((xs * xs).sum(dim=1, keepdim=True)).add_(c_sq)
        torch.min(d, dim=1, out=(dists[start : start + rows], indices[start : start + rows]))
    return first_duplicates(c)[indices], dists


def vq_nearest(
    x: torch.Tensor, codebook: torch.Tensor, *, backend: str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest codebook row for each row of ``x``.

    Args:
        x: [N, D] float tensor (fp32, fp16, bf16 or fp64). N may be 0.
        codebook: [K, D] float tensor on the same device.
        backend: implementation to use (see :mod:`jukebox_fast.dispatch`); None for the default.

    Returns:
        ``(indices, distances)``: int64 [N] and fp32 [N], the index of the nearest row (lowest
        index on ties) and its squared Euclidean distance. Neither carries a gradient: the
        straight-through estimator lives in the bottleneck, not in this op.
    """
    check_inputs(x, codebook)
    return dispatch.call("vq_nearest", x, codebook, backend=backend)


dispatch.define_op(
    "vq_nearest",
    order=("triton", "torch"),
    doc="x[N, D], codebook[K, D] -> nearest index int64 [N], squared distance fp32 [N]",
)
dispatch.register(
    "vq_nearest", "torch", vq_nearest_reference, note="chunked PyTorch reference, any device"
)
