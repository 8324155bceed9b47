"""pytest-benchmark suite for the nearest-codebook lookup (``pip install -e ".[bench]"``).

    python -m pytest benchmarks/test_bench_vq.py --benchmark-group-by=param:dtype

Every method runs on the same inputs (N = 16,384 level-0 rows, K = 2048, D = 64) in one session,
so the table's ratio columns compare them directly; the original's full-matrix method is the
baseline. Methods that cannot run here skip with the reason (Triton without a GPU).
"""
from __future__ import annotations

import pytest
import torch

from bench_vq import DTYPES, METHODS, make_inputs, why_not
from common import sync

pytest.importorskip("pytest_benchmark")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("method", list(METHODS))
def test_vq_lookup(benchmark, method, dtype):
    x, c = make_inputs(16_384, 2048, 64, DTYPES[dtype], DEVICE)
    reason = why_not(method, x, c, max_gb=64.0)
    if reason:
        pytest.skip(reason)

    def run():
        out = METHODS[method](x, c)
        sync(DEVICE)
        return out

    idx = benchmark.pedantic(run, warmup_rounds=1, rounds=10 if DEVICE == "cuda" else 3)
    benchmark.extra_info["tflops"] = 2 * x.shape[0] * c.shape[0] * x.shape[1] / benchmark.stats["median"] / 1e12
    assert idx.shape == (x.shape[0],)
