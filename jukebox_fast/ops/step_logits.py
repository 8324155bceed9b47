"""The ``step_logits`` op: a decode step's logits, the rows h [N, width] times the output
projection's weight [bins, width] (``x_out``, a Linear without bias; tied to the token embedding
in the upsamplers and 1b_lyrics), for the few rows one step has.

At the released widths that weight is 16 MB of fp32 read once per token, a quarter of what an int8
step's layers read. MKL's matrix-vector product streams it on one core whatever the thread count
(width 1920: 1.1 ms on the 2-core AVX2 EPYC once the layers have pushed it out of the cache,
14 GB/s, where two cores read 25 GB/s).

Implementations, in priority order:

- ``cpp``: ``csrc/step_logits.cpp``, the weight's rows split between the threads, each row read
  once for every sample (fp32, CPU, inference; ``auto`` takes it up to ``CPP_MAX_ROWS`` rows);
- ``torch``: the reference, ``F.linear``.

The two sum in different orders, so their logits differ in the last bits (fp32 rounding).
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from .. import dispatch, extension
from . import buffers

__all__ = ["step_logits", "step_logits_reference", "bind", "CPP_MAX_ROWS"]


def check_inputs(h, weight) -> None:
    """Raise ValueError, naming what was expected and what came, for inputs no backend takes."""
    for name, t in (("h", h), ("weight", weight)):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"step_logits: {name} must be a torch.Tensor, got {type(t).__name__}")
    if weight.dim() != 2 or h.dim() != 2 or h.shape[1] != weight.shape[1]:
        raise ValueError(f"step_logits: h must be [N, width] and weight [bins, width] with the same width, got "
                         f"{tuple(h.shape)} and {tuple(weight.shape)}")
    if h.dtype != weight.dtype or h.device != weight.device:
        raise ValueError(f"step_logits: h and weight must share dtype and device, got {h.dtype} on {h.device} "
                         f"and {weight.dtype} on {weight.device}")


def step_logits_reference(h: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """PyTorch reference: ``F.linear(h, weight)``, [N, bins]."""
    return F.linear(h, weight)


def step_logits(h: torch.Tensor, weight: torch.Tensor, *, backend: str | None = None) -> torch.Tensor:
    """The logits [N, bins] of rows h [N, width] for an output projection ``weight`` [bins, width]."""
    check_inputs(h, weight)
    return dispatch.call("step_logits", h, weight, backend=backend)


def bind(h: torch.Tensor, weight: torch.Tensor, *, backend: str | None = None) -> Callable:
    """:func:`step_logits` for a decoder's whole life: checked and chosen once, for rows shaped
    like ``h``; the function returned takes ``(h, weight)`` each step."""
    check_inputs(h, weight)
    return dispatch.bind("step_logits", h, weight, backend=backend)


# Up to this many rows the C++ kernel, which reads the weight once and multiplies each row by every
# sample in turn, beats MKL; with more, MKL's matrix product does. Measured with the weight out of
# the cache, width 1920, 2048 bins, on the 2-core AVX2 EPYC (ms, C++ / MKL): 1 row 0.56 / 0.86,
# 4 rows 0.75 / 2.1, 8 rows 1.08 / 1.71, 16 rows 1.9 / 2.4, 32 rows 3.5 / 3.1.
CPP_MAX_ROWS = 16


def _cpp_call(h: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    out = buffers.new_empty((h.shape[0], weight.shape[0]), h.dtype, h.device)
    torch.ops.jukebox_fast_ext.step_logits(h, weight, out)
    return out


def _cpp_supports(h, weight) -> list[str]:
    reasons = []
    if h.device.type not in ("cpu", "meta") or weight.device.type not in ("cpu", "meta"):
        reasons.append("the C++ step_logits runs on the CPU")
    if h.dtype != torch.float32 or weight.dtype != torch.float32:
        reasons.append("the C++ step_logits takes float32")
    if not h.is_contiguous() or not weight.is_contiguous():
        reasons.append("the C++ step_logits needs contiguous rows and weight")
    if torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad):
        reasons.append("the C++ step_logits is inference only; with autograd recording the reference runs")
    return reasons


def _cpp_declines(h, weight) -> list[str]:
    if h.shape[0] > CPP_MAX_ROWS:
        return [f"{h.shape[0]} rows: above {CPP_MAX_ROWS} MKL's matrix product is faster (CPP_MAX_ROWS)"]
    return []


dispatch.define_op("step_logits", ("cpp", "torch"), doc="a decode step's logits: h[N,width] x_out.weight[bins,width]^T")
dispatch.register("step_logits", "cpp", _cpp_call, available=extension.load, supports=_cpp_supports,
                  declines=_cpp_declines, note="csrc/step_logits.cpp: the weight's rows split between the CPU's threads")
dispatch.register("step_logits", "torch", step_logits_reference, note="reference: F.linear")
