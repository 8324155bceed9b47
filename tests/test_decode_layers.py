"""decode_layers: the C++ decode step against the reference on fresh random stacks, its checks and
dispatch rules. (Through the model: test_sampling.py; the Triton variant: test_decode_kernel.py.)"""
from __future__ import annotations

import pytest
import torch

from jukebox_fast import dispatch, extension
from jukebox_fast.dispatch import BackendUnavailableError
from jukebox_fast.ops import DecodeLayer, DecodeStack, decode_layers
from jukebox_fast.ops.decode_layers import row_pairs
from decode_stacks import LAYOUTS, LENGTH, SHAPES, copy_caches, int8_stack, random_stack

pytestmark = pytest.mark.skipif(extension.load() is not None, reason=f"C++ extension: {extension.load()}")

@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("res_scale", [1.0, 0.25])
def test_every_position_of_every_pattern_matches_the_reference(shape, res_scale, poisoned):
    ours = random_stack(*shape, res_scale=res_scale, seed=sum(shape))
    ref = copy_caches(ours)
    g = torch.Generator().manual_seed(1)
    for p in range(LENGTH):
        x = torch.randn(shape[0], shape[1], generator=g)
        position = torch.tensor([p])
        got = decode_layers(x, ours, position, backend="cpp")
        want = decode_layers(x, ref, position, backend="torch")
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5, msg=lambda m: f"position {p}: {m}")
    for a, b in zip(ours.layers, ref.layers):  # the keys and values written along the way
        torch.testing.assert_close(a.k, b.k, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(a.v, b.v, rtol=1e-5, atol=1e-5)


def test_a_released_width():
    # 1b_lyrics' width 2048 and 16 heads of 32 (m_attn 0.25), MLP 2048; one layer of each kind
    ours = random_stack(2, 2048, 16, 32, 2048, layouts=LAYOUTS[:2])
    ref = copy_caches(ours)
    for p in (0, 9, 39):
        x = torch.randn(2, 2048)
        torch.testing.assert_close(decode_layers(x, ours, torch.tensor([p]), backend="cpp"),
                                   decode_layers(x, ref, torch.tensor([p]), backend="torch"), rtol=1e-5, atol=1e-4)


def test_auto_takes_the_kernel_only_where_it_runs():
    stack = random_stack(2, 40, 3, 5, 71)
    x, p = torch.randn(2, 40), torch.tensor([3])
    assert dispatch.resolve("decode_layers", x, stack, p).name == "cpp"
    half = DecodeStack([DecodeLayer(tuple(w.bfloat16() for w in l.weights), l.k.bfloat16(), l.v.bfloat16(), l.layout,
                                    l.n_head) for l in stack.layers])
    assert dispatch.resolve("decode_layers", x.bfloat16(), half, p).name == "torch"
    with pytest.raises(BackendUnavailableError, match="float32"):
        decode_layers(x.bfloat16(), half, p, backend="cpp")
    stack.layers[0].weights[2].requires_grad_(True)
    assert dispatch.resolve("decode_layers", x, stack, p).name == "torch"
    with torch.no_grad():
        assert dispatch.resolve("decode_layers", x, stack, p).name == "cpp"


def test_bad_input_is_an_error_that_says_what_came():
    stack = random_stack(2, 40, 3, 5, 71)
    with pytest.raises(ValueError, match=r"x must be \[N, width\] = \[2, 40\] for this stack, got \(2, 41\)"):
        decode_layers(torch.randn(2, 41), stack, torch.tensor([0]))
    with pytest.raises(ValueError, match="one-element int64 tensor"):
        decode_layers(torch.randn(2, 40), stack, 3)
    with pytest.raises(RuntimeError, match="position 40 is outside the context of 40 positions"):
        decode_layers(torch.randn(2, 40), stack, torch.tensor([LENGTH]), backend="cpp")
    bad = random_stack(2, 40, 3, 5, 71)
    weights = list(bad.layers[1].weights)
    weights[8] = torch.randn(40, 70)  # mlp.c_fc.w no longer matches its bias [71]
    bad.layers[1].weights = tuple(weights)
    with pytest.raises(RuntimeError, match=r"layer 1's mlp.c_fc.b must be \[70\], got \[71\]"):
        decode_layers(torch.randn(2, 40), bad, torch.tensor([0]), backend="cpp")


def test_a_schedule_outside_the_cache_is_refused():
    stack = random_stack(1, 40, 3, 5, 71, layouts=LAYOUTS[1:2])
    decode_layers(torch.randn(1, 40), stack, torch.tensor([0]), backend="cpp")  # packs the stack
    weights, scales, k, v, schedule, heads, res_scale, eps = stack.state["cpp"]
    schedule = schedule.clone()
    schedule[0, 5, 2] = stack.layers[0].k.shape[2] + 1  # hi past the block's 8 slots
    out = torch.empty(1, 40)
    with pytest.raises(RuntimeError, match="outside its 8 cache slots"):
        torch.ops.jukebox_fast_ext.decode_layers(torch.randn(1, 40), weights, scales, k, v, schedule, heads, res_scale,
                                                 eps, torch.tensor([5]), out)


def int16_rows_product(x, w, b, scale):
    """What csrc/int8_product.cpp computes for an int8 w [K, J] with column scales: each row of x
    rounded to int16 against its largest magnitude (sx = max|x| / 32767, half to even), an exact
    integer product (fp64 holds it), then the row's sx and the columns' scales."""
    top = x.abs().amax(dim=1, keepdim=True)  # [N, 1], fp32 as there
    inv = torch.where(top > 0, 32767.0 / top, torch.zeros_like(top))
    x16 = torch.round(x * inv).clamp_(-32767, 32767)
    exact = (x16.double() @ w.double()).float()  # [N, J]
    return exact * (top / 32767.0 * scale) + b


def layer_norm_as_the_step(x, g, b, eps=1e-5):
    """csrc/decode_layers.cpp's LayerNorm: statistics in double, the rest in fp32."""
    mean = x.double().mean(dim=1, keepdim=True)
    inv = (1 / torch.sqrt(((x.double() - mean) ** 2).mean(dim=1, keepdim=True) + eps)).float()
    return (x - mean.float()) * inv * g + b


@pytest.mark.parametrize("shape", [SHAPES[1], SHAPES[2], SHAPES[3], (3, 1024, 4, 16, 1100)], ids=str)
def test_int8_matrices_are_multiplied_against_int16_rows(shape, poisoned):
    # The first product of a step, read back from the key and value it writes: the rows LN0(x)
    # rounded to int16, multiplied in integers by the int8 matrix, scaled per row and column. Odd
    # width 67 leaves the last row pair half empty; 5 and 9 samples take two and three passes;
    # at 1024 the threads split the pairs and flush their int32 sums into fp32 twice each. Rows of
    # as many 1s as -1s make the LayerNorm's statistics exact, so both sides round the same
    # activations (a tie decided by the LayerNorm's last bit would move one by a step).
    n, width, heads, d, _ = shape
    stack = int8_stack(random_stack(*shape, layouts=LAYOUTS[:1], seed=12))
    g = torch.Generator().manual_seed(3)
    balanced = torch.tensor([1.0, -1.0] * (width // 2) + [0.0] * (width % 2))  # mean 0, squares summing exactly
    x = torch.stack([balanced[torch.randperm(width, generator=g)] for _ in range(n)])
    decode_layers(x, stack, torch.tensor([0]), backend="cpp")
    layer, s = stack.layers[0], heads * d
    w = layer.weights
    h = layer_norm_as_the_step(x, w[0], w[1])
    got = torch.cat([layer.k[:, :, 0].reshape(n, s), layer.v[:, :, 0].reshape(n, s)], dim=1)  # [N, 2S]
    torch.testing.assert_close(got, int16_rows_product(h, w[2], w[3], layer.scales[0])[:, s:], rtol=1e-6, atol=1e-6)
    dequantised = torch.addmm(w[3], h, w[2].float() * layer.scales[0])[:, s:]
    assert (got - dequantised).abs().max() > 1e-5  # what the rounding moves: the check tells them apart


@pytest.mark.parametrize("shape", [SHAPES[1], SHAPES[2], SHAPES[3], (3, 1024, 4, 16, 1100)], ids=str)
def test_int8_steps_err_as_int8_does(shape, poisoned):
    # Weight-only int8 through whole steps: against the model's fp32 weights the C++ step errs as
    # the reference with the matrices dequantised does; rounding the rows to int16 adds well under
    # 1 % to that error (measured: -0.1 % to +0.05 %).
    exact = random_stack(*shape, seed=12)
    for got, want, oracle in steps_against_the_reference(int8_stack(exact), exact, seed=4):
        torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-3)
        assert (got - oracle).norm() <= 1.01 * (want - oracle).norm()  # want: the matrices dequantised
        assert (got - oracle).abs().max() < 0.05 * oracle.abs().max()  # int8's own error, small


def test_row_pairs_interleave_two_rows_and_pad_an_odd_one():
    w = torch.arange(-12, 3, dtype=torch.int8).view(5, 3)
    pairs = row_pairs(w)
    assert pairs.shape == (3, 3, 2) and pairs.is_contiguous()
    for k in range(5):
        assert torch.equal(pairs[k // 2, :, k % 2], w[k])
    assert not pairs[2, :, 1].any()


def test_an_int8_step_with_a_nan_row_gives_nan_there():
    # Rounding a row to int16 needs its largest magnitude: a row holding a NaN must not come out
    # as numbers (a NaN turned into an integer is one).
    stack = int8_stack(random_stack(3, 40, 3, 5, 71, seed=5))
    x = torch.randn(3, 40)
    x[1, 7] = float("nan")
    out = decode_layers(x, stack, torch.tensor([0]), backend="cpp")
    assert out[1].isnan().all() and out[[0, 2]].isfinite().all()


def steps_against_the_reference(stack: DecodeStack, exact: DecodeStack, seed: int):
    """(C++ step, reference step on a copy of ``stack``, reference step on the fp32 ``exact``) at
    four positions, for random rows."""
    ref = copy_caches(stack)
    n, width = stack.layers[0].k.shape[0], stack.layers[0].weights[0].shape[0]
    g = torch.Generator().manual_seed(seed)
    for p in (0, 7, 13, 39):
        x = torch.randn(n, width, generator=g)
        position = torch.tensor([p])
        yield (decode_layers(x, stack, position, backend="cpp"), decode_layers(x, ref, position, backend="torch"),
               decode_layers(x, exact, position, backend="torch"))


def test_int8_matrices_need_their_scales():
    stack = int8_stack(random_stack(2, 40, 3, 5, 71))
    stack.layers[0].scales = (None,) + stack.layers[0].scales[1:]
    with pytest.raises(BackendUnavailableError, match="scales for its int8 matrices, and only for them"):
        decode_layers(torch.randn(2, 40), stack, torch.tensor([0]), backend="cpp")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", [SHAPES[1], SHAPES[3], (2, 256, 4, 16, 256)], ids=str)
def test_16_bit_matrices_are_streamed_as_stored(dtype, shape, poisoned):
    # The 5b priors keep their projection matrices in fp16. The C++ step reads them as stored
    # (half the bytes) and widens each exactly to fp32, so it computes what the reference computes
    # after casting them to fp32 (which it does on every step), and, against the model's fp32
    # weights, errs no more than twice as much as that reference does.
    exact = random_stack(*shape, seed=11)
    half = DecodeStack([DecodeLayer(tuple(w.to(dtype) if i in (2, 4, 8, 10) else w for i, w in enumerate(l.weights)),
                                    l.k.clone(), l.v.clone(), l.layout, l.n_head) for l in exact.layers])
    for got, want, oracle in steps_against_the_reference(half, exact, seed=3):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        assert (got - oracle).abs().max() <= 2 * (want - oracle).abs().max() + 1e-6


def test_a_16_bit_bias_is_refused_with_a_reason():
    stack = random_stack(2, 40, 3, 5, 71)
    stack.layers[0].weights = tuple(w.half() if i == 3 else w for i, w in enumerate(stack.layers[0].weights))
    with pytest.raises(BackendUnavailableError, match="float32 rows, caches, biases and LayerNorm parameters"):
        decode_layers(torch.randn(2, 40), stack, torch.tensor([0]), backend="cpp")
