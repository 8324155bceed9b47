"""One decode step of attention: the newest query of each sample against a static KV cache.

A program reads the position from device memory, works out the run of cache slots its pattern
sees (``jukebox_fast.ops.decode.CacheLayout`` is the definition this mirrors) and walks only
those slots in tiles of BLOCK_N, with an online softmax in fp32. There is a single query row, so
the products are elementwise multiply-and-sum on CUDA cores rather than tl.dot: the step is
bound by reading the cache, not by arithmetic. The launch never depends on the position, so a
CUDA graph can replay it.

Split over the cache (flash-decoding): at batch 1 one program per (sample, head) is one to eight
programs on a 132-SM GPU. With SPLITS > 1 the grid has SPLITS programs per (sample, head), each
taking an equal share of the visible run (whole tiles), and writing its unnormalised partial
output with its running max and sum. The last of them to finish (a counter per (sample, head),
incremented with acquire-release ordering after the partial is stored) merges them all, in share
order, so the result does not depend on which finished last: m = max mₛ, l = Σ lₛ·2^(mₛ−m),
out = Σ accₛ·2^(mₛ−m) / l. It then resets the counter, so the next step (or a CUDA graph's
next replay) starts from zero. One launch either way.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .common import aligned, alignment, launch
from .patterns import visible_slots

__all__ = ["decode", "decode_config", "merge", "merge_chunk", "splits_for", "MAX_HEAD_DIM"]

MAX_HEAD_DIM = 512
LOG2E = 1.4426950408889634


@triton.jit
def _decode_kernel(
    q_ptr, k_ptr, v_ptr, o_ptr, part_ptr, count_ptr, pos_ptr,
    sq_n, sq_h, sk_n, sk_h, sk_s, sv_n, sv_h, sv_s, so_n, so_h,
    H, D, BC, NB, PRIME, ENC, qk_scale,
    KIND: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, SPLITS: tl.constexpr,
    CHUNK: tl.constexpr, ALIGN: tl.constexpr,
):
    nh = tl.program_id(0)
    split = tl.program_id(1)
    n = (nh // H).to(tl.int64)
    h = (nh % H).to(tl.int64)
    p = tl.load(pos_ptr)
    lo, hi = visible_slots(p, BC, NB, PRIME, ENC, KIND)
    if SPLITS > 1:  # this program's share of the run: whole tiles, the last share shorter
        share = tl.cdiv(tl.cdiv(hi - lo, BLOCK_N), SPLITS) * BLOCK_N
        lo = lo + split * share
        hi = tl.minimum(lo + share, hi)

    D = aligned(D, ALIGN)
    d = tl.arange(0, BLOCK_D)
    d_ok = d < D
    q = tl.load(q_ptr + aligned(n * sq_n + h * sq_h, ALIGN) + d, mask=d_ok, other=0.0).to(tl.float32)  # [BLOCK_D]
    k_ptr += aligned(n * sk_n + h * sk_h, ALIGN)
    v_ptr += aligned(n * sv_n + h * sv_h, ALIGN)
    sk_s, sv_s = aligned(sk_s, ALIGN), aligned(sv_s, ALIGN)
    m_i = tl.full((), float("-inf"), tl.float32)
    l_i = tl.full((), 0.0, tl.float32)
    acc = tl.zeros([BLOCK_D], tl.float32)
    # num_stages stated: Triton streams the loads of a loop without tl.dot only when the loop asks
    for start in tl.range(lo, hi, BLOCK_N, num_stages=3):
        s = start + tl.arange(0, BLOCK_N)  # [BLOCK_N] slots
        ok = s < hi
        s64 = s.to(tl.int64)
        k = tl.load(k_ptr + s64[:, None] * sk_s + d[None, :], mask=ok[:, None] & d_ok[None, :], other=0.0)
        logits = tl.sum(k.to(tl.float32) * q[None, :], axis=1) * qk_scale  # [BLOCK_N], log2 units
        logits = tl.where(ok, logits, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(logits, 0))
        alpha = tl.exp2(m_i - m_new)
        pr = tl.exp2(logits - m_new)
        l_i = l_i * alpha + tl.sum(pr, 0)
        v = tl.load(v_ptr + s64[:, None] * sv_s + d[None, :], mask=ok[:, None] & d_ok[None, :], other=0.0)
        # The probabilities meet v in v's dtype, as the reference multiplies them.
        pv = pr.to(v.dtype).to(tl.float32)[:, None] * v.to(tl.float32)
        acc = acc * alpha + tl.sum(pv, axis=0)
        m_i = m_new
    if SPLITS == 1:
        out = acc / tl.where(l_i > 0.0, l_i, 1.0)  # no visible slot: zeros
        tl.store(o_ptr + aligned(n * so_n + h * so_h, ALIGN) + d, out.to(o_ptr.dtype.element_ty), mask=d_ok)
    else:  # partials fp32 [N·H, SPLITS, BLOCK_D + 2]: acc, then m (log2 units) and l
        row = part_ptr + (nh.to(tl.int64) * SPLITS + split) * (BLOCK_D + 2)
        tl.store(row + d, acc)
        tl.store(row + BLOCK_D, m_i)
        tl.store(row + BLOCK_D + 1, l_i)
        tl.debug_barrier()  # every thread's part of the partial is stored before the count moves
        done = tl.atomic_add(count_ptr + nh, 1, sem="acq_rel")  # and the others' are visible past it
        if done == SPLITS - 1:  # the last share of this (sample, head): merge them all
            out = merge(part_ptr, nh, SPLITS, BLOCK_D, CHUNK)
            tl.store(o_ptr + aligned(n * so_n + h * so_h, ALIGN) + d, out.to(o_ptr.dtype.element_ty), mask=d_ok)
            tl.atomic_xchg(count_ptr + nh, 0, sem="relaxed")


@triton.jit
def merge(part_ptr, nh, SPLITS: tl.constexpr, BLOCK_D: tl.constexpr, CHUNK: tl.constexpr):
    """The attention output [BLOCK_D] fp32 of (sample, head) ``nh`` from its SPLITS partials,
    read CHUNK shares at a time (:func:`merge_chunk`), past the L1 (other SMs wrote them)."""
    row = BLOCK_D + 2
    base = part_ptr + nh.to(tl.int64) * SPLITS * row
    shares = tl.arange(0, SPLITS)
    m = tl.load(base + shares * row + BLOCK_D, cache_modifier=".cg")  # [SPLITS] running maxima (log2 units)
    l = tl.load(base + shares * row + BLOCK_D + 1, cache_modifier=".cg")  # [SPLITS] sums
    m_all = tl.max(m, 0)
    m_all = tl.where(m_all == float("-inf"), 0.0, m_all)  # every share empty: the output is zero
    total = tl.sum(tl.where(l > 0.0, l * tl.exp2(m - m_all), 0.0), 0)
    d = tl.arange(0, BLOCK_D)
    acc = tl.zeros([BLOCK_D], tl.float32)
    for c in tl.range(0, SPLITS, CHUNK, num_stages=3):
        sc = c + tl.arange(0, CHUNK)
        weight = tl.where(tl.load(base + sc * row + BLOCK_D + 1, cache_modifier=".cg") > 0.0,
                          tl.exp2(tl.load(base + sc * row + BLOCK_D, cache_modifier=".cg") - m_all),
                          0.0)  # [CHUNK]; empty shares: 0
        acc += tl.sum(tl.load(base + sc[:, None] * row + d[None, :], cache_modifier=".cg") * weight[:, None], 0)
    return acc / tl.where(total > 0.0, total, 1.0)


def decode_config(d: int, dtype: torch.dtype = torch.bfloat16) -> dict:
    """Compile-time constants and launch options for head width d (BLOCK_N and BLOCK_D do not
    depend on the dtype)."""
    block_d = max(16, triton.next_power_of_2(d))
    # Three tiles of k and v in flight (the loop's num_stages). Past 64 wide they are shared by 8
    # warps, except 16-bit heads of 129-256 (the 5b's 150), where 8 warps spilled and 4 fit; fp32
    # there spilled with 4. Tried over every pattern with Triton 3.6 and 3.9.
    warps = 4 if block_d <= 64 or (block_d == 256 and dtype != torch.float32) else 8
    return dict(BLOCK_N=16 if block_d >= 256 else min(64, 8192 // block_d), BLOCK_D=block_d, num_warps=warps,
                enable_fp_fusion=True)


def merge_chunk(splits: int, block_d: int) -> int:
    """Shares :func:`merge` reads at once: at most 2048 partial values."""
    return min(splits, max(1, 2048 // block_d))


def splits_for(programs: int, span: int, d: int, sms: int = 132) -> int:
    """Shares of the cache for ``programs`` (sample, head) pairs whose query sees up to ``span``
    slots: long runs (512 slots and more: dense and cross-attention layers) split in a power of
    two of shares, until there are two programs per SM or a share would hold fewer than two tiles;
    short runs (block, column, previous-block, prime layers) are cheaper than a merge."""
    block_n = decode_config(d)["BLOCK_N"]
    splits = 1
    if span < 512:
        return splits
    while programs * splits < 2 * sms and span >= 4 * splits * block_n:
        splits *= 2
    return splits


def decode(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor, position: torch.Tensor,
    kind: int, block_ctx: int, blocks: int, prime_len: int, enc_length: int, scale: float,
    splits: int = 1, partials: torch.Tensor | None = None, counts: torch.Tensor | None = None,
) -> None:
    """Fill ``out`` [N, H, d] from q [N, H, d] and the cache k, v [N, H, S, d] (unit stride along
    d) for the query at ``position`` (one-element int64 tensor on the same device). With
    ``splits`` > 1 (a power of two), ``partials`` fp32 [N·H, splits, BLOCK_D + 2] is the shares'
    scratch and ``counts`` int32 [N·H], zero, their counters (left at zero)."""
    n, h, d = q.shape
    config = decode_config(d, k.dtype)  # the cache's dtype (the step's q is fp32)
    align = alignment(d, q, k, v, out)
    if splits > 1:
        assert splits & (splits - 1) == 0 and partials is not None and counts is not None
    else:  # placeholders the kernel never touches
        partials, counts = out, position
    launch(_decode_kernel, (n * h, splits),
           q, k, v, out, partials, counts, position,
           q.stride(0), q.stride(1), k.stride(0), k.stride(1), k.stride(2), v.stride(0), v.stride(1), v.stride(2),
           out.stride(0), out.stride(1),
           h, d, block_ctx, blocks, prime_len, enc_length, scale * LOG2E,
           KIND=kind, SPLITS=splits, CHUNK=merge_chunk(splits, config["BLOCK_D"]), ALIGN=align, **config)
