"""Priors against HF transformers' port (the fp32 oracle, equal to the original on random weights):
our random weights copied through checkpoint.openai_to_hf, same codes and labels, same logits
and losses. Reduced configurations keep every attention type of each released structure."""
from __future__ import annotations

import pytest
import torch

from jukebox_fast import hparams, make_prior
from jukebox_fast.checkpoint import openai_to_hf
from prior_inputs import codes, labels

jukebox = pytest.importorskip("transformers.models.deprecated.jukebox")

HF_PATTERN = {2: "raw_column_previous_row_attention", 10: "large_separated_enc_dec_w_lyrics",
              12: "enc_dec_with_lyrics"}


def hf_config(hps, vq):
    """HF's JukeboxPriorConfig for our hparams (names per jukebox-reference.md §5.5)."""
    encoder = None
    if hps.use_tokens and not hps.single_enc_dec:
        encoder = dict(hidden_size=hps.prime_width, num_layers=hps.prime_depth, n_heads=hps.prime_heads,
                       attention_pattern=HF_PATTERN[hps.prime_attn_order], blocks=hps.prime_blocks,
                       init_scale=hps.prime_init_scale, attention_multiplier=hps.prime_m_attn,
                       mlp_multiplier=hps.prime_m_mlp, mask=True, n_ctx=hps.n_tokens,
                       nb_relevant_lyric_tokens=hps.n_tokens, lyric_vocab_size=hps.n_vocab,
                       is_encoder_decoder=False, metadata_conditioning=False)
    return jukebox.JukeboxPriorConfig(
        level=vq.levels - 1 - hps.level, attention_multiplier=hps.m_attn, attention_pattern=HF_PATTERN[hps.attn_order],
        blocks=hps.blocks, conv_res_scale=hps.cond_res_scale, num_layers=hps.prior_depth, encoder_config=encoder,
        encoder_loss_fraction=hps.prime_loss_fraction, hidden_size=hps.prior_width, init_scale=hps.init_scale,
        is_encoder_decoder=hps.single_enc_dec, lyric_vocab_size=hps.n_vocab, mask=True,
        max_duration=hps.max_duration or 600, min_duration=hps.min_duration or 0, max_nb_genres=hps.max_bow_genre_size,
        merged_decoder=hps.merged_decoder, metadata_conditioning=hps.labels, metadata_dims=list(hps.y_bins),
        mlp_multiplier=hps.m_mlp, music_vocab_size=vq.l_bins, n_ctx=hps.n_ctx, n_heads=hps.heads,
        nb_relevant_lyric_tokens=hps.n_tokens if hps.use_tokens else 0, res_conv_depth=hps.cond_depth,
        res_conv_width=hps.cond_width, res_convolution_multiplier=int(hps.cond_m_conv),  # HF needs an int
        res_dilation_cycle=hps.cond_dilation_cycle, res_dilation_growth_rate=hps.cond_dilation_growth_rate,
        res_downs_t=list(vq.downs_t), res_strides_t=list(vq.strides_t), sampling_rate=hps.sr,
        timing_dims=hps.t_bins, zero_out=hps.zero_out,
    )


def build_pair(name: str, **overrides):
    torch.manual_seed(0)
    ours = make_prior(hparams.get(name, **overrides)).eval()
    cfg = hf_config(ours.hps, ours.vqvae_hps)
    hf = jukebox.JukeboxPrior(cfg, level=cfg.level, nb_priors=ours.vqvae_hps.levels).eval()
    hf.load_state_dict(openai_to_hf(ours.state_dict()), strict=True)
    return ours, hf


@pytest.mark.parametrize("name", ["tiny_prior", "tiny_prior_5b_lyrics"])
def test_lyrics_priors_match_hf(name):
    ours, hf = build_pair(name)
    n = 1 if name == "tiny_prior_5b_lyrics" else 2  # HF's 5b_lyrics path gives every row row 0's lyrics
    zs, y = codes(ours, n), labels(ours, n)
    with torch.no_grad():
        loss, metrics = ours(zs, y, get_preds=True)
        hf_loss, hf_metrics = hf.forward_tokens(zs[0], [], y, get_preds=True)
    torch.testing.assert_close(metrics["preds"], hf_metrics["preds"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(loss, hf_loss, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(metrics["prime_loss"], hf_metrics["encoder_loss"], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(metrics["gen_loss"], hf_metrics["next_token_prediction_loss"], rtol=1e-6, atol=1e-6)
    assert metrics["prime_loss"] > 0


def test_upsampler_matches_hf():
    ours, hf = build_pair("tiny_upsampler")
    zs, y = codes(ours, 2), labels(ours, 2)
    with torch.no_grad():
        loss, metrics = ours(zs, y, get_preds=True)
        # HF's forward_tokens fails for priors without lyrics: its conditioning, then its LM.
        audio_cond, meta_cond, _ = hf.get_cond([zs[1]], y)
        hf_loss, hf_preds = hf.prior(zs[0], audio_cond, meta_cond, get_preds=True)
    torch.testing.assert_close(metrics["preds"], hf_preds, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(loss, hf_loss, rtol=1e-6, atol=1e-6)


def test_top_prior_without_lyrics_matches_hf():
    # prior_5b's structure (timing, untied x_out, merged decoder) at CPU size.
    ours, hf = build_pair("prior_5b", vqvae="tiny_vqvae", n_ctx=64, prior_width=32, prior_depth=3, heads=2,
                          blocks=8, fp16_params=False, min_duration=1.0)
    zs, y = codes(ours, 2), labels(ours, 2)
    with torch.no_grad():
        loss, metrics = ours(zs, y, get_preds=True)
        audio_cond, meta_cond, _ = hf.get_cond([], y)
        hf_loss, hf_preds = hf.prior(zs[0], audio_cond, meta_cond, get_preds=True)
    torch.testing.assert_close(metrics["preds"], hf_preds, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(loss, hf_loss, rtol=1e-6, atol=1e-6)
