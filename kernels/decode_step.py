"""One decode step through a transformer layer in three launches (with ``kernels.decode``'s attention).

A layer is the prior's pre-LN block (``jukebox_fast.ops.decode_layers`` states it):

1. ``qkv``: LayerNorm of the rows entering the layer, the q | k | v projection (bias added),
   q into a scratch row, k and v into the layer's caches at this position's slot;
2. attention over the cache (``kernels.decode``: split over the cache where that fills the GPU);
3. ``proj_mlp``, three phases of one launch:

   - proj: the attention's output projection a, and h₁ = x + a, the MLP's LayerNorm input;
   - fc: LayerNorm of h₁, the MLP's first product and quick-GELU: f;
   - out: the MLP's second product m and the layer's output x + a + m (x + r·(a + m)).

Every product (a launch, or a phase) runs for up to BLOCK_R samples (``_product``): a program
owns BLOCK_O output columns over the whole input width, so each weight is read once, and no two
programs add into one element: no sums by atomics, and a step is bit-repeatable (sampling
resumes to the same codes). The column tile widens with the rows a program holds
(:func:`step_config`), so the sample rows every program reads stay an eighth of its weights.

Why phases rather than launches: at batch 1 a layer's floor is 6-31 µs (its bytes at the H200's
bandwidth), and starting a kernel after the one it depends on costs about 2 µs even in a CUDA
graph (not yet measured here). A phase boundary still waits for the slowest program of the phase
before, as a launch boundary does; what it saves is the launch. A phase needs whole rows of the
phase before it (a LayerNorm, or every hidden unit), so its programs wait for that phase's
count. Programs take their phase from a ticket (an atomic counter: the order in which they
start), not from their program id, so a program waits only for programs that started before it,
which are running or done: the launch cannot deadlock however the GPU schedules its grid (a
single-pass scan's decoupled look-back relies on the same order), and the interpreter, which
runs programs in order, never waits. The launch's last program sets the counters back to zero
for the next step (or graph replay). Splitting a product's inner dimension across programs
instead (the MLP's hidden units) would need partial sums of every output element: atomics, or
rows of partials as large as the weights at batch 16.

LayerNorm statistics are computed once, where the rows are made: proj and out write each
column tile's mean and variance per row ([tiles, N, 2], fp32), and the consumer (fc, the next
layer's ``qkv``) merges the tiles in order (Chan's parallel formula) before its product. The
step's first rows come from outside; their statistics are the launcher's one PyTorch reduction.

Rows between products are in the step's dtype, rounded where the reference step rounds them
(its q, attention output, a, h₁, f and residual are tensors of that dtype); products take
operands of that dtype with fp32 accumulation; statistics, softmax and GELU are fp32. Weights
may be int8 with one fp32 scale per output column (``weights="int8"``): a tile is widened in
registers, and the column's scale multiplies the product.

Launchers fill buffers the caller (``jukebox_fast.ops.decode_layers``) allocated once per stack.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .common import aligned, alignment, dot, dot_precision, launch, upcast_dot
from .patterns import KIND_CROSS, cache_slot

__all__ = ["qkv", "proj_mlp", "step_config", "tiles", "row_stats"]


@triton.jit
def _merged_stats(stats_ptr, rows, row_ok, N, K, T, TILE):
    """Mean and variance [BLOCK_R] of rows [N, K] whose T column tiles (TILE wide, the last
    shorter) left their own (mean, variance) in stats [T, N, 2]: merged in tile order, so every
    program gets the same bits."""
    mean = tl.zeros(rows.shape, tl.float32)
    m2 = tl.zeros(rows.shape, tl.float32)
    count = tl.full((), 0.0, tl.float32)
    for t in range(T):
        c = tl.minimum(TILE, K - t * TILE).to(tl.float32)
        at = stats_ptr + (t * N + rows.to(tl.int64)) * 2
        mean_t = tl.load(at, mask=row_ok, other=0.0)
        var_t = tl.load(at + 1, mask=row_ok, other=0.0)
        total = count + c
        delta = mean_t - mean
        mean += delta * (c / total)
        m2 += var_t * c + delta * delta * (count * c / total)
        count = total
    return mean, m2 / K


@triton.jit
def _tile_stats(v, pid_o, rows, row_ok, col_ok, stats_ptr, N, W, BLOCK_O: tl.constexpr):
    """Column tile ``pid_o`` of rows v [BLOCK_R, BLOCK_O] (fp32): its mean and variance per row
    into stats [tiles, N, 2] at the tile's index."""
    c = tl.minimum(BLOCK_O, W - pid_o * BLOCK_O).to(tl.float32)
    mean = tl.sum(tl.where(col_ok[None, :], v, 0.0), 1) / c
    centred = tl.where(col_ok[None, :], v - mean[:, None], 0.0)
    at = stats_ptr + (pid_o * N + rows.to(tl.int64)) * 2
    tl.store(at, mean, mask=row_ok)
    tl.store(at + 1, tl.sum(centred * centred, 1) / c, mask=row_ok)


@triton.jit
def _round(v, like_ptr, UPCAST: tl.constexpr):
    """fp32 v rounded to nearest in the dtype ``like_ptr`` points to, back in fp32: where the
    reference step holds a tensor of that dtype. Triton's interpreter truncates fp32 to bf16
    (UPCAST is set for bf16 there), so there the rounding is done on the bits."""
    if UPCAST:
        bits = v.to(tl.uint32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
        return bits.to(tl.float32, bitcast=True)
    return v.to(like_ptr.dtype.element_ty).to(tl.float32)


@triton.jit
def _product(x_ptr, w_ptr, scale_ptr, rows, row_ok, cols, col_ok, K, OUT,
             stats_ptr, T, TILE, lnw_ptr, lnb_ptr, N, eps,
             NORM: tl.constexpr, INT8: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_O: tl.constexpr,
             ALIGN_X: tl.constexpr, ALIGN_W: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """x[rows] · w[:, cols] in fp32 [BLOCK_R, BLOCK_O]: x [N, K] in the step's dtype (with NORM,
    LayerNorm'd first, from the statistics its producer left, and rounded to the step's dtype as
    the reference's LayerNorm output is), w [K, OUT] (int8: times the columns' scales)."""
    K, OUT = aligned(K, ALIGN_X), aligned(OUT, ALIGN_W)  # row strides: wide enough to copy asynchronously
    if NORM:
        mean, var = _merged_stats(stats_ptr, rows, row_ok, N, K, T, TILE)
        rstd = 1.0 / tl.sqrt(var + eps)
    acc = tl.zeros([rows.shape[0], BLOCK_O], tl.float32)
    x_rows = x_ptr + rows.to(tl.int64)[:, None] * K
    for k0 in tl.range(0, K, BLOCK_K, num_stages=3):
        k = k0 + tl.arange(0, BLOCK_K)
        k_ok = k < K
        x = tl.load(x_rows + k[None, :], mask=row_ok[:, None] & k_ok[None, :], other=0.0)  # [BLOCK_R, BLOCK_K]
        if NORM:
            g = tl.load(lnw_ptr + k, mask=k_ok, other=0.0)
            b = tl.load(lnb_ptr + k, mask=k_ok, other=0.0)
            h = (x.to(tl.float32) - mean[:, None]) * rstd[:, None] * g[None, :] + b[None, :]
            x = _round(tl.where(row_ok[:, None] & k_ok[None, :], h, 0.0), x_ptr, UPCAST).to(x_ptr.dtype.element_ty)
        w = tl.load(w_ptr + k.to(tl.int64)[:, None] * OUT + cols[None, :], mask=k_ok[:, None] & col_ok[None, :],
                    other=0)  # [BLOCK_K, BLOCK_O]: this program's tile of the weight, read once
        if UPCAST:  # (the interpreter's bf16 is its raw bits: widen int8 straight to fp32)
            w = w.to(tl.float32)
        else:
            w = w.to(x.dtype)
        acc = dot(x, w, acc, PRECISION, UPCAST)
    if INT8:
        acc *= tl.load(scale_ptr + cols, mask=col_ok, other=0.0)[None, :]
    return acc


@triton.jit
def _qkv_kernel(
    x_ptr, stats_ptr, lnw_ptr, lnb_ptr, w_ptr, scale_ptr, b_ptr, q_ptr, kc_ptr, vc_ptr, pos_ptr,
    N, W, OUT, NSTATE, D, T, TILE, sk_n, sk_h, sk_s, BC, NB, PRIME, eps,
    KIND: tl.constexpr, INT8: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_O: tl.constexpr,
    ALIGN_X: tl.constexpr, ALIGN_W: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr,
):
    rows = tl.program_id(1) * BLOCK_R + tl.arange(0, BLOCK_R)  # [BLOCK_R] samples
    row_ok = rows < N
    cols = tl.program_id(0) * BLOCK_O + tl.arange(0, BLOCK_O)  # [BLOCK_O] of q | k | v
    col_ok = cols < OUT
    y = _product(x_ptr, w_ptr, scale_ptr, rows, row_ok, cols, col_ok, W, OUT, stats_ptr, T, TILE, lnw_ptr, lnb_ptr,
                 N, eps, True, INT8, BLOCK_K, BLOCK_O, ALIGN_X, ALIGN_W, PRECISION, UPCAST)
    y = _round(y + tl.load(b_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :], kc_ptr, UPCAST)
    rows64 = rows.to(tl.int64)
    tl.store(q_ptr + rows64[:, None] * NSTATE + cols[None, :], y.to(q_ptr.dtype.element_ty),
             mask=row_ok[:, None] & (cols < NSTATE)[None, :])
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
def _wait(count_ptr, target):
    """Spin until ``target`` programs have counted themselves done at count_ptr. Only programs of
    an earlier phase are waited for, and every one of them took its ticket (``_proj_mlp_kernel``)
    before this program took its own, so they are running or finished: the wait always ends (as in a
    single-pass scan's decoupled look-back), whatever order the GPU schedules the grid in. The
    acquire orders this program's later loads after their stores."""
    while tl.atomic_add(count_ptr, 0, sem="acquire") < target:
        pass


@triton.jit
def _done(count_ptr):
    """Count this program done at count_ptr, after every one of its stores; returns the count
    before it (acquire too: the program that sees every other one done may reset the counts)."""
    tl.debug_barrier()  # every thread's stores are issued before the count moves
    return tl.atomic_add(count_ptr, 1, sem="acq_rel")


@triton.jit
def _proj_phase(pid_o, pid_r, o_ptr, w_ptr, scale_ptr, b_ptr, x_ptr, a_ptr, h1_ptr, stats_ptr, N, NSTATE, W,
                INT8: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_O: tl.constexpr,
                ALIGN_X: tl.constexpr, ALIGN_W: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """a = o·w + b and h₁ = x + a for column tile ``pid_o`` of row block ``pid_r``; h₁'s tile
    statistics."""
    rows = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)  # [BLOCK_R] samples
    row_ok = rows < N
    cols = pid_o * BLOCK_O + tl.arange(0, BLOCK_O)  # [BLOCK_O] of W
    col_ok = cols < W
    t = _product(o_ptr, w_ptr, scale_ptr, rows, row_ok, cols, col_ok, NSTATE, W, stats_ptr, 0, 1, b_ptr, b_ptr,
                 N, 0.0, False, INT8, BLOCK_K, BLOCK_O, ALIGN_X, ALIGN_W, PRECISION, UPCAST)
    a = _round(t + tl.load(b_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :], a_ptr, UPCAST)
    ok = row_ok[:, None] & col_ok[None, :]
    at = rows.to(tl.int64)[:, None] * W + cols[None, :]
    h1 = _round(tl.load(x_ptr + at, mask=ok, other=0.0).to(tl.float32) + a, h1_ptr, UPCAST)
    tl.store(a_ptr + at, a.to(a_ptr.dtype.element_ty), mask=ok)
    tl.store(h1_ptr + at, h1.to(h1_ptr.dtype.element_ty), mask=ok)
    _tile_stats(h1, pid_o, rows, row_ok, col_ok, stats_ptr, N, W, BLOCK_O)


@triton.jit
def _fc_phase(pid_o, pid_r, h1_ptr, stats_ptr, lnw_ptr, lnb_ptr, w_ptr, scale_ptr, b_ptr, f_ptr, N, W, HIDDEN, T,
              TILE, eps, INT8: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_O: tl.constexpr,
              ALIGN_X: tl.constexpr, ALIGN_W: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """f = quick_gelu(LN(h₁)·w + b) for hidden-unit tile ``pid_o`` of row block ``pid_r``."""
    rows = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)
    row_ok = rows < N
    cols = pid_o * BLOCK_O + tl.arange(0, BLOCK_O)  # [BLOCK_O] hidden units
    col_ok = cols < HIDDEN
    f = _product(h1_ptr, w_ptr, scale_ptr, rows, row_ok, cols, col_ok, W, HIDDEN, stats_ptr, T, TILE, lnw_ptr,
                 lnb_ptr, N, eps, True, INT8, BLOCK_K, BLOCK_O, ALIGN_X, ALIGN_W, PRECISION, UPCAST)
    f = _round(f + tl.load(b_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :], f_ptr, UPCAST)
    f = _round(f * tl.sigmoid(1.702 * f), f_ptr, UPCAST)  # quick-GELU
    tl.store(f_ptr + rows.to(tl.int64)[:, None] * HIDDEN + cols[None, :], f.to(f_ptr.dtype.element_ty),
             mask=row_ok[:, None] & col_ok[None, :])


@triton.jit
def _out_phase(pid_o, pid_r, f_ptr, w_ptr, scale_ptr, b_ptr, x_ptr, a_ptr, y_ptr, stats_ptr, N, HIDDEN, W,
               res_scale, RES_ONE: tl.constexpr, INT8: tl.constexpr, BLOCK_R: tl.constexpr,
               BLOCK_K: tl.constexpr, BLOCK_O: tl.constexpr, ALIGN_X: tl.constexpr, ALIGN_W: tl.constexpr,
               PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """m = f·w + b and the layer's output x + a + m (x + r·(a + m)) for column tile ``pid_o`` of
    row block ``pid_r``; its tile statistics (the next layer's LayerNorm)."""
    rows = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)
    row_ok = rows < N
    cols = pid_o * BLOCK_O + tl.arange(0, BLOCK_O)
    col_ok = cols < W
    m = _product(f_ptr, w_ptr, scale_ptr, rows, row_ok, cols, col_ok, HIDDEN, W, stats_ptr, 0, 1, b_ptr, b_ptr,
                 N, 0.0, False, INT8, BLOCK_K, BLOCK_O, ALIGN_X, ALIGN_W, PRECISION, UPCAST)
    m = _round(m + tl.load(b_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :], y_ptr, UPCAST)
    ok = row_ok[:, None] & col_ok[None, :]
    at = rows.to(tl.int64)[:, None] * W + cols[None, :]
    x = tl.load(x_ptr + at, mask=ok, other=0.0).to(tl.float32)
    a = tl.load(a_ptr + at, mask=ok, other=0.0).to(tl.float32)
    if RES_ONE:  # x + a + m, summed in the reference's order
        y = _round(_round(x + a, y_ptr, UPCAST) + m, y_ptr, UPCAST)
    else:  # x + r·(a + m)
        y = _round(x + _round(res_scale * _round(a + m, y_ptr, UPCAST), y_ptr, UPCAST), y_ptr, UPCAST)
    tl.store(y_ptr + at, y.to(y_ptr.dtype.element_ty), mask=ok)
    _tile_stats(y, pid_o, rows, row_ok, col_ok, stats_ptr, N, W, BLOCK_O)


@triton.jit
def _proj_mlp_kernel(
    o_ptr, proj_w_ptr, proj_s_ptr, proj_b_ptr, x_ptr, a_ptr, h1_ptr, h1_stats_ptr, lnw_ptr, lnb_ptr,
    fc_w_ptr, fc_s_ptr, fc_b_ptr, f_ptr, out_w_ptr, out_s_ptr, out_b_ptr, y_ptr, y_stats_ptr, sync_ptr,
    N, NSTATE, W, HIDDEN, eps, res_scale,
    RES_ONE: tl.constexpr, INT8: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr,
    BLOCK_O: tl.constexpr, FC_BLOCK_K: tl.constexpr, FC_BLOCK_O: tl.constexpr,
    ALIGN_O: tl.constexpr, ALIGN_PROJ: tl.constexpr, ALIGN_H1: tl.constexpr, ALIGN_FC: tl.constexpr,
    ALIGN_F: tl.constexpr, ALIGN_OUT: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr,
):
    # Three phases in one launch: proj's programs, then fc's, then out's. A program's phase and tile
    # come from its ticket, the order programs start in, not from its program id: a phase waits
    # only for programs that started before it, so the launch never deadlocks. sync [4] int32:
    # tickets taken, then programs done per phase; zero between launches.
    row_blocks = tl.cdiv(N, BLOCK_R)
    tiles = tl.cdiv(W, BLOCK_O)  # proj's and out's column tiles; fc's hidden tiles below
    n_proj = tiles * row_blocks
    n_fc = tl.cdiv(HIDDEN, FC_BLOCK_O) * row_blocks
    ticket = tl.atomic_add(sync_ptr, 1, sem="relaxed")
    if ticket < n_proj:
        _proj_phase(ticket % tiles, ticket // tiles, o_ptr, proj_w_ptr, proj_s_ptr, proj_b_ptr, x_ptr, a_ptr,
                    h1_ptr, h1_stats_ptr, N, NSTATE, W, INT8, BLOCK_R, BLOCK_K, BLOCK_O, ALIGN_O, ALIGN_PROJ,
                    PRECISION, UPCAST)
        _done(sync_ptr + 1)
    elif ticket < n_proj + n_fc:
        _wait(sync_ptr + 1, n_proj)  # h₁ and its statistics, whole rows
        t = ticket - n_proj
        fc_tiles = tl.cdiv(HIDDEN, FC_BLOCK_O)
        _fc_phase(t % fc_tiles, t // fc_tiles, h1_ptr, h1_stats_ptr, lnw_ptr, lnb_ptr, fc_w_ptr, fc_s_ptr,
                  fc_b_ptr, f_ptr, N, W, HIDDEN, tiles, BLOCK_O, eps, INT8, BLOCK_R, FC_BLOCK_K, FC_BLOCK_O,
                  ALIGN_H1, ALIGN_FC, PRECISION, UPCAST)
        _done(sync_ptr + 2)
    else:
        _wait(sync_ptr + 2, n_fc)  # f, whole rows
        t = ticket - n_proj - n_fc
        _out_phase(t % tiles, t // tiles, f_ptr, out_w_ptr, out_s_ptr, out_b_ptr, x_ptr, a_ptr, y_ptr,
                   y_stats_ptr, N, HIDDEN, W, res_scale, RES_ONE, INT8, BLOCK_R, BLOCK_K, BLOCK_O, ALIGN_F,
                   ALIGN_OUT, PRECISION, UPCAST)
        # (out has proj's tiles) The launch's last program to finish: every other one has, so no
        # program reads the counters any more.
        if _done(sync_ptr + 3) == n_proj - 1:
            tl.store(sync_ptr + tl.arange(0, 4), tl.zeros([4], tl.int32))


def step_config(n_rows: int, dtype: torch.dtype, weight_dtype: torch.dtype, norm: bool) -> dict:
    """Tiles of a product launch for N samples in ``dtype`` with weights of ``weight_dtype``
    (``norm``: a LayerNorm'd input, whose fp32 parameters every program also reads).

    BLOCK_R samples a program: all of them up to 64; past that more programs, each reading the
    weights again. BLOCK_O output columns: wide enough that what every program reads besides its
    weight tile (its rows, and the LayerNorm's parameters) is at most an eighth of that tile's
    bytes; so 16 columns at batch 1 without a LayerNorm, 64 with one, 128 at batch 16 (16-bit
    weights; twice as many for int8). BLOCK_K inputs a pipelined step, 64 where the weight tile
    is wide or fp32 (three stages in shared memory). Chosen from the cost model and the compiled
    resources; not yet timed on a GPU."""
    block_r = min(64, max(16, triton.next_power_of_2(n_rows)))
    rows = min(n_rows, block_r)
    row_bytes, weight_bytes = torch.finfo(dtype).bits // 8, torch.empty(0, dtype=weight_dtype).element_size()
    shared = rows * row_bytes + (8 if norm else 0)  # bytes each program reads per input, beside the weights
    least = 32 if weight_bytes == 1 else 16  # int8 rows of 16 bytes were copied synchronously
    block_o = min(256 if weight_bytes == 1 or norm else 128, max(least, triton.next_power_of_2(8 * shared // weight_bytes)))
    block_k = 64 if dtype == torch.float32 or block_o * weight_bytes >= 512 else 128
    return dict(BLOCK_R=block_r, BLOCK_O=block_o, BLOCK_K=block_k, num_warps=4 if block_r * block_o <= 2048 else 8,
                PRECISION=dot_precision(dtype, "tf32x3"), UPCAST=upcast_dot(dtype))


def tiles(width: int, cfg: dict) -> int:
    """Column tiles of a [N, width] product output: the row statistics' tile count."""
    return triton.cdiv(width, cfg["BLOCK_O"])


def row_stats(x: torch.Tensor, stats: torch.Tensor) -> None:
    """The step's first rows' statistics, x [N, W] -> stats [1, N, 2] (mean, variance): one tile."""
    var, mean = torch.var_mean(x.float(), dim=1, correction=0)
    torch.stack((mean, var), dim=1, out=stats[0])


def _launch(kernel, x: torch.Tensor, w: torch.Tensor, scale, n: int, cols: int, cfg: dict, *args, **constexprs):
    grid = (triton.cdiv(cols, cfg["BLOCK_O"]), triton.cdiv(n, cfg["BLOCK_R"]))
    int8 = w.dtype == torch.int8
    launch(kernel, grid, *args, INT8=int8, ALIGN_X=alignment(x.shape[1], x), ALIGN_W=alignment(w.shape[1], w),
           **constexprs, **cfg)


def qkv(x, stats, n_tiles: int, tile: int, ln_w, ln_b, w, scale, b, q, k_cache, v_cache, position, n_state: int,
        d: int, kind: int, block_ctx: int, blocks: int, prime_len: int, enc_length: int, eps: float, cfg: dict) -> None:
    """x [N, W] (statistics: ``n_tiles`` tiles of ``tile`` columns in stats) -> q [N, n_state]; for
    self-attention also k and v into k_cache, v_cache [N, H, S, d] (contiguous) at ``position``'s
    slot. kind ... enc_length: the cache layout, as ``CacheLayout.kernel_args()`` gives it
    (enc_length unused: cross-attention caches are not written here). ``scale``: the int8
    weight's column scales, else None."""
    n, width = x.shape
    _launch(_qkv_kernel, x, w, scale, n, w.shape[1], cfg,
            x, stats, ln_w, ln_b, w, w if scale is None else scale, b, q, k_cache, v_cache, position,
            n, width, w.shape[1], n_state, d, n_tiles, tile, k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
            block_ctx, blocks, prime_len, eps, KIND=kind)


def proj_mlp(o, proj_w, proj_s, proj_b, x, a, h1, h1_stats, ln_w, ln_b, fc_w, fc_s, fc_b, f, out_w, out_s, out_b,
             y, y_stats, sync, res_scale: float, eps: float, plain: dict, norm: dict) -> None:
    """The layer after its attention, in one launch: o [N, n_state] (the attention's output) ->
    a = o·proj_w + proj_b and h1 = x + a [N, W] (h1's statistics per column tile into h1_stats);
    f = quick_gelu(LN(h1)·fc_w + fc_b) [N, hidden]; y = x + a + (f·out_w + out_b) (x + r·(a + ...)
    when r ≠ 1) [N, W] and y's statistics into y_stats (the next layer's LayerNorm). ``*_s``: an
    int8 matrix's column scales, else None; ``sync``: int32 [4], zero (left at zero); ``plain``
    and ``norm``: :func:`step_config` without and with a LayerNorm'd input."""
    n, n_state = o.shape
    width, hidden = proj_w.shape[1], fc_w.shape[1]
    row_blocks = triton.cdiv(n, plain["BLOCK_R"])
    programs = (2 * triton.cdiv(width, plain["BLOCK_O"]) + triton.cdiv(hidden, norm["BLOCK_O"])) * row_blocks
    cfg = {k: plain[k] for k in ("BLOCK_R", "BLOCK_K", "BLOCK_O", "PRECISION", "UPCAST")}
    launch(_proj_mlp_kernel, (programs,),
           o, proj_w, proj_w if proj_s is None else proj_s, proj_b, x, a, h1, h1_stats, ln_w, ln_b,
           fc_w, fc_w if fc_s is None else fc_s, fc_b, f, out_w, out_w if out_s is None else out_s, out_b,
           y, y_stats, sync, n, n_state, width, hidden, eps, float(res_scale),
           RES_ONE=res_scale == 1.0, INT8=proj_w.dtype == torch.int8, FC_BLOCK_K=norm["BLOCK_K"],
           FC_BLOCK_O=norm["BLOCK_O"], ALIGN_O=alignment(n_state, o), ALIGN_PROJ=alignment(width, proj_w),
           ALIGN_H1=alignment(width, h1), ALIGN_FC=alignment(hidden, fc_w), ALIGN_F=alignment(hidden, f),
           ALIGN_OUT=alignment(width, out_w), num_warps=max(plain["num_warps"], norm["num_warps"]), **cfg)
