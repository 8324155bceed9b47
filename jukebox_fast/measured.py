"""Where ``auto`` may take a fast implementation on a CUDA device.

The rule (design.md, "Dispatch rules"): on a GPU, ``auto`` prefers a kernel over the PyTorch
reference (cuBLAS, cuDNN) only where a benchmark of this repository, run on a GPU and recorded
under ``benchmarks/results/``, measured it ahead there. Every other kernel runs on request
(``backend=...``, :func:`jukebox_fast.use_backend`, ``JUKEBOX_FAST_BACKEND``).

:data:`CUDA_WINS` maps (op, implementation) to the results file whose numbers show the win. The
benchmark that decides each entry:

- ``vq_nearest`` / ``vq_quantise``, ``triton``: ``benchmarks/bench_vq.py`` (against ``reference``);
- ``sparse_attention``, ``triton``: ``benchmarks/bench_sparse_attention.py`` (against ``reference``);
- ``decode_attention`` and ``decode_layers``, ``triton``: ``benchmarks/bench_sampling.py``
  (steps per second against the ``torch`` step);
- ``dilated_resblock``, ``cuda``: ``benchmarks/bench_decoder.py`` (against the reference's cuDNN
  convolutions). A reading of the kernel's machine code suggests it is behind cuDNN (fp32 FMAs
  bound by shared-memory reads, bank conflicts in its weight-tile stores, width 32 padded to 64,
  64 of 132 SMs busy at width 1024).

No GPU has run this project yet, so the table is empty: on CUDA, ``auto`` takes the references.
An entry goes in with the commit that adds its GPU results file.
"""
from __future__ import annotations

__all__ = ["CUDA_WINS"]

CUDA_WINS: dict[tuple[str, str], str] = {}
