"""The attention patterns inside the kernels: each pattern's geometry, once, for every kernel.

The types are :class:`jukebox_fast.ops.patterns.Kind`'s, as ``tl.constexpr`` values a kernel
compares its ``KIND`` parameter with, so a launch specialises each kernel to one pattern. What
is written here in Triton is what ``ops/patterns.py`` writes in PyTorch (``AttentionPattern.visible``
and ``CacheLayout``); the interpreter tests hold the two to each other.

- The flash kernels (``attention.py``) walk the un-permuted sequence: :func:`query_layout`
  (where a program's queries are), :func:`key_span` / :func:`query_span` (the blocks of keys a
  tile of queries may see, and back) and :func:`visible` (the mask inside a tile).
- The decode kernels (``decode.py``, ``decode_step.py``) read and write the caches that
  ``CacheLayout`` lays out: :func:`visible_slots` (the run of slots the newest query sees) and
  :func:`cache_slot` (where a position's key goes).
"""
from __future__ import annotations

import triton
import triton.language as tl

from jukebox_fast.ops.patterns import Kind

__all__ = ["KIND_DENSE", "KIND_BLOCK", "KIND_COLUMN", "KIND_PREV_BLOCK", "KIND_CROSS", "KIND_PRIME",
           "query_layout", "key_span", "query_span",
           "visible", "visible_slots", "cache_slot"]

KIND_DENSE = tl.constexpr(int(Kind.DENSE))
KIND_BLOCK = tl.constexpr(int(Kind.BLOCK))
KIND_COLUMN = tl.constexpr(int(Kind.COLUMN))
KIND_PREV_BLOCK = tl.constexpr(int(Kind.PREV_BLOCK))
KIND_CROSS = tl.constexpr(int(Kind.CROSS))
KIND_PRIME = tl.constexpr(int(Kind.PRIME))


@triton.jit
def query_layout(g, LQ, LK, BC, KIND: tl.constexpr):
    """Where the queries of group ``g`` are: (row of position 0 in q, position of unit 0,
    positions per unit, first and one-past-last query unit). Queries are the last LQ positions
    of the key sequence, except in cross-attention where they are a sequence of their own."""
    if KIND == KIND_CROSS:
        q_start = 0
        q_end = LQ
    else:
        q_start = LK - LQ
        q_end = LK
    if KIND == KIND_COLUMN:  # one program group per column g; a unit is one step down the column
        base = g
        step = BC
        u_lo = (tl.maximum(q_start - g, 0) + BC - 1) // BC
        u_hi = (tl.maximum(q_end - g, 0) + BC - 1) // BC
    else:
        base = 0
        step = 1
        u_lo = q_start
        u_hi = q_end
    return q_start, base, step, u_lo, u_hi


@triton.jit
def key_span(p_first, p_last, u_last, LK, BC, PRIME, KIND: tl.constexpr):
    """Key units [lo, hi) that queries at positions p_first..p_last (unit u_last) may see."""
    if KIND == KIND_DENSE:
        lo = 0
        hi = p_last + 1
    elif KIND == KIND_BLOCK:
        lo = (p_first // BC) * BC
        hi = p_last + 1
    elif KIND == KIND_COLUMN:
        lo = 0
        hi = u_last + 1
    elif KIND == KIND_PREV_BLOCK:
        lo = tl.maximum(p_first // BC - 1, 0) * BC
        hi = (p_last // BC) * BC
    elif KIND == KIND_CROSS:
        lo = 0
        hi = LK
    else:
        lo = 0
        hi = tl.minimum(PRIME, p_last + 1)
    return lo, hi


@triton.jit
def query_span(j_first, j_last, v_first, q_start, u_lo, u_hi, BC, PRIME, KIND: tl.constexpr):
    """Query units [lo, hi) that may see keys at positions j_first..j_last (unit v_first)."""
    if KIND == KIND_DENSE:
        lo = tl.maximum(j_first, q_start)
        hi = u_hi
    elif KIND == KIND_BLOCK:
        lo = tl.maximum(j_first, q_start)
        hi = tl.minimum(u_hi, (j_last // BC + 1) * BC)
    elif KIND == KIND_COLUMN:
        lo = tl.maximum(v_first, u_lo)
        hi = u_hi
    elif KIND == KIND_PREV_BLOCK:
        lo = tl.maximum((j_first // BC + 1) * BC, q_start)
        hi = tl.minimum(u_hi, (j_last // BC + 2) * BC)
    elif KIND == KIND_CROSS:
        lo = 0
        hi = u_hi
    else:
        lo = tl.maximum(j_first, q_start)
        hi = tl.where(j_first < PRIME, u_hi, lo)
    return lo, hi


@triton.jit
def visible(p, u, j, v, BC, PRIME, KIND: tl.constexpr):
    """The pattern's mask for query positions p (units u) against key positions j (units v);
    the arguments broadcast, so the same rule serves [M, N] and [N, M] tiles."""
    if KIND == KIND_DENSE:
        vis = j <= p
    elif KIND == KIND_BLOCK:
        vis = (j // BC == p // BC) & (j <= p)
    elif KIND == KIND_COLUMN:
        vis = v <= u
    elif KIND == KIND_PREV_BLOCK:
        vis = j // BC == p // BC - 1
    elif KIND == KIND_CROSS:
        vis = (j >= 0) & (p >= 0)
    else:
        vis = (j < PRIME) & (j <= p)
    return vis


@triton.jit
def visible_slots(p, BC, NB, PRIME, ENC, KIND: tl.constexpr):
    if KIND == KIND_DENSE:
        lo = 0
        hi = p + 1
    elif KIND == KIND_BLOCK:
        lo = 0
        hi = p % BC + 1
    elif KIND == KIND_COLUMN:
        lo = (p % BC) * NB
        hi = lo + p // BC + 1
    elif KIND == KIND_PREV_BLOCK:
        block = p // BC
        lo = tl.where(block > 0, ((block - 1) % 2) * BC, 0)
        hi = tl.where(block > 0, lo + BC, 0)
    elif KIND == KIND_CROSS:
        lo = 0
        hi = ENC
    else:
        lo = 0
        hi = tl.minimum(p, PRIME - 1) + 1
    return lo, hi


@triton.jit
def cache_slot(p, BC, NB, PRIME, KIND: tl.constexpr):
    """The cache slot of position p (``CacheLayout.slots``)."""
    if KIND == KIND_DENSE:
        s = p
    elif KIND == KIND_BLOCK:
        s = p % BC
    elif KIND == KIND_COLUMN:
        s = (p % BC) * NB + p // BC
    elif KIND == KIND_PREV_BLOCK:
        s = p % (2 * BC)
    else:  # prime: past the window, the scratch slot
        s = tl.minimum(p, PRIME)
    return s
