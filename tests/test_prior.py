"""Priors: released structures key for key, presets, training, and clear errors for bad input."""
from __future__ import annotations

import pytest
import torch

from conftest import read_keys_tsv
from jukebox_fast import CheckpointError, hparams, load_prior, make_prior, save_prior
from jukebox_fast.ops.patterns import layer_kinds
from prior_inputs import codes, labels

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


# -- checkpoints ----------------------------------------------------------------------------------
def _same_logits(a, b):
    zs, y = codes(a, 1), labels(a, 1)
    with torch.no_grad():
        torch.testing.assert_close(a.eval().get_logits(zs, y), b.eval().get_logits(zs, y), rtol=0, atol=0)


def test_load_prior_reads_the_original_format(tmp_path):
    torch.manual_seed(0)
    prior = make_prior("tiny_upsampler")
    sd = {"module." + k: v.clone() for k, v in prior.state_dict().items()}  # as saved under DDP
    path = tmp_path / "prior_level_1.pth.tar"
    torch.save({"hps": {"n_ctx": 64, "prior_width": 32}, "model": sd, "step": 5, "opt": None}, path)
    loaded = load_prior(path, "tiny_upsampler")
    assert not loaded.training
    assert loaded.prior.x_out.weight is loaded.prior.x_emb.weight  # tied again after loading
    _same_logits(loaded, prior)


def test_load_prior_keeps_fp16_weights_where_the_release_does(tmp_path):
    torch.manual_seed(0)
    hp = hparams.get("tiny_prior_5b_lyrics", fp16_params=True)
    prior = make_prior(hp)
    sd = {k: v.float() for k, v in prior.state_dict().items()}  # a file storing fp32
    torch.save({"model": sd}, tmp_path / "p.pth.tar")
    loaded = load_prior(tmp_path / "p.pth.tar", hp)
    assert loaded.prior.transformer._attn_mods[0].attn.c_attn.w.dtype == torch.float16
    assert loaded.prior.x_emb.weight.dtype == torch.float32
    _same_logits(loaded, prior)


def test_our_prior_format_round_trips_without_naming_the_preset(tmp_path):
    torch.manual_seed(0)
    prior = make_prior("tiny_prior")
    path = save_prior(prior, tmp_path / "sub" / "tiny.pth.tar", step=3)
    loaded = load_prior(path)
    assert loaded.hps == prior.hps and loaded.vqvae_hps == prior.vqvae_hps
    _same_logits(loaded, prior)


def test_load_prior_errors_name_the_problem(tmp_path):
    prior = make_prior("tiny_upsampler")
    sd = prior.state_dict()
    with pytest.raises(FileNotFoundError):
        load_prior(tmp_path / "missing.pth.tar", "tiny_upsampler")
    (tmp_path / "junk.pth.tar").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        load_prior(tmp_path / "junk.pth.tar", "tiny_upsampler")
    torch.save({"model": sd}, tmp_path / "ok.pth.tar")
    with pytest.raises(CheckpointError, match="pass name_or_hparams"):
        load_prior(tmp_path / "ok.pth.tar")
    with pytest.raises(CheckpointError, match="missing key"):
        load_prior(tmp_path / "ok.pth.tar", "tiny_prior")
    untied = dict(sd)
    untied["prior.x_out.weight"] = sd["prior.x_out.weight"] + 1
    torch.save({"model": untied}, tmp_path / "untied.pth.tar")
    with pytest.raises(CheckpointError, match="ties them"):
        load_prior(tmp_path / "untied.pth.tar", "tiny_upsampler")
