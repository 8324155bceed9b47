"""The fused residual block of dilated convolutions.

``dilated_resblock(x, w1, b1, w2, b2, dilation, res_scale)`` with x [N, C, L] channels-first,
w1 [S, C, 3], b1 [S], w2 [C, S, 1], b2 [C] returns

    x + res_scale · conv1x1(relu(conv3(relu(x), dilation=d, padding=d)))

the block of the VQ-VAE's encoder/decoder stacks and of the upsamplers' conditioner.

Implementations, in priority order:

- ``cuda``: ``csrc/dilated_resblock_cuda.cu``, one launch per block, the hidden channels kept in
  shared memory. Its scope is stated, not grown: an fp32 reference for the C++ path's fusion on
  a GPU (plain FMAs, no tensor cores, a 64-float shared-memory stride with bank conflicts in its
  weight tiles). It runs on request only (``backend="cuda"``); ``auto`` never takes it, since
  cuDNN's convolutions are the faster GPU path by every reading of its machine code;
- ``cpp``: ``csrc/dilated_resblock.cpp``, the same fusion on CPU threads. Taken by ``auto`` only
  where it measured faster than the reference (``CPP_BF16_MAX_WIDTH``);
- ``torch``: the reference, two ``conv1d`` calls (cuDNN / oneDNN), and the only one with a backward.

The extension's kernels are inference only: with autograd recording, ``auto`` takes the
reference and an explicit request for ``cuda``/``cpp`` says why it cannot run.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import dispatch, extension
from ..cpu_features import native_16bit
from . import buffers

__all__ = ["dilated_resblock", "dilated_resblock_reference", "CPP_BF16_MAX_WIDTH", "CUDA_MAX_HIDDEN"]

_FLOATS = (torch.float32, torch.float16, torch.bfloat16)

# On the CPU, oneDNN's bf16 convolutions beat the fused kernel (which widens to fp32) once the block
# is wide. Measured ratio reference/kernel at 4M elements per block, d=9, 2 threads: bf16 2.55x at
# width 64, 1.44x at 128, 0.70x at 192, 0.92x at 256, 0.71x at 512, 0.52x at 1024; fp32 won at
# every width (4.45x at 64 ... 1.19x at 1024) and so did fp16, which the reference runs without a
# fast path (36x-445x). Above this width auto keeps the reference for bf16, on a CPU with bf16
# instructions only: elsewhere oneDNN emulates bf16 and the fused kernel (fp32 inside) always wins.
CPP_BF16_MAX_WIDTH = 128
# The CUDA kernel keeps the hidden channels of a tile in at most 128 KiB of shared memory.
CUDA_MAX_HIDDEN = 2048


def _autocast(device: torch.device) -> bool:
    # meta tensors (a memory plan's trace) have no autocast state to ask for
    return device.type in ("cpu", "cuda") and torch.is_autocast_enabled(device.type)


def check_inputs(x, w1, b1, w2, b2, dilation) -> None:
    """Raise ValueError, naming what was expected and what came, for inputs no backend takes."""
    for name, t in (("x", x), ("w1", w1), ("b1", b1), ("w2", w2), ("b2", b2)):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"dilated_resblock: {name} must be a torch.Tensor, got {type(t).__name__}")
    if x.dim() != 3:
        raise ValueError(f"dilated_resblock: x must be [N, C, L], got shape {tuple(x.shape)}")
    c = x.shape[1]
    s = w1.shape[0] if w1.dim() == 3 else -1
    expected = {"w1": (s, c, 3), "b1": (s,), "w2": (c, s, 1), "b2": (c,)}
    for name, t in (("w1", w1), ("b1", b1), ("w2", w2), ("b2", b2)):
        if tuple(t.shape) != expected[name] or s < 1:
            shape = "[S, C, 3]" if name == "w1" else str(list(expected[name])).replace("-1", "S")
            raise ValueError(f"dilated_resblock: {name} must be {shape} for x with C={c}, got {tuple(t.shape)}")
    if x.dtype not in _FLOATS:
        raise ValueError(f"dilated_resblock: x must be float32, float16 or bfloat16, got {x.dtype}")
    autocast = _autocast(x.device)  # the reference casts as conv1d does
    for name, t in (("w1", w1), ("b1", b1), ("w2", w2), ("b2", b2)):
        if (t.dtype != x.dtype and not autocast) or t.device != x.device:
            raise ValueError(f"dilated_resblock: {name} is {t.dtype} on {t.device}, "
                             f"but x is {x.dtype} on {x.device}; they must match")
    if not isinstance(dilation, int) or dilation < 1:
        raise ValueError(f"dilated_resblock: dilation must be an int >= 1, got {dilation!r}")


def dilated_resblock_reference(x, w1, b1, w2, b2, dilation: int, res_scale: float = 1.0) -> torch.Tensor:
    """PyTorch reference: the oracle for the kernels, and the training path."""
    h = F.conv1d(F.relu(x), w1, b1, padding=dilation, dilation=dilation)
    # In place only on fresh conv outputs, which no backward needs.
    h = F.conv1d(F.relu_(h), w2, b2)
    if res_scale != 1.0:
        h.mul_(res_scale)
    # Under autocast h is 16-bit while x may be fp32: then the sum promotes, as the original's x + h.
    return h.add_(x) if h.dtype == x.dtype else x + h


def _extension_call(x, w1, b1, w2, b2, dilation: int, res_scale: float = 1.0) -> torch.Tensor:
    out = buffers.new_empty(tuple(x.shape), x.dtype, x.device)
    torch.ops.jukebox_fast_ext.dilated_resblock(x.contiguous(), w1, b1, w2, b2, dilation, float(res_scale), out)
    return out


def _inference_reasons(tensors) -> list[str]:
    reasons = []
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        reasons.append("the fused kernels are inference only; with autograd recording the block runs the "
                       "torch reference, which has the backward")
    if _autocast(tensors[0].device):
        reasons.append("autocast is on: the reference's convolutions follow its casting rules")
    return reasons


def _cuda_reasons(x, w1, b1, w2, b2, dilation, res_scale=1.0) -> list[str]:
    reasons = _inference_reasons((x, w1, b1, w2, b2))
    if x.device.type != "cuda":
        reasons.append(f"x is on {x.device.type}, the CUDA kernel needs cuda")
    if x.dtype != torch.float32:
        reasons.append(f"the CUDA kernel is an fp32 reference (no tensor cores), got {x.dtype}; cuDNN runs 16-bit "
                       "blocks")
    if w1.shape[0] > CUDA_MAX_HIDDEN:
        reasons.append(f"hidden width {w1.shape[0]} > {CUDA_MAX_HIDDEN} does not fit the kernel's shared memory")
    return reasons


def _cpp_reasons(x, w1, b1, w2, b2, dilation, res_scale=1.0) -> list[str]:
    reasons = _inference_reasons((x, w1, b1, w2, b2))
    if x.device.type != "cpu":
        reasons.append(f"x is on {x.device.type}, the C++ kernel runs on the CPU")
    return reasons


def _cuda_declines(*args, **kwargs) -> list[str]:
    return ["a reference for the C++ path's fusion, never chosen by auto: cuDNN is the GPU path "
            "(ask for it with backend='cuda')"]


def _cpp_declines(x, w1, b1, w2, b2, dilation, res_scale=1.0) -> list[str]:
    width = max(x.shape[1], w1.shape[0])
    if x.dtype == torch.bfloat16 and width > CPP_BF16_MAX_WIDTH and native_16bit(torch.bfloat16):
        return [f"bfloat16 at width {width} > {CPP_BF16_MAX_WIDTH}: the reference's oneDNN convolutions "
                "measured faster there"]
    return []


def dilated_resblock(x, w1, b1, w2, b2, dilation: int, res_scale: float = 1.0, *, backend: str | None = None):
    """``x + res_scale · conv1x1(relu(conv3_dilated(relu(x))))`` through the dispatch.

    x [N, C, L]; w1 [S, C, 3], b1 [S] (the dilated k=3 convolution, padding = dilation);
    w2 [C, S, 1], b2 [C] (the 1x1 convolution). Returns a new tensor shaped like x.
    """
    check_inputs(x, w1, b1, w2, b2, dilation)
    return dispatch.call("dilated_resblock", x, w1, b1, w2, b2, dilation, res_scale, backend=backend)


dispatch.define_op("dilated_resblock", ("cuda", "cpp", "torch"), doc=__doc__, width_dim=1)  # x [N, C, L]
dispatch.register("dilated_resblock", "cuda", _extension_call, available=extension.cuda_unavailable_reason,
                  supports=_cuda_reasons, declines=_cuda_declines,
                  note="csrc/dilated_resblock_cuda.cu, fp32 reference on request, never auto, inference only")
dispatch.register("dilated_resblock", "cpp", _extension_call, available=extension.load,
                  supports=_cpp_reasons, declines=_cpp_declines, note="csrc/dilated_resblock.cpp, inference only")
dispatch.register("dilated_resblock", "torch", dilated_resblock_reference, note="reference")
