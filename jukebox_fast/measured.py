"""Where ``auto`` may take a fast implementation on a CUDA device.

The rule (design.md, "Dispatch rules"): on a GPU, ``auto`` prefers a kernel over the PyTorch
reference (cuBLAS, cuDNN) only where a benchmark of this repository, run on a GPU and recorded
under ``benchmarks/results/``, measured it ahead there. Every other kernel runs on request
(``backend=...``, :func:`jukebox_fast.use_backend`, ``JUKEBOX_FAST_BACKEND``).

:data:`CUDA_RULES` lists each win as a :class:`Rule`: the op and implementation, the dtypes,
widths and batch sizes it was measured ahead at, the smallest ratio behind it and the results
file that holds the numbers. The width and batch of a call are those of the op's first tensor
(:attr:`jukebox_fast.dispatch.Op.width_dim`; batch is its first dimension):

- ``vq_nearest`` / ``vq_quantise``: D of x[N, D], batch N (rows), ``benchmarks/bench_vq.py``;
- ``sparse_attention``: the head width d of q[N, H, L, d], batch N, ``bench_sparse_attention.py``;
- ``decode_attention``: d of q[N, H, d]; ``decode_layers``: the model width of x[N, width];
  batch N, ``bench_sampling.py`` (steps per second against the ``torch`` step).

``dilated_resblock``'s ``cuda`` kernel takes no rule: its scope is an fp32 reference for the C++
path, run on request only (``jukebox_fast/ops/resblock.py``). A reading of its machine code puts
it behind cuDNN (fp32 FMAs bound by shared-memory reads, bank conflicts in its weight-tile
stores, width 32 padded to 64, 64 of 132 SMs busy at width 1024); ``bench_decoder.py`` still
times it against cuDNN on a GPU, for the record.

``benchmarks/gpu_evidence.py`` writes, in its ``summary.md``, the rules its numbers support as
lines to paste here. No GPU has run this project yet, so the list is empty: on CUDA, ``auto``
takes the references. A rule goes in with the commit that adds its GPU results file.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["Rule", "CUDA_RULES", "rule_for"]

_DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


@dataclass(frozen=True)
class Rule:
    """``impl`` of ``op`` measured ahead of the reference on CUDA for these dtypes ("fp32",
    "bf16", "fp16"; empty: every dtype), widths and batches (inclusive ranges; None: any)."""

    op: str
    impl: str
    evidence: str  # the results file, e.g. "benchmarks/results/sampling_h200.md"
    dtypes: tuple[str, ...] = ()
    widths: tuple[int, int] | None = None
    batches: tuple[int, int] | None = None
    speedup: float = 0.0  # the smallest measured ratio (reference time / kernel time) behind it

    def covers(self, dtype: torch.dtype, width: int | None, batch: int | None) -> bool:
        if self.dtypes and _DTYPE_NAMES.get(dtype) not in self.dtypes:
            return False
        for span, value in ((self.widths, width), (self.batches, batch)):
            if span is not None and (value is None or not span[0] <= value <= span[1]):
                return False
        return True


CUDA_RULES: list[Rule] = []


def rule_for(op: str, impl: str, dtype: torch.dtype, width: int | None, batch: int | None) -> Rule | None:
    """The first rule that lets ``auto`` take ``impl`` for this call, or None."""
    return next((r for r in CUDA_RULES if r.op == op and r.impl == impl and r.covers(dtype, width, batch)), None)
