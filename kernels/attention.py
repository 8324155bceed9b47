"""Flash-style attention for Jukebox's factorised patterns, on the un-permuted sequence.

The original computes block, column and previous-block attention by re-blocking the sequence
(transposes and ``.contiguous()`` copies) and running dense attention on the pieces. These
kernels read q, k, v [N, H, L, d] in place, through their strides, and compute each pattern's
visible keys directly (:mod:`jukebox_fast.ops.patterns` is the definition they follow):

* A program owns a tile of BLOCK_M queries and walks only the key tiles its pattern can reach
  (one block for block-local, the previous block for previous-block, the first P keys for prime
  attention, everything before the tile for dense), masking inside the tiles at the edges.
* Column attention (a key is visible when it is in the same column of the block grid) is a
  causal attention along each column. Its programs take one column r and a tile of that column:
  "units" u are column indices and position = r + block_ctx·u, so the tiles are strided views
  of the sequence and no key of another column is ever read. For every other pattern a unit is
  a position.
* Online softmax in fp32 with exp2; the probabilities are cast to v's dtype before P·V, as the
  reference casts them. The log-sum-exp of each query row (log2 units, +inf for a row that sees
  no key, whose output is zero) is saved for the backward.
* Head widths up to 512: q·kᵀ (and dO·vᵀ in the backward) is a sum over width chunks of
  BLOCK_DK, so a width of 80, 150 or 480 is padded to the next multiple of the chunk rather than
  of a power of two. The accumulators over the width (output, dK, dV, dQ) hold BLOCK_DV columns;
  wider heads take several programs along the grid's second axis, each recomputing the
  probabilities for its slice of columns. A head that fits one chunk has no chunk loop, so the
  key (or query) loop is the innermost loop and Triton pipelines its tile loads (asynchronous
  copies, ``num_stages`` deep); where the chunk is also the accumulator's slice, the backward
  reuses the chunk it loaded instead of loading the same bytes again. Wider heads keep the
  chunk loop inside the key loop, which Triton does not pipeline (the resource check's
  "pipelined" column says which configurations stream).

Backward: ``_bwd_kv_kernel`` walks, per key tile, the query tiles that can see it and accumulates
dK and dV in registers. dQ comes either from ``_bwd_q_kernel`` (per query tile, a second
recomputation; deterministic) or from fp32 atomics in ``_bwd_kv_kernel`` (one pass fewer; the
order of the additions varies from run to run).

Launchers fill outputs the caller allocated; the op (``jukebox_fast.ops.attention``) checks shapes
and dtypes. Every tensor needs unit stride along d.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from .common import aligned, alignment, dot, dot_precision, launch, upcast_dot
from .patterns import KIND_COLUMN, key_span, query_layout, query_span, visible

__all__ = ["AttentionConfig", "KERNELS", "MAX_HEAD_DIM", "config_for", "launch_config", "forward", "backward"]

MAX_HEAD_DIM = 512
LOG2E = 1.4426950408889634


@triton.jit
def _program(H, D, BLOCK_DV: tl.constexpr):
    """This program's (group, first width column, n·H + h, n, h) from grid axes 1 and 2."""
    n_dv = tl.cdiv(D, BLOCK_DV)
    nh = tl.program_id(2)
    return tl.program_id(1) // n_dv, (tl.program_id(1) % n_dv) * BLOCK_DV, nh, (nh // H).to(tl.int64), \
        (nh % H).to(tl.int64)


@triton.jit
def _query_tile(pid_m, g, LQ, LK, BC, PRIME, KIND: tl.constexpr, BLOCK_M: tl.constexpr):
    """Query tile ``pid_m`` of group g: its units, validity, positions and rows in q, and the
    key units [lo, hi) it must walk."""
    q_start, base, step, u_lo, u_hi = query_layout(g, LQ, LK, BC, KIND)
    u_first = u_lo + pid_m * BLOCK_M
    u = u_first + tl.arange(0, BLOCK_M)  # [BLOCK_M] query units
    q_ok = u < u_hi
    p = base + step * u  # positions
    q_rows = (p - q_start).to(tl.int64)
    u_last = tl.minimum(u_first + BLOCK_M, u_hi) - 1
    lo, hi = key_span(base + step * u_first, base + step * u_last, u_last, LK, BC, PRIME, KIND)
    hi = tl.where(u_last >= u_first, hi, lo)  # a tile past the last query reads nothing
    return base, step, u, q_ok, p, q_rows, lo, hi


@triton.jit
def _fwd_kernel(
    q_ptr, k_ptr, v_ptr, o_ptr, lse_ptr,
    sq_n, sq_h, sq_t, sk_n, sk_h, sk_t, sv_n, sv_h, sv_t, so_n, so_h, so_t,
    H, LQ, LK, D, BC, PRIME, qk_scale,
    KIND: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_DK: tl.constexpr, D_CHUNKS: tl.constexpr, BLOCK_DV: tl.constexpr,
    PRECISION: tl.constexpr, UPCAST: tl.constexpr, ALIGN: tl.constexpr,
):
    pid_m = tl.program_id(0)
    g, dv0, nh, n, h = _program(H, D, BLOCK_DV)
    D = aligned(D, ALIGN)
    q_ptr += aligned(n * sq_n + h * sq_h, ALIGN)
    k_ptr += aligned(n * sk_n + h * sk_h, ALIGN)
    v_ptr += aligned(n * sv_n + h * sv_h, ALIGN)
    o_ptr += aligned(n * so_n + h * so_h, ALIGN)
    sq_t, sk_t, sv_t, so_t = aligned(sq_t, ALIGN), aligned(sk_t, ALIGN), aligned(sv_t, ALIGN), aligned(so_t, ALIGN)

    base, step, u, q_ok, p, q_rows, lo, hi = _query_tile(pid_m, g, LQ, LK, BC, PRIME, KIND, BLOCK_M)

    dk = tl.arange(0, BLOCK_DK)
    dv = dv0 + tl.arange(0, BLOCK_DV)
    if D_CHUNKS == 1:  # the whole q tile fits one chunk: load it once
        q = tl.load(q_ptr + q_rows[:, None] * sq_t + dk[None, :], mask=q_ok[:, None] & (dk < D)[None, :], other=0.0)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_DV], tl.float32)
    for start in range(lo, hi, BLOCK_N):
        v_units = start + tl.arange(0, BLOCK_N)  # [BLOCK_N] key units
        k_ok = v_units < hi
        j = base + step * v_units
        k_rows = j.to(tl.int64)
        s = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
        if D_CHUNKS == 1:  # no chunk loop: this key loop is the innermost, the one Triton pipelines
            kc = tl.load(k_ptr + k_rows[:, None] * sk_t + dk[None, :], mask=k_ok[:, None] & (dk < D)[None, :],
                         other=0.0)
            s = dot(q, tl.trans(kc), s, PRECISION, UPCAST)
        else:
            for c in range(tl.cdiv(D, BLOCK_DK)):  # a loop over a run-time count, never unrolled
                d = c * BLOCK_DK + dk
                q = tl.load(q_ptr + q_rows[:, None] * sq_t + d[None, :], mask=q_ok[:, None] & (d < D)[None, :],
                            other=0.0)
                kc = tl.load(k_ptr + k_rows[:, None] * sk_t + d[None, :], mask=k_ok[:, None] & (d < D)[None, :],
                             other=0.0)
                s = dot(q, tl.trans(kc), s, PRECISION, UPCAST)
        vis = visible(p[:, None], u[:, None], j[None, :], v_units[None, :], BC, PRIME, KIND) & k_ok[None, :]
        s = tl.where(vis, s * qk_scale, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)  # a row with nothing visible yet
        alpha = tl.exp2(m_i - m_use)
        pr = tl.exp2(s - m_use[:, None])
        l_i = l_i * alpha + tl.sum(pr, 1)
        vt = tl.load(v_ptr + k_rows[:, None] * sv_t + dv[None, :], mask=k_ok[:, None] & (dv < D)[None, :], other=0.0)
        acc = dot(pr.to(vt.dtype), vt, acc * alpha[:, None], PRECISION, UPCAST)
        m_i = m_new

    seen = l_i > 0.0
    out = acc / tl.where(seen, l_i, 1.0)[:, None]  # a query that sees no key outputs zeros
    tl.store(o_ptr + q_rows[:, None] * so_t + dv[None, :], out.to(o_ptr.dtype.element_ty),
             mask=q_ok[:, None] & (dv < D)[None, :])
    lse = tl.where(seen, m_i + tl.log2(tl.where(seen, l_i, 1.0)), float("inf"))
    if dv0 == 0:  # every width slice has the same lse; the first one writes it
        tl.store(lse_ptr + nh.to(tl.int64) * LQ + q_rows, lse, mask=q_ok)


@triton.jit
def _bwd_kv_kernel(
    q_ptr, k_ptr, v_ptr, do_ptr, lse_ptr, delta_ptr, dk_ptr, dv_ptr, dq_ptr,
    sq_n, sq_h, sq_t, sk_n, sk_h, sk_t, sv_n, sv_h, sv_t, sdo_n, sdo_h, sdo_t,
    sdk_n, sdk_h, sdk_t, sdv_n, sdv_h, sdv_t,
    H, LQ, LK, D, BC, PRIME, qk_scale, scale,
    KIND: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_DK: tl.constexpr, D_CHUNKS: tl.constexpr, BLOCK_DV: tl.constexpr,
    PRECISION: tl.constexpr, UPCAST: tl.constexpr, ATOMIC_DQ: tl.constexpr, ALIGN: tl.constexpr,
):
    pid_n = tl.program_id(0)
    g, dv0, nh, n, h = _program(H, D, BLOCK_DV)
    D = aligned(D, ALIGN)
    q_ptr += aligned(n * sq_n + h * sq_h, ALIGN)
    k_ptr += aligned(n * sk_n + h * sk_h, ALIGN)
    v_ptr += aligned(n * sv_n + h * sv_h, ALIGN)
    do_ptr += aligned(n * sdo_n + h * sdo_h, ALIGN)
    dk_ptr += aligned(n * sdk_n + h * sdk_h, ALIGN)
    dv_ptr += aligned(n * sdv_n + h * sdv_h, ALIGN)
    sq_t, sk_t, sv_t, sdo_t = aligned(sq_t, ALIGN), aligned(sk_t, ALIGN), aligned(sv_t, ALIGN), aligned(sdo_t, ALIGN)
    sdk_t, sdv_t = aligned(sdk_t, ALIGN), aligned(sdv_t, ALIGN)
    dq_ptr += nh.to(tl.int64) * LQ * D  # fp32 [N, H, LQ, D] contiguous (atomic mode only)
    lse_ptr += nh.to(tl.int64) * LQ
    delta_ptr += nh.to(tl.int64) * LQ

    q_start, base, step, u_lo, u_hi = query_layout(g, LQ, LK, BC, KIND)
    if KIND == KIND_COLUMN:
        k_hi = u_hi  # self-attention: the keys' column is as long as the queries'
    else:
        k_hi = LK
    v_first = pid_n * BLOCK_N
    v_units = v_first + tl.arange(0, BLOCK_N)  # [BLOCK_N] key units
    k_ok = v_units < k_hi
    j = base + step * v_units
    k_rows = j.to(tl.int64)
    v_last = tl.minimum(v_first + BLOCK_N, k_hi) - 1
    lo, hi = query_span(base + step * v_first, base + step * v_last, v_first, q_start, u_lo, u_hi, BC, PRIME,
                         KIND)
    hi = tl.where(v_last >= v_first, hi, lo)

    dk = tl.arange(0, BLOCK_DK)
    dv = dv0 + tl.arange(0, BLOCK_DV)
    dv_ok = dv < D
    if D_CHUNKS == 1:
        kc = tl.load(k_ptr + k_rows[:, None] * sk_t + dk[None, :], mask=k_ok[:, None] & (dk < D)[None, :], other=0.0)
        vc = tl.load(v_ptr + k_rows[:, None] * sv_t + dk[None, :], mask=k_ok[:, None] & (dk < D)[None, :], other=0.0)
    if ATOMIC_DQ:
        k_slice = tl.load(k_ptr + k_rows[:, None] * sk_t + dv[None, :], mask=k_ok[:, None] & dv_ok[None, :], other=0.0)

    acc_dk = tl.zeros([BLOCK_N, BLOCK_DV], tl.float32)
    acc_dv = tl.zeros([BLOCK_N, BLOCK_DV], tl.float32)
    for start in range(lo, hi, BLOCK_M):
        u = start + tl.arange(0, BLOCK_M)  # [BLOCK_M] query units
        q_ok = u < hi
        p = base + step * u
        q_rows = (p - q_start).to(tl.int64)
        st = tl.zeros([BLOCK_N, BLOCK_M], tl.float32)  # scores, keys × queries
        dpt = tl.zeros([BLOCK_N, BLOCK_M], tl.float32)  # dO·vᵀ, transposed
        if D_CHUNKS == 1:  # no chunk loop: this query loop is the innermost, the one Triton pipelines
            d_ok = (dk < D)[None, :]
            qc = tl.load(q_ptr + q_rows[:, None] * sq_t + dk[None, :], mask=q_ok[:, None] & d_ok, other=0.0)
            doc = tl.load(do_ptr + q_rows[:, None] * sdo_t + dk[None, :], mask=q_ok[:, None] & d_ok, other=0.0)
            st = dot(kc, tl.trans(qc), st, PRECISION, UPCAST)
            dpt = dot(vc, tl.trans(doc), dpt, PRECISION, UPCAST)
        else:
            for c in range(tl.cdiv(D, BLOCK_DK)):  # a loop over a run-time count, never unrolled
                d = c * BLOCK_DK + dk
                d_ok = (d < D)[None, :]
                kc = tl.load(k_ptr + k_rows[:, None] * sk_t + d[None, :], mask=k_ok[:, None] & d_ok, other=0.0)
                vc = tl.load(v_ptr + k_rows[:, None] * sv_t + d[None, :], mask=k_ok[:, None] & d_ok, other=0.0)
                qc = tl.load(q_ptr + q_rows[:, None] * sq_t + d[None, :], mask=q_ok[:, None] & d_ok, other=0.0)
                doc = tl.load(do_ptr + q_rows[:, None] * sdo_t + d[None, :], mask=q_ok[:, None] & d_ok, other=0.0)
                st = dot(kc, tl.trans(qc), st, PRECISION, UPCAST)
                dpt = dot(vc, tl.trans(doc), dpt, PRECISION, UPCAST)
        lse = tl.load(lse_ptr + q_rows, mask=q_ok, other=float("inf"))
        delta = tl.load(delta_ptr + q_rows, mask=q_ok, other=0.0)
        vis = visible(p[None, :], u[None, :], j[:, None], v_units[:, None], BC, PRIME, KIND) & k_ok[:, None]
        pt = tl.where(vis, tl.exp2(st * qk_scale - lse[None, :]), 0.0)  # [BLOCK_N, BLOCK_M]
        dst = pt * (dpt - delta[None, :])
        if D_CHUNKS == 1 and BLOCK_DK == BLOCK_DV:  # one chunk, one slice: the same bytes, loaded once
            do_slice, q_slice = doc, qc
        else:
            do_slice = tl.load(do_ptr + q_rows[:, None] * sdo_t + dv[None, :], mask=q_ok[:, None] & dv_ok[None, :],
                               other=0.0)
            q_slice = tl.load(q_ptr + q_rows[:, None] * sq_t + dv[None, :], mask=q_ok[:, None] & dv_ok[None, :],
                              other=0.0)
        acc_dv = dot(pt.to(do_slice.dtype), do_slice, acc_dv, PRECISION, UPCAST)
        acc_dk = dot(dst.to(q_slice.dtype), q_slice, acc_dk, PRECISION, UPCAST)
        if ATOMIC_DQ:
            dq = dot(tl.trans(dst).to(k_slice.dtype), k_slice, tl.zeros([BLOCK_M, BLOCK_DV], tl.float32), PRECISION,
                     UPCAST) * scale  # [BLOCK_M, BLOCK_DV]
            # A plain sum: relaxed ordering, without the fence acq_rel (the default) puts before each.
            tl.atomic_add(dq_ptr + q_rows[:, None] * D + dv[None, :], dq, mask=q_ok[:, None] & dv_ok[None, :],
                          sem="relaxed")

    tl.store(dk_ptr + k_rows[:, None] * sdk_t + dv[None, :], (acc_dk * scale).to(dk_ptr.dtype.element_ty),
             mask=k_ok[:, None] & dv_ok[None, :])
    tl.store(dv_ptr + k_rows[:, None] * sdv_t + dv[None, :], acc_dv.to(dv_ptr.dtype.element_ty),
             mask=k_ok[:, None] & dv_ok[None, :])


@triton.jit
def _bwd_q_kernel(
    q_ptr, k_ptr, v_ptr, do_ptr, lse_ptr, delta_ptr, dq_ptr,
    sq_n, sq_h, sq_t, sk_n, sk_h, sk_t, sv_n, sv_h, sv_t, sdo_n, sdo_h, sdo_t, sdq_n, sdq_h, sdq_t,
    H, LQ, LK, D, BC, PRIME, qk_scale, scale,
    KIND: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_DK: tl.constexpr, D_CHUNKS: tl.constexpr, BLOCK_DV: tl.constexpr,
    PRECISION: tl.constexpr, UPCAST: tl.constexpr, ALIGN: tl.constexpr,
):
    pid_m = tl.program_id(0)
    g, dv0, nh, n, h = _program(H, D, BLOCK_DV)
    D = aligned(D, ALIGN)
    q_ptr += aligned(n * sq_n + h * sq_h, ALIGN)
    k_ptr += aligned(n * sk_n + h * sk_h, ALIGN)
    v_ptr += aligned(n * sv_n + h * sv_h, ALIGN)
    do_ptr += aligned(n * sdo_n + h * sdo_h, ALIGN)
    dq_ptr += aligned(n * sdq_n + h * sdq_h, ALIGN)
    sq_t, sk_t, sv_t, sdo_t = aligned(sq_t, ALIGN), aligned(sk_t, ALIGN), aligned(sv_t, ALIGN), aligned(sdo_t, ALIGN)
    sdq_t = aligned(sdq_t, ALIGN)
    lse_ptr += nh.to(tl.int64) * LQ
    delta_ptr += nh.to(tl.int64) * LQ

    base, step, u, q_ok, p, q_rows, lo, hi = _query_tile(pid_m, g, LQ, LK, BC, PRIME, KIND, BLOCK_M)

    dk = tl.arange(0, BLOCK_DK)
    dv = dv0 + tl.arange(0, BLOCK_DV)
    dv_ok = dv < D
    if D_CHUNKS == 1:
        qc = tl.load(q_ptr + q_rows[:, None] * sq_t + dk[None, :], mask=q_ok[:, None] & (dk < D)[None, :], other=0.0)
        doc = tl.load(do_ptr + q_rows[:, None] * sdo_t + dk[None, :], mask=q_ok[:, None] & (dk < D)[None, :],
                      other=0.0)
    lse = tl.load(lse_ptr + q_rows, mask=q_ok, other=float("inf"))
    delta = tl.load(delta_ptr + q_rows, mask=q_ok, other=0.0)

    acc = tl.zeros([BLOCK_M, BLOCK_DV], tl.float32)
    for start in range(lo, hi, BLOCK_N):
        v_units = start + tl.arange(0, BLOCK_N)
        k_ok = v_units < hi
        j = base + step * v_units
        k_rows = j.to(tl.int64)
        s = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
        dp = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
        if D_CHUNKS == 1:  # no chunk loop: this key loop is the innermost, the one Triton pipelines
            d_ok = (dk < D)[None, :]
            kc = tl.load(k_ptr + k_rows[:, None] * sk_t + dk[None, :], mask=k_ok[:, None] & d_ok, other=0.0)
            vc = tl.load(v_ptr + k_rows[:, None] * sv_t + dk[None, :], mask=k_ok[:, None] & d_ok, other=0.0)
            s = dot(qc, tl.trans(kc), s, PRECISION, UPCAST)
            dp = dot(doc, tl.trans(vc), dp, PRECISION, UPCAST)
        else:
            for c in range(tl.cdiv(D, BLOCK_DK)):  # a loop over a run-time count, never unrolled
                d = c * BLOCK_DK + dk
                d_ok = (d < D)[None, :]
                qc = tl.load(q_ptr + q_rows[:, None] * sq_t + d[None, :], mask=q_ok[:, None] & d_ok, other=0.0)
                doc = tl.load(do_ptr + q_rows[:, None] * sdo_t + d[None, :], mask=q_ok[:, None] & d_ok, other=0.0)
                kc = tl.load(k_ptr + k_rows[:, None] * sk_t + d[None, :], mask=k_ok[:, None] & d_ok, other=0.0)
                vc = tl.load(v_ptr + k_rows[:, None] * sv_t + d[None, :], mask=k_ok[:, None] & d_ok, other=0.0)
                s = dot(qc, tl.trans(kc), s, PRECISION, UPCAST)
                dp = dot(doc, tl.trans(vc), dp, PRECISION, UPCAST)
        vis = visible(p[:, None], u[:, None], j[None, :], v_units[None, :], BC, PRIME, KIND) & k_ok[None, :]
        pr = tl.where(vis, tl.exp2(s * qk_scale - lse[:, None]), 0.0)
        ds = pr * (dp - delta[:, None])
        if D_CHUNKS == 1 and BLOCK_DK == BLOCK_DV:  # one chunk, one slice: the same bytes, loaded once
            k_slice = kc
        else:
            k_slice = tl.load(k_ptr + k_rows[:, None] * sk_t + dv[None, :], mask=k_ok[:, None] & dv_ok[None, :],
                              other=0.0)
        acc = dot(ds.to(k_slice.dtype), k_slice, acc, PRECISION, UPCAST)

    tl.store(dq_ptr + q_rows[:, None] * sdq_t + dv[None, :], (acc * scale).to(dq_ptr.dtype.element_ty),
             mask=q_ok[:, None] & dv_ok[None, :])


# -- launchers ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class AttentionConfig:
    """Tile sizes and launch options of one kernel."""

    block_m: int  # query tile
    block_n: int  # key tile
    block_dk: int  # width chunk of q·kᵀ and dO·vᵀ
    block_dv: int  # width slice of the accumulators; wider heads split over programs
    num_warps: int = 4
    num_stages: int = 2


KERNELS = ("fwd", "bwd_kv", "bwd_kv_atomic", "bwd_q")


def _width_chunk(d: int) -> int:
    # The largest chunk that pads d by at most an eighth: 80 -> 16 (80), 150 -> 32 (160), 480 -> 32.
    for chunk in (64, 32):
        if triton.cdiv(d, chunk) * chunk <= d * 9 / 8:
            return chunk
    return 16


# Tiles per kernel: (block_m, block_n, block_dk, block_dv, num_warps, num_stages), for bf16 and fp16
# (2 bytes, on the tensor cores) by width class (_width_class), for fp32 (4, on the CUDA cores) one
# for every width. Each is the first of a list of candidates, largest first, that fit an H200 block (shared memory,
# registers, no spills) for every pattern with both Triton 3.6 and 3.9 in the resource check
# (benchmarks/kernel_resources.py, which compiles every configuration chosen here). Not yet timed on
# a GPU. block_dk 0: _width_chunk(d); block_dv 0: the head's own width (up to 256). The program tile
# of bwd_kv is block_n keys, of bwd_q block_m queries. fp32's products are unrolled FMA chains
# whose operands sit in registers for the whole contraction, so fp32 tiles contract over 16.
_TILES = {
    ("fwd", 2, "64"): (128, 64, 0, 0, 4, 3), ("fwd", 2, "128"): (128, 64, 0, 0, 8, 3),
    ("fwd", 2, "wide"): (64, 64, 0, 0, 8, 2), ("fwd", 2, "wide, unaligned"): (64, 32, 0, 0, 8, 2),
    ("bwd_kv", 2, "64"): (64, 64, 0, 0, 8, 3), ("bwd_kv", 2, "128"): (64, 64, 0, 0, 8, 2),
    ("bwd_kv", 2, "wide"): (64, 32, 0, 0, 8, 2), ("bwd_kv", 2, "wide, unaligned"): (64, 32, 0, 128, 8, 2),
    ("bwd_kv_atomic", 2, "64"): (64, 64, 0, 0, 8, 3), ("bwd_kv_atomic", 2, "128"): (64, 64, 0, 0, 8, 2),
    ("bwd_kv_atomic", 2, "wide"): (64, 32, 0, 128, 8, 2),
    ("bwd_kv_atomic", 2, "wide, unaligned"): (64, 32, 0, 128, 8, 2),
    ("bwd_q", 2, "64"): (128, 64, 0, 0, 8, 3), ("bwd_q", 2, "128"): (128, 64, 0, 0, 8, 3),
    ("bwd_q", 2, "wide"): (64, 64, 0, 0, 8, 2), ("bwd_q", 2, "wide, unaligned"): (64, 64, 0, 0, 8, 2),
    ("fwd", 4): (32, 16, 16, 128, 4, 2), ("bwd_kv", 4): (32, 32, 16, 128, 4, 1),
    ("bwd_kv_atomic", 4): (32, 16, 16, 64, 4, 1), ("bwd_q", 4): (16, 16, 16, 64, 4, 1),
}


def _width_class(d: int) -> str:
    """16-bit heads up to 64, up to 128, or wider; a wide head whose width is not a multiple of 8
    elements (150: the 5b priors) loads 4 bytes at a time and needs other tiles."""
    if d <= 64:
        return "64"
    if d <= 128:
        return "128"
    return "wide" if d % 8 == 0 else "wide, unaligned"


def config_for(d: int, dtype: torch.dtype, kernel: str = "fwd") -> AttentionConfig:
    """Tiles of ``kernel`` (one of :data:`KERNELS`) for head width d and this dtype."""
    key = (kernel, 4) if dtype == torch.float32 else (kernel, 2, _width_class(d))
    block_m, block_n, block_dk, block_dv, num_warps, num_stages = _TILES[key]
    block_dv = min(block_dv or 256, max(16, triton.next_power_of_2(d)))
    return AttentionConfig(block_m, block_n, block_dk or _width_chunk(d), block_dv, num_warps, num_stages)


def launch_config(kind: int, d: int, dtype: torch.dtype, cfg: AttentionConfig, align: int) -> tuple[dict, dict]:
    """(compile-time constants, launch options) of a kernel with tiles ``cfg``."""
    constexprs = dict(
        KIND=kind, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_DK=cfg.block_dk,
        D_CHUNKS=triton.cdiv(d, cfg.block_dk), BLOCK_DV=cfg.block_dv,
        PRECISION=dot_precision(dtype, "ieee"), UPCAST=upcast_dot(dtype), ALIGN=align,
    )
    return constexprs, dict(num_warps=cfg.num_warps, num_stages=cfg.num_stages, enable_fp_fusion=True)


def _grid(kind: int, length: int, lk: int, block: int, block_ctx: int, d: int, cfg: AttentionConfig, nh: int):
    """(tiles, groups × width slices, N·H) covering ``length`` positions (queries or keys) of a
    key sequence of ``lk``; column attention has one group per column."""
    if kind == KIND_COLUMN:
        groups = min(block_ctx, lk)
        tiles = triton.cdiv(triton.cdiv(length, block_ctx), block)
    else:
        groups, tiles = 1, triton.cdiv(length, block)
    return tiles, groups * triton.cdiv(d, cfg.block_dv), nh


def _strides(t: torch.Tensor) -> tuple[int, int, int]:
    return t.stride(0), t.stride(1), t.stride(2)


def forward(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor, lse: torch.Tensor,
    kind: int, block_ctx: int, prime_len: int, scale: float, cfg: AttentionConfig | None = None,
) -> None:
    """Fill ``out`` [N, H, Lq, d] (v's dtype) and ``lse`` fp32 [N, H, Lq] contiguous.

    q [N, H, Lq, d], k and v [N, H, Lk, d], one dtype, any strides with unit stride along d.
    ``lse`` is in log2 units, scaled by ``scale``; +inf marks a query that sees no key.
    """
    n, h, lq, d = q.shape
    lk = k.shape[2]
    cfg = cfg or config_for(d, q.dtype, "fwd")
    constexprs, options = launch_config(kind, d, q.dtype, cfg, alignment(d, q, k, v, out))
    launch(_fwd_kernel, _grid(kind, lq, lk, cfg.block_m, block_ctx, d, cfg, n * h),
           q, k, v, out, lse, *_strides(q), *_strides(k), *_strides(v), *_strides(out),
           h, lq, lk, d, block_ctx, prime_len, scale * LOG2E, **constexprs, **options)


def backward(
    do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor, lse: torch.Tensor,
    dq: torch.Tensor, dk: torch.Tensor, dv: torch.Tensor,
    kind: int, block_ctx: int, prime_len: int, scale: float, *, deterministic: bool = True,
    cfg: AttentionConfig | None = None,
) -> None:
    """Fill dq, dk, dv (shapes and dtypes of q, k, v) from dO and the forward's out and lse.
    ``cfg`` (tests) replaces the tiles of both backward kernels."""
    n, h, lq, d = q.shape
    lk = k.shape[2]
    # Δ = rowsum(dO ∘ O): the softmax backward's correction term, fp32 [N, H, Lq].
    delta = (do.float() * out.float()).sum(-1).contiguous()
    common = (h, lq, lk, d, block_ctx, prime_len, scale * LOG2E, scale)
    align = alignment(d, q, k, v, do, dq, dk, dv)
    kv_cfg = cfg or config_for(d, q.dtype, "bwd_kv" if deterministic else "bwd_kv_atomic")
    constexprs, options = launch_config(kind, d, q.dtype, kv_cfg, align)
    dq_acc = None if deterministic else torch.zeros(n, h, lq, d, dtype=torch.float32, device=q.device)
    launch(_bwd_kv_kernel, _grid(kind, lk, lk, kv_cfg.block_n, block_ctx, d, kv_cfg, n * h),
           q, k, v, do, lse, delta, dk, dv, dq if dq_acc is None else dq_acc,
           *_strides(q), *_strides(k), *_strides(v), *_strides(do), *_strides(dk), *_strides(dv),
           *common, ATOMIC_DQ=not deterministic, **constexprs, **options)
    if dq_acc is not None:
        dq.copy_(dq_acc)
        return
    q_cfg = cfg or config_for(d, q.dtype, "bwd_q")
    constexprs, options = launch_config(kind, d, q.dtype, q_cfg, align)
    launch(_bwd_q_kernel, _grid(kind, lq, lk, q_cfg.block_m, block_ctx, d, q_cfg, n * h),
           q, k, v, do, lse, delta, dq,
           *_strides(q), *_strides(k), *_strides(v), *_strides(do), *_strides(dq),
           *common, **constexprs, **options)
