"""Nearest-codebook search for the VQ bottleneck, with the training outputs fused in.

``search`` tiles x[N, D] into blocks of BLOCK_N rows. Each program reads its x tile once and keeps
it on chip (as chunks of BLOCK_D columns for rows wider than 64, an unrolled tuple, so that the
codebook loop stays the innermost loop and its tiles stream), walks the codebook in tiles of
BLOCK_K rows, computes x·cᵀ on the tensor cores (fp32 accumulation; fp32 inputs as three TF32
products, see ``common``) and keeps a running min and argmin per row: the N×K distance matrix
never reaches memory. Any D from 1 to 256.

The training outputs (dequantised rows, commit-error sum, per-code counts and sums) come out of
the same pass, in the epilogue. A second pass would have to read x again (N·D elements, as much
traffic as the whole search reads), while in the epilogue the x tile is still in registers and
the only new traffic is the gather of BLOCK_N codebook rows, which sit in L2. The per-code sums
use atomics there; the deterministic alternative (``segment_sums``) needs all rows of a code
together, so it is a second pass over rows sorted by code.

Launchers fill outputs the caller allocated; shapes and dtypes are checked by the op
(``jukebox_fast.ops.vq``), not here.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .common import aligned, alignment, dot, dot_precision, launch, upcast_dot

__all__ = ["search", "search_config", "segment_sums", "segment_sums_config", "errors_size", "MAX_WIDTH"]

MAX_WIDTH = 256  # the widest row the tiles were checked for (the op refuses wider ones)


@triton.jit
def _search_kernel(
    x_ptr, c_ptr, c_sq_ptr, idx_ptr, dist_ptr,
    q_ptr, err_ptr, counts_ptr, sums_ptr,
    N, K, D, stride_x, stride_c, stride_q,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr, D_CHUNKS: tl.constexpr,
    PRECISION: tl.constexpr, QUANTISE: tl.constexpr, ATOMIC_STATS: tl.constexpr,
    UPCAST_DOT: tl.constexpr, ALIGN: tl.constexpr,
):
    pid = tl.program_id(0)
    # Widths and strides the launcher found divisible by ALIGN elements: D = 100 or 140 in 16 bits
    # loads 8 bytes at a time, which an asynchronous copy needs (2-byte loads stay synchronous).
    D = aligned(D, ALIGN)
    stride_x, stride_c, stride_q = aligned(stride_x, ALIGN), aligned(stride_c, ALIGN), aligned(stride_q, ALIGN)
    rows = pid * BLOCK_N + tl.arange(0, BLOCK_N)  # [BLOCK_N]
    row_ok = rows < N
    rows64 = rows.to(tl.int64)  # N·D may pass 2³¹
    x_rows = x_ptr + rows64[:, None] * stride_x  # [BLOCK_N, 1]
    xs = ()  # the x tile, read once: D_CHUNKS chunks [BLOCK_N, BLOCK_D], on chip for the search and the epilogue
    x_sq = tl.zeros([BLOCK_N], tl.float32)
    for ci in tl.static_range(D_CHUNKS):  # ‖x‖² over the width, a chunk at a time
        cols = ci * BLOCK_D + tl.arange(0, BLOCK_D)
        xs += (tl.load(x_rows + cols[None, :], mask=row_ok[:, None] & (cols < D)[None, :], other=0.0),)
        xf = xs[ci].to(tl.float32)
        x_sq += tl.sum(xf * xf, axis=1)
    # A row whose ‖x‖² is NaN or inf searches as zeros and reports (index 0, NaN) at the end, as
    # the reference does: non-finite values never reach the min/argmin, whose NaN rules differ
    # between the GPU and the interpreter.
    x_bad = (x_sq != x_sq) | (x_sq == float("inf"))
    x_sq = tl.where(x_bad, 0.0, x_sq)
    xq = ()  # what the search multiplies: a row that is not finite as zeros
    for ci in tl.static_range(D_CHUNKS):
        xq += (tl.where(x_bad[:, None], 0.0, xs[ci]).to(x_ptr.dtype.element_ty),)

    best = tl.full([BLOCK_N], float("inf"), tl.float32)
    best_idx = tl.zeros([BLOCK_N], tl.int32)
    for k0 in range(0, K, BLOCK_K):  # the innermost loop: Triton streams the codebook tiles num_stages deep
        codes = k0 + tl.arange(0, BLOCK_K)  # [BLOCK_K]
        code_ok = codes < K
        c_rows = c_ptr + codes.to(tl.int64)[:, None] * stride_c  # [BLOCK_K, 1]
        xc = tl.zeros([BLOCK_N, BLOCK_K], tl.float32)
        for ci in tl.static_range(D_CHUNKS):  # unrolled: x·cᵀ as a sum over width chunks
            cols = ci * BLOCK_D + tl.arange(0, BLOCK_D)
            c = tl.load(c_rows + cols[None, :], mask=code_ok[:, None] & (cols < D)[None, :], other=0.0)  # [BLOCK_K, BLOCK_D]
            xc = dot(xq[ci], tl.trans(c), xc, PRECISION, UPCAST_DOT)  # [BLOCK_N, BLOCK_K]
        # Padding codes and rows the caller excluded (later duplicates) carry an infinite norm.
        c_sq = tl.load(c_sq_ptr + codes, mask=code_ok, other=float("inf"))
        # (‖x‖² − 2·x·c) + ‖c‖²: the reference's order of operations, so equal dot products give
        # bit-equal distances.
        d = (x_sq[:, None] - 2.0 * xc) + c_sq[None, :]
        tile_best = tl.min(d, axis=1)
        tile_idx = tl.argmin(d, axis=1, tie_break_left=True) + k0
        # Strictly smaller only: an equal distance in a later tile keeps the lower index.
        better = tile_best < best
        best = tl.where(better, tile_best, best)
        best_idx = tl.where(better, tile_idx, best_idx)

    best = tl.where(x_bad, float("nan"), best)
    best_idx = tl.where(x_bad, 0, best_idx)
    tl.store(idx_ptr + rows, best_idx.to(tl.int64), mask=row_ok)
    tl.store(dist_ptr + rows, best, mask=row_ok)

    if QUANTISE:
        best64 = best_idx.to(tl.int64)
        err = tl.zeros([BLOCK_N], tl.float32)
        for ci in tl.static_range(D_CHUNKS):
            cols = ci * BLOCK_D + tl.arange(0, BLOCK_D)
            ok = row_ok[:, None] & (cols < D)[None, :]
            # x as loaded (NaN reaches the commit sum), and its code's row, gathered from L2
            xf = xs[ci].to(tl.float32)
            q = tl.load(c_ptr + best64[:, None] * stride_c + cols[None, :], mask=ok, other=0.0)  # [BLOCK_N, BLOCK_D]
            tl.store(q_ptr + rows64[:, None] * stride_q + cols[None, :], q, mask=ok)
            diff = tl.where(ok, xf - q.to(tl.float32), 0.0)
            err += tl.sum(diff * diff, axis=1)
            if ATOMIC_STATS:  # plain sums: relaxed ordering, no fence before each atomic
                tl.atomic_add(sums_ptr + best64[:, None] * D + cols[None, :], xf, mask=ok, sem="relaxed")
        # One partial per program, summed by the caller in a fixed order: deterministic.
        tl.store(err_ptr + pid, tl.sum(err, axis=0))
        if ATOMIC_STATS:
            tl.atomic_add(counts_ptr + best64, tl.full([BLOCK_N], 1, tl.int32), mask=row_ok, sem="relaxed")


@triton.jit
def _segment_sums_kernel(
    x_ptr, order_ptr, starts_ptr, counts_ptr, sums_ptr, D, stride_x,
    BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, ALIGN: tl.constexpr,
):
    # One program per code, adding its rows (those of order[start : start + count]) in a fixed
    # order, so the result does not depend on scheduling.
    code = tl.program_id(0)
    D, stride_x = aligned(D, ALIGN), aligned(stride_x, ALIGN)  # wide enough loads to copy asynchronously
    start = tl.load(starts_ptr + code)
    count = tl.load(counts_ptr + code)
    cols = tl.arange(0, BLOCK_D)
    col_ok = cols < D
    acc = tl.zeros([BLOCK_D], tl.float32)
    for j in tl.range(0, count, BLOCK_M, num_stages=3):  # no tl.dot: streamed only if asked
        m = j + tl.arange(0, BLOCK_M)  # [BLOCK_M]
        ok = m < count
        r = tl.load(order_ptr + start + m, mask=ok, other=0)
        xs = tl.load(x_ptr + r[:, None] * stride_x + cols[None, :], mask=ok[:, None] & col_ok[None, :], other=0.0)
        acc += tl.sum(xs.to(tl.float32), axis=0)
    tl.store(sums_ptr + code.to(tl.int64) * D + cols, acc, mask=col_ok)


# Tiles by element size, whether a row is wider than 64 (the released codebook's width), and
# whether the launch writes the training outputs: (BLOCK_N rows, BLOCK_K codes, BLOCK_D width
# chunk (0: the whole row, padded to a power of two), num_warps, num_stages). Each is the largest
# candidate that compiles for an H200 block without spills with both Triton 3.6 and 3.9;
# benchmarks/kernel_resources.py sweeps D = 16, 64, 100, 128, 140, 256. Three stages everywhere,
# so that a codebook tile is in flight while the previous one is multiplied (two made the
# pipeliner wait for every copy). A wide row is a sum over chunks inside the codebook loop, its
# chunks loaded once before it: a whole 100-256-wide row spilled in fp32 (three TF32 products)
# and, at widths that are not a power of two, in the 16-bit fused variants; fp32 rows of 256 with
# 64 codes a tile needed 272 KiB of shared memory, so fp32 takes 32. Every row tile reads the whole
# codebook, so the rows a tile holds set how often it is read: the 16-bit search alone (encoding)
# takes 256 rows (the codebook read 1292 times at N = 330736, not 2584-5168), which puts its
# traffic under its floor; the training variants' statistics spill there with 8 warps and Triton
# 3.6, so those take 16 (_TRAINING_16BIT). Not yet timed on a GPU.
_TILES = {
    (2, False, False): (256, 32, 0, 8, 3), (2, True, False): (256, 32, 64, 8, 3),
    (2, False, True): (128, 64, 0, 8, 3), (2, True, True): (64, 64, 64, 8, 3),
    (4, False, False): (128, 64, 0, 8, 3), (4, True, False): (64, 32, 32, 8, 3),
    (4, False, True): (128, 64, 0, 8, 3), (4, True, True): (64, 32, 32, 8, 3),
}


# The 16-bit training variants, by the widest row each tile serves: with 16 warps the statistics'
# registers spread over twice the threads, so a tile holds 256 rows up to 64 wide (the codebook
# read half as often as with 128; 64 codes a tile for rows of 32 bytes or less, whose 32-code
# tiles were copied synchronously) and 128 rows up to 192 wide (three 64-wide chunks). Rows of
# 256 spill at 128 rows and keep the 8-warp tile above.
_TRAINING_16BIT = ((32, (256, 64, 0, 16, 3)), (64, (256, 32, 0, 16, 3)), (192, (128, 32, 64, 16, 3)))


def _tiles(d: int, itemsize: int, training: bool) -> tuple[int, int, int, int, int, int]:
    """(BLOCK_N, BLOCK_K, BLOCK_D, D_CHUNKS, num_warps, num_stages) for rows d wide; ``training``:
    the launch writes the training outputs too."""
    tiles = _TILES[(itemsize, d > 64, training)]
    if itemsize == 2 and training:
        tiles = next((t for top, t in _TRAINING_16BIT if d <= top), tiles)
    block_n, block_k, chunk, warps, stages = tiles
    block_d = chunk or max(16, triton.next_power_of_2(d))  # tl.dot needs at least 16 along each dimension
    return block_n, block_k, block_d, triton.cdiv(d, block_d), warps, stages


def search_config(
    dtype: torch.dtype, d: int, *, quantise: bool, atomic_stats: bool,
    block_n: int | None = None, block_k: int | None = None,
) -> tuple[dict, dict]:
    """The compile-time constants and launch options of ``_search_kernel`` for these inputs."""
    default_n, default_k, block_d, chunks, num_warps, num_stages = _tiles(d, dtype.itemsize, quantise or atomic_stats)
    constexprs = dict(
        BLOCK_N=block_n or default_n, BLOCK_K=block_k or default_k, BLOCK_D=block_d, D_CHUNKS=chunks,
        PRECISION=dot_precision(dtype, "tf32x3"), QUANTISE=quantise, ATOMIC_STATS=atomic_stats,
        UPCAST_DOT=upcast_dot(dtype),
    )
    # No FMA contraction: the distance is rounded exactly as the reference rounds it.
    return constexprs, dict(num_warps=num_warps, num_stages=num_stages, enable_fp_fusion=False)


def search(
    x: torch.Tensor,
    codebook: torch.Tensor,
    code_sq: torch.Tensor,
    indices: torch.Tensor,
    distances: torch.Tensor,
    quantised: torch.Tensor | None = None,
    errors: torch.Tensor | None = None,
    counts: torch.Tensor | None = None,
    sums: torch.Tensor | None = None,
    *,
    block_n: int | None = None,
    block_k: int | None = None,
) -> None:
    """Fill ``indices`` int64 [N] and ``distances`` fp32 [N]; optionally the training outputs.

    x [N, D] and codebook [K, D] share a dtype and have unit stride along D; code_sq fp32 [K] is
    ‖c‖², +inf for codes that must never be chosen. With ``quantised`` [N, D] (codebook dtype)
    and ``errors`` fp32 [errors_size(N, D, block_n)] the kernel also writes codebook[idx] and
    per-program sums of ‖x − codebook[idx]‖²; with ``counts`` int32 [K] and ``sums`` fp32 [K, D]
    (zeroed by the caller, contiguous) it adds each row to its code with atomics.
    """
    n, d = x.shape
    quantise, atomic_stats = quantised is not None, counts is not None
    constexprs, options = search_config(
        x.dtype, d, quantise=quantise, atomic_stats=atomic_stats, block_n=block_n, block_k=block_k)
    if not quantise:
        quantised = errors = indices  # placeholders the kernel never touches
    if not atomic_stats:
        counts = sums = indices
    align = alignment(d, x, codebook, *([quantised] if quantise else []))
    launch(_search_kernel, (triton.cdiv(n, constexprs["BLOCK_N"]),),
        x, codebook, code_sq, indices, distances, quantised, errors, counts, sums,
        n, codebook.shape[0], d, x.stride(0), codebook.stride(0), quantised.stride(0) if quantise else 0,
        ALIGN=align, **constexprs, **options,
    )


def errors_size(n: int, d: int, dtype: torch.dtype, block_n: int | None = None) -> int:
    """Length of the per-program error buffer :func:`search` writes for N rows of width d (the
    training outputs' launch)."""
    return triton.cdiv(n, block_n or _tiles(d, dtype.itemsize, True)[0])


def segment_sums(
    x: torch.Tensor, order: torch.Tensor, starts: torch.Tensor, counts: torch.Tensor, sums: torch.Tensor
) -> None:
    """sums[k] = Σ x[order[starts[k] : starts[k] + counts[k]]], in that order (fp32 [K, D])."""
    k, d = sums.shape
    launch(_segment_sums_kernel, (k,), x, order, starts, counts, sums, d, x.stride(0), ALIGN=alignment(d, x),
           **segment_sums_config(d))


def segment_sums_config(d: int) -> dict:
    """The compile-time constants and launch options of ``_segment_sums_kernel``."""
    return dict(BLOCK_M=32, BLOCK_D=max(16, triton.next_power_of_2(d)), num_warps=4, enable_fp_fusion=False)
