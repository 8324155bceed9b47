"""Parity with the original through HF transformers' port (identical to it on the VQ-VAE, see
jukebox-reference.md §7.3): same weights, same audio -> same codes and the same decoded audio."""
from __future__ import annotations

import pytest
import torch

import jukebox_fast
from jukebox_fast.checkpoint import hf_to_openai, openai_to_hf
from jukebox_fast.demo import synth_clip
from jukebox_fast.dispatch import use_backend

jukebox_hf = pytest.importorskip(
    "transformers.models.deprecated.jukebox", reason="transformers==4.57.6 is the parity oracle (pip install -e '.[test]')"
)

SR = 44100


@pytest.fixture(scope="module")
def pair():
    """Our released-architecture VQ-VAE with random weights and data-initialised codebooks, and
    HF's JukeboxVQVAE (released config) holding the same weights through the key mapping."""
    torch.manual_seed(0)
    ours = jukebox_fast.make_vqvae("vqvae").eval()
    n = (2 * SR) // 128 * 128  # two seconds
    clip = torch.from_numpy(synth_clip(n / SR, SR, seed=1)[:n])
    x = torch.stack([clip, 0.5 * clip.flip(0)]).unsqueeze(-1)  # [2, T, 1]
    # HF starts with all-zero codebooks (every code 0): set real ones so the codes mean something.
    ours.init_codebooks(x)
    hf = jukebox_hf.JukeboxVQVAE(jukebox_hf.JukeboxVQVAEConfig()).eval()
    hf.load_state_dict(openai_to_hf(ours.state_dict()), strict=True)
    return ours, hf, x


def test_mapping_is_lossless_both_ways(pair):
    ours, hf, _ = pair
    back = hf_to_openai(hf.state_dict())
    assert set(back) == set(ours.state_dict())  # HF registers some modules in another order
    assert all(torch.equal(back[k], v) for k, v in ours.state_dict().items())


def test_identical_codes_at_every_level(pair):
    """Through the reference convolutions (the original's arithmetic, op for op) codes are identical."""
    ours, hf, x = pair
    with torch.no_grad(), use_backend("torch"):
        ours_codes = ours.encode(x)
    with torch.no_grad():
        hf_codes = hf.encode(x)
    for level, (a, b) in enumerate(zip(ours_codes, hf_codes)):
        assert a.shape == b.shape
        assert a.unique().numel() > 100, "codes must be spread over the codebook for the test to mean something"
        assert torch.equal(a, b), f"level {level}: {(a != b).sum()} codes differ"


def test_lengths_off_the_hop_encode_as_the_original(pair):
    """The original's encoder takes any length: each strided convolution floors, so T samples give
    T // hop codes, the tail past the last whole code dropped. Ours must give those codes."""
    ours, hf, x = pair
    cut = x[:, : x.shape[1] - 77]  # 77 samples short of a multiple of 128
    with torch.no_grad(), use_backend("torch"):
        ours_codes = ours.encode(cut)
    with torch.no_grad():
        hf_codes = hf.encode(cut)
    for level, (a, b, hop) in enumerate(zip(ours_codes, hf_codes, (8, 32, 128))):
        assert a.shape == (2, cut.shape[1] // hop) and torch.equal(a, b), level


def test_default_kernels_change_codes_only_at_near_ties(pair):
    """With the fused C++ residual blocks (the CPU default) the encoder's sums round differently.
    The latents move by fp32 rounding only, and a code may change only where its two nearest
    entries are so close that a move that small (plus fp32 rounding of the distances) can swap
    them: moving v by δ changes ‖v − a‖² − ‖v − b‖² by 2δ·(b − a). Codebooks initialised from
    these very latents hold many near-duplicate entries (up to 3 % of level 2's codes change here),
    among which the original's fp32 distance formula is itself decided by rounding."""
    ours, _, x = pair
    with torch.no_grad():
        x_in = ours.preprocess(x)
        for level, block in enumerate(ours.bottleneck.level_blocks):
            with use_backend("torch"):
                ref = ours.encoders[level](x_in)[-1]
            got = ours.encoders[level](x_in)[-1]
            assert (got - ref).abs().max() <= 1e-5 * ref.abs().max(), f"level {level}: latents moved"
            a, b = block.encode(ref).flatten(), block.encode(got).flatten()
            flipped = (a != b).nonzero().flatten()
            v = block.preprocess(ref)[flipped].double()
            delta = (block.preprocess(got)[flipped] - block.preprocess(ref)[flipped]).double().norm(dim=1)
            ca, cb = block.k[a[flipped]].double(), block.k[b[flipped]].double()
            gap = ((v - ca).square().sum(1) - (v - cb).square().sum(1)).abs()
            scale = v.square().sum(1) + ca.square().sum(1) + cb.square().sum(1)
            allowed = 2 * delta * (ca - cb).norm(dim=1) + 1e-6 * scale
            assert (gap <= allowed).all(), f"level {level}: a code changed that was not a near tie"


@pytest.mark.parametrize("level", [0, 1, 2])
def test_decoded_audio_agrees(pair, level):
    ours, hf, x = pair
    with torch.no_grad():
        zs = ours.encode(x)[level:]
        a = ours.decode(zs, start_level=level)
        b = hf.decode(zs, start_level=level)
    # Both run the same fp32 convolutions in the same order, so the audio is expected to be
    # bit-identical; the tolerance only allows for a BLAS picking another kernel for an op, which
    # moves results by a few fp32 ulps of the signal (|audio| < 1 here, eps 1.2e-7).
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
