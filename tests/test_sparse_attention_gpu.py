"""The sparse-attention kernels at the released priors' shapes (T = 8192), on a CUDA device."""
from __future__ import annotations

import pytest
import torch

from attention_check import assert_within_twice_the_reference, inputs, oracle, run
from jukebox_fast.ops import AttentionPattern, Kind, prime_window

pytestmark = pytest.mark.gpu

# (model, heads, head width, T, patterns), one layer of each type the model has.
SHAPES = [
    ("upsampler", 1, 480, 8192, [AttentionPattern(k, 64) for k in (Kind.BLOCK, Kind.COLUMN, Kind.PREV_BLOCK)]),
    ("5b", 8, 150, 8192, [AttentionPattern(k, 64) for k in (Kind.BLOCK, Kind.COLUMN, Kind.PREV_BLOCK)]),
    ("1b_lyrics", 2, 256, 6144 + 384,
     [AttentionPattern(k, 102) for k in (Kind.BLOCK, Kind.COLUMN, Kind.PREV_BLOCK)] + [AttentionPattern(Kind.PRIME, 102, prime_window(384, 64)),
                                                      AttentionPattern(Kind.DENSE)]),
]
CASES = [(model, h, d, t, p) for model, h, d, t, patterns in SHAPES for p in patterns]


@pytest.mark.parametrize("model,heads,d,length,pattern", CASES,
                         ids=[f"{c[0]}-{c[4].name}" for c in CASES])
def test_bf16_at_production_shapes(model, heads, d, length, pattern):
    torch.manual_seed(0)
    q, k, v = inputs(1, heads, length, length, d, torch.bfloat16, "cuda")
    grad_out = torch.randn(1, heads, length, d, device="cuda", dtype=torch.bfloat16)
    assert_within_twice_the_reference(
        run(q, k, v, pattern, "triton", grad_out), run(q, k, v, pattern, "torch", grad_out),
        oracle(q, k, v, pattern, grad_out), f"{model} {pattern.name}")


def test_cross_attention_to_5b_lyrics_encoder_states():
    torch.manual_seed(0)
    q, k, v = inputs(1, 8, 8192, 512, 150, torch.bfloat16, "cuda")
    grad_out = torch.randn(1, 8, 8192, 150, device="cuda", dtype=torch.bfloat16)
    pattern = AttentionPattern(Kind.CROSS)
    assert_within_twice_the_reference(
        run(q, k, v, pattern, "triton", grad_out), run(q, k, v, pattern, "torch", grad_out),
        oracle(q, k, v, pattern, grad_out), "cross")


def test_fp32_column_attention_at_8192(monkeypatch):
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)  # fp32 against fp32
    torch.manual_seed(0)
    q, k, v = inputs(1, 1, 8192, 8192, 480, torch.float32, "cuda")
    grad_out = torch.randn(1, 1, 8192, 480, device="cuda")
    pattern = AttentionPattern(Kind.COLUMN, 64)
    for a, b in zip(run(q, k, v, pattern, "triton", grad_out), run(q, k, v, pattern, "torch", grad_out)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
