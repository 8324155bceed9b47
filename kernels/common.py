"""What every kernel module shares: launch settings, the one place kernels are launched, and the
matrix product with the fp32 policy.

fp32 inputs on the GPU, on purpose:

- The VQ search (``PRECISION="tf32x3"``) uses the tensor cores with fp32 accuracy: each operand
  is split into a TF32 head and a TF32 tail (``x ≈ hi + lo``, both exactly representable in
  TF32) and a·b is the sum of three TF32 products, lo·hi + hi·lo + hi·hi (the lo·lo term is below
  fp32's rounding). TF32 products of TF32 values are exact in fp32, so Triton's interpreter, which
  multiplies in fp32, computes what the tensor cores compute up to the order of the sums: the
  split's accuracy is measured on the CPU (as accurate as one fp32 product; one TF32 product
  instead changes codes). Users compare codes with the original's exactly, so the search never
  takes a single TF32 product, whatever ``torch.backends.cuda.matmul.allow_tf32`` says.
- The attention kernels (``PRECISION="ieee"``) multiply fp32 on the CUDA cores, exactly as an
  fp32 reference does. The split's operands did not fit their fused loops: every tile tried
  spilled registers on sm_90, with both Triton versions. Fast attention is bf16 or fp16.
"""
from __future__ import annotations

import contextlib
import contextvars
from typing import Iterator, NamedTuple

import torch
import triton
import triton.language as tl

from . import interpreter_on

__all__ = ["upcast_dot", "dot_precision", "dot", "aligned", "alignment", "launch", "compile_only", "Compiled"]


def upcast_dot(dtype: torch.dtype) -> bool:
    """Whether ``tl.dot`` operands of this dtype must go in as fp32.

    Triton's interpreter multiplies bf16 tiles as their raw 16-bit integers (it stores bf16 as
    uint16 and hands both to numpy.matmul), so there they go in as fp32. The products of bf16
    values are exact in fp32 either way; only the order of the fp32 sums may differ.
    """
    return dtype == torch.bfloat16 and interpreter_on()


def dot_precision(dtype: torch.dtype, fp32: str) -> str:
    """How :func:`dot` multiplies operands of this dtype: fp32 as the kernel's policy ``fp32``
    ("tf32x3" or "ieee") says; 16-bit operands as they are."""
    return fp32 if dtype == torch.float32 else "tf32"


@triton.jit
def _tf32(x):
    """fp32 x rounded to TF32 (10 stored mantissa bits, to nearest), still as fp32."""
    bits = x.to(tl.uint32, bitcast=True)
    return ((bits + 0x1000) & 0xFFFFE000).to(tl.float32, bitcast=True)


@triton.jit
def dot(a, b, acc, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """acc + a·b in fp32 (a [M, K], b [K, N], acc fp32 [M, N]); see the module docstring."""
    if PRECISION == "tf32x3":
        a_hi = _tf32(a)
        b_hi = _tf32(b)
        acc = tl.dot(_tf32(a - a_hi), b_hi, acc, input_precision="tf32")
        acc = tl.dot(a_hi, _tf32(b - b_hi), acc, input_precision="tf32")
        return tl.dot(a_hi, b_hi, acc, input_precision="tf32")
    elif UPCAST:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    else:
        return tl.dot(a, b, acc, input_precision=PRECISION)


@triton.jit
def aligned(x, ALIGN: tl.constexpr):
    """x (a stride or a width that the launcher found divisible by ALIGN, see :func:`alignment`) in
    a form whose divisibility the compiler can see, so that loads vectorise to ALIGN elements.
    Launches specialise only multiples of 16 elements; a head width of 150 is a multiple of 2."""
    return (x // ALIGN) * ALIGN


def alignment(d: int, *tensors: torch.Tensor) -> int:
    """The largest power of two, in elements and at most 16 bytes, that divides the width d and
    every stride but the unit one of ``tensors``: how wide the kernels' loads may be."""
    align = 16 // tensors[0].element_size()
    values = [d] + [s for t in tensors for s in t.stride()[:-1]]
    while align > 1 and any(v % align for v in values):
        align //= 2
    return align


class Compiled(NamedTuple):
    """One launch as :func:`compile_only` records it: what was compiled, and for what."""

    kernel: object  # the JIT function
    grid: tuple[int, ...]
    compiled: object  # Triton's CompiledKernel
    args: tuple  # the launch's arguments, as passed
    kwargs: dict  # its compile-time constants and options


# While compile_only() is active: the list that launches append their compiled kernels to.
_compiled: contextvars.ContextVar[list | None] = contextvars.ContextVar("jukebox_fast_compile_only", default=None)


def launch(kernel, grid: tuple[int, ...], *args, **kwargs):
    """``kernel[grid](*args, **kwargs)``, or inside :func:`compile_only` the same call compiled
    and not run: Triton specialises and compiles it exactly as for a launch (``warmup``)."""
    compiled = _compiled.get()
    if compiled is None:
        return kernel[grid](*args, **kwargs)
    compiled.append(Compiled(kernel, grid, kernel.warmup(*args, grid=grid, **kwargs), args, kwargs))
    return None


@contextlib.contextmanager
def compile_only() -> Iterator[list]:
    """Launchers called inside compile and record instead of running: yields the list of
    :class:`Compiled` launches they produce. Their tensors may live on the meta device, whose
    pointers specialise as aligned, as the caching allocator's do."""
    compiled: list = []
    token = _compiled.set(compiled)
    try:
        yield compiled
    finally:
        _compiled.reset(token)
