"""pytest-benchmark suite for the fused dilated residual block (``pip install -e ".[bench]"``).

    python -m pytest benchmarks/test_bench_decoder.py --benchmark-group-by=param:shape

One block at the released decoder's level-0 width (64, dilation 27, 262,144 positions) and at the
upsampler conditioner's width (1024, 2,048 positions), fp32 and bf16: the reference convolutions
against the fused kernel (``cuda`` on a GPU, ``cpp`` on the CPU), same inputs, one session.
"""
from __future__ import annotations

import pytest
import torch

from common import sync
from jukebox_fast import dispatch, ops

pytest.importorskip("pytest_benchmark")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
KERNEL = "cuda" if DEVICE == "cuda" else "cpp"
SHAPES = {"decoder": (64, 262_144, 27), "conditioner": (1024, 2048, 81)}


@pytest.mark.parametrize("backend", ["torch", KERNEL])
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("shape", list(SHAPES))
def test_dilated_resblock(benchmark, shape, dtype, backend):
    width, length, dilation = SHAPES[shape]
    dt = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
    x = torch.randn(1, width, length, device=DEVICE, dtype=dt)
    w1 = torch.randn(width, width, 3, device=DEVICE, dtype=dt) / (3 * width) ** 0.5
    w2 = torch.randn(width, width, 1, device=DEVICE, dtype=dt) / width ** 0.5
    b1, b2 = torch.zeros(width, device=DEVICE, dtype=dt), torch.zeros(width, device=DEVICE, dtype=dt)
    args = (x, w1, b1, w2, b2, dilation, 1.0)
    try:
        with torch.no_grad():
            dispatch.resolve("dilated_resblock", *args, backend=backend)
    except dispatch.BackendUnavailableError as e:
        pytest.skip(str(e))

    def run():
        with torch.no_grad():
            out = ops.dilated_resblock(*args, backend=backend)
        sync(DEVICE)
        return out

    out = benchmark.pedantic(run, warmup_rounds=1, rounds=10 if DEVICE == "cuda" else 3)
    benchmark.extra_info["GB/s"] = 2 * x.numel() * x.element_size() / benchmark.stats["median"] / 1e9
    assert out.shape == x.shape
