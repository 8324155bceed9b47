"""The vq_nearest op's PyTorch reference against a float64 brute force: ties, chunking, bad input."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import jukebox_fast.ops.vq as vq_mod
from jukebox_fast.ops import buffers
from jukebox_fast.ops import vq_nearest
from vq_check import assert_nearest, poison


def check(x, c, idx, dist):
    assert_nearest(x, c, idx, dist)


SHAPES = [(1, 1, 1), (7, 13, 5), (333, 100, 48), (1000, 2048, 64), (257, 31, 100), (64, 4096, 16), (3, 5, 256)]


@pytest.mark.parametrize("n,k,d", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_matches_brute_force(n, k, d, dtype, monkeypatch):
    x = torch.randn(n, d).to(dtype)
    c = torch.randn(k, d).to(dtype)
    monkeypatch.setattr(buffers, "new_empty", poison)  # any element left unwritten fails below
    idx, dist = vq_nearest(x, c)
    check(x, c, idx, dist)


def test_fp32_indices_equal_the_original_full_matrix_method():
    x, c = torch.randn(3000, 64), torch.randn(2048, 64)
    # The original: the whole N×K matrix, then torch.min.
    full = (x**2).sum(-1, keepdim=True) - 2 * x @ c.t() + (c.t() ** 2).sum(0, keepdim=True)
    ref_d, ref_i = full.min(dim=-1)
    idx, dist = vq_nearest(x, c)
    assert torch.equal(idx, ref_i)
    torch.testing.assert_close(dist, ref_d, rtol=1e-5, atol=1e-4)


def test_chunking_does_not_change_the_answer(monkeypatch):
    x, c = torch.randn(1001, 32), torch.randn(300, 32)
    whole = vq_nearest(x, c)
    monkeypatch.setattr(vq_mod, "TILE_ELEMENTS", 300 * 7)  # 7 rows per chunk, ragged last chunk
    chunked = vq_nearest(x, c)
    assert torch.equal(whole[0], chunked[0])
    # The BLAS may block a 7-row product differently from a 1001-row one: last-bit differences.
    torch.testing.assert_close(whole[1], chunked[1], rtol=1e-6, atol=1e-5)


def test_ties_go_to_the_lowest_index():
    c = torch.randn(10, 8)
    c[7] = c[2]
    c[9] = c[2]
    x = c[2].repeat(5, 1) + 1e-3 * torch.randn(5, 8)
    idx, _ = vq_nearest(x, c)
    assert idx.tolist() == [2] * 5
    # All-equal codebook: every row ties with every code.
    idx, _ = vq_nearest(torch.randn(6, 4), torch.ones(5, 4))
    assert idx.tolist() == [0] * 6


def test_huge_codebook_norms_do_not_hide_the_nearest_code():
    c = torch.randn(64, 16) * 1e3
    c[17] = torch.randn(16) * 0.01
    x = torch.randn(20, 16) * 0.01
    idx, dist = vq_nearest(x, c)
    assert idx.tolist() == [17] * 20
    check(x, c, idx, dist)


def test_empty_input_gives_empty_outputs():
    idx, dist = vq_nearest(torch.randn(0, 8), torch.randn(4, 8))
    assert idx.shape == (0,) and dist.shape == (0,)
    assert idx.dtype == torch.int64 and dist.dtype == torch.float32


def test_inputs_that_require_grad_give_outputs_without_gradient():
    x, c = torch.randn(9, 4, requires_grad=True), torch.randn(6, 4, requires_grad=True)
    idx, dist = vq_nearest(x, c)
    assert not dist.requires_grad
    check(x.detach(), c.detach(), idx, dist)


def test_mixed_dtypes_are_computed_in_fp32():
    x, c = torch.randn(50, 12).bfloat16(), torch.randn(40, 12)
    idx, dist = vq_nearest(x, c)
    check(x, c, idx, dist)


@pytest.mark.parametrize(
    "x,c,match",
    [
        (torch.randn(4), torch.randn(3, 4), r"x must be 2-D \[rows, D\], got shape \(4,\)"),
        (torch.randn(4, 3), torch.randn(5, 4), r"x is \[N, 3\] but codebook is \[K, 4\]"),
        (torch.randint(0, 3, (4, 3)), torch.randn(5, 3), "x must be a float tensor, got torch.int64"),
        (torch.randn(4, 3), torch.randn(0, 3), "codebook must be non-empty"),
        (torch.randn(4, 3), torch.randn(5, 3, device="meta"), "x is on cpu but codebook is on meta"),
        ([[1.0]], torch.randn(5, 1), "x must be a torch.Tensor, got list"),
    ],
)
def test_bad_input_is_a_clear_value_error(x, c, match):
    with pytest.raises(ValueError, match=match):
        vq_nearest(x, c)


def test_non_finite_input_is_refused_unless_the_check_is_skipped():
    x, c = torch.randn(20, 6), torch.randn(9, 6)
    x[13, 2] = float("nan")
    with pytest.raises(ValueError, match=r"x holds NaN or inf in 1 of its 20 rows \(first: row 13\); "
                                         "pass check_finite=False"):
        vq_nearest(x, c)
    idx, dist = vq_nearest(x, c, check_finite=False)  # unchecked: index 0, distance NaN
    assert idx[13] == 0 and dist[13].isnan() and bool(torch.isfinite(dist[torch.arange(20) != 13]).all())
    c[4, 0] = float("inf")
    with pytest.raises(ValueError, match=r"codebook holds NaN or inf in 1 of its 9 rows \(first: row 4\)"):
        vq_nearest(x[:5], c)
    # Unchecked, a non-finite codebook row is out of the search: before, one NaN row took every query.
    c[7] = float("nan")
    idx, dist = vq_nearest(x[:13], c, check_finite=False)
    keep = torch.tensor([0, 1, 2, 3, 5, 6, 8])
    sub_idx, sub_dist = vq_nearest(x[:13], c[keep])
    assert torch.equal(idx, keep[sub_idx])
    torch.testing.assert_close(dist, sub_dist)  # the same sums, up to the BLAS's blocking


@settings(max_examples=40, deadline=None)
@given(n=st.integers(0, 300), k=st.integers(1, 300), d=st.integers(1, 70), seed=st.integers(0, 2**31 - 1),
       dup=st.booleans())
def test_random_shapes(n, k, d, seed, dup):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    c = torch.randn(k, d, generator=g)
    if dup and k > 1:
        c[k - 1] = c[0]  # a duplicated row never wins over its lower twin
    idx, dist = vq_nearest(x, c)
    check(x, c, idx, dist)
    if dup and k > 1:
        assert not bool((idx == k - 1).any())


def test_the_codebook_terms_are_computed_once_per_codebook_version(monkeypatch):
    # Norms, the repeat mask and the finite flag of a codebook are computed once per version of the
    # tensor (a counter, not a timing): encoding twice computes them once per level; a training
    # step (EMA update, restarts), an in-place change or a load computes them again, and a search
    # then sees the new codebook's, never stale ones.
    from jukebox_fast import hparams, make_vqvae

    real, calls = vq_mod.code_norms, []
    monkeypatch.setattr(vq_mod, "code_norms", lambda c: calls.append(c.shape) or real(c))
    torch.manual_seed(0)
    vqvae = make_vqvae(hparams.get("tiny_vqvae"))
    x = 0.3 * torch.randn(2, 4096, 1)
    vqvae.train()(x)  # initialises and updates the codebooks
    levels = vqvae.hps.levels
    codebooks = [block.k for block in vqvae.bottleneck.level_blocks]

    def fresh():
        return [real(k) for k in codebooks]

    vqvae.eval()
    calls.clear()
    first = vqvae.encode(x)
    assert len(calls) == levels
    assert all(torch.equal(a, b) for a, b in zip(vqvae.encode(x), first)) and len(calls) == levels  # kept
    vqvae.train()(x)  # an EMA step: every codebook changes in place
    calls.clear()
    vqvae.eval().encode(x)
    assert len(calls) == levels
    assert all(torch.equal(vq_mod.codebook_terms(k).norms, n) for k, n in zip(codebooks, fresh()))
    with torch.no_grad():
        codebooks[0].mul_(2.0)  # any in-place change
    vqvae.encode(x)
    assert len(calls) == levels + 1
    state = {k: v.clone() for k, v in vqvae.state_dict().items()}
    vqvae.load_state_dict(state)  # a load copies into every codebook
    calls.clear()
    vqvae.encode(x)
    assert len(calls) == levels
    # A new tensor, even at a freed one's address, is never given the old one's terms.
    for seed in range(5):
        c = torch.randn(64, 8, generator=torch.Generator().manual_seed(seed))
        assert torch.equal(vq_mod.codebook_terms(c).norms, real(c))
        del c


def test_encode_refuses_non_finite_audio_once_unless_asked_not_to():
    from jukebox_fast import hparams, make_vqvae

    vqvae = make_vqvae(hparams.get("tiny_vqvae")).eval()
    x = 0.3 * torch.randn(1, 1024, 1)
    x[0, 300, 0] = float("inf")
    with pytest.raises(ValueError, match=r"audio holds 1 NaN or inf sample\(s\) \(the first at flat index 300\)"):
        vqvae.encode(x)
    codes = vqvae.encode(x, check_finite=False)  # unchecked: no host sync; the bad rows get code 0
    assert [z.shape for z in codes] == [(1, 1024 // hop) for hop in vqvae.hps.hop_lengths]
