"""The ``decode_layers`` op: one position through a stack of transformer layers over static KV caches.

``decode_layers(x, stack, position)`` takes the rows x [N, width] entering the first layer at
``position`` and returns the rows leaving the last, after writing each layer's key and value of
that position into its cache. A layer is the prior's pre-LN block:

    h = ln_0(x);  q | k | v = c_attn(h);  a = c_proj(attention of q over the cache)
    m = mlp(ln_1(x + a));  x = x + a + m   (x + res_scale · (a + m) when res_scale ≠ 1)

with ``mlp(h) = c_proj(quick_gelu(c_fc(h)))`` and the attention restricted by the layer's
:class:`~jukebox_fast.ops.decode.CacheLayout`. A :class:`DecodeStack` holds what a step reads:
per layer its weights (``WEIGHT_NAMES``, the original's attribute names, as the model stores
them), its cache and layout. Each implementation puts the weights in the form its step reads
(:func:`step_weights`: the caches' dtype, or 16-bit matrices kept as stored for the C++ step)
once per stack, when :func:`bind` prepares it, and keeps that state with the stack
(``DecodeStack.state``): a step itself never converts a weight, and the model layer never
learns which implementation runs.

Implementations, in priority order:

- ``cpp``: ``csrc/decode_layers.cpp``, the whole stack in one call on the CPU (fp32 rows; the
  projection matrices fp32, fp16 or bf16, streamed as stored and widened to fp32 in registers, or
  int8 with per-column scales, packed in row pairs and multiplied in integers against the rows
  rounded to int16, ``csrc/int8_product.cpp``), products that stream each weight once for all
  samples;
- ``triton``: ``kernels/decode_step.py`` and ``kernels/decode.py``, three launches a layer
  (LayerNorm + q|k|v + cache write; attention over the cache, split where that fills the GPU;
  then one launch in three phases: output projection + residual, LayerNorm + the MLP's first
  product, its second + residual),
  each weight read once, fp32, 16-bit or int8 weights;
- ``torch``: the reference, the layers one by one with ``decode_attention_reference``.

The position is a device tensor and no implementation reads it on the host off the CPU, so a
GPU step can be captured in a CUDA graph.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F

from .. import dispatch, extension
from . import buffers
from .decode import CacheLayout, check_inputs as check_attention_inputs, decode_attention_reference, multiprocessors
from .decode import triton_supports as attention_triton_supports

__all__ = ["WEIGHT_NAMES", "DecodeLayer", "DecodeStack", "bind", "decode_layers", "decode_layers_reference",
           "row_pairs", "step_weights"]

# A layer's weights in the order every implementation takes them: names within the original's
# ResAttnBlock; projections are Conv1D, weight [in, out].
WEIGHT_NAMES = ("ln_0.weight", "ln_0.bias", "attn.c_attn.w", "attn.c_attn.b", "attn.c_proj.w", "attn.c_proj.b",
                "ln_1.weight", "ln_1.bias", "mlp.c_fc.w", "mlp.c_fc.b", "mlp.c_proj.w", "mlp.c_proj.b")
_MATRICES = (2, 4, 8, 10)  # the projections' weights, in WEIGHT_NAMES
_NORMS = (0, 1, 6, 7)  # the LayerNorms' parameters


def step_weights(weights: Sequence[torch.Tensor], dtype: torch.dtype, stream_16_bit: bool = False
                 ) -> tuple[torch.Tensor, ...]:
    """A layer's weights (``WEIGHT_NAMES`` order) as a step in ``dtype`` reads them, converted
    once: LayerNorm parameters in fp32 (the statistics are fp32 in every dtype), projections and
    biases in ``dtype``. With ``stream_16_bit`` (the C++ step, whose rows are fp32), 16-bit
    projection matrices stay as stored (the 5b priors' fp16): it streams them at half the bytes.
    int8 matrices always stay int8 (their scales are the layer's ``scales``)."""
    out = []
    for i, w in enumerate(weights):
        w = w.detach()
        if i in _NORMS:
            w = w.float()
        elif w.dtype == torch.int8:
            pass
        elif not (stream_16_bit and i in _MATRICES and w.element_size() == 2):
            w = w.to(dtype)
        out.append(w.contiguous())
    return tuple(out)


@dataclass(eq=False)
class DecodeLayer:
    """One layer as a decode step reads it: weights (``WEIGHT_NAMES`` order), its key and value
    caches k, v [N, n_head, layout.size, d], and where positions live in them. ``scales``: per
    projection matrix (c_attn, c_proj, c_fc, mlp c_proj), its per-column fp32 scales [out] when
    the matrix is int8, else None."""

    weights: tuple[torch.Tensor, ...]
    k: torch.Tensor
    v: torch.Tensor
    layout: CacheLayout
    n_head: int
    res_scale: float = 1.0
    eps: float = 1e-5
    scales: tuple[torch.Tensor | None, ...] = (None, None, None, None)

    @property
    def cross(self) -> bool:
        return self.layout.pattern.cross

    def write(self, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor) -> None:
        """k, v [N, H, len(positions), d] into the slots of ``positions`` (distinct slots)."""
        slots = self.layout.slots(positions)
        self.k.index_copy_(2, slots, k)
        self.v.index_copy_(2, slots, v)


class DecodeStack:
    """The layers of one transformer, in order, for decoding N samples."""

    def __init__(self, layers: Sequence[DecodeLayer]):
        if not layers:
            raise ValueError("a DecodeStack needs at least one layer")
        self.layers = list(layers)
        self.state: dict[str, Any] = {}  # per implementation: what it prepared for this stack

    def prepared(self, impl: str, make: Callable[["DecodeStack"], Any]) -> Any:
        """``impl``'s state for this stack, made by ``make`` on first use and reused every step."""
        if impl not in self.state:
            self.state[impl] = make(self)
        return self.state[impl]


def _in_step_dtype(stack: DecodeStack) -> list[tuple[torch.Tensor, ...]]:
    """Every layer's weights converted to its caches' dtype (LayerNorms fp32), once."""
    return [step_weights(layer.weights, layer.k.dtype) for layer in stack.layers]


def _packed(stack: DecodeStack) -> tuple:
    """The stack flattened for the C++ kernel: weights (16-bit matrices as stored, int8 ones in
    :func:`row_pairs`), the int8 matrices' scales (an empty tensor for any other matrix), key
    caches, value caches, the schedule [layers, length, 3] (slot, lo, hi of every position:
    ``CacheLayout``'s answers tabulated, slot −1 where nothing is written), heads, res_scales, eps.
    The packed int8 matrices are copies: while a stack lives, its int8 weights are held twice."""
    schedule = torch.stack([_schedule(layer.layout) for layer in stack.layers])
    weights = [row_pairs(w) if w.dtype == torch.int8 else w
               for layer in stack.layers for w in step_weights(layer.weights, layer.k.dtype, stream_16_bit=True)]
    none = torch.empty(0)
    scales = [none if s is None else s.float().contiguous() for layer in stack.layers for s in layer.scales]
    return (weights, scales, [layer.k for layer in stack.layers], [layer.v for layer in stack.layers], schedule,
            [layer.n_head for layer in stack.layers], [float(layer.res_scale) for layer in stack.layers],
            stack.layers[0].eps)


def row_pairs(w: torch.Tensor) -> torch.Tensor:
    """An int8 matrix [K, J] packed as the C++ step multiplies it: rows 2i and 2i+1 interleaved,
    [ceil(K/2), J, 2] (a zero row after an odd K), so that one instruction takes a column's two
    weights (csrc/int8_product.cpp)."""
    k, j = w.shape
    return F.pad(w, (0, 0, 0, k % 2)).view(-1, 2, j).transpose(1, 2).contiguous()  # [ceil(K/2), J, 2]


def _schedule(layout: CacheLayout) -> torch.Tensor:
    p = torch.arange(layout.length)
    lo, hi = layout.visible(p)
    slot = torch.full_like(p, -1) if layout.pattern.cross else layout.slots(p)
    return torch.stack([slot, lo, hi], dim=1)  # [length, 3]


def check_inputs(x, stack, position) -> None:
    """Raise ValueError, naming what was expected and what came, for inputs no backend takes."""
    if not isinstance(stack, DecodeStack):
        raise ValueError(f"decode_layers: stack must be a DecodeStack, got {type(stack).__name__}")
    first = stack.layers[0]
    n, width = first.k.shape[0], first.weights[0].shape[0]
    if not isinstance(x, torch.Tensor) or x.dim() != 2 or tuple(x.shape) != (n, width):
        raise ValueError(f"decode_layers: x must be [N, width] = [{n}, {width}] for this stack, got "
                         f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    for i, layer in enumerate(stack.layers):
        if len(layer.weights) != len(WEIGHT_NAMES):
            raise ValueError(f"decode_layers: layer {i} has {len(layer.weights)} weights, expected "
                             f"{len(WEIGHT_NAMES)} ({', '.join(WEIGHT_NAMES)})")
        d = layer.k.shape[-1]
        q = layer.k[:, :, 0] if layer.k.shape[2] else layer.k.new_empty(n, layer.n_head, d)  # [N, H, d]
        check_attention_inputs(q, layer.k, layer.v, layer.layout, position)
        if layer.k.dtype != x.dtype:
            raise ValueError(f"decode_layers: layer {i}'s cache is {layer.k.dtype}, x is {x.dtype}; they must match")


def decode_layers(x: torch.Tensor, stack: DecodeStack, position: torch.Tensor, *,
                  backend: str | None = None) -> torch.Tensor:
    """Rows x [N, width] at ``position`` (one-element int64 tensor on x's device) through every
    layer of ``stack``, writing each layer's key and value of that position into its cache.
    Returns the last layer's output [N, width] in x's dtype. The position is not advanced."""
    check_inputs(x, stack, position)
    return dispatch.call("decode_layers", x, stack, position, backend=backend)


def bind(x: torch.Tensor, stack: DecodeStack, position: torch.Tensor, *,
         backend: str | None = None) -> Callable[[torch.Tensor, DecodeStack, torch.Tensor], torch.Tensor]:
    """:func:`decode_layers` for a decoder's whole life: the inputs are checked and the
    implementation chosen once (``x`` stands in for every step's rows: same shape, dtype and
    device), its state for ``stack`` prepared now, and the function returned takes
    ``(x, stack, position)`` each step with no check or choice in Python."""
    check_inputs(x, stack, position)
    return dispatch.bind("decode_layers", x, stack, position, backend=backend)


# -- PyTorch: the layers one at a time -------------------------------------------------------------
def _linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
    w = w.to(x.dtype) if scale is None else w.to(x.dtype) * scale.to(x.dtype)  # as the model's Conv1D.weight
    return torch.addmm(b.to(x.dtype), x, w)  # [N, in] -> [N, out]


def _layer_norm(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, eps: float) -> torch.Tensor:
    return F.layer_norm(x.float(), (x.shape[-1],), w, b, eps).to(x.dtype)  # fp32 statistics, as the model's


def _layer_loop(attend: Callable) -> Callable:
    """decode_layers in PyTorch with ``attend`` (a decode_attention implementation) per layer."""

    def run(x: torch.Tensor, stack: DecodeStack, position: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        for layer, weights in zip(stack.layers, stack.prepared("torch", _in_step_dtype)):
            ln0_w, ln0_b, attn_w, attn_b, proj_w, proj_b, ln1_w, ln1_b, fc_w, fc_b, out_w, out_b = weights
            attn_s, proj_s, fc_s, out_s = layer.scales
            heads, d = layer.n_head, layer.k.shape[-1]
            h = _linear(_layer_norm(x, ln0_w, ln0_b, layer.eps), attn_w, attn_b, attn_s)  # [N, 3·H·d] (H·d: cross)
            q = h[:, : heads * d].reshape(n, heads, d)
            if not layer.cross:
                k, v = (t.reshape(n, heads, 1, d) for t in h[:, heads * d :].chunk(2, dim=1))
                layer.write(k, v, position)
            a = attend(q, layer.k, layer.v, layer.layout, position, 1.0 / math.sqrt(d))  # [N, H, d]
            a = _linear(a.reshape(n, heads * d), proj_w, proj_b, proj_s)
            f = _linear(_layer_norm(x + a, ln1_w, ln1_b, layer.eps), fc_w, fc_b, fc_s)
            m = _linear(f * torch.sigmoid(1.702 * f), out_w, out_b, out_s)  # quick_gelu
            x = x + a + m if layer.res_scale == 1.0 else x + layer.res_scale * (a + m)
        return x

    return run


decode_layers_reference = _layer_loop(decode_attention_reference)
decode_layers_reference.__doc__ = "PyTorch reference: each layer's ops in turn, decode_attention_reference inside."


# -- Triton: three launches a layer -----------------------------------------------------------------
# (kernels/decode_step.py says why proj, fc and out are phases of one launch, not launches.)
class _TritonStep:
    """What the Triton step keeps from one step to the next, allocated once per stack (so a CUDA
    graph replays the same buffers): the weights in the step's dtype (int8 as stored, with their
    scales), two residual rows the layers take turns writing, the scratch rows (q, the attention's
    output o, its projection a, h₁ = x + a, f), the row statistics, proj_mlp's counters, each
    long layer's split scratch, and the tiles."""

    def __init__(self, stack: DecodeStack):
        from ..kernels import decode as attention_kernels
        from ..kernels import decode_step

        self.weights = _in_step_dtype(stack)
        self.scales = [tuple(None if s is None else s.float().contiguous() for s in layer.scales)
                       for layer in stack.layers]
        first = stack.layers[0]
        n, width, dev, dt = first.k.shape[0], first.weights[0].shape[0], first.k.device, first.k.dtype
        n_state = max(layer.weights[4].shape[0] for layer in stack.layers)
        hidden = max(layer.weights[8].shape[1] for layer in stack.layers)
        self.cfg = {norm: decode_step.step_config(n, dt, self.weights[0][2].dtype, norm) for norm in (True, False)}
        self.tiles = decode_step.tiles(width, self.cfg[False])  # column tiles of proj's and out's [N, W]
        self.residual = torch.empty(2, n, width, dtype=dt, device=dev)  # [2, N, W]
        # Flat: each layer views [N, its width] contiguously.
        self.q = torch.empty(n * n_state, dtype=dt, device=dev)  # [N, H·d]
        self.o = torch.empty(n * n_state, dtype=dt, device=dev)
        self.f = torch.empty(n * hidden, dtype=dt, device=dev)  # [N, MLP width]
        self.a = torch.empty(n, width, dtype=dt, device=dev)
        self.h1 = torch.empty(n, width, dtype=dt, device=dev)
        self.stats = torch.empty(2, self.tiles, n, 2, device=dev)  # [x, h1] × [tiles, N, (mean, variance)]
        self.sync = torch.zeros(4, dtype=torch.int32, device=dev)  # proj_mlp's tickets and phase counts
        self.splits = []  # per layer: (splits, partials, counters)
        for layer in stack.layers:
            heads, d = layer.n_head, layer.k.shape[-1]
            splits = attention_kernels.splits_for(n * heads, layer.layout.span, d, multiprocessors(dev))
            width_d = attention_kernels.decode_config(d)["BLOCK_D"] + 2
            self.splits.append((splits, torch.empty(n * heads, splits, width_d, device=dev) if splits > 1 else None,
                                torch.zeros(n * heads, dtype=torch.int32, device=dev) if splits > 1 else None))


def _triton_call(x: torch.Tensor, stack: DecodeStack, position: torch.Tensor) -> torch.Tensor:
    from ..kernels import decode as attention_kernels
    from ..kernels import decode_step as kernels

    step = stack.prepared("triton", _TritonStep)
    x = x.contiguous()  # (bind checked a stand-in once; the kernels take rows W apart)
    n, width = x.shape
    x_stats, h1_stats = step.stats[0], step.stats[1]
    norm, plain = step.cfg[True], step.cfg[False]
    kernels.row_stats(x, x_stats)  # the first rows' statistics: one tile as wide as the row
    n_tiles, tile = 1, width
    result = buffers.new_empty(tuple(x.shape), x.dtype, x.device)
    last = len(stack.layers) - 1
    for i, (layer, weights, scales, (splits, partials, counts)) in enumerate(
            zip(stack.layers, step.weights, step.scales, step.splits)):
        ln0_w, ln0_b, attn_w, attn_b, proj_w, proj_b, ln1_w, ln1_b, fc_w, fc_b, out_w, out_b = weights
        attn_s, proj_s, fc_s, out_s = scales
        heads, d = layer.n_head, layer.k.shape[-1]
        n_state = heads * d
        q, o = step.q[: n * n_state].view(n, n_state), step.o[: n * n_state].view(n, n_state)
        f = step.f[: n * fc_w.shape[1]].view(n, fc_w.shape[1])
        y = result if i == last else step.residual[i % 2]  # this layer's output rows
        args = layer.layout.kernel_args()
        kernels.qkv(x, x_stats, n_tiles, tile, ln0_w, ln0_b, attn_w, attn_s, attn_b, q, layer.k, layer.v, position,
                    n_state, d, *args, layer.eps, norm)
        attention_kernels.decode(q.view(n, heads, d), layer.k, layer.v, o.view(n, heads, d), position, *args,
                                 1.0 / math.sqrt(d), splits, partials, counts)
        kernels.proj_mlp(o, proj_w, proj_s, proj_b, x, step.a, step.h1, h1_stats, ln1_w, ln1_b, fc_w, fc_s, fc_b, f,
                         out_w, out_s, out_b, y, x_stats, step.sync, layer.res_scale, layer.eps, plain, norm)
        x, n_tiles, tile = y, step.tiles, plain["BLOCK_O"]
    return result


def _triton_supports(x, stack, position) -> list[str]:
    layer = stack.layers[0]
    reasons = list(attention_triton_supports(layer.k[:, :, 0], layer.k, layer.v, layer.layout, position, 1.0))
    tensors = [t for layer in stack.layers for t in layer.weights]
    if len({w.dtype for layer in stack.layers for i, w in enumerate(layer.weights) if i in _MATRICES}) != 1:
        reasons.append("the Triton step takes projection weights of one dtype")
    if any((layer.weights[i].dtype == torch.int8) != (s is not None)
           for layer in stack.layers for i, s in zip(_MATRICES, layer.scales)):
        reasons.append("the Triton step takes scales for its int8 matrices, and only for them")
    if not x.is_contiguous():
        reasons.append("the Triton step needs contiguous rows x")
    if any(not t.is_contiguous() for t in tensors + [lay.k for lay in stack.layers] + [lay.v for lay in stack.layers]):
        reasons.append("the Triton step needs contiguous weights and caches")
    if any(w.dtype != torch.float32 for layer in stack.layers for i, w in enumerate(layer.weights) if i in _NORMS):
        reasons.append("the Triton step takes float32 LayerNorm parameters (step_weights gives them)")
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        reasons.append("the Triton step is inference only; with autograd recording the reference runs")
    return reasons


# -- C++ -------------------------------------------------------------------------------------------
def _cpp_call(x, stack: DecodeStack, position) -> torch.Tensor:
    weights, scales, k, v, schedule, heads, res_scale, eps = stack.prepared("cpp", _packed)
    out = buffers.new_empty(tuple(x.shape), x.dtype, x.device)
    torch.ops.jukebox_fast_ext.decode_layers(x, weights, scales, k, v, schedule, heads, res_scale, eps, position, out)
    return out


def _cpp_supports(x, stack, position) -> list[str]:
    reasons = []
    tensors = [x, position] + [t for layer in stack.layers for t in (*layer.weights, layer.k, layer.v)]
    if any(t.device.type not in ("cpu", "meta") for t in tensors):  # (meta: a memory plan traces a CPU run)
        reasons.append("the C++ decode step runs on the CPU; a tensor is elsewhere")
    vectors = [x] + [t for layer in stack.layers for i, t in enumerate(layer.weights) if i not in _MATRICES]
    vectors += [t for layer in stack.layers for t in (layer.k, layer.v)]
    if any(t.dtype != torch.float32 for t in vectors):
        reasons.append("the C++ decode step takes float32 rows, caches, biases and LayerNorm parameters")
    if any(w.dtype not in (torch.float32, torch.float16, torch.bfloat16, torch.int8)
           for layer in stack.layers for i, w in enumerate(layer.weights) if i in _MATRICES):
        reasons.append("the C++ decode step takes float32, float16, bfloat16 or int8 projection matrices")
    if any((layer.weights[i].dtype == torch.int8) != (s is not None)
           for layer in stack.layers for i, s in zip(_MATRICES, layer.scales)):
        reasons.append("the C++ decode step takes scales for its int8 matrices, and only for them")
    if any(not t.is_contiguous() for t in tensors[2:]):
        reasons.append("the C++ decode step needs contiguous weights and caches")
    if len({layer.eps for layer in stack.layers}) > 1:
        reasons.append("the C++ decode step takes one LayerNorm eps for all layers")
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        reasons.append("the C++ decode step is inference only; with autograd recording the reference runs")
    return reasons


dispatch.define_op("decode_layers", ("cpp", "triton", "torch"),
                   doc="x[N,width] at a device position through a stack of layers over static KV caches")
def _preparer(impl: str, make: Callable[[DecodeStack], Any]) -> Callable:
    return lambda x, stack, position: stack.prepared(impl, make)


dispatch.register("decode_layers", "cpp", _cpp_call, available=extension.load, supports=_cpp_supports,
                  prepare=_preparer("cpp", _packed),
                  note="csrc/decode_layers.cpp: the whole stack in one call on the CPU, fp32 rows, 16-bit weights streamed")
dispatch.register("decode_layers", "triton", _triton_call, supports=_triton_supports,
                  prepare=_preparer("triton", _TritonStep),
                  note="kernels/decode_step.py: three launches a layer (LN+qkv+cache, attention, proj|LN+fc|out+residual)")
dispatch.register("decode_layers", "torch", decode_layers_reference, prepare=_preparer("torch", _in_step_dtype),
                  note="PyTorch reference")
