"""One decode step of attention: the newest query of each sample against a static KV cache.

One program per (sample, head) reads the position from device memory, works out the run of
cache slots its pattern sees (``jukebox_fast.ops.decode.CacheLayout`` is the definition this
mirrors) and walks only those slots in tiles of BLOCK_N, with an online softmax in fp32. There is
a single query row, so the products are elementwise multiply-and-sum on CUDA cores rather than
tl.dot: the step is bound by reading the cache, not by arithmetic. The launch never depends on
the position, so a CUDA graph can replay it.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

__all__ = ["decode", "decode_config", "MAX_HEAD_DIM"]

MAX_HEAD_DIM = 512
LOG2E = 1.4426950408889634


@triton.jit
def _visible_slots(p, BC, NB, PRIME, ENC, KIND: tl.constexpr):
    if KIND == 0:
        lo = 0
        hi = p + 1
    elif KIND == 1:
        lo = 0
        hi = p % BC + 1
    elif KIND == 2:
        lo = (p % BC) * NB
        hi = lo + p // BC + 1
    elif KIND == 3:
        block = p // BC
        lo = tl.where(block > 0, ((block - 1) % 2) * BC, 0)
        hi = tl.where(block > 0, lo + BC, 0)
    elif KIND == 6:
        lo = 0
        hi = ENC
    else:
        lo = 0
        hi = tl.minimum(p, PRIME - 1) + 1
    return lo, hi


@triton.jit
def _decode_kernel(
    q_ptr, k_ptr, v_ptr, o_ptr, pos_ptr,
    sq_n, sq_h, sk_n, sk_h, sk_s, sv_n, sv_h, sv_s, so_n, so_h,
    H, D, BC, NB, PRIME, ENC, qk_scale,
    KIND: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    nh = tl.program_id(0)
    n = (nh // H).to(tl.int64)
    h = (nh % H).to(tl.int64)
    p = tl.load(pos_ptr)
    lo, hi = _visible_slots(p, BC, NB, PRIME, ENC, KIND)

    d = tl.arange(0, BLOCK_D)
    d_ok = d < D
    q = tl.load(q_ptr + n * sq_n + h * sq_h + d, mask=d_ok, other=0.0).to(tl.float32)  # [BLOCK_D]
    k_ptr += n * sk_n + h * sk_h
    v_ptr += n * sv_n + h * sv_h
    m_i = tl.full((), float("-inf"), tl.float32)
    l_i = tl.full((), 0.0, tl.float32)
    acc = tl.zeros([BLOCK_D], tl.float32)
    for start in range(lo, hi, BLOCK_N):
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
    out = acc / tl.where(l_i > 0.0, l_i, 1.0)  # no visible slot: zeros
    tl.store(o_ptr + n * so_n + h * so_h + d, out.to(o_ptr.dtype.element_ty), mask=d_ok)


def decode_config(d: int) -> dict:
    """Compile-time constants and launch options for head width d."""
    block_d = max(16, triton.next_power_of_2(d))
    return dict(BLOCK_N=max(16, min(64, 8192 // block_d)), BLOCK_D=block_d, num_warps=4 if block_d <= 128 else 8,
                enable_fp_fusion=True)


def decode(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor, position: torch.Tensor,
    kind: int, block_ctx: int, blocks: int, prime_len: int, enc_length: int, scale: float,
) -> None:
    """Fill ``out`` [N, H, d] from q [N, H, d] and the cache k, v [N, H, S, d] (unit stride along
    d) for the query at ``position`` (one-element int64 tensor on the same device)."""
    n, h, d = q.shape
    _decode_kernel[(n * h,)](
        q, k, v, out, position,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), k.stride(2), v.stride(0), v.stride(1), v.stride(2),
        out.stride(0), out.stride(1),
        h, d, block_ctx, blocks, prime_len, enc_length, scale * LOG2E,
        KIND=kind, **decode_config(d),
    )
