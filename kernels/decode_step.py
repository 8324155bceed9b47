"""One decode step through a transformer layer in four launches (with ``kernels.decode``'s attention).

A layer is the prior's pre-LN block (``jukebox_fast.ops.decode_layers`` states it):

1. ``ln_qkv``: LayerNorm of the rows entering the layer, the q | k | v projection (bias added),
   q into a scratch row, k and v into the layer's caches at this position's slot;
2. attention over the cache (``kernels.decode``: split over the cache where that fills the GPU);
3. ``proj_residual``: the output projection of the attention, h₁ = x + a (the MLP's LayerNorm
   input), and the layer's output row initialised to x + r·(a + b₂);
4. ``mlp``: LayerNorm of h₁, the MLP's first product, quick-GELU, and its second product: each
   program takes a slice of the hidden units and adds its share of the second product into the
   output row.

Every product is a matrix-vector product for up to BLOCK_R samples: each program reads its tile
of the weight once (a step is bound by reading the weights) and the samples' rows. Operands go
into ``tl.dot`` in the weights' dtype with fp32 accumulation, as the reference multiplies in the
step's dtype; LayerNorm statistics, softmax and the GELU are fp32.

The residual stream between the kernels is fixed point: int64, 2⁻³² units. The MLP's slices add
into the output row with integer atomics, whose sum does not depend on the order they land in,
so a step is bit-repeatable (sampling resumes to the same codes), where fp32 atomics are not.
Its range, ±2³¹, is far past the values a residual stream holds.

Launchers fill buffers the caller (``jukebox_fast.ops.decode_layers``) allocated once per stack.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .common import dot, dot_precision, launch, upcast_dot
from .patterns import KIND_CROSS, cache_slot

__all__ = ["FIXED_SCALE", "ln_qkv", "proj_residual", "mlp", "step_config"]

FIXED_SCALE = 2.0**32  # the residual stream's fixed-point unit is 1 / FIXED_SCALE


@triton.jit
def _to_fixed(v):
    return (v * 4294967296.0).to(tl.int64)


@triton.jit
def _from_fixed(q):
    return q.to(tl.float32) * 2.3283064365386963e-10  # 2⁻³²


@triton.jit
def _row_stats(x_ptr, rows, row_ok, W, FIXED: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr):
    """Mean and 1/σ-ready variance of rows [BLOCK_R] of x [N, W] (fp32, or fixed point when
    FIXED), in two passes as layer_norm computes them."""
    total = tl.zeros([BLOCK_R], tl.float32)
    for k0 in range(0, W, BLOCK_K):
        x = _load_rows(x_ptr, rows, row_ok, k0, W, FIXED, BLOCK_K)
        total += tl.sum(x, 1)
    mean = total / W
    sq = tl.zeros([BLOCK_R], tl.float32)
    for k0 in range(0, W, BLOCK_K):
        x = _load_rows(x_ptr, rows, row_ok, k0, W, FIXED, BLOCK_K)
        k = k0 + tl.arange(0, BLOCK_K)
        centred = tl.where((k < W)[None, :], x - mean[:, None], 0.0)
        sq += tl.sum(centred * centred, 1)
    return mean, sq / W


@triton.jit
def _load_rows(x_ptr, rows, row_ok, k0, W, FIXED: tl.constexpr, BLOCK_K: tl.constexpr):
    """x[rows, k0 : k0 + BLOCK_K] as fp32 [BLOCK_R, BLOCK_K] (zeros outside)."""
    k = k0 + tl.arange(0, BLOCK_K)
    ok = row_ok[:, None] & (k < W)[None, :]
    x = tl.load(x_ptr + rows.to(tl.int64)[:, None] * W + k[None, :], mask=ok, other=0)
    return _from_fixed(x) if FIXED else x.to(tl.float32)


@triton.jit
def _ln_rows(x_ptr, lnw_ptr, lnb_ptr, rows, row_ok, k0, W, mean, rstd, FIXED: tl.constexpr, BLOCK_K: tl.constexpr):
    """LayerNorm of x[rows, k0 : k0 + BLOCK_K] (zeros outside), fp32."""
    k = k0 + tl.arange(0, BLOCK_K)
    k_ok = k < W
    x = _load_rows(x_ptr, rows, row_ok, k0, W, FIXED, BLOCK_K)
    g = tl.load(lnw_ptr + k, mask=k_ok, other=0.0)
    b = tl.load(lnb_ptr + k, mask=k_ok, other=0.0)
    h = (x - mean[:, None]) * rstd[:, None] * g[None, :] + b[None, :]
    return tl.where(row_ok[:, None] & k_ok[None, :], h, 0.0)


@triton.jit
def _ln_qkv_kernel(
    x_ptr, lnw_ptr, lnb_ptr, w_ptr, b_ptr, q_ptr, kc_ptr, vc_ptr, pos_ptr,
    N, W, OUT, NSTATE, D, sk_n, sk_h, sk_s, BC, NB, PRIME, eps,
    KIND: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_O: tl.constexpr,
    PRECISION: tl.constexpr, UPCAST: tl.constexpr,
):
    pid_o = tl.program_id(0)
    rows = tl.program_id(1) * BLOCK_R + tl.arange(0, BLOCK_R)  # [BLOCK_R] samples
    row_ok = rows < N
    mean, var = _row_stats(x_ptr, rows, row_ok, W, True, BLOCK_R, BLOCK_K)
    rstd = 1.0 / tl.sqrt(var + eps)
    cols = pid_o * BLOCK_O + tl.arange(0, BLOCK_O)  # [BLOCK_O] of q | k | v
    col_ok = cols < OUT
    acc = tl.zeros([BLOCK_R, BLOCK_O], tl.float32)
    for k0 in range(0, W, BLOCK_K):
        h = _ln_rows(x_ptr, lnw_ptr, lnb_ptr, rows, row_ok, k0, W, mean, rstd, True, BLOCK_K)
        k = k0 + tl.arange(0, BLOCK_K)
        w = tl.load(w_ptr + k.to(tl.int64)[:, None] * OUT + cols[None, :], mask=(k < W)[:, None] & col_ok[None, :],
                    other=0.0)  # [BLOCK_K, BLOCK_O]
        acc = dot(h.to(w.dtype), w, acc, PRECISION, UPCAST)
    y = acc + tl.load(b_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    rows64 = rows.to(tl.int64)
    tl.store(q_ptr + rows64[:, None] * NSTATE + cols[None, :], y, mask=row_ok[:, None] & (cols < NSTATE)[None, :])
    if KIND != KIND_CROSS:  # self-attention: k and v of this position into the caches (cross: q only)
        slot = cache_slot(tl.load(pos_ptr), BC, NB, PRIME, KIND)
        kv = cols - NSTATE  # [BLOCK_O] column within k | v
        is_v = kv >= NSTATE
        c = tl.where(is_v, kv - NSTATE, kv)
        addr = rows64[:, None] * sk_n + (c // D)[None, :] * sk_h + slot * sk_s + (c % D)[None, :]
        ok = row_ok[:, None] & (col_ok & (kv >= 0))[None, :]
        tl.store(kc_ptr + addr, y.to(kc_ptr.dtype.element_ty), mask=ok & ~is_v[None, :])
        tl.store(vc_ptr + addr, y.to(vc_ptr.dtype.element_ty), mask=ok & is_v[None, :])


@triton.jit
def _proj_residual_kernel(
    a_ptr, w_ptr, b_ptr, b2_ptr, x_ptr, h1_ptr, out_ptr, N, NSTATE, W, res_scale,
    BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_O: tl.constexpr,
    PRECISION: tl.constexpr, UPCAST: tl.constexpr,
):
    pid_o = tl.program_id(0)
    rows = tl.program_id(1) * BLOCK_R + tl.arange(0, BLOCK_R)
    row_ok = rows < N
    rows64 = rows.to(tl.int64)
    cols = pid_o * BLOCK_O + tl.arange(0, BLOCK_O)
    col_ok = cols < W
    acc = tl.zeros([BLOCK_R, BLOCK_O], tl.float32)
    for k0 in range(0, NSTATE, BLOCK_K):
        a = _load_rows(a_ptr, rows, row_ok, k0, NSTATE, False, BLOCK_K)
        k = k0 + tl.arange(0, BLOCK_K)
        w = tl.load(w_ptr + k.to(tl.int64)[:, None] * W + cols[None, :], mask=(k < NSTATE)[:, None] & col_ok[None, :],
                    other=0.0)
        acc = dot(a.to(w.dtype), w, acc, PRECISION, UPCAST)
    t = acc + tl.load(b_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]  # the attention's output
    ok = row_ok[:, None] & col_ok[None, :]
    at = rows64[:, None] * W + cols[None, :]
    x = _from_fixed(tl.load(x_ptr + at, mask=ok, other=0))
    tl.store(h1_ptr + at, x + t, mask=ok)
    b2 = tl.load(b2_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    tl.store(out_ptr + at, _to_fixed(x + res_scale * (t + b2)), mask=ok)  # the MLP's slices add the rest


@triton.jit
def _mlp_kernel(
    h1_ptr, lnw_ptr, lnb_ptr, w1_ptr, b1_ptr, w2_ptr, out_ptr, N, W, HIDDEN, eps, res_scale,
    BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_O: tl.constexpr,
    PRECISION: tl.constexpr, UPCAST: tl.constexpr,
):
    pid_j = tl.program_id(0)
    rows = tl.program_id(1) * BLOCK_R + tl.arange(0, BLOCK_R)
    row_ok = rows < N
    rows64 = rows.to(tl.int64)
    mean, var = _row_stats(h1_ptr, rows, row_ok, W, False, BLOCK_R, BLOCK_K)
    rstd = 1.0 / tl.sqrt(var + eps)
    j = pid_j * BLOCK_J + tl.arange(0, BLOCK_J)  # [BLOCK_J] hidden units of this program
    j_ok = j < HIDDEN
    f = tl.zeros([BLOCK_R, BLOCK_J], tl.float32)
    for k0 in range(0, W, BLOCK_K):
        h = _ln_rows(h1_ptr, lnw_ptr, lnb_ptr, rows, row_ok, k0, W, mean, rstd, False, BLOCK_K)
        k = k0 + tl.arange(0, BLOCK_K)
        w1 = tl.load(w1_ptr + k.to(tl.int64)[:, None] * HIDDEN + j[None, :], mask=(k < W)[:, None] & j_ok[None, :],
                     other=0.0)
        f = dot(h.to(w1.dtype), w1, f, PRECISION, UPCAST)
    f = f + tl.load(b1_ptr + j, mask=j_ok, other=0.0).to(tl.float32)[None, :]
    f = f * tl.sigmoid(1.702 * f)  # quick-GELU
    f = tl.where(row_ok[:, None] & j_ok[None, :], f, 0.0).to(w2_ptr.dtype.element_ty)  # as the reference rounds it
    for o0 in range(0, W, BLOCK_O):
        cols = o0 + tl.arange(0, BLOCK_O)
        col_ok = cols < W
        w2 = tl.load(w2_ptr + j.to(tl.int64)[:, None] * W + cols[None, :], mask=j_ok[:, None] & col_ok[None, :],
                     other=0.0)  # [BLOCK_J, BLOCK_O]: rows j of the second product, read once
        m = dot(f, w2, tl.zeros([BLOCK_R, BLOCK_O], tl.float32), PRECISION, UPCAST)
        tl.atomic_add(out_ptr + rows64[:, None] * W + cols[None, :], _to_fixed(res_scale * m),
                      mask=row_ok[:, None] & col_ok[None, :], sem="relaxed")


def step_config(n_rows: int, width: int, hidden: int, dtype: torch.dtype, sms: int = 132) -> dict:
    """Tiles of the three kernels: BLOCK_R samples per program (the rest in more programs), BLOCK_K
    inputs per loaded chunk, BLOCK_O outputs per program (16, so that even a 1440-wide q | k | v
    is 90 programs), BLOCK_J hidden units per MLP program: the widest power of two that still
    gives every SM a program (fewer programs add fewer atomics). Not yet timed on a GPU."""
    block_r = 16
    block_j = 16
    while hidden // (2 * block_j) >= sms and block_j < 64:
        block_j *= 2
    return dict(BLOCK_R=block_r, BLOCK_K=128, BLOCK_O=16, BLOCK_J=block_j, num_warps=4,
                PRECISION=dot_precision(dtype, "tf32x3"), UPCAST=upcast_dot(dtype))


def _options(cfg: dict, *names: str) -> dict:
    return {k: cfg[k] for k in ("BLOCK_R", "num_warps", "PRECISION", "UPCAST", *names)}


def ln_qkv(x, ln_w, ln_b, w, b, q, k_cache, v_cache, position, n_state: int, d: int, kind: int, block_ctx: int,
           blocks: int, prime_len: int, enc_length: int, eps: float, cfg: dict) -> None:
    """x int64 [N, W] (fixed point) -> q fp32 [N, n_state]; for self-attention also k and v into
    k_cache, v_cache [N, H, S, d] (contiguous) at ``position``'s slot. kind ... enc_length: the
    cache layout, as ``CacheLayout.kernel_args()`` gives it (enc_length unused: cross-attention
    caches are not written here)."""
    n, width = x.shape
    out = w.shape[1]
    grid = (triton.cdiv(out, cfg["BLOCK_O"]), triton.cdiv(n, cfg["BLOCK_R"]))
    launch(_ln_qkv_kernel, grid, x, ln_w, ln_b, w, b, q, k_cache, v_cache, position,
           n, width, out, n_state, d, k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
           block_ctx, blocks, prime_len, eps, KIND=kind, **_options(cfg, "BLOCK_K", "BLOCK_O"))


def proj_residual(a, w, b, b2, x, h1, out, res_scale: float, cfg: dict) -> None:
    """a fp32 [N, n_state], x int64 [N, W] -> h1 fp32 [N, W] = x + a·w + b, and out int64 [N, W]
    = x + res_scale·(a·w + b + b2)."""
    n, n_state = a.shape
    width = w.shape[1]
    grid = (triton.cdiv(width, cfg["BLOCK_O"]), triton.cdiv(n, cfg["BLOCK_R"]))
    launch(_proj_residual_kernel, grid, a, w, b, b2, x, h1, out, n, n_state, width, float(res_scale),
           **_options(cfg, "BLOCK_K", "BLOCK_O"))


def mlp(h1, ln_w, ln_b, w1, b1, w2, out, eps: float, res_scale: float, cfg: dict) -> None:
    """out int64 [N, W] += res_scale · quick_gelu(LN(h1)·w1 + b1)·w2, slice by slice."""
    n, width = h1.shape
    hidden = w1.shape[1]
    grid = (triton.cdiv(hidden, cfg["BLOCK_J"]), triton.cdiv(n, cfg["BLOCK_R"]))
    launch(_mlp_kernel, grid, h1, ln_w, ln_b, w1, b1, w2, out, n, width, hidden, eps, float(res_scale),
           BLOCK_O=64, **_options(cfg, "BLOCK_K", "BLOCK_J"))
