"""The Triton decode-attention kernel against its reference, and decoding through it.

On a CUDA device, or on the CPU with ``TRITON_INTERPRET=1``. Outputs are poisoned first.
"""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton", reason="the Triton kernels need the triton package")
import jukebox_fast.kernels.decode as decode_kernels  # noqa: E402
from conftest import kernel_device  # noqa: E402
from jukebox_fast import dispatch, hparams, make_prior
from jukebox_fast.models.decoding import IncrementalDecoder
from jukebox_fast.ops import AttentionPattern, CacheLayout, Kind, decode_attention
from prior_inputs import codes, labels

pytestmark = [pytest.mark.interpret, pytest.mark.usefixtures("poisoned")]

LAYOUTS = [  # odd block sizes and lengths that are not multiples of them
    CacheLayout(AttentionPattern(Kind.DENSE), 37), CacheLayout(AttentionPattern(Kind.BLOCK, 8), 40),
    CacheLayout(AttentionPattern(Kind.BLOCK, 5), 37), CacheLayout(AttentionPattern(Kind.COLUMN, 6), 37),
    CacheLayout(AttentionPattern(Kind.COLUMN, 8), 40), CacheLayout(AttentionPattern(Kind.PREV_BLOCK, 7), 40),
    CacheLayout(AttentionPattern(Kind.PRIME, prime_len=12), 40), CacheLayout(AttentionPattern(Kind.CROSS), 40, enc_length=11),
]
POSITIONS = [0, 1, 4, 5, 6, 7, 8, 13, 14, 20, 35, 36]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda t: str(t).removeprefix("torch."))
@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda l: f"{l.pattern.name}{l.pattern.block_ctx}")
@pytest.mark.parametrize("d", [20, 150])
def test_matches_the_reference_at_every_kind_of_position(layout, dtype, d):
    dev = kernel_device()
    k = torch.randn(3, 2, layout.size, d).to(dev, dtype)
    v, q = torch.randn_like(k), torch.randn(3, 2, d).to(dev, dtype)
    for p in POSITIONS:
        pos = torch.tensor([p], device=dev)
        got = decode_attention(q, k, v, layout, pos, backend="triton")
        ref = decode_attention(q, k, v, layout, pos, backend="torch")
        assert torch.isfinite(got).all()
        if dtype == torch.float32:
            torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)
        else:  # the 2× rule against the reference on fp32 copies of the same inputs
            exact = decode_attention(q.float(), k.float(), v.float(), layout, pos, backend="torch")
            err, ref_err = (got.float() - exact).abs().max(), (ref.float() - exact).abs().max()
            assert err <= 2 * ref_err + torch.finfo(dtype).eps * exact.abs().max(), (p, err, ref_err)


@pytest.mark.parametrize("splits", [2, 8])
@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda l: f"{l.pattern.name}{l.pattern.block_ctx}")
def test_split_cache_matches_the_reference(layout, splits, monkeypatch):
    # Flash-decoding: the run is shared among `splits` programs, whose partials are merged.
    # Small positions leave some shares empty; 8 shares of a 37-slot run are tiles of one slot.
    # Half the positions (the first, block edges, the last): the splitting, not the pattern, is
    # under test, and each interpreted launch costs a second.
    monkeypatch.setattr(decode_kernels, "splits_for", lambda *args, **kwargs: splits)
    dev = kernel_device()
    k = torch.randn(2, 3, layout.size, 24, device=dev)
    v, q = torch.randn_like(k), torch.randn(2, 3, 24, device=dev)
    for p in (0, 1, 5, 8, 20, 36):
        pos = torch.tensor([p], device=dev)
        torch.testing.assert_close(decode_attention(q, k, v, layout, pos, backend="triton"),
                                   decode_attention(q, k, v, layout, pos, backend="torch"), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("d", [64, 80, 256, 480])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda t: str(t).removeprefix("torch."))
def test_released_head_widths_on_a_long_dense_cache(d, dtype):
    # 600 slots: long enough that the launcher itself splits the cache.
    dev = kernel_device()
    layout = CacheLayout(AttentionPattern(Kind.DENSE), 600)
    assert decode_kernels.splits_for(2, layout.span, d) > 1
    k = torch.randn(1, 2, layout.size, d).to(dev, dtype)
    v, q = torch.randn_like(k), torch.randn(1, 2, d).to(dev, dtype)
    for p in (0, 63, 64, 599):
        pos = torch.tensor([p], device=dev)
        got = decode_attention(q, k, v, layout, pos, backend="triton")
        ref = decode_attention(q, k, v, layout, pos, backend="torch")
        if dtype == torch.float32:
            torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)
        else:
            exact = decode_attention(q.float(), k.float(), v.float(), layout, pos, backend="torch")
            err, ref_err = (got.float() - exact).abs().max(), (ref.float() - exact).abs().max()
            assert err <= 2 * ref_err + torch.finfo(dtype).eps * exact.abs().max(), (p, err, ref_err)


def test_widest_head_and_a_batch_of_samples():
    dev = kernel_device()
    layout = CacheLayout(AttentionPattern(Kind.COLUMN, 4), 24)
    k = torch.randn(16, 1, layout.size, 480, device=dev)
    v, q = torch.randn_like(k), torch.randn(16, 1, 480, device=dev)
    pos = torch.tensor([22], device=dev)
    torch.testing.assert_close(decode_attention(q, k, v, layout, pos, backend="triton"),
                               decode_attention(q, k, v, layout, pos, backend="torch"), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("overrides", [dict(prior_depth=4), dict(prior_depth=4, attn_order=9)],
                         ids=["block-column-prev-prime", "dense"])
def test_the_decoder_through_the_kernels_matches_the_reference(overrides, prime_early):
    # Four layers hold every kind but dense (the prime layer brought forward), and order 9 gives
    # a dense layer in four (every layer costs seconds in the interpreter).
    dev = kernel_device()
    prior = make_prior(hparams.get("tiny_prior", **overrides), device=dev).eval()
    kinds = {layer.attn.pattern.kind for layer in prior.prior.transformer._attn_mods}
    assert kinds == ({1, 2, 3, 7} if "attn_order" not in overrides else {0, 1, 2, 3})
    zs, y = codes(prior, 2), labels(prior, 2)
    with torch.no_grad():
        tokens, x_cond, y_cond, enc, _ = prior.lm_inputs(zs[0].to(dev), None, y.to(dev))
    results = {}
    for backend in ("torch", "triton"):
        with dispatch.use_backend(backend):
            decoder = IncrementalDecoder(prior.prior, 2, x_cond, y_cond, enc)
            outs = [decoder.prefill(tokens[:, :30])]  # the lyrics and a few codes, then 6 steps
            outs += [decoder.step(tokens[:, t - 1])[:, None] for t in range(30, 36)]
            results[backend] = torch.cat(outs, dim=1)
    torch.testing.assert_close(results["triton"], results["torch"], rtol=1e-5, atol=1e-6)
