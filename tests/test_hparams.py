"""Hparams presets: original names and values, overrides, and the errors for typos."""
from __future__ import annotations

import dataclasses

import pytest

from jukebox_fast import hparams
from jukebox_fast.hparams import VQVAEHparams


def test_released_vqvae_values():
    hp = hparams.get("vqvae")
    assert (hp.levels, hp.downs_t, hp.strides_t) == (3, (3, 2, 2), (2, 2, 2))
    assert (hp.emb_width, hp.l_bins, hp.l_mu, hp.commit) == (64, 2048, 0.99, 0.02)
    assert (hp.width, hp.depth, hp.hvqvae_multipliers, hp.dilation_growth_rate) == (32, 4, (2, 1, 1), 3)
    assert (hp.loss_fn, hp.lmix_l2, hp.lmix_linf, hp.linf_k) == ("lmix", 1.0, 0.02, 2048)
    assert (hp.spectral, hp.multispectral, hp.revival_threshold) == (0.0, 1.0, 1.0)
    assert hp.hop_lengths == (8, 32, 128)
    assert hp.z_shapes == ((131072,), (32768,), (8192,))
    assert hp.codebook_mode == "ema"


def test_tiny_keeps_the_structure():
    tiny, full = hparams.get("tiny_vqvae"), hparams.get("vqvae")
    for name in ("levels", "downs_t", "strides_t", "hvqvae_multipliers", "dilation_growth_rate",
                 "vqvae_reverse_decoder_dilation", "loss_fn"):
        assert getattr(tiny, name) == getattr(full, name), name
    assert tiny.width < full.width and tiny.l_bins < full.l_bins and tiny.emb_width < full.emb_width


def test_overrides_use_original_names_and_return_new_objects():
    hp = hparams.get("vqvae", l_bins=512, downs_t=[3, 2, 1], commit=0.25)
    assert (hp.l_bins, hp.downs_t, hp.commit) == (512, (3, 2, 1), 0.25)
    assert hp.hop_lengths == (8, 32, 64)
    assert hparams.get("vqvae").l_bins == 2048
    with pytest.raises(dataclasses.FrozenInstanceError):
        hp.l_bins = 3


def test_unknown_override_names_the_close_matches():
    with pytest.raises(ValueError, match=r"no hyper-parameter 'l_bin'.*did you mean 'l_bins'"):
        hparams.get("vqvae", l_bin=1024)
    with pytest.raises(ValueError, match=r"no hyper-parameter 'dilation_growth'.*'dilation_growth_rate'"):
        hparams.get("tiny_vqvae", dilation_growth=2)


def test_unknown_preset_names_the_close_matches():
    with pytest.raises(ValueError, match=r"unknown hparams preset 'vqvea'.*did you mean 'vqvae'"):
        hparams.get("vqvea")
    assert {"vqvae", "tiny_vqvae"} <= set(hparams.names())


@pytest.mark.parametrize(
    "overrides,match",
    [
        (dict(levels=2), r"downs_t needs one entry per level \(2\)"),
        (dict(codebook_mode="gumbel"), "codebook_mode must be one of"),
        (dict(loss_fn="l3"), "loss_fn must be one of"),
        (dict(sample_length=1000), "multiple of the top hop 128"),
        (dict(multispec_loss_hop_length=(240,)), "same length"),
    ],
)
def test_inconsistent_values_are_rejected(overrides, match):
    with pytest.raises(ValueError, match=match):
        hparams.get("vqvae", **overrides)


def test_from_dict_round_trip_and_lenient_mode():
    hp = hparams.get("tiny_vqvae", l_bins=100)
    assert hparams.from_dict(VQVAEHparams, hp.to_dict()) == hp
    assert hparams.from_dict(VQVAEHparams, {"l_bins": 7, "prior_width": 4800}, strict=False).l_bins == 7
    with pytest.raises(ValueError, match="prior_width"):
        hparams.from_dict(VQVAEHparams, {"prior_width": 4800})


@pytest.mark.parametrize("override, message", [
    (dict(l_bins=0), "l_bins must be >= 1, got 0"),
    (dict(emb_width=0), "emb_width must be >= 1, got 0"),
    (dict(sr=0), "sr must be >= 1, got 0"),
    (dict(commit=float("nan")), "commit must be a finite number >= 0, got nan"),
    (dict(commit=-0.1), "commit must be a finite number >= 0, got -0.1"),
    (dict(l_mu=1.5), r"l_mu \(the codebook's EMA decay\) must be in \(0, 1\], got 1.5"),
    (dict(strides_t=(0, 2, 2)), r"strides_t must be >= 1 and downs_t >= 0 at every level"),
    (dict(downs_t=(3, -1, 2)), r"strides_t must be >= 1 and downs_t >= 0 at every level"),
])
def test_make_vqvae_refuses_impossible_hparams(override, message):
    from jukebox_fast import make_vqvae

    with pytest.raises(ValueError, match=message):
        make_vqvae(hparams.get("tiny_vqvae", **override))


def test_presets_listed_by_kind():
    assert hparams.names(hparams.VQVAEHparams) == ["tiny_vqvae", "vqvae"]
    assert "tiny_top_prior" in hparams.names(hparams.PriorHparams) and "vqvae" not in hparams.names(hparams.PriorHparams)


def test_fields_kept_only_for_recorded_checkpoints_refuse_other_values():
    from jukebox_fast.hparams import COMPAT_ONLY, PriorHparams

    assert set(COMPAT_ONLY) <= {f.name for f in dataclasses.fields(PriorHparams)}
    for field, value in (("spread", 4), ("pos_init", True), ("prime_spread", 2)):
        with pytest.raises(ValueError, match=f"{field}={value!r} is not supported"):
            hparams.get("tiny_top_prior", **{field: value})
    hparams.get("tiny_top_prior", c_res=1, prime_c_res=0)  # memory-only switches: accepted, and without effect
