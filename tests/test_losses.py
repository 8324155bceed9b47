"""VQ-VAE losses and the bandwidth normalisers, against direct formulas."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from jukebox_fast import hparams
from jukebox_fast.models.losses import (Bandwidth, calculate_bandwidth, multispectral_loss,
                                        reconstruction_loss, spectral_convergence, spectral_loss)

HPS = hparams.get("vqvae", linf_k=5)


def test_reconstruction_losses():
    x, y = torch.randn(2, 100, 1), torch.randn(2, 100, 1)
    bw = Bandwidth(l2=2.0, l1=4.0, spec=1.0)
    err2 = (x - y).square()
    torch.testing.assert_close(reconstruction_loss("l2", x, y, HPS, bw), err2.mean() / 2)
    torch.testing.assert_close(reconstruction_loss("l1", x, y, HPS, bw), (x - y).abs().mean() / 4)
    top = err2.view(2, -1).sort(dim=1, descending=True).values[:, :5]
    torch.testing.assert_close(reconstruction_loss("linf", x, y, HPS, bw), top.mean() / 2)
    mix = reconstruction_loss("l2", x, y, HPS, bw) + 0.02 * reconstruction_loss("linf", x, y, HPS, bw)
    torch.testing.assert_close(reconstruction_loss("lmix", x, y, HPS, bw), mix)
    with pytest.raises(ValueError, match="unknown loss_fn"):
        reconstruction_loss("l3", x, y, HPS, bw)


def test_spectral_losses_vanish_on_identical_audio_and_grow_with_noise():
    x = torch.randn(2, 8192, 1)
    assert float(spectral_loss(x, x).abs().max()) == 0.0
    assert float(spectral_convergence(x, x).abs().max()) == 0.0
    noisy = x + 0.1 * torch.randn_like(x)
    ms = multispectral_loss(x, noisy, (2048, 1024, 512), (240, 120, 50), (1200, 600, 240))
    assert ms.shape == (2,) and bool((ms > 0).all())
    sc = spectral_convergence(x, noisy)
    assert bool((sc > 0).all()) and bool((sc < 1).all())
    assert float(spectral_convergence(torch.zeros(1, 8192), torch.randn(1, 8192))[0]) == 0.0  # silent input


def test_bandwidth_of_a_sine():
    sr, a = 44100, 0.5
    clip = (a * np.sin(2 * np.pi * 441 * np.arange(sr) / sr)).astype(np.float32)
    bw = calculate_bandwidth([clip, clip[:, None]])
    assert math.isclose(bw.l2, a * a / 2, rel_tol=1e-3)
    assert math.isclose(bw.l1, 2 * a / math.pi, rel_tol=1e-3)
    assert bw.spec > 0
    with pytest.raises(ValueError, match="at least one clip"):
        calculate_bandwidth([])
