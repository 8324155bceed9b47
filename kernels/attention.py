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
* Head widths up to 512, held in width chunks of BLOCK_DK: every operand tile and every
  accumulator over the width (output, dK, dV, dQ) is a tuple of ceil(d / BLOCK_DK) chunks,
  unrolled at compile time (``tl.static_range``), so a width of 80, 150 or 480 is padded to the
  next multiple of the chunk, not of a power of two, and one program covers the whole width.
  The chunk loop being unrolled, the key (or query) loop is the innermost loop of every kernel,
  and Triton streams its tiles through asynchronous copies ``num_stages`` deep (the resource
  check's "pipelined" column proves it for every configuration). A program loads its own tile
  (q, or k and v in ``_bwd_kv_kernel``) once, before the loop, and every streamed chunk serves
  both products that need it (q·kᵀ and dS·K use the same k chunk): no operand is loaded twice.

Backward: ``_delta_kernel`` computes Δ = rowsum(dO ∘ O); ``_bwd_kv_kernel`` walks, per key tile,
the query tiles that can see it and accumulates dK and dV in registers. dQ comes one of three ways
(``DQ``):

* stored by ``_bwd_kv_kernel`` itself, when its key tile holds every key its queries see (block
  and previous-block layers whose key tile is whole blocks, a column in one tile, any layer
  whose keys fit one tile): each query tile is then visited once, by one program, and its dQ is
  complete after that trip. One pass, no atomics, each byte read once, deterministic;
* from ``_bwd_q_kernel`` (per query tile, a second recomputation that reads q, k, v and dO again;
  deterministic);
* from fp32 atomics in ``_bwd_kv_kernel`` (one pass; the order of the additions varies from run
  to run).

Launchers fill outputs the caller allocated; the op (``jukebox_fast.ops.attention``) checks shapes
and dtypes. Every tensor needs unit stride along d.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from jukebox_fast.ops.patterns import Kind

from .common import aligned, alignment, dot, dot_precision, launch, upcast_dot
from .patterns import KIND_COLUMN, key_span, query_layout, query_span, visible

# How _bwd_kv_kernel produces dQ (its DQ constant).
DQ_LATER = tl.constexpr(0)  # not at all: _bwd_q_kernel computes it
DQ_ATOMIC = tl.constexpr(1)  # fp32 atomics into a zeroed buffer
DQ_STORE = tl.constexpr(2)  # stored: the key tile holds every key its queries see

__all__ = ["AttentionConfig", "KERNELS", "MAX_HEAD_DIM", "MAX_FP32_HEAD_DIM", "config_for", "launch_config",
           "dq_in_one_pass", "forward", "backward"]

MAX_HEAD_DIM = 512
# fp32 products run on the CUDA cores, whose operands sit in registers: past 256, bwd_kv's key and
# value chunks alone fill them (every tile tried spilled, Triton 3.6 and 3.9), so wider fp32 heads
# take the PyTorch reference.
MAX_FP32_HEAD_DIM = 256
LOG2E = 1.4426950408889634


@triton.jit
def _program(H):
    """This program's (n·H + h, n, h) from grid axis 2."""
    nh = tl.program_id(2)
    return nh, (nh // H).to(tl.int64), (nh % H).to(tl.int64)


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
def _load_chunks(ptr, rows, ok, stride, D, BLOCK_DK: tl.constexpr, D_CHUNKS: tl.constexpr):
    """The tile of ``rows`` as a tuple of D_CHUNKS width chunks, [rows, BLOCK_DK] each (zeros
    past D and in rows not ``ok``)."""
    chunks = ()
    for c in tl.static_range(D_CHUNKS):
        d = c * BLOCK_DK + tl.arange(0, BLOCK_DK)
        chunks += (tl.load(ptr + rows[:, None] * stride + d[None, :], mask=ok[:, None] & (d < D)[None, :], other=0.0),)
    return chunks


@triton.jit
def _store_chunks(ptr, chunks, rows, ok, stride, D, scale, BLOCK_DK: tl.constexpr, D_CHUNKS: tl.constexpr):
    """Store fp32 width chunks times ``scale`` in ptr's dtype."""
    for c in tl.static_range(D_CHUNKS):
        d = c * BLOCK_DK + tl.arange(0, BLOCK_DK)
        tl.store(ptr + rows[:, None] * stride + d[None, :], (chunks[c] * scale).to(ptr.dtype.element_ty),
                 mask=ok[:, None] & (d < D)[None, :])


@triton.jit
def _zero_chunks(ROWS: tl.constexpr, BLOCK_DK: tl.constexpr, D_CHUNKS: tl.constexpr):
    """D_CHUNKS fp32 accumulators [ROWS, BLOCK_DK]."""
    chunks = ()
    for c in tl.static_range(D_CHUNKS):
        chunks += (tl.zeros([ROWS, BLOCK_DK], tl.float32),)
    return chunks


@triton.jit
def _chunked_dot(a, bs, accs, PRECISION: tl.constexpr, UPCAST: tl.constexpr, D_CHUNKS: tl.constexpr):
    """accs[c] + a·bs[c] for every width chunk c: a [M, K], bs[c] [K, BLOCK_DK]."""
    out = ()
    for c in tl.static_range(D_CHUNKS):
        out += (dot(a.to(bs[c].dtype), bs[c], accs[c], PRECISION, UPCAST),)
    return out


@triton.jit
def _chunked_scores(a, bs, acc, PRECISION: tl.constexpr, UPCAST: tl.constexpr, D_CHUNKS: tl.constexpr):
    """acc + Σ_c a[c]·bs[c]ᵀ: a row-by-row product over the width, a chunk at a time."""
    for c in tl.static_range(D_CHUNKS):
        acc = dot(a[c], tl.trans(bs[c]), acc, PRECISION, UPCAST)
    return acc


@triton.jit
def _fwd_kernel(
    q_ptr, k_ptr, v_ptr, o_ptr, lse_ptr,
    sq_n, sq_h, sq_t, sk_n, sk_h, sk_t, sv_n, sv_h, sv_t, so_n, so_h, so_t,
    H, LQ, LK, D, BC, PRIME, qk_scale,
    KIND: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_DK: tl.constexpr, D_CHUNKS: tl.constexpr,
    PRECISION: tl.constexpr, UPCAST: tl.constexpr, ALIGN: tl.constexpr,
):
    pid_m = tl.program_id(0)
    nh, n, h = _program(H)
    D = aligned(D, ALIGN)
    q_ptr += aligned(n * sq_n + h * sq_h, ALIGN)
    k_ptr += aligned(n * sk_n + h * sk_h, ALIGN)
    v_ptr += aligned(n * sv_n + h * sv_h, ALIGN)
    o_ptr += aligned(n * so_n + h * so_h, ALIGN)
    sq_t, sk_t, sv_t, so_t = aligned(sq_t, ALIGN), aligned(sk_t, ALIGN), aligned(sv_t, ALIGN), aligned(so_t, ALIGN)

    base, step, u, q_ok, p, q_rows, lo, hi = _query_tile(pid_m, tl.program_id(1), LQ, LK, BC, PRIME, KIND, BLOCK_M)
    qs = _load_chunks(q_ptr, q_rows, q_ok, sq_t, D, BLOCK_DK, D_CHUNKS)  # loaded once, kept for every key tile

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = _zero_chunks(BLOCK_M, BLOCK_DK, D_CHUNKS)  # the output, [BLOCK_M, BLOCK_DK] per chunk
    for start in range(lo, hi, BLOCK_N):  # the innermost loop: Triton streams its loads num_stages deep
        v_units = start + tl.arange(0, BLOCK_N)  # [BLOCK_N] key units
        k_ok = v_units < hi
        j = base + step * v_units
        k_rows = j.to(tl.int64)
        ks = _load_chunks(k_ptr, k_rows, k_ok, sk_t, D, BLOCK_DK, D_CHUNKS)
        s = _chunked_scores(qs, ks, tl.zeros([BLOCK_M, BLOCK_N], tl.float32), PRECISION, UPCAST, D_CHUNKS)
        vis = visible(p[:, None], u[:, None], j[None, :], v_units[None, :], BC, PRIME, KIND) & k_ok[None, :]
        s = tl.where(vis, s * qk_scale, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)  # a row with nothing visible yet
        alpha = tl.exp2(m_i - m_use)
        pr = tl.exp2(s - m_use[:, None])
        l_i = l_i * alpha + tl.sum(pr, 1)
        vs = _load_chunks(v_ptr, k_rows, k_ok, sv_t, D, BLOCK_DK, D_CHUNKS)
        rescaled = ()
        for c in tl.static_range(D_CHUNKS):
            rescaled += (acc[c] * alpha[:, None],)
        acc = _chunked_dot(pr, vs, rescaled, PRECISION, UPCAST, D_CHUNKS)  # probabilities in v's dtype
        m_i = m_new

    seen = l_i > 0.0
    inv = 1.0 / tl.where(seen, l_i, 1.0)  # a query that sees no key outputs zeros
    out = ()
    for c in tl.static_range(D_CHUNKS):
        out += (acc[c] * inv[:, None],)
    _store_chunks(o_ptr, out, q_rows, q_ok, so_t, D, 1.0, BLOCK_DK, D_CHUNKS)
    lse = tl.where(seen, m_i + tl.log2(tl.where(seen, l_i, 1.0)), float("inf"))
    tl.store(lse_ptr + nh.to(tl.int64) * LQ + q_rows, lse, mask=q_ok)


@triton.jit
def _bwd_kv_kernel(
    q_ptr, k_ptr, v_ptr, do_ptr, lse_ptr, delta_ptr, dk_ptr, dv_ptr, dq_ptr,
    sq_n, sq_h, sq_t, sk_n, sk_h, sk_t, sv_n, sv_h, sv_t, sdo_n, sdo_h, sdo_t,
    sdk_n, sdk_h, sdk_t, sdv_n, sdv_h, sdv_t, sdq_n, sdq_h, sdq_t,
    H, LQ, LK, D, BC, PRIME, qk_scale, scale,
    KIND: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_DK: tl.constexpr, D_CHUNKS: tl.constexpr,
    PRECISION: tl.constexpr, UPCAST: tl.constexpr, DQ: tl.constexpr, ALIGN: tl.constexpr,
):
    pid_n = tl.program_id(0)
    nh, n, h = _program(H)
    D = aligned(D, ALIGN)
    q_ptr += aligned(n * sq_n + h * sq_h, ALIGN)
    k_ptr += aligned(n * sk_n + h * sk_h, ALIGN)
    v_ptr += aligned(n * sv_n + h * sv_h, ALIGN)
    do_ptr += aligned(n * sdo_n + h * sdo_h, ALIGN)
    dk_ptr += aligned(n * sdk_n + h * sdk_h, ALIGN)
    dv_ptr += aligned(n * sdv_n + h * sdv_h, ALIGN)
    sq_t, sk_t, sv_t, sdo_t = aligned(sq_t, ALIGN), aligned(sk_t, ALIGN), aligned(sv_t, ALIGN), aligned(sdo_t, ALIGN)
    sdk_t, sdv_t = aligned(sdk_t, ALIGN), aligned(sdv_t, ALIGN)
    dq_ptr += aligned(n * sdq_n + h * sdq_h, ALIGN)  # DQ_ATOMIC: an fp32 [N, H, LQ, D] buffer
    sdq_t = aligned(sdq_t, ALIGN)
    lse_ptr += nh.to(tl.int64) * LQ
    delta_ptr += nh.to(tl.int64) * LQ

    q_start, base, step, u_lo, u_hi = query_layout(tl.program_id(1), LQ, LK, BC, KIND)
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
    ks = _load_chunks(k_ptr, k_rows, k_ok, sk_t, D, BLOCK_DK, D_CHUNKS)  # this program's keys, loaded once
    vs = _load_chunks(v_ptr, k_rows, k_ok, sv_t, D, BLOCK_DK, D_CHUNKS)

    acc_dk = _zero_chunks(BLOCK_N, BLOCK_DK, D_CHUNKS)  # [BLOCK_N, BLOCK_DK] per chunk
    acc_dv = _zero_chunks(BLOCK_N, BLOCK_DK, D_CHUNKS)
    for start in range(lo, hi, BLOCK_M):  # the innermost loop: Triton streams its loads num_stages deep
        u = start + tl.arange(0, BLOCK_M)  # [BLOCK_M] query units
        q_ok = u < hi
        p = base + step * u
        q_rows = (p - q_start).to(tl.int64)
        qs = _load_chunks(q_ptr, q_rows, q_ok, sq_t, D, BLOCK_DK, D_CHUNKS)  # each chunk serves Sᵀ and dK
        dos = _load_chunks(do_ptr, q_rows, q_ok, sdo_t, D, BLOCK_DK, D_CHUNKS)
        st = _chunked_scores(ks, qs, tl.zeros([BLOCK_N, BLOCK_M], tl.float32), PRECISION, UPCAST, D_CHUNKS)
        dpt = _chunked_scores(vs, dos, tl.zeros([BLOCK_N, BLOCK_M], tl.float32), PRECISION, UPCAST, D_CHUNKS)
        lse = tl.load(lse_ptr + q_rows, mask=q_ok, other=float("inf"))
        delta = tl.load(delta_ptr + q_rows, mask=q_ok, other=0.0)
        vis = visible(p[None, :], u[None, :], j[:, None], v_units[:, None], BC, PRIME, KIND) & k_ok[:, None]
        pt = tl.where(vis, tl.exp2(st * qk_scale - lse[None, :]), 0.0)  # [BLOCK_N, BLOCK_M]
        dst = pt * (dpt - delta[None, :])
        acc_dv = _chunked_dot(pt, dos, acc_dv, PRECISION, UPCAST, D_CHUNKS)
        acc_dk = _chunked_dot(dst, qs, acc_dk, PRECISION, UPCAST, D_CHUNKS)
        if DQ != DQ_LATER:
            dqs = _chunked_dot(tl.trans(dst), ks, _zero_chunks(BLOCK_M, BLOCK_DK, D_CHUNKS), PRECISION, UPCAST,
                               D_CHUNKS)  # [BLOCK_M, BLOCK_DK] per chunk
            if DQ == DQ_STORE:  # these queries see no key outside this tile: their dQ is whole
                _store_chunks(dq_ptr, dqs, q_rows, q_ok, sdq_t, D, scale, BLOCK_DK, D_CHUNKS)
            else:
                for c in tl.static_range(D_CHUNKS):
                    d = c * BLOCK_DK + tl.arange(0, BLOCK_DK)
                    # A plain sum: relaxed ordering, without the fence acq_rel (the default) puts before each.
                    tl.atomic_add(dq_ptr + q_rows[:, None] * sdq_t + d[None, :], dqs[c] * scale,
                                  mask=q_ok[:, None] & (d < D)[None, :], sem="relaxed")

    _store_chunks(dk_ptr, acc_dk, k_rows, k_ok, sdk_t, D, scale, BLOCK_DK, D_CHUNKS)
    _store_chunks(dv_ptr, acc_dv, k_rows, k_ok, sdv_t, D, 1.0, BLOCK_DK, D_CHUNKS)


@triton.jit
def _bwd_q_kernel(
    q_ptr, k_ptr, v_ptr, do_ptr, lse_ptr, delta_ptr, dq_ptr,
    sq_n, sq_h, sq_t, sk_n, sk_h, sk_t, sv_n, sv_h, sv_t, sdo_n, sdo_h, sdo_t, sdq_n, sdq_h, sdq_t,
    H, LQ, LK, D, BC, PRIME, qk_scale, scale,
    KIND: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_DK: tl.constexpr, D_CHUNKS: tl.constexpr,
    PRECISION: tl.constexpr, UPCAST: tl.constexpr, ALIGN: tl.constexpr,
):
    pid_m = tl.program_id(0)
    nh, n, h = _program(H)
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

    base, step, u, q_ok, p, q_rows, lo, hi = _query_tile(pid_m, tl.program_id(1), LQ, LK, BC, PRIME, KIND, BLOCK_M)
    qs = _load_chunks(q_ptr, q_rows, q_ok, sq_t, D, BLOCK_DK, D_CHUNKS)  # this program's queries, loaded once
    dos = _load_chunks(do_ptr, q_rows, q_ok, sdo_t, D, BLOCK_DK, D_CHUNKS)
    lse = tl.load(lse_ptr + q_rows, mask=q_ok, other=float("inf"))
    delta = tl.load(delta_ptr + q_rows, mask=q_ok, other=0.0)

    acc = _zero_chunks(BLOCK_M, BLOCK_DK, D_CHUNKS)  # dQ, [BLOCK_M, BLOCK_DK] per chunk
    for start in range(lo, hi, BLOCK_N):  # the innermost loop: Triton streams its loads num_stages deep
        v_units = start + tl.arange(0, BLOCK_N)
        k_ok = v_units < hi
        j = base + step * v_units
        k_rows = j.to(tl.int64)
        ks = _load_chunks(k_ptr, k_rows, k_ok, sk_t, D, BLOCK_DK, D_CHUNKS)  # each chunk serves S and dQ
        vs = _load_chunks(v_ptr, k_rows, k_ok, sv_t, D, BLOCK_DK, D_CHUNKS)
        s = _chunked_scores(qs, ks, tl.zeros([BLOCK_M, BLOCK_N], tl.float32), PRECISION, UPCAST, D_CHUNKS)
        dp = _chunked_scores(dos, vs, tl.zeros([BLOCK_M, BLOCK_N], tl.float32), PRECISION, UPCAST, D_CHUNKS)
        vis = visible(p[:, None], u[:, None], j[None, :], v_units[None, :], BC, PRIME, KIND) & k_ok[None, :]
        pr = tl.where(vis, tl.exp2(s * qk_scale - lse[:, None]), 0.0)
        ds = pr * (dp - delta[:, None])
        acc = _chunked_dot(ds, ks, acc, PRECISION, UPCAST, D_CHUNKS)

    _store_chunks(dq_ptr, acc, q_rows, q_ok, sdq_t, D, scale, BLOCK_DK, D_CHUNKS)


@triton.jit
def _delta_kernel(
    do_ptr, o_ptr, delta_ptr, sdo_n, sdo_h, sdo_t, so_n, so_h, so_t, H, LQ, D,
    BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, ALIGN: tl.constexpr,
):
    """Δ = rowsum(dO ∘ O) in fp32 [N·H, LQ]: the softmax backward's correction term, each row of
    dO and O read once (in PyTorch it took fp32 copies of both first). BLOCK_D covers the width."""
    nh, n, h = _program(H)
    D = aligned(D, ALIGN)
    do_ptr += aligned(n * sdo_n + h * sdo_h, ALIGN)
    o_ptr += aligned(n * so_n + h * so_h, ALIGN)
    sdo_t, so_t = aligned(sdo_t, ALIGN), aligned(so_t, ALIGN)
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)  # [BLOCK_M] queries
    ok = rows < LQ
    rows64 = rows.to(tl.int64)
    d = tl.arange(0, BLOCK_D)
    m = ok[:, None] & (d < D)[None, :]
    do = tl.load(do_ptr + rows64[:, None] * sdo_t + d[None, :], mask=m, other=0.0).to(tl.float32)
    o = tl.load(o_ptr + rows64[:, None] * so_t + d[None, :], mask=m, other=0.0).to(tl.float32)
    tl.store(delta_ptr + nh.to(tl.int64) * LQ + rows64, tl.sum(do * o, 1), mask=ok)


# -- launchers ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class AttentionConfig:
    """Tile sizes and launch options of one kernel."""

    block_m: int  # query tile
    block_n: int  # key tile
    block_dk: int  # width chunk: every operand and accumulator is held as ceil(d / block_dk) chunks
    num_warps: int = 4
    num_stages: int = 3


# bwd_kv_dq: _bwd_kv_kernel with dQ's product in its key loop (DQ_STORE or DQ_ATOMIC); bwd_kv
# without it (DQ_LATER), bwd_q after it.
KERNELS = ("fwd", "bwd_kv", "bwd_kv_dq", "bwd_q")


def _width_chunk(d: int) -> int:
    # The largest chunk that pads d by at most an eighth: 80 -> 16 (80), 150 -> 32 (160), 256 -> 64.
    for chunk in (64, 32):
        if triton.cdiv(d, chunk) * chunk <= d * 9 / 8:
            return chunk
    return 16


# Tiles per kernel: (block_m, block_n, block_dk, num_warps, num_stages), by element size (2: bf16
# and fp16 on the tensor cores; 4: fp32 on the CUDA cores) and width class (_width_class; fp32
# makes no aligned/unaligned difference). Each is the largest candidate tried that fits an H200
# block (shared memory, registers, no spills) for every pattern with both Triton 3.6 and 3.9, with
# num_stages 3, so that a copy stays in flight while the previous tile is multiplied (with 2 the
# pipeliner waits for every copy at the top of each trip). The resource check
# (benchmarks/kernel_resources.py) compiles every configuration chosen here. Not yet timed on a
# GPU. block_dk 0: _width_chunk(d). The program tile of bwd_kv is block_n keys, of bwd_q block_m
# queries. bwd_kv's key tiles are as long as registers allow, since every query tile that sees
# them is read once per key tile: 128 keys in 16 bits up to 128 wide (a whole 128-unit column of
# the released shapes, so column layers take one pass; 80 wide in 32-wide chunks, since 16-wide
# ones spill) and in fp32's bwd_kv_dq up to 128, 64 in fp32's bwd_kv and at 150 in bwd_kv_dq
# (whole 64-long blocks, so block and previous-block layers take one pass). Heads of 256 and 480
# keep both accumulators in registers only with 16-32 keys a program (mma.sync, not wgmma), and
# read each query tile two to four times.
# bwd_q's query tile is 256 up to 128 wide and 128 up to 256: each query tile reads the keys it
# sees, so 256 read them half as often as 128 (a deterministic dense backward moves 0.98x its
# floor at 64-80 wide, was 1.27; 1.84 at 150, was 2.41; 2.99 at 256, was 3.56).
# The forward's query tile: 128 at 256 wide too (a whole 128-long column in one tile, where 64
# read each column's keys twice), and 128 in fp32 up to 128 wide (32 read a 64-key block or a
# column two to four times); fp32 heads of 129-256 spill at 128 queries with Triton 3.6.
_TILES = {
    ("fwd", 2, "64"): (128, 64, 0, 4, 3), ("fwd", 2, "128"): (128, 64, 0, 8, 3),
    ("fwd", 2, "256"): (128, 32, 0, 8, 3), ("fwd", 2, "256, unaligned"): (128, 32, 0, 8, 3),
    ("fwd", 2, "512"): (64, 16, 128, 8, 3),
    ("bwd_kv", 2, "64"): (32, 128, 0, 8, 3), ("bwd_kv", 2, "128"): (16, 128, 32, 8, 3),
    ("bwd_kv", 2, "256"): (32, 32, 0, 8, 3), ("bwd_kv", 2, "256, unaligned"): (32, 64, 0, 8, 3),
    ("bwd_kv", 2, "512"): (16, 32, 128, 8, 3),
    ("bwd_kv_dq", 2, "64"): (32, 128, 0, 8, 3), ("bwd_kv_dq", 2, "128"): (16, 128, 32, 8, 3),
    ("bwd_kv_dq", 2, "256"): (32, 32, 0, 8, 3), ("bwd_kv_dq", 2, "256, unaligned"): (16, 64, 0, 8, 3),
    ("bwd_kv_dq", 2, "512"): (32, 16, 128, 8, 3),
    ("bwd_q", 2, "64"): (256, 32, 0, 8, 3), ("bwd_q", 2, "128"): (256, 32, 0, 8, 3),
    ("bwd_q", 2, "256"): (128, 16, 0, 8, 3), ("bwd_q", 2, "256, unaligned"): (128, 32, 0, 8, 3),
    ("bwd_q", 2, "512"): (32, 32, 128, 8, 3),
    ("fwd", 4, "64"): (128, 32, 16, 8, 3), ("fwd", 4, "128"): (128, 32, 16, 8, 3), ("fwd", 4, "256"): (32, 16, 32, 4, 3),
    ("bwd_kv", 4, "64"): (16, 64, 32, 8, 3), ("bwd_kv", 4, "128"): (16, 64, 16, 8, 3),
    ("bwd_kv", 4, "256"): (16, 16, 32, 4, 3),
    ("bwd_kv_dq", 4, "64"): (16, 128, 16, 8, 3), ("bwd_kv_dq", 4, "128"): (16, 128, 16, 8, 3),
    ("bwd_kv_dq", 4, "256"): (16, 16, 16, 8, 3),
    ("bwd_q", 4, "64"): (16, 16, 16, 8, 3), ("bwd_q", 4, "128"): (16, 16, 64, 4, 3), ("bwd_q", 4, "256"): (32, 16, 16, 4, 3),
}


# Forward tiles of the layers whose queries see long runs of keys (dense, prime, cross): every
# query tile reads all the keys it sees, so 256 queries read them half as often as 128, which
# brings heads up to 128 under the bytes rule. The local layers keep 128: a query tile there
# spans blocks whose keys it must mask, and 256 would double that wasted work. Wider heads: 256
# queries spill or overflow shared memory.
_LONG_RUNS = (int(Kind.DENSE), int(Kind.PRIME), int(Kind.CROSS))
_LONG_TILES = {("fwd", 2, "64"): (256, 32, 0, 8, 3), ("fwd", 2, "128"): (256, 32, 0, 8, 3)}


def _width_class(d: int) -> str:
    """16-bit heads up to 64, 128, 256 or 512 wide; a head up to 256 whose width is not a multiple
    of 8 elements (150: the 5b priors) loads 4 bytes at a time and needs other tiles."""
    for top in (64, 128, 256):
        if d <= top:
            return str(top) if top < 256 or d % 8 == 0 else "256, unaligned"
    return "512"


def config_for(d: int, dtype: torch.dtype, kernel: str = "fwd", kind: int | None = None) -> AttentionConfig:
    """Tiles of ``kernel`` (one of :data:`KERNELS`) for head width d, this dtype and (the
    forward's) pattern kind."""
    width = _width_class(d)
    key = (kernel, dtype.itemsize, width.removesuffix(", unaligned") if dtype == torch.float32 else width)
    tiles = _LONG_TILES.get(key) if kind in _LONG_RUNS else None
    block_m, block_n, block_dk, num_warps, num_stages = tiles or _TILES[key]
    return AttentionConfig(block_m, block_n, block_dk or _width_chunk(d), num_warps, num_stages)


def launch_config(kind: int, d: int, dtype: torch.dtype, cfg: AttentionConfig, align: int) -> tuple[dict, dict]:
    """(compile-time constants, launch options) of a kernel with tiles ``cfg``."""
    constexprs = dict(
        KIND=kind, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_DK=cfg.block_dk,
        D_CHUNKS=triton.cdiv(d, cfg.block_dk),
        PRECISION=dot_precision(dtype, "ieee"), UPCAST=upcast_dot(dtype), ALIGN=align,
    )
    return constexprs, dict(num_warps=cfg.num_warps, num_stages=cfg.num_stages, enable_fp_fusion=True)


def _grid(kind: int, length: int, lk: int, block: int, block_ctx: int, nh: int):
    """(tiles, groups, N·H) covering ``length`` positions (queries or keys) of a key sequence of
    ``lk``; column attention has one group per column."""
    if kind == KIND_COLUMN:
        groups = min(block_ctx, lk)
        tiles = triton.cdiv(triton.cdiv(length, block_ctx), block)
    else:
        groups, tiles = 1, triton.cdiv(length, block)
    return tiles, groups, nh


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
    cfg = cfg or config_for(d, q.dtype, "fwd", int(kind))
    constexprs, options = launch_config(kind, d, q.dtype, cfg, alignment(d, q, k, v, out))
    launch(_fwd_kernel, _grid(kind, lq, lk, cfg.block_m, block_ctx, n * h),
           q, k, v, out, lse, *_strides(q), *_strides(k), *_strides(v), *_strides(out),
           h, lq, lk, d, block_ctx, prime_len, scale * LOG2E, **constexprs, **options)


def dq_in_one_pass(kind: int, lk: int, block_ctx: int, prime_len: int, block_n: int) -> bool:
    """Whether a key tile of ``block_n`` holds every key that each query it reaches sees, so that
    ``_bwd_kv_kernel`` can store dQ itself (DQ_STORE): all keys in one tile; whole blocks per tile
    in block and previous-block layers (a query sees its own block, or the one before); a whole
    column in one tile; the primed keys in one tile."""
    if lk <= block_n:
        return True
    if kind in (Kind.BLOCK, Kind.PREV_BLOCK):
        return block_n % block_ctx == 0
    if kind == Kind.COLUMN:
        return triton.cdiv(lk, block_ctx) <= block_n
    return kind == Kind.PRIME and prime_len <= block_n


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
    delta = torch.empty(n, h, lq, dtype=torch.float32, device=q.device)  # Δ = rowsum(dO ∘ O)
    block_d = max(16, triton.next_power_of_2(d))
    block_m = max(4, 2048 // block_d)  # a [block_m, block_d] tile: 16 fp32 values a thread for each of dO and O
    launch(_delta_kernel, (triton.cdiv(lq, block_m), 1, n * h), do, out, delta, *_strides(do), *_strides(out), h, lq,
           d, BLOCK_M=block_m, BLOCK_D=block_d, ALIGN=alignment(d, do, out), num_warps=4)
    common = (h, lq, lk, d, block_ctx, prime_len, scale * LOG2E, scale)
    align = alignment(d, q, k, v, do, dq, dk, dv)
    # The one-pass tiles (dQ's product in the key loop too) serve DQ_STORE and DQ_ATOMIC.
    one_pass = cfg or config_for(d, q.dtype, "bwd_kv_dq", int(kind))
    dq_acc = None
    if dq_in_one_pass(kind, lk, block_ctx, prime_len, one_pass.block_n):
        mode, kv_cfg, dq_out = DQ_STORE.value, one_pass, dq
        # No key program reaches a query that sees no key: the first block of a previous-block
        # layer, every query of a prime layer with no primed keys. Their dQ is zero.
        blind = {Kind.PREV_BLOCK: block_ctx - (lk - lq), Kind.PRIME: lq if prime_len == 0 else 0}.get(kind, 0)
        dq[:, :, : max(0, blind)].zero_()
    elif deterministic:
        mode, kv_cfg, dq_out = DQ_LATER.value, cfg or config_for(d, q.dtype, "bwd_kv", int(kind)), dq
    else:
        dq_acc = torch.zeros(n, h, lq, d, dtype=torch.float32, device=q.device)  # fp32 partial sums
        mode, kv_cfg, dq_out = DQ_ATOMIC.value, one_pass, dq_acc
    constexprs, options = launch_config(kind, d, q.dtype, kv_cfg, align)
    launch(_bwd_kv_kernel, _grid(kind, lk, lk, kv_cfg.block_n, block_ctx, n * h),
           q, k, v, do, lse, delta, dk, dv, dq_out,
           *_strides(q), *_strides(k), *_strides(v), *_strides(do), *_strides(dk), *_strides(dv), *_strides(dq_out),
           *common, DQ=mode, **constexprs, **options)
    if dq_acc is not None:
        dq.copy_(dq_acc)
    if mode != DQ_LATER.value:
        return
    q_cfg = cfg or config_for(d, q.dtype, "bwd_q", int(kind))
    constexprs, options = launch_config(kind, d, q.dtype, q_cfg, align)
    launch(_bwd_q_kernel, _grid(kind, lq, lk, q_cfg.block_m, block_ctx, n * h),
           q, k, v, do, lse, delta, dq,
           *_strides(q), *_strides(k), *_strides(v), *_strides(do), *_strides(dq),
           *common, **constexprs, **options)
