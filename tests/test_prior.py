"""Priors: released structures key for key, presets, training, and clear errors for bad input."""
from __future__ import annotations

import pytest
import torch

from conftest import read_keys_tsv
from jukebox_fast import hparams, make_prior
from jukebox_fast.ops.patterns import layer_kinds
from test_prior_hf_parity import codes, labels

RELEASED = ["prior_5b", "prior_5b_lyrics", "prior_1b_lyrics", "upsampler_level_0", "upsampler_level_1"]


@pytest.mark.parametrize("name", RELEASED)
def test_state_dict_equals_the_released_checkpoint_listing(name, data_dir):
    with torch.device("meta"):
        prior = make_prior(name)
    ours = [(k, list(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in prior.state_dict().items()]
    assert ours == read_keys_tsv(data_dir / f"{name}.tsv")  # names, order, shapes and dtypes


def test_make_prior_on_the_meta_device_argument():
    prior = make_prior("prior_1b_lyrics", device="meta")
    assert prior.prior.x_out.weight is prior.prior.x_emb.weight  # tied, as released
    assert all(p.device.type == "meta" for p in prior.parameters())


def test_tiny_presets_keep_every_structural_feature():
    tiny = hparams.get("tiny_prior")
    kinds = layer_kinds(tiny.attn_order, tiny.prior_depth)
    assert {1, 2, 3, 7, 0} <= set(kinds)  # block, column, previous block, prime, dense
    assert tiny.single_enc_dec and tiny.labels_v3 and tiny.is_top
    lyr = hparams.get("tiny_prior_5b_lyrics")
    assert 6 in layer_kinds(lyr.attn_order, lyr.prior_depth) and lyr.use_tokens and not lyr.single_enc_dec
    up = hparams.get("tiny_upsampler")
    assert up.level == 1 and up.cond_res_scale and up.cond_c_res == 1 and not up.merged_decoder


def test_overrides_use_the_original_names():
    hp = hparams.get("prior_1b_lyrics", n_ctx=192, prior_width=64, prior_depth=16)
    assert (hp.n_ctx, hp.prior_width, hp.prior_depth, hp.n_tokens, hp.blocks) == (192, 64, 16, 384, 64)
    assert hp.seq_length == 576 and hp.block_ctx == 9
    with pytest.raises(ValueError, match="did you mean 'prior_width'"):
        hparams.get("prior_5b", prior_widht=64)
    with pytest.raises(ValueError, match="blocks=100 must divide"):
        hparams.get("prior_5b", blocks=100)


@pytest.mark.parametrize("name", ["tiny_prior", "tiny_prior_5b_lyrics", "tiny_upsampler"])
def test_a_tiny_prior_trains_twenty_steps_with_falling_loss(name):
    torch.manual_seed(0)
    prior = make_prior(name).train()
    zs, y = codes(prior, 2), labels(prior, 2)
    opt = torch.optim.Adam(prior.parameters(), lr=3e-3)
    losses = []
    for _ in range(20):
        loss, metrics = prior(zs, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < 0.8 * losses[0], losses  # memorising one batch
    assert set(metrics) == {"bpd", "gen_loss", "prime_loss"}
    if prior.n_tokens:
        assert metrics["prime_loss"] > 0


def test_fp16_forward_runs_the_transformer_in_half():
    torch.manual_seed(0)
    prior = make_prior("tiny_upsampler").eval()
    zs, y = codes(prior, 1), labels(prior, 1)
    with torch.no_grad():
        full = prior.get_logits(zs, y)
        half = prior.get_logits(zs, y, fp16=True)
    assert half.dtype == torch.float32 and not torch.equal(half, full)  # it did run in half
    torch.testing.assert_close(half, full, rtol=0.05, atol=0.05)


@pytest.mark.parametrize("break_it,match", [
    (lambda z, y: (z.clamp(max=0) - 1, y), r"level-2 codes must lie in \[0, 256\)"),
    (lambda z, y: (z[:, :10], y), r"level-2 codes must be \[N, 64\]"),
    (lambda z, y: (z.float(), y), "must be integer codes"),
    (lambda z, y: (z, y[:, :5]), r"labels y must be \[N, 21\]"),
    (lambda z, y: (z, torch.cat([y[:, :3], torch.full_like(y[:, 3:4], 10**6), y[:, 4:]], 1)),
     r"artist ids must lie in \[0, 7898\)"),
    (lambda z, y: (z, torch.cat([y[:, :4], torch.full_like(y[:, 4:5], 999), y[:, 5:]], 1)),
     r"genre ids must lie in \[0, 604\)"),
    (lambda z, y: (z, torch.cat([y[:, :5], torch.full_like(y[:, 5:], 200)], 1)), r"lyric tokens must lie in \[0, 79\)"),
    (lambda z, y: (z, torch.cat([y, y[:, -3:]], 1)), r"labels y must be \[N, 21\] .* 16 lyric tokens"),
    (lambda z, y: (z, torch.cat([torch.full_like(y[:, :1], 10), y[:, 1:]], 1)), "total_length"),
])
def test_bad_input_is_a_clear_value_error(break_it, match):
    prior = make_prior("tiny_prior")
    (z,), y = codes(prior, 2), labels(prior, 2)
    z, y = break_it(z, y)
    with pytest.raises(ValueError, match=match):
        prior(z, y)


def test_an_upsampler_needs_the_codes_above():
    prior = make_prior("tiny_upsampler")
    zs, y = codes(prior, 1), labels(prior, 1)
    with pytest.raises(ValueError, match="needs the codes of level 2"):
        prior(zs[0], y)
    with pytest.raises(ValueError, match=r"level-2 codes must be \[N, 16\]"):
        prior([zs[0], zs[1][:, :5]], y)
