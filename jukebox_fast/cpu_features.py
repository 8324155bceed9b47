"""Whether this CPU computes in bf16 or fp16 natively, or PyTorch and oneDNN emulate it.

On a CPU without AVX-512 BF16 (or AMX) instructions, PyTorch's and oneDNN's bf16 convolutions and
matrix products widen every element in software: measured on a 2-core AVX2-only EPYC, one bf16
pass through the released VQ-VAE decoder's residual blocks took about 30 minutes. A rule that
sends 16-bit work to those libraries "because they measured faster" holds only where the
instructions exist, so such rules ask :func:`native_16bit` first, and the CPU benchmarks skip
their 16-bit rows where it says no.

Hardware alone does not decide: ``ATEN_CPU_CAPABILITY`` (PyTorch's kernels) and
``ONEDNN_MAX_CPU_ISA`` (oneDNN's) can hold a capable CPU to AVX2, and are how a fast machine
imitates a slow one. Both are honoured.

Converting stored 16-bit values to fp32 (F16C, a shift for bf16) is not 16-bit compute: the C++
decode step streams 16-bit weights that way on any AVX2 CPU, and this module does not govern it.
"""
from __future__ import annotations

import functools
import os
import platform

import torch

__all__ = ["native_16bit", "no_native_16bit_reason"]

# oneDNN's ISA names (ONEDNN_MAX_CPU_ISA) from which it runs bf16 / fp16 in hardware.
_ONEDNN_BF16 = {"AVX512_CORE_BF16", "AVX512_CORE_FP16", "AVX10_1_512", "AVX512_CORE_AMX", "AVX10_1_512_AMX",
                "AVX512_CORE_AMX_FP16", "AVX10_1_512_AMX_FP16", "AVX10_2_512", "AVX10_2_512_AMX_2", "ALL"}
_ONEDNN_FP16 = {"AVX512_CORE_FP16", "AVX10_1_512", "AVX10_1_512_AMX", "AVX512_CORE_AMX_FP16",
                "AVX10_1_512_AMX_FP16", "AVX10_2_512", "AVX10_2_512_AMX_2", "ALL"}


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


@functools.lru_cache(maxsize=None)
def no_native_16bit_reason(dtype: torch.dtype) -> str | None:
    """Why this CPU (as PyTorch and oneDNN are allowed to use it) has no native ``dtype``
    arithmetic, or None when it has. float32 and other dtypes are always native."""
    if dtype not in (torch.bfloat16, torch.float16):
        return None
    name = "bf16" if dtype == torch.bfloat16 else "fp16"
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return f"no {name} instructions known on {platform.machine()} to this check"
    flags = _cpu_flags()
    wanted = {"avx512_bf16", "amx_bf16"} if dtype == torch.bfloat16 else {"avx512_fp16", "amx_fp16"}
    if not flags & wanted:
        return f"no {name} instructions on this CPU (none of {', '.join(sorted(wanted))})"
    capability = torch.backends.cpu.get_cpu_capability()
    if not capability.startswith("AVX512"):
        return f"PyTorch's kernels are held to {capability} (ATEN_CPU_CAPABILITY)"
    isa = os.environ.get("ONEDNN_MAX_CPU_ISA", "").strip().upper()
    if isa and isa not in (_ONEDNN_BF16 if dtype == torch.bfloat16 else _ONEDNN_FP16):
        return f"oneDNN is held to {isa} (ONEDNN_MAX_CPU_ISA), which has no {name} instructions"
    return None


def native_16bit(dtype: torch.dtype) -> bool:
    """True when ``dtype`` arithmetic runs in hardware here (always for non-16-bit dtypes)."""
    return no_native_16bit_reason(dtype) is None
