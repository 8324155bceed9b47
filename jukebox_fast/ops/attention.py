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
from . import buffers
from .patterns import AttentionPattern, Kind

__all__ = ["sparse_attention", "sparse_attention_reference", "sparse_attention_triton", "TILE_ELEMENTS"]

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
    if q.shape[3] < 1:
        raise ValueError(f"sparse_attention: the head width d must be >= 1, got q {tuple(q.shape)}")
    if q.shape[:2] != k.shape[:2] or q.shape[3] != k.shape[3]:
        raise ValueError(
            f"sparse_attention: q is {tuple(q.shape)} and k is {tuple(k.shape)}; batch, heads and "
            "head width must match")
    if not pattern.cross and q.shape[2] > k.shape[2]:
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
    if lq == 0:
        return v.new_empty(n, h, 0, v.shape[3])
    offset = 0 if pattern.cross else lk - lq
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
    """The blocked types on a whole sequence (Lq = Lk, a multiple of block_ctx), re-blocked as the original."""
    n, h, length, d = q.shape
    bc = pattern.block_ctx
    nb = length // bc
    q, k, v = (t.reshape(n, h, nb, bc, d) for t in (q, k, v))  # [N, H, blocks, bc, d]
    if pattern.kind == Kind.BLOCK:  # causal inside each block
        causal = torch.ones(bc, bc, dtype=torch.bool, device=q.device).tril_()
        out = _attend(_logits(q, k, scale), causal, v)
    elif pattern.kind == Kind.COLUMN:  # causal along each column: position t of every block
        q, k, v = (t.transpose(2, 3) for t in (q, k, v))  # [N, H, bc, blocks, d]
        causal = torch.ones(nb, nb, dtype=torch.bool, device=q.device).tril_()
        out = _attend(_logits(q, k, scale), causal, v).transpose(2, 3)
    else:  # previous block: every query block sees the whole previous block; block 0 sees zeros
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
    if pattern.blocked and q.shape[2] == length and length % pattern.block_ctx == 0:
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
        [N, H, Lq, d] in v's dtype: empty when Lq = 0, zero for a query that sees no key (the
        first block of the previous-block type; cross-attention over Lk = 0). A head width of 0
        is refused (ValueError).
    """
    check_inputs(q, k, v, pattern)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    return dispatch.call("sparse_attention", q, k, v, pattern, scale, backend=backend)


# -- Triton -------------------------------------------------------------------------------------
# The kernels run inside two torch.library custom ops (forward, backward) with fake
# implementations, and the backward is attached with ``register_autograd``: torch.compile traces a
# prior's forward and backward through them without graph breaks, and eager autograd uses the
# same path.
_HALF_OR_FLOAT = (torch.float16, torch.bfloat16, torch.float32)


def head_reasons(q, k, v, max_head_dim: int) -> list[str]:
    """Why an attention kernel cannot take these q, k, v (dtype, head width): shared by
    sparse_attention and decode_attention."""
    reasons = []
    if len({q.dtype, k.dtype, v.dtype}) != 1:
        reasons.append(f"the Triton kernel takes q, k, v of one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    elif q.dtype not in _HALF_OR_FLOAT:
        reasons.append(f"the Triton kernel takes fp16, bf16 or fp32, not {q.dtype}")
    if q.shape[-1] > max_head_dim:
        reasons.append(f"the Triton kernel takes heads up to d={max_head_dim} wide, got d={q.shape[-1]}")
    return reasons


def _triton_supports(q, k, v, pattern, scale) -> list[str]:
    from ..kernels.attention import MAX_FP32_HEAD_DIM, MAX_HEAD_DIM

    reasons = dispatch.triton_reasons(q, k, v) or head_reasons(q, k, v, MAX_HEAD_DIM)
    if not reasons and q.dtype == torch.float32 and q.shape[-1] > MAX_FP32_HEAD_DIM:
        reasons.append(f"the Triton kernel takes fp32 heads up to d={MAX_FP32_HEAD_DIM} wide, got d={q.shape[-1]} "
                       "(wider fp32 heads spill registers on sm_90); bf16 and fp16 take heads up to "
                       f"d={MAX_HEAD_DIM}")
    return reasons


def _heads_inner(like: torch.Tensor, length: int, dtype: torch.dtype, fill=None) -> torch.Tensor:
    """[N, H, length, d] stored as [N, length, H, d]: the model merges heads with a view."""
    n, h, _, d = like.shape
    shape = (n, length, h, d)
    t = fill(shape, dtype, like.device) if fill else like.new_empty(shape, dtype=dtype)
    return t.transpose(1, 2)


def _unit_stride(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def triton_forward(q, k, v, kind: int, block_ctx: int, prime_len: int, scale: float):
    """The forward kernel on q, k, v as the model passes them: (out [N, H, Lq, d] stored as
    [N, Lq, H, d], log2-sum-exp fp32 [N, H, Lq]). The body of the custom op below, and what the
    resource check compiles (``benchmarks/kernel_resources.py``)."""
    from ..kernels import attention as kernels

    q, k, v = _unit_stride(q), _unit_stride(k), _unit_stride(v)
    n, h, lq, _ = q.shape
    out = _heads_inner(q, lq, v.dtype, buffers.new_empty)
    lse = buffers.new_empty((n, h, lq), torch.float32, q.device)  # log2-sum-exp per query row
    if out.numel():
        kernels.forward(q, k, v, out, lse, kind, block_ctx, prime_len, scale)
    return out, lse


@torch.library.custom_op("jukebox_fast::sparse_attention_fwd", mutates_args=())
def _triton_forward(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kind: int, block_ctx: int, prime_len: int, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    return triton_forward(q, k, v, kind, block_ctx, prime_len, scale)


@_triton_forward.register_fake
def _(q, k, v, kind, block_ctx, prime_len, scale):
    return _heads_inner(q, q.shape[2], v.dtype), q.new_empty(q.shape[:3], dtype=torch.float32)


def triton_backward(grad, q, k, v, out, lse, kind: int, block_ctx: int, prime_len: int, scale: float,
                    deterministic: bool):
    """The backward kernels: (dq, dk, dv) stored as [N, L, H, d]; the body of the custom op below."""
    from ..kernels import attention as kernels

    grad, q, k, v = _unit_stride(grad), _unit_stride(q), _unit_stride(k), _unit_stride(v)
    dq = _heads_inner(q, q.shape[2], q.dtype, buffers.new_empty)
    dk = _heads_inner(k, k.shape[2], k.dtype, buffers.new_empty)
    dv = _heads_inner(v, v.shape[2], v.dtype, buffers.new_empty)
    if dq.numel() and dk.numel():
        kernels.backward(grad, q, k, v, out, lse, dq, dk, dv, kind, block_ctx, prime_len, scale,
                         deterministic=deterministic)
    else:  # no query or no key: nothing flows
        dq, dk, dv = dq.zero_(), dk.zero_(), dv.zero_()
    return dq, dk, dv


@torch.library.custom_op("jukebox_fast::sparse_attention_bwd", mutates_args=())
def _triton_backward(
    grad: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
    lse: torch.Tensor, kind: int, block_ctx: int, prime_len: int, scale: float, deterministic: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return triton_backward(grad, q, k, v, out, lse, kind, block_ctx, prime_len, scale, deterministic)


@_triton_backward.register_fake
def _(grad, q, k, v, out, lse, kind, block_ctx, prime_len, scale, deterministic):
    return (_heads_inner(q, q.shape[2], q.dtype), _heads_inner(k, k.shape[2], k.dtype),
            _heads_inner(v, v.shape[2], v.dtype))


def _setup_context(ctx, inputs, output) -> None:
    q, k, v, kind, block_ctx, prime_len, scale = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse)
    ctx.pattern = (kind, block_ctx, prime_len, scale)


def _backward(ctx, grad, _grad_lse):
    q, k, v, out, lse = ctx.saved_tensors
    # Without deterministic algorithms dQ is summed with fp32 atomics (one recomputation fewer).
    deterministic = torch.are_deterministic_algorithms_enabled()
    dq, dk, dv = _triton_backward(grad, q, k, v, out, lse, *ctx.pattern, deterministic)
    return dq, dk, dv, None, None, None, None


_triton_forward.register_autograd(_backward, setup_context=_setup_context)


def sparse_attention_triton(q, k, v, pattern: AttentionPattern, scale: float) -> torch.Tensor:
    """The Triton kernels (kernels/attention.py), differentiable; the output is [N, H, Lq, d]
    laid out as [N, Lq, H, d]."""
    return _triton_forward(q, k, v, *pattern.kernel_args(), scale)[0]


dispatch.define_op(
    "sparse_attention",
    order=("triton", "torch"),
    doc="q[N,H,Lq,d], k/v[N,H,Lk,d], AttentionPattern -> [N,H,Lq,d] (Jukebox's factorised attention)",
)
dispatch.register(
    "sparse_attention", "triton", sparse_attention_triton, supports=_triton_supports,
    note="Triton flash kernels (kernels/attention.py) on the un-permuted sequence, forward and backward",
)
dispatch.register(
    "sparse_attention", "torch", sparse_attention_reference,
    note="PyTorch reference: re-blocked for block/column/prev-block, chunked masks otherwise",
)


# -- attention weights --------------------------------------------------------------------------
# The flash kernels never form the probabilities. The lyric alignment reads one head's of one
# layer, so they have an op of their own (a reference only: it runs once per window, not per token).
def attention_weights_reference(q: torch.Tensor, k: torch.Tensor, pattern: AttentionPattern,
                                scale: float) -> torch.Tensor:
    """fp32 [N, H, Lq, Lk]: the softmax the attention weighs v by, masked as the pattern says
    (hidden logits at the original's -1e9; a query that sees no key gets zeros)."""
    visible = pattern.mask(q.shape[2], k.shape[2], q.device)  # [Lq, Lk]
    w = torch.where(visible, _logits(q, k, scale).float(), _MASKED)
    return torch.softmax(w, dim=-1) * visible.any(dim=1, keepdim=True)


def attention_weights(q: torch.Tensor, k: torch.Tensor, pattern: AttentionPattern, scale: float | None = None, *,
                      backend: str | None = None) -> torch.Tensor:
    """The attention probabilities of ``sparse_attention`` for q [N, H, Lq, d] and k [N, H, Lk, d]:
    fp32 [N, H, Lq, Lk] (Lq = 0 gives an empty result). ``scale`` defaults to 1/sqrt(d)."""
    check_inputs(q, k, k, pattern)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    return dispatch.call("attention_weights", q, k, pattern, scale, backend=backend)


dispatch.define_op("attention_weights", order=("torch",),
                   doc="q[N,H,Lq,d], k[N,H,Lk,d], AttentionPattern -> fp32 probabilities [N,H,Lq,Lk]")
dispatch.register("attention_weights", "torch", attention_weights_reference,
                  note="PyTorch reference: one masked softmax (the lyric alignment's layer and head)")
