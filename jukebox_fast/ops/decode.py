"""The ``decode_attention`` op: one new query per sample against a layer's static KV cache.

Each attention pattern keeps only the keys it can ever need again, in a preallocated buffer
written in place by position (:class:`~jukebox_fast.ops.patterns.CacheLayout` is the one definition of where a position
lives and which slots the newest query sees):

====  ============  ==========================  ===================================================
type  pattern       slots                       slot of position p / slots query p sees
====  ============  ==========================  ===================================================
 0    dense         L                           p / [0, p]
 1    block         bc (one block, a ring)      p mod bc / [0, p mod bc]
 2    column        bc · ⌈L/bc⌉, column-major   (p mod bc)·nb + ⌊p/bc⌋ / its column up to ⌊p/bc⌋
 3    prev_block    2·bc (two blocks, a ring)   p mod 2bc / the other block (none in block 0)
 6    cross         encoder length              filled once / all
 7    prime         P + 1 (the last is scratch) min(p, P) / [0, min(p, P − 1)]
====  ============  ==========================  ===================================================

Every visible set is one contiguous run of slots, so a kernel reads exactly the keys the
pattern needs. The position is a device tensor: nothing here reads it on the host, so a decode
step can be captured in a CUDA graph.
"""
from __future__ import annotations

import math

import torch

from .. import dispatch
from . import buffers
from .attention import head_reasons
from .patterns import CacheLayout

__all__ = ["CacheLayout", "decode_attention", "decode_attention_reference"]

_MASKED = -1e9  # the original's value for hidden logits


def check_inputs(q, k, v, layout, position) -> None:
    """Raise ValueError, naming what was expected and what came, for inputs no backend takes."""
    if not isinstance(layout, CacheLayout):
        raise ValueError(f"decode_attention: layout must be a CacheLayout, got {type(layout).__name__}")
    if q.dim() != 3 or k.dim() != 4 or k.shape != v.shape:
        raise ValueError(f"decode_attention: q must be [N, H, d] and k, v [N, H, S, d]; got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}")
    if k.shape[:2] != q.shape[:2] or k.shape[3] != q.shape[2]:
        raise ValueError(f"decode_attention: q {tuple(q.shape)} does not match the cache {tuple(k.shape)}")
    if k.shape[2] != layout.size:
        raise ValueError(f"decode_attention: a {layout.pattern.name} cache of length {layout.length} has "
                         f"{layout.size} slots, got {k.shape[2]}")
    if not isinstance(position, torch.Tensor) or position.dtype != torch.int64 or position.numel() != 1:
        raise ValueError(f"decode_attention: position must be a one-element int64 tensor, got {position!r}")
    if len({q.device, k.device, v.device, position.device}) != 1:
        raise ValueError(f"decode_attention: q, k, v, position are on {q.device}, {k.device}, {v.device}, "
                         f"{position.device}")


def decode_attention_reference(q, k, v, layout: CacheLayout, position, scale: float) -> torch.Tensor:
    """PyTorch reference, with the arithmetic of :func:`~jukebox_fast.ops.sparse_attention`.

    On a GPU it attends over the whole buffer with the visible run as a mask: static shapes and
    no host read of the position, so a CUDA graph can capture it. On the CPU, where reading the
    position costs nothing, it attends over the visible run alone (the same result: hidden
    logits get weight exactly 0 either way)."""
    lo, hi = layout.visible(position.view(()))
    if k.device.type == "cpu":
        lo, hi = int(lo), int(hi)
        if hi <= lo:  # no key seen (previous block of block 0): zeros
            return torch.zeros_like(q, dtype=v.dtype)
        k, v = k[:, :, lo:hi], v[:, :, lo:hi]
        w = (q.unsqueeze(2) @ k.transpose(-1, -2)) * scale  # [N, H, 1, hi − lo]
        return (torch.softmax(w.float(), dim=-1).to(v.dtype) @ v).squeeze(2)
    slots = torch.arange(k.shape[2], device=k.device)
    visible = (slots >= lo) & (slots < hi)  # [S]
    w = (q.unsqueeze(2) @ k.transpose(-1, -2)) * scale  # [N, H, 1, S]
    w = torch.where(visible, w.float(), _MASKED)
    out = (torch.softmax(w, dim=-1).to(v.dtype) @ v).squeeze(2)  # [N, H, d]
    return out * visible.any().to(out.dtype)  # no key seen: zeros


def decode_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: CacheLayout, position: torch.Tensor,
    *, scale: float | None = None, backend: str | None = None,
) -> torch.Tensor:
    """Attention of the newest query ``q`` [N, H, d] (at ``position``, a one-element int64 device
    tensor) over a static cache ``k``, ``v`` [N, H, layout.size, d] laid out as ``layout`` says.
    Returns [N, H, d] in v's dtype."""
    check_inputs(q, k, v, layout, position)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    return dispatch.call("decode_attention", q, k, v, layout, position, scale, backend=backend)


# -- Triton -------------------------------------------------------------------------------------
def triton_supports(q, k, v, layout, position, scale) -> list[str]:
    from ..kernels.decode import MAX_HEAD_DIM

    return dispatch.triton_reasons(q, k, v, position) or head_reasons(q, k, v, MAX_HEAD_DIM)


def multiprocessors(device: torch.device) -> int:
    """SMs of a CUDA device (132 on an H200); the H200's count elsewhere (the interpreter, the
    resource check), so a launch there is shaped as on the GPU the kernels are written for."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 132


def decode_attention_triton(q, k, v, layout: CacheLayout, position, scale: float) -> torch.Tensor:
    """The Triton kernel on q, k, v as the model passes them: the body of the custom op below,
    and what the resource check compiles (``benchmarks/kernel_resources.py``)."""
    return _launch(q, k, v, position, layout.kernel_args(), layout.span, scale)


def _launch(q, k, v, position, args: tuple[int, ...], span: int, scale: float) -> torch.Tensor:
    from ..kernels import decode as kernels

    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    n, h, d = q.shape
    out = buffers.new_empty(tuple(q.shape), v.dtype, q.device)
    if out.numel():
        # Split the cache where one program per (sample, head) leaves SMs idle (flash-decoding).
        splits = kernels.splits_for(n * h, span, d, multiprocessors(q.device))
        partials = counts = None
        if splits > 1:  # scratch [N·H, splits, BLOCK_D + 2]: each share's acc, max and sum; a counter each
            width = kernels.decode_config(d)["BLOCK_D"] + 2
            partials = torch.empty(n * h, splits, width, dtype=torch.float32, device=q.device)
            counts = torch.zeros(n * h, dtype=torch.int32, device=q.device)
        kernels.decode(q, k, v, out, position, *args, scale, splits, partials, counts)
    return out


# As every op's kernels: a torch.library custom op with a fake implementation, so torch.compile
# sees one node with a known output.
@torch.library.custom_op("jukebox_fast::decode_attention", mutates_args=())
def _decode_attention_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, position: torch.Tensor, kind: int,
                         block_ctx: int, blocks: int, prime_len: int, enc_length: int, span: int,
                         scale: float) -> torch.Tensor:
    return _launch(q, k, v, position, (kind, block_ctx, blocks, prime_len, enc_length), span, scale)


@_decode_attention_op.register_fake
def _(q, k, v, position, kind, block_ctx, blocks, prime_len, enc_length, span, scale):
    return q.new_empty(q.shape, dtype=v.dtype)


def _triton_call(q, k, v, layout: CacheLayout, position, scale: float) -> torch.Tensor:
    return _decode_attention_op(q, k, v, position, *layout.kernel_args(), layout.span, float(scale))


dispatch.define_op(
    "decode_attention",
    order=("triton", "torch"),
    doc="q[N,H,d] at a device position over a static KV cache [N,H,S,d] -> [N,H,d]",
)
dispatch.register(
    "decode_attention", "triton", _triton_call, supports=triton_supports,
    note="Triton kernel (kernels/decode.py): reads only the slots the pattern needs",
)
dispatch.register(
    "decode_attention", "torch", decode_attention_reference,
    note="PyTorch reference: the whole buffer, masked to the visible slots",
)
