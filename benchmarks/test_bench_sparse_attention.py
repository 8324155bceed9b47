"""pytest-benchmark suite for sparse attention (``pip install -e ".[bench]"``).

    python -m pytest benchmarks/test_bench_sparse_attention.py --benchmark-group-by=param:kind

One attention layer with the upsamplers' head (d = 480) and block_ctx = T/128, forward and
backward, every method on the same inputs in one session; the original's re-blocking method is
the baseline. T is 8192 on a GPU and 512 on a CPU. Methods that cannot run here skip with the
reason (Triton without a GPU, FlexAttention's backward on a CPU).
"""
from __future__ import annotations

import pytest
import torch

from bench_sparse_attention import CASES, IMPLS, METHODS, patterns, why_not
from common import sync

pytest.importorskip("pytest_benchmark")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
CASE = next(c for c in CASES if c.model == "upsampler")
LENGTH = 8192 if DEVICE == "cuda" else 512
DTYPE = torch.bfloat16 if DEVICE == "cuda" else torch.float32


@pytest.mark.parametrize("kind", CASE.kinds)
@pytest.mark.parametrize("method", METHODS)
def test_sparse_attention_fwd_bwd(benchmark, method, kind):
    pattern, lk = next((p, lk) for p, lk in patterns(CASE, LENGTH) if p.kind == kind)
    width = CASE.heads * CASE.d
    q, k, v = (torch.randn(1, n, width, device=DEVICE, dtype=DTYPE, requires_grad=True) for n in (LENGTH, lk, lk))
    reason = why_not(method, q, pattern, CASE.heads)
    if reason:
        pytest.skip(reason)
    grad = torch.randn_like(q)

    def run():
        out = IMPLS[method](q, k, v, pattern, CASE.heads, CASE.d**-0.5)
        grads = torch.autograd.grad(out, (q, k, v), grad)
        sync(DEVICE)
        return grads

    try:
        grads = benchmark.pedantic(run, warmup_rounds=1, rounds=10 if DEVICE == "cuda" else 3)
    except NotImplementedError as e:  # FlexAttention has no CPU backward
        pytest.skip(str(e).splitlines()[0])
    assert all(g.shape == t.shape and torch.isfinite(g).all() for g, t in zip(grads, (q, k, v)))
