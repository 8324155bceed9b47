"""Inputs and oracles shared by the CPU and GPU tests of the dilated_resblock kernels."""
from __future__ import annotations

import torch

from jukebox_fast.hparams import get
from jukebox_fast.models.resnet import dilations
from jukebox_fast.ops import dilated_resblock_reference


def released_dilations() -> list[int]:
    """Every dilation a released stack uses: the VQ-VAE's levels (depth x multiplier, growth 3)
    and the upsamplers' conditioner (depth 16, cycle 8)."""
    vq = get("vqvae")
    ds = set()
    for mult in vq.hvqvae_multipliers:
        ds |= set(dilations(vq.depth * mult, vq.dilation_growth_rate, vq.dilation_cycle))
    up = get("upsampler_level_0")
    ds |= set(dilations(up.cond_depth, up.cond_dilation_growth_rate, up.cond_dilation_cycle))
    return sorted(ds)


def inputs(n, c, s, length, dtype=torch.float32, device="cpu", seed=0):
    """x [n, c, length] and the two convolutions' weights, scaled as trained ones are."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, length, generator=g)
    w1 = torch.randn(s, c, 3, generator=g) / (3 * c) ** 0.5
    b1 = torch.randn(s, generator=g) * 0.1
    w2 = torch.randn(c, s, 1, generator=g) / s ** 0.5
    b2 = torch.randn(c, generator=g) * 0.1
    return [t.to(device=device, dtype=dtype) for t in (x, w1, b1, w2, b2)]


def exact(tensors, dilation, res_scale):
    """The float64 result of the same inputs: the yardstick of the low-precision rule."""
    return dilated_resblock_reference(*(t.double() for t in tensors), dilation, res_scale)


def assert_close_fp32(got, tensors, dilation, res_scale, what=""):
    ref = exact(tensors, dilation, res_scale)
    assert torch.isfinite(got).all(), f"{what}: non-finite (unwritten?) elements"
    err = (got.double() - ref).abs().max().item()
    assert err <= 1e-5 * max(1.0, ref.abs().max().item()), f"{what}: max error {err:.3g}"


def assert_within_twice_the_reference(got, tensors, dilation, res_scale, what=""):
    """The kernel's error against float64 is at most twice the reference's own error in the same
    dtype (plus one ulp of the values' scale)."""
    ex = exact(tensors, dilation, res_scale)
    ref = dilated_resblock_reference(*tensors, dilation, res_scale)
    assert torch.isfinite(got).all(), f"{what}: non-finite (unwritten?) elements"
    err = (got.double() - ex).abs().max().item()
    ref_err = (ref.double() - ex).abs().max().item()
    ulp = torch.finfo(got.dtype).eps * ex.abs().max().item()
    assert err <= 2 * ref_err + ulp, f"{what}: kernel error {err:.3g}, reference's {ref_err:.3g}"
