"""Parity with the original through HF transformers' port (identical to it on the VQ-VAE, see
jukebox-reference.md §7.3): same weights, same audio -> same codes and the same decoded audio."""
from __future__ import annotations

import pytest
import torch

import jukebox_fast
from jukebox_fast.checkpoint import hf_to_openai, openai_to_hf
from jukebox_fast.demo import synth_clip

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
    ours, hf, x = pair
    with torch.no_grad():
        ours_codes = ours.encode(x)
        hf_codes = hf.encode(x)
    for level, (a, b) in enumerate(zip(ours_codes, hf_codes)):
        assert a.shape == b.shape
        assert a.unique().numel() > 100, "codes must be spread over the codebook for the test to mean something"
        assert torch.equal(a, b), f"level {level}: {(a != b).sum()} codes differ"


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
