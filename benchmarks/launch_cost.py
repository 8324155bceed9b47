"""What a Triton launch really loads, stores and computes: its grid times each program's tile
loads, from the kernel's own block sizes and arguments as the resource check compiles them.

:mod:`jukebox_fast.ops.costs` says what an op must move (each input once, each output once);
this module says what the launches of a configuration move, so the static performance table
(``kernel_resources.py``) can hold one against the other. Counting rules:

- a tile load moves the elements its mask lets through: rows past the end and columns past the
  width move nothing (a masked ``cp.async`` copies no bytes);
- a load before a loop counts once per program, one inside a loop once per trip;
- stores and atomics count the elements they write (an atomic as one write);
- FLOPs are those of every ``tl.dot`` the programs execute, whole tiles (padding included),
  2 per multiply-add, three products for ``tf32x3``; the decode kernels' elementwise products
  count 2 per multiply-add too.

Each kernel's walk is restated here in Python from its source (the attention kernels' key and
query spans, ``kernels/patterns.py``): the tests hold these spans to the reference patterns.
The decode kernels read the position from memory; they are modelled at the last position of
the context, where a layer sees the most of its cache.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from jukebox_fast.ops.patterns import Kind

__all__ = ["HBM_BYTES_PER_S", "PEAK_FLOPS", "LaunchCost", "launch_cost", "key_span", "query_span", "query_layout"]

HBM_BYTES_PER_S = 4.3e12  # an H200's memory bandwidth as the issue states it
PEAK_FLOPS = {  # per product precision: the unit the kernel's products run on (dense rates)
    "tf32": 790e12,  # 16-bit operands on the tensor cores (the PRECISION a 16-bit dot carries)
    "tf32x3": 395e12 / 3,  # fp32 as three TF32 products
    "ieee": 67e12,  # fp32 on the CUDA cores (the attention kernels' fp32, the decode kernels)
}


@dataclass(frozen=True)
class LaunchCost:
    """Bytes loaded and stored, and FLOPs executed, by every program of one launch."""

    loaded: int
    stored: int
    flops: int
    precision: str  # the key of PEAK_FLOPS its products run at

    def __add__(self, other: "LaunchCost") -> "LaunchCost":
        return LaunchCost(self.loaded + other.loaded, self.stored + other.stored, self.flops + other.flops,
                          self.precision)

    @property
    def moved(self) -> int:
        return self.loaded + self.stored


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _size(t) -> int:
    return t.element_size() if isinstance(t, torch.Tensor) else 4


# -- the attention kernels' walk (kernels/patterns.py, restated) --------------------------------------
def query_layout(g: int, lq: int, lk: int, bc: int, kind: int) -> tuple[int, int, int, int, int]:
    """(row of position 0 in q, position of unit 0, positions per unit, first and one-past-last
    query unit) of group g."""
    q_start, q_end = (0, lq) if kind == Kind.CROSS else (lk - lq, lk)
    if kind == Kind.COLUMN:
        return q_start, g, bc, (max(q_start - g, 0) + bc - 1) // bc, (max(q_end - g, 0) + bc - 1) // bc
    return q_start, 0, 1, q_start, q_end


def key_span(p_first: int, p_last: int, u_last: int, lk: int, bc: int, prime: int, kind: int) -> tuple[int, int]:
    """Key units [lo, hi) that queries at positions p_first..p_last (unit u_last) walk."""
    if kind == Kind.DENSE:
        return 0, p_last + 1
    if kind == Kind.BLOCK:
        return (p_first // bc) * bc, p_last + 1
    if kind == Kind.COLUMN:
        return 0, u_last + 1
    if kind == Kind.PREV_BLOCK:
        return max(p_first // bc - 1, 0) * bc, (p_last // bc) * bc
    if kind == Kind.CROSS:
        return 0, lk
    return 0, min(prime, p_last + 1)


def query_span(j_first: int, j_last: int, v_first: int, q_start: int, u_lo: int, u_hi: int, bc: int, prime: int,
               kind: int) -> tuple[int, int]:
    """Query units [lo, hi) that keys at positions j_first..j_last (unit v_first) walk."""
    if kind == Kind.DENSE:
        return max(j_first, q_start), u_hi
    if kind == Kind.BLOCK:
        return max(j_first, q_start), min(u_hi, (j_last // bc + 1) * bc)
    if kind == Kind.COLUMN:
        return max(v_first, u_lo), u_hi
    if kind == Kind.PREV_BLOCK:
        return max((j_first // bc + 1) * bc, q_start), min(u_hi, (j_last // bc + 2) * bc)
    if kind == Kind.CROSS:
        return 0, u_hi
    lo = max(j_first, q_start)
    return lo, (u_hi if j_first < prime else lo)


def _attention(name: str, grid, a: dict) -> LaunchCost:
    tiles, groups, nh = grid
    kind, bm, bn = a["KIND"], a["BLOCK_M"], a["BLOCK_N"]
    lq, lk, d, bc, prime = a["LQ"], a["LK"], a["D"], a["BC"], a["PRIME"]
    e = _size(a["q_ptr"])
    row = d * e  # one row of q, k, v, o, dO as loaded (columns past d are masked)
    tile_flops = 2 * bm * bn * a["D_CHUNKS"] * a["BLOCK_DK"]  # one tile product over the width, padding included
    loaded = stored = flops = 0
    for g in range(groups):
        q_start, base, step, u_lo, u_hi = query_layout(g, lq, lk, bc, kind)
        for t in range(tiles):
            if name == "_bwd_kv_kernel":
                k_hi = u_hi if kind == Kind.COLUMN else lk
                v_first = t * bn
                keys = max(0, min(bn, k_hi - v_first))
                if not keys:
                    continue
                lo, hi = query_span(base + step * v_first, base + step * (v_first + keys - 1), v_first, q_start,
                                    u_lo, u_hi, bc, prime, kind)
                queries, trips = max(0, hi - lo), _cdiv(max(0, hi - lo), bm)
                loaded += 2 * keys * row + queries * (2 * row + 8)  # k, v once; q, dO, lse, Δ per trip
                stored += 2 * keys * row
                products = 4  # Sᵀ, dPᵀ, dV, dK
                if a["DQ"] == 1:  # DQ_ATOMIC
                    stored += queries * d * 4  # dQ's fp32 partial sums, one atomic per element per trip
                    products = 5
                elif a["DQ"] == 2:  # DQ_STORE: each query's dQ written once, by the one tile it sees
                    stored += queries * row
                    products = 5
                flops += trips * products * tile_flops
                continue
            u_first = u_lo + t * bm
            rows = max(0, min(bm, u_hi - u_first))
            if not rows:
                continue
            lo, hi = key_span(base + step * u_first, base + step * (u_first + rows - 1), u_first + rows - 1, lk,
                              bc, prime, kind)
            keys, trips = max(0, hi - lo), _cdiv(max(0, hi - lo), bn)
            if name == "_fwd_kernel":
                loaded += rows * row + 2 * keys * row  # q once; k, v per trip
                stored += rows * (row + 4)  # o and the log-sum-exp
                flops += trips * 2 * tile_flops
            else:  # _bwd_q_kernel
                loaded += rows * (2 * row + 8) + 2 * keys * row  # q, dO, lse, Δ once; k, v per trip
                stored += rows * row
                flops += trips * 3 * tile_flops
    return LaunchCost(nh * loaded, nh * stored, nh * flops, a["PRECISION"])


# -- the VQ kernels -----------------------------------------------------------------------------------
def _search(grid, a: dict) -> LaunchCost:
    n, k, d = a["N"], a["K"], a["D"]
    e = _size(a["x_ptr"])
    programs = grid[0]
    loaded = n * d * e + programs * k * (d * e + 4)  # x once; every program walks the codebook and ‖c‖²
    stored = n * (8 + 4)  # index and distance
    if a["QUANTISE"]:
        loaded += n * d * e  # the chosen codebook rows, gathered
        stored += n * d * e + programs * 4  # dequantised rows, per-program error sums
        if a["ATOMIC_STATS"]:
            stored += n * (d * 4 + 4)  # per-code sums and counts
    products = 3 if a["PRECISION"] == "tf32x3" else 1
    flops = programs * _cdiv(k, a["BLOCK_K"]) * 2 * a["BLOCK_N"] * a["BLOCK_K"] * a["D_CHUNKS"] * a["BLOCK_D"]
    return LaunchCost(loaded, stored, products * flops, a["PRECISION"])


def _segment_sums(grid, a: dict) -> LaunchCost:
    n, d = a["x_ptr"].shape
    return LaunchCost(n * (d * _size(a["x_ptr"]) + 8) + grid[0] * 16, grid[0] * d * 4, 0, "ieee")


# -- the decode kernels ---------------------------------------------------------------------------------
def visible_slots(p: int, bc: int, nb: int, prime: int, enc: int, kind: int) -> tuple[int, int]:
    """The run of cache slots [lo, hi) the query at position p sees (``kernels/patterns.py``)."""
    if kind == Kind.DENSE:
        return 0, p + 1
    if kind == Kind.BLOCK:
        return 0, p % bc + 1
    if kind == Kind.COLUMN:
        lo = (p % bc) * nb
        return lo, lo + p // bc + 1
    if kind == Kind.PREV_BLOCK:
        block = p // bc
        lo = ((block - 1) % 2) * bc if block > 0 else 0
        return lo, lo + bc if block > 0 else 0
    if kind == Kind.CROSS:
        return 0, enc
    return 0, min(p, prime - 1) + 1


def last_position(a: dict) -> int:
    """The decode kernels' position in the model: the last of the context the cache serves."""
    return a["BC"] * a["NB"] - 1


def _decode(grid, a: dict) -> LaunchCost:
    programs, splits = grid
    d, e = a["D"], _size(a["k_ptr"])
    lo, hi = visible_slots(last_position(a), a["BC"], a["NB"], a["PRIME"], a["ENC"], a["KIND"])
    slots = max(0, hi - lo)
    loaded = programs * (splits * d * e + 2 * slots * d * e)  # q per program; each slot's k and v once
    stored = programs * d * _size(a["o_ptr"])
    if splits > 1:
        part = (a["BLOCK_D"] + 2) * 4
        stored += programs * splits * part  # every share's partial
        loaded += programs * splits * part  # read back by the share that merges
    flops = programs * 4 * slots * a["BLOCK_D"]  # q·k and p·v, elementwise over the padded width
    return LaunchCost(loaded, stored, flops, "ieee")


# The decode step's products (``kernels/decode_step.py``): name -> (input rows, weight, bias,
# scales, input width, output width, column tile, step, LayerNorm'd input, the epilogue's extra
# [N, cols] tiles read, written, whether it writes tile statistics). ``_qkv_kernel`` is a launch;
# ``_proj_mlp_kernel`` runs the other three as phases of one launch.
_PRODUCTS = {
    "qkv": ("x_ptr", "w_ptr", "b_ptr", "W", "OUT", "BLOCK_O", "BLOCK_K", True, 0, None, False),
    "proj": ("o_ptr", "proj_w_ptr", "proj_b_ptr", "NSTATE", "W", "BLOCK_O", "BLOCK_K", False, 1, 2, True),
    "fc": ("h1_ptr", "fc_w_ptr", "fc_b_ptr", "W", "HIDDEN", "FC_BLOCK_O", "FC_BLOCK_K", True, 0, 1, False),
    "out": ("f_ptr", "out_w_ptr", "out_b_ptr", "HIDDEN", "W", "BLOCK_O", "BLOCK_K", False, 2, 1, True),
}


def _product(phase: str, a: dict) -> LaunchCost:
    """One product of a decode step, over all its programs: each reads its rows' whole input (and,
    LayerNorm'd, the producer's per-tile statistics and the LayerNorm's parameters), its column
    tile of the weight (with its bias and, int8, its scales) once, and the epilogue's tiles; it
    writes its output tile (and statistics)."""
    x_name, w_name, b_name, k_name, out_name, bo_name, bk_name, norm, extra_in, extra_out, stats = _PRODUCTS[phase]
    n, br, bo, k, out = a["N"], a["BLOCK_R"], a[bo_name], a[k_name], a[out_name]
    ex, ew = _size(a[x_name]), _size(a[w_name])  # rows in the step's dtype, in and out
    loaded = stored = flops = 0
    for rb in range(_cdiv(n, br)):
        r = min(br, n - rb * br)  # sample rows this row block holds
        for po in range(_cdiv(out, bo)):
            cols = min(bo, out - po * bo)
            loaded += r * k * ex + k * cols * ew + cols * _size(a[b_name])
            if a.get("INT8"):
                loaded += cols * 4
            if norm:  # the statistics' tiles (T of them: the producer's column tiles); LayerNorm weight and bias
                loaded += (a["T"] if phase == "qkv" else _cdiv(a["W"], a["BLOCK_O"])) * r * 8 + 2 * k * 4
            loaded += extra_in * r * cols * ex
            if phase == "qkv":
                q_cols = max(0, min(cols, a["NSTATE"] - po * bo))
                kv = cols - q_cols if a["KIND"] != Kind.CROSS else 0
                stored += r * q_cols * _size(a["q_ptr"]) + r * kv * _size(a["kc_ptr"])
            else:
                stored += extra_out * r * cols * ex + (r * 8 if stats else 0)
            flops += _cdiv(k, a[bk_name]) * 2 * br * a[bk_name] * bo
    return LaunchCost(loaded, stored, flops, a["PRECISION"])


def _step(name: str, a: dict) -> LaunchCost:
    """A decode step's launch: qkv's product, or proj, fc and out's as phases of one launch (each
    program also takes a ticket and counts itself done: two 4-byte atomics)."""
    if name == "_qkv_kernel":
        return _product("qkv", a)
    cost = _product("proj", a) + _product("fc", a) + _product("out", a)
    programs = 2 * _cdiv(a["N"], a["BLOCK_R"]) * _cdiv(a["W"], a["BLOCK_O"]) + (
        _cdiv(a["N"], a["BLOCK_R"]) * _cdiv(a["HIDDEN"], a["FC_BLOCK_O"]))
    return cost + LaunchCost(0, 2 * 4 * programs, 0, cost.precision)


def launch_cost(kernel, grid, args: tuple, kwargs: dict) -> LaunchCost:
    """The cost of one recorded launch: the JIT function, its grid, its arguments as passed."""
    a = {**dict(zip(kernel.arg_names, args)), **kwargs}
    name = kernel.fn.__name__
    if name in ("_fwd_kernel", "_bwd_kv_kernel", "_bwd_q_kernel"):
        return _attention(name, tuple(grid), a)
    if name == "_delta_kernel":
        rows = a["LQ"] * grid[2]
        return LaunchCost(2 * rows * a["D"] * _size(a["do_ptr"]), rows * 4, 0, "ieee")
    if name == "_search_kernel":
        return _search(tuple(grid), a)
    if name == "_segment_sums_kernel":
        return _segment_sums(tuple(grid), a)
    if name == "_decode_kernel":
        return _decode(tuple(grid), a)
    if name in ("_qkv_kernel", "_proj_mlp_kernel"):
        return _step(name, a)
    raise KeyError(f"no cost model for {name}")
