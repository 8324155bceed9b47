"""The ``sparse_attention`` op: one attention layer of Jukebox's factorised transformer.

q [N, H, Lq, d], k and v [N, H, Lk, d] and an :class:`~jukebox_fast.ops.patterns.AttentionPattern`
-> [N, H, Lq, d]. The arithmetic is the original's: logits ``(q·kᵀ)·scale`` in the activation
dtype, then float32, hidden keys set to −1e9 (not −inf), softmax in float32, probabilities cast
back to v's dtype and multiplied by v. A query that sees no key at all (previous-block attention
in block 0, where the original attends to an all-zero block) outputs zeros.

The reference never forms more than about ``TILE_ELEMENTS`` logits at once for the masked path,
and computes block, column and previous-block attention on the re-blocked sequence as the
original does, so it stays linear in memory at n_ctx 8192.
"""
from __future__ import annotations

import math

import torch

from .. import dispatch
from .patterns import AttentionPattern

__all__ = ["sparse_attention", "sparse_attention_reference", "TILE_ELEMENTS"]

TILE_ELEMENTS = 1 << 24  # logits per chunk of the masked path (64 MiB in fp32)
_MASKED = -1e9  # the original's value for hidden logits


def check_inputs(q, k, v, pattern) -> None:
    """Raise ValueError, naming what was expected and what came, for inputs no backend takes."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor) or t.dim() != 4:
            got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"sparse_attention: {name} must be a 4-D tensor [N, H, L, d], got {got}")
        if not t.dtype.is_floating_point:
            raise ValueError(f"sparse_attention: {name} must be a float tensor, got {t.dtype}")
    if not isinstance(pattern, AttentionPattern):
        raise ValueError(f"sparse_attention: pattern must be an AttentionPattern, got {type(pattern).__name__}")
    if k.shape != v.shape:
        raise ValueError(f"sparse_attention: k is {tuple(k.shape)} but v is {tuple(v.shape)}; they must match")
    if q.shape[:2] != k.shape[:2] or q.shape[3] != k.shape[3]:
        raise ValueError(
            f"sparse_attention: q is {tuple(q.shape)} and k is {tuple(k.shape)}; batch, heads and "
            "head width must match")
    if pattern.kind != 6 and q.shape[2] > k.shape[2]:
        raise ValueError(
            f"sparse_attention: {pattern.name} attention takes queries that are the last positions "
            f"of the key sequence, so Lq <= Lk; got Lq={q.shape[2]}, Lk={k.shape[2]}")
    if len({q.device, k.device, v.device}) != 1:
        raise ValueError(f"sparse_attention: q, k, v are on {q.device}, {k.device}, {v.device}")


def _attend(logits: torch.Tensor, visible: torch.Tensor | None, v: torch.Tensor) -> torch.Tensor:
    """Masked float32 softmax over the last axis, then the weighted sum of v."""
    w = logits.float()
    if visible is not None:
        w = torch.where(visible, w, _MASKED)
    return torch.softmax(w, dim=-1).to(v.dtype) @ v


def _logits(q: torch.Tensor, k: torch.Tensor, scale: float) -> torch.Tensor:
    return (q @ k.transpose(-1, -2)) * scale  # the product first, then the scale (original's eval order)


def _masked(q, k, v, pattern: AttentionPattern, scale: float) -> torch.Tensor:
    """Any pattern, any Lq <= Lk: the pattern's mask over query chunks."""
    n, h, lq, _ = q.shape
    lk = k.shape[2]
    offset = 0 if pattern.kind == 6 else lk - lq
    k_pos = torch.arange(lk, device=q.device)
    rows = max(1, TILE_ELEMENTS // max(1, n * h * lk))
    outs = []
    for start in range(0, lq, rows):
        qs = q[:, :, start : start + rows]
        q_pos = torch.arange(start, start + qs.shape[2], device=q.device) + offset
        visible = pattern.visible(q_pos, k_pos)  # [rows, Lk]
        out = _attend(_logits(qs, k, scale), visible, v)  # [N, H, rows, d]
        outs.append(out * visible.any(dim=1, keepdim=True).to(out.dtype))  # no key seen: zero
    return torch.cat(outs, dim=2)


def _blocked(q, k, v, pattern: AttentionPattern, scale: float) -> torch.Tensor:
    """Types 1-3 on a whole sequence (Lq = Lk, a multiple of block_ctx), re-blocked as the original."""
    n, h, length, d = q.shape
    bc = pattern.block_ctx
    nb = length // bc
    q, k, v = (t.reshape(n, h, nb, bc, d) for t in (q, k, v))  # [N, H, blocks, bc, d]
    if pattern.kind == 1:  # causal inside each block
        causal = torch.ones(bc, bc, dtype=torch.bool, device=q.device).tril_()
        out = _attend(_logits(q, k, scale), causal, v)
    elif pattern.kind == 2:  # causal along each column: position t of every block
        q, k, v = (t.transpose(2, 3) for t in (q, k, v))  # [N, H, bc, blocks, d]
        causal = torch.ones(nb, nb, dtype=torch.bool, device=q.device).tril_()
        out = _attend(_logits(q, k, scale), causal, v).transpose(2, 3)
    else:  # 3: every query block sees the whole previous block; block 0 sees zeros
        pad = torch.zeros_like(k[:, :, :1])
        k = torch.cat([pad, k[:, :, :-1]], dim=2)
        v = torch.cat([pad, v[:, :, :-1]], dim=2)
        out = _attend(_logits(q, k, scale), None, v)
    return out.reshape(n, h, length, d)


def sparse_attention_reference(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pattern: AttentionPattern, scale: float
) -> torch.Tensor:
    """PyTorch reference: the oracle for the kernels and the CPU implementation (differentiable)."""
    length = k.shape[2]
    if pattern.kind in (1, 2, 3) and q.shape[2] == length and length % pattern.block_ctx == 0:
        return _blocked(q, k, v, pattern, scale)
    return _masked(q, k, v, pattern, scale)


def sparse_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    pattern: AttentionPattern,
    *,
    scale: float | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    """Attention of ``q`` [N, H, Lq, d] over ``k``, ``v`` [N, H, Lk, d] restricted to ``pattern``.

    Args:
        q, k, v: float tensors on one device. For self-attention types the queries are the
            last Lq positions of the key sequence (Lq = Lk for a whole-sequence forward).
        pattern: which keys each query sees (:class:`AttentionPattern`).
        scale: multiplies q·kᵀ; default 1/√d. (The original's training mode scales q and k by
            d^(-1/4) each beforehand and passes 1.)
        backend: implementation to use (see :mod:`jukebox_fast.dispatch`).

    Returns:
        [N, H, Lq, d] in v's dtype.
    """
    check_inputs(q, k, v, pattern)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    return dispatch.call("sparse_attention", q, k, v, pattern, scale, backend=backend)


dispatch.define_op(
    "sparse_attention",
    order=("triton", "torch"),
    doc="q[N,H,Lq,d], k/v[N,H,Lk,d], AttentionPattern -> [N,H,Lq,d] (Jukebox's factorised attention)",
)
dispatch.register(
    "sparse_attention", "torch", sparse_attention_reference,
    note="PyTorch reference: re-blocked for block/column/prev-block, chunked masks otherwise",
)
