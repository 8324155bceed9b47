"""What each op must move and compute: the one cost model behind every "fraction of the ceiling".

A :class:`Cost` counts the unique bytes an op cannot avoid (each input read once, each output
written once) and the floating-point operations of its products. Set against a device's
measured copy bandwidth and matmul rate it gives the op's floor time, the shortest time any
kernel could take; a measured time over that floor is the fraction of the ceiling reached.

The GPU evidence summary (``benchmarks/gpu_evidence.py``) and the benchmarks that feed it take
their bytes and FLOPs from here; the kernels' static performance table compares what a launch
really loads with these unique bytes. Nothing else counts them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from .patterns import AttentionPattern

__all__ = ["Cost", "vq_nearest", "vq_quantise", "sparse_attention", "visible_pairs", "decode_attention",
           "decode_step", "dilated_resblock"]


@dataclass(frozen=True)
class Cost:
    """Unique bytes moved and floating-point operations of one call."""

    bytes: int
    flops: int

    def floor_s(self, bytes_per_s: float, flops_per_s: float) -> float:
        """The shortest time a kernel could take: bound by memory or by arithmetic."""
        return max(self.bytes / bytes_per_s, self.flops / flops_per_s)

    def bound(self, bytes_per_s: float, flops_per_s: float) -> str:
        """"memory" or "compute": which of the two ceilings sets the floor."""
        return "memory" if self.bytes / bytes_per_s >= self.flops / flops_per_s else "compute"

    def __add__(self, other: "Cost") -> "Cost":
        return Cost(self.bytes + other.bytes, self.flops + other.flops)


def _size(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def vq_nearest(n: int, k: int, d: int, dtype: torch.dtype) -> Cost:
    """x [N, D] and the codebook [K, D] read; index (int64) and distance (fp32) written; x·cᵀ."""
    e = _size(dtype)
    return Cost((n + k) * d * e + n * (8 + 4), 2 * n * k * d)


def vq_quantise(n: int, k: int, d: int, dtype: torch.dtype) -> Cost:
    """vq_nearest, plus the dequantised rows [N, D] written and the per-code statistics (fp32
    sums [K, D], counts [K]) and the commit sum."""
    return vq_nearest(n, k, d, dtype) + Cost(n * d * _size(dtype) + k * (d + 1) * 4 + 4, 3 * n * d)


def visible_pairs(pattern: AttentionPattern, lq: int, lk: int, chunk: int = 1024) -> int:
    """(query, key) pairs the pattern lets through, counted a chunk of queries at a time."""
    total = 0
    k_pos = torch.arange(lk)
    for start in range(0, lq, chunk):
        q_pos = torch.arange(start, min(lq, start + chunk))
        if not pattern.cross:
            q_pos = q_pos + (lk - lq)  # the queries are the last lq positions of the keys' sequence
        total += int(pattern.visible(q_pos, k_pos).sum())
    return total


def sparse_attention(pattern: AttentionPattern, lq: int, lk: int, heads: int, d: int, dtype: torch.dtype,
                     batch: int = 1, mode: str = "fwd", pairs: int | None = None) -> Cost:
    """One attention layer over [batch, heads] of d-wide rows.

    ``fwd``: q, k, v read and o written, plus the fp32 log-sum-exp per query; 4·d FLOPs per visible
    pair (q·kᵀ and p·v). ``bwd``: q, k, v, o, dO and the log-sum-exp read, dQ, dK, dV written;
    10·d per pair (q·kᵀ recomputed, dV, dP, dQ, dK: FlashAttention's count). ``fwd+bwd``: both.
    ``pairs``: the pattern's visible pairs per (sample, head), if already counted."""
    if mode == "fwd+bwd":
        return sparse_attention(pattern, lq, lk, heads, d, dtype, batch, "fwd", pairs) + \
            sparse_attention(pattern, lq, lk, heads, d, dtype, batch, "bwd", pairs)
    if mode not in ("fwd", "bwd"):
        raise ValueError(f"mode must be 'fwd', 'bwd' or 'fwd+bwd', got {mode!r}")
    e, rows = _size(dtype), batch * heads
    pairs = visible_pairs(pattern, lq, lk) if pairs is None else pairs
    if mode == "fwd":
        return Cost(rows * ((2 * lq + 2 * lk) * d * e + lq * 4), rows * pairs * 4 * d)
    return Cost(rows * ((4 * lq + 4 * lk) * d * e + 2 * lq * 4), rows * pairs * 10 * d)


def decode_attention(batch: int, heads: int, d: int, slots: int, dtype: torch.dtype) -> Cost:
    """The newest query of each sample against its cache: q read, the ``slots`` keys and values it
    sees read, the output row written; 4·d FLOPs per slot and head."""
    return Cost(batch * heads * d * _size(dtype) * (2 * slots + 2), batch * heads * slots * 4 * d)


def decode_step(weights: Sequence[torch.Tensor], cache_reads: Sequence[tuple[int, int, int]], batch: int,
                cache_dtype: torch.dtype, width: int) -> Cost:
    """One token through a stack of layers for ``batch`` samples.

    ``weights``: every tensor the step reads once (projections as stored, LayerNorms, biases);
    ``cache_reads``: per layer (heads, head width, visible slots at this position). Bytes: the
    weights, the key and value slots each layer sees (and the one slot it writes), the rows in
    and out. FLOPs: 2 per weight element of a matrix per sample, 4·d per visible slot and head."""
    e = _size(cache_dtype)
    matrices = sum(w.numel() for w in weights if w.dim() >= 2)
    nbytes = sum(w.numel() * w.element_size() for w in weights)
    flops = 2 * matrices * batch
    for heads, d, slots in cache_reads:
        nbytes += batch * heads * d * e * 2 * (slots + 1)
        flops += batch * heads * slots * 4 * d
    return Cost(nbytes + 2 * batch * width * e, flops)


def dilated_resblock(n: int, channels: int, hidden: int, length: int, dtype: torch.dtype) -> Cost:
    """x [N, C, L] read once and the output written once, plus the two convolutions' weights;
    2 FLOPs per multiply-add of the k=3 and the 1×1 convolution."""
    e = _size(dtype)
    weights = hidden * channels * 3 + hidden + channels * hidden + channels
    return Cost(2 * n * channels * length * e + weights * e, 2 * n * length * (hidden * channels * 3 + channels * hidden))
