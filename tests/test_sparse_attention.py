"""The sparse_attention op's reference against dense masked attention built from the pattern data."""
from __future__ import annotations

import math

import pytest
import torch

from jukebox_fast.ops import AttentionPattern, Kind, layer_kinds, prime_window, sparse_attention
import jukebox_fast.ops.attention as attention_mod


def dense_masked(q, k, v, pattern, scale):
    """Plain attention over every key, masked by ``pattern.mask``; no visible key -> zeros."""
    visible = pattern.mask(q.shape[2], k.shape[2])  # [Lq, Lk]
    w = (q.double() @ k.double().transpose(-1, -2)) * scale
    w = w.masked_fill(~visible, float("-inf"))
    p = torch.softmax(w, dim=-1).nan_to_num(0.0)  # an all-hidden row gives NaN -> 0
    return (p @ v.double()).to(v.dtype)


PATTERNS = [AttentionPattern(Kind.DENSE), AttentionPattern(Kind.BLOCK, block_ctx=8), AttentionPattern(Kind.COLUMN, block_ctx=8),
            AttentionPattern(Kind.PREV_BLOCK, block_ctx=8), AttentionPattern(Kind.PRIME, prime_len=prime_window(20, 4)),
            AttentionPattern(Kind.BLOCK, block_ctx=5), AttentionPattern(Kind.COLUMN, block_ctx=12), AttentionPattern(Kind.PREV_BLOCK, block_ctx=6)]


@pytest.mark.parametrize("pattern", PATTERNS, ids=lambda p: f"{p.name}-bc{p.block_ctx}-P{p.prime_len}")
@pytest.mark.parametrize("lq", [48, 17, 1], ids=lambda n: f"lq{n}")
def test_reference_equals_dense_masked_attention(pattern, lq):
    n, h, lk, d = 2, 3, 48, 10
    q, k, v = torch.randn(n, h, lq, d), torch.randn(n, h, lk, d), torch.randn(n, h, lk, d)
    out = sparse_attention(q, k, v, pattern)
    expected = dense_masked(q, k, v, pattern, 1 / math.sqrt(d))
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_cross_attention_sees_every_encoder_state():
    q, k, v = torch.randn(1, 2, 30, 8), torch.randn(1, 2, 11, 8), torch.randn(1, 2, 11, 8)
    pattern = AttentionPattern(Kind.CROSS)
    torch.testing.assert_close(sparse_attention(q, k, v, pattern), dense_masked(q, k, v, pattern, 8**-0.5))


def test_pattern_definitions_by_example():
    # Query 9 with block_ctx 4 (block 2, column 1), P = 6.
    keys = torch.arange(12)
    seen = lambda pat: keys[pat.visible(torch.tensor([9]), keys)[0]].tolist()
    assert seen(AttentionPattern(Kind.DENSE)) == list(range(10))
    assert seen(AttentionPattern(Kind.BLOCK, block_ctx=4)) == [8, 9]
    assert seen(AttentionPattern(Kind.COLUMN, block_ctx=4)) == [1, 5, 9]
    assert seen(AttentionPattern(Kind.PREV_BLOCK, block_ctx=4)) == [4, 5, 6, 7]
    assert seen(AttentionPattern(Kind.PRIME, prime_len=6)) == [0, 1, 2, 3, 4, 5]
    assert prime_window(384, 64) == 448  # the 1b_lyrics quirk: 64 music tokens beyond the lyrics


def test_previous_block_attention_of_block_zero_is_exactly_zero():
    q, k, v = torch.randn(1, 1, 16, 4), torch.randn(1, 1, 16, 4), torch.randn(1, 1, 16, 4)
    out = sparse_attention(q, k, v, AttentionPattern(Kind.PREV_BLOCK, block_ctx=4))
    assert torch.equal(out[..., :4, :], torch.zeros(1, 1, 4, 4))
    assert out[..., 4:, :].abs().sum() > 0


def test_masked_chunks_do_not_change_the_answer(monkeypatch):
    q, k, v = torch.randn(1, 2, 40, 6), torch.randn(1, 2, 40, 6), torch.randn(1, 2, 40, 6)
    pattern = AttentionPattern(Kind.DENSE)
    whole = sparse_attention(q, k, v, pattern)
    monkeypatch.setattr(attention_mod, "TILE_ELEMENTS", 2 * 40 * 7)  # 7 query rows per chunk
    torch.testing.assert_close(sparse_attention(q, k, v, pattern), whole)


def test_gradients_flow_through_every_pattern():
    for pattern in PATTERNS + [AttentionPattern(Kind.CROSS)]:
        q, k, v = (torch.randn(1, 2, 24, 4, requires_grad=True) for _ in range(3))
        sparse_attention(q, k, v, pattern).square().sum().backward()
        assert all(t.grad is not None and torch.isfinite(t.grad).all() for t in (q, k, v))


def test_long_context_stays_linear_in_memory():
    # 8192 positions with block_ctx 64, as the released priors: the re-blocked path never forms
    # an 8192×8192 matrix (that alone would be 256 MiB per head).
    q = k = v = torch.randn(1, 1, 8192, 16)
    for kind in (Kind.BLOCK, Kind.COLUMN, Kind.PREV_BLOCK):
        out = sparse_attention(q, k, v, AttentionPattern(kind, block_ctx=64))
        assert out.shape == (1, 1, 8192, 16) and torch.isfinite(out).all()


def test_layer_kinds_of_the_released_orders():
    lyr5b = layer_kinds(10, 79)
    assert [d for d, t in enumerate(lyr5b) if t == Kind.CROSS] == [18, 28, 38, 48, 58, 68, 78]
    lyr1b = layer_kinds(12, 72)
    assert [d for d, t in enumerate(lyr1b) if t == Kind.PRIME] == [15, 31, 63] and lyr1b[47] == Kind.DENSE
    assert [lyr1b.count(t) for t in (Kind.BLOCK, Kind.COLUMN, Kind.PREV_BLOCK)] == [22, 23, 23]
    assert layer_kinds(2, 6) == [Kind.BLOCK, Kind.COLUMN, Kind.PREV_BLOCK] * 2
    with pytest.raises(NotImplementedError, match="summary"):
        layer_kinds(3, 4)


@pytest.mark.parametrize("args,match", [
    ((torch.randn(2, 3, 4), torch.randn(2, 3, 4, 5), torch.randn(2, 3, 4, 5)), r"q must be a 4-D tensor"),
    ((torch.randn(1, 2, 4, 5), torch.randn(1, 2, 4, 6), torch.randn(1, 2, 4, 6)), "head width must match"),
    ((torch.randn(1, 2, 9, 5), torch.randn(1, 2, 4, 5), torch.randn(1, 2, 4, 5)), "Lq <= Lk"),
    ((torch.randn(1, 2, 4, 5), torch.randn(1, 2, 4, 5), torch.randn(1, 2, 3, 5)), "k is .* but v is"),
])
def test_bad_input_is_a_clear_value_error(args, match):
    with pytest.raises(ValueError, match=match):
        sparse_attention(*args, AttentionPattern(Kind.DENSE))
    with pytest.raises(ValueError, match="attention type must be one of"):
        AttentionPattern(4)
