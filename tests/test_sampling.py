"""Cached incremental decoding and the sampling pipeline (CPU, tiny presets)."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

import jukebox_fast.sample as sample_mod
from jukebox_fast import dispatch, extension, hparams, make_prior, make_vqvae, text
from jukebox_fast.dispatch import use_backend
from jukebox_fast.models.decoding import IncrementalDecoder
from jukebox_fast.ops import AttentionPattern, CacheLayout, Kind, decode_attention
from jukebox_fast.sample import (Sampling, Song, draw, filter_logits, generate, get_starts, inverse_cdf, sample_level,
                                 sample_window)
from prior_inputs import codes, labels

PRESETS = ["tiny_prior", "tiny_prior_5b_lyrics", "tiny_upsampler"]


def lm_inputs(prior, n=2):
    zs, y = codes(prior, n), labels(prior, n)
    with torch.no_grad():
        full = prior.get_logits(zs, y)  # [N, L, bins]
        tokens, x_cond, y_cond, enc, _ = prior.lm_inputs(zs[0], zs[1:], y)
    return full, tokens, (x_cond, y_cond, enc)


def step_backends() -> list:
    """The CPU implementations of a decode step: the C++ kernel where the extension loads."""
    why = extension.load()
    return [pytest.param("cpp", marks=pytest.mark.skipif(why is not None, reason=f"C++ extension: {why}")), "torch"]


@pytest.mark.parametrize("backend", step_backends())
@pytest.mark.parametrize("name", PRESETS)
@pytest.mark.parametrize("prefix", [0, 7, -3], ids=["ancestral", "prefix7", "prefix-full-3"])
def test_incremental_decoding_gives_the_full_forwards_logits(name, prefix, backend):
    # tiny_prior: block, column, previous-block, prime (with its lyric prefix) and dense layers;
    # tiny_prior_5b_lyrics: cross-attention to the lyric encoder; tiny_upsampler: the
    # conditioner's per-position x_cond.
    prior = make_prior(name).eval()
    full, tokens, cond = lm_inputs(prior)
    c = prefix % tokens.shape[1]
    with use_backend(decode_layers=backend):
        decoder = IncrementalDecoder(prior.prior, 2, *cond)
    assert decoder._layers is dispatch.get_op("decode_layers").impls[backend].fn
    outs = [decoder.prefill(tokens[:, :c])]
    token = tokens[:, c - 1] if c else None
    for t in range(c, tokens.shape[1]):
        outs.append(decoder.step(token)[:, None])
        token = tokens[:, t]
    torch.testing.assert_close(torch.cat(outs, dim=1), full, rtol=1e-5, atol=1e-6)
    assert int(decoder.position) == tokens.shape[1]


def test_caches_keep_only_what_each_pattern_needs():
    prior = make_prior("tiny_prior").eval()
    decoder = IncrementalDecoder(prior.prior, 1, *lm_inputs(prior, 1)[2])
    bc, length = prior.hps.block_ctx, prior.hps.seq_length
    sizes = {c.layout.pattern.kind: c.k.shape[2] for c in decoder.caches}
    assert sizes == {1: bc, 2: length, 3: 2 * bc, 7: 24 + 1, 0: length}  # P = 24 for 16 lyric tokens
    data = [c.k.data_ptr() for c in decoder.caches]
    decoder.step(None)
    decoder.step(torch.zeros(1, dtype=torch.long))
    assert data == [c.k.data_ptr() for c in decoder.caches]  # written in place, never regrown


@pytest.mark.parametrize("name", ["tiny_prior_5b_lyrics", "tiny_upsampler"])
def test_greedy_sampling_picks_the_full_forwards_argmax(name):
    prior = make_prior(name).eval()
    zs, y = codes(prior, 2), labels(prior, 2)
    z_cond = zs[1] if len(zs) > 1 else None
    out = sample_window(prior, zs[0][:, :5], prior.hps.n_ctx, z_cond, y, Sampling(temp=0, progress=False))
    assert torch.equal(out[:, :5], zs[0][:, :5])
    with torch.no_grad():
        logits = prior.get_logits([out] + zs[1:], y)
    assert torch.equal(logits.argmax(-1)[:, 5:], out[:, 5:])


def test_filters_as_the_original():
    logits = torch.tensor([[1.0, 3.0, 2.0, 0.5]])
    assert torch.isinf(filter_logits(logits, top_k=2)).tolist() == [[True, False, False, True]]
    # softmax ≈ [0.086, 0.636, 0.234, 0.052]: p = 0.7 keeps 3.0 and 2.0 (the one that crosses p).
    assert torch.isinf(filter_logits(logits, top_p=0.7)).tolist() == [[True, False, False, True]]
    assert torch.isinf(filter_logits(logits, top_p=0.5)).tolist() == [[True, False, True, True]]
    with pytest.raises(ValueError, match="not both"):
        filter_logits(logits, top_k=1, top_p=0.5)
    g = torch.Generator().manual_seed(0)
    assert all(draw(logits, 1.0, top_k=1, generator=g).item() == 1 for _ in range(20))


def test_draws_follow_the_probabilities():
    probs = torch.tensor([[0.1, 0.0, 0.6, 0.3], [0.0, 0.0, 0.0, 1.0]])
    g = torch.Generator().manual_seed(0)
    counts = torch.zeros(2, 4)
    n = 20_000
    for _ in range(n // 1000):
        tokens = inverse_cdf(probs.repeat(1000, 1), torch.rand(2000, 1, generator=g)).view(1000, 2)
        counts += torch.nn.functional.one_hot(tokens, 4).sum(0)
    sigma = (probs * (1 - probs) / n).sqrt()
    assert ((counts / n - probs).abs() <= 5 * sigma + 1e-9).all(), counts / n
    assert counts[:, 1].sum() == 0 and counts[1, :3].sum() == 0  # probability 0: never


def test_draws_never_pick_a_token_of_probability_zero_at_the_edges():
    probs = torch.tensor([[0.0, 0.5, 0.5, 0.0, 0.0], [0.0, 0.3, 0.7, 0.0, 0.0]])
    below_one = torch.nextafter(torch.tensor(1.0), torch.tensor(0.0))
    assert inverse_cdf(probs, torch.zeros(2, 1)).tolist() == [1, 1]
    assert inverse_cdf(probs, torch.full((2, 1), float(below_one))).tolist() == [2, 2]
    assert inverse_cdf(probs, torch.ones(2, 1)).tolist() == [2, 2]  # even if u·total rounds up to the total


def test_window_starts_as_the_reference_table():
    assert len(get_starts(110_240, 8192, 4096)) == 26  # 20 s at level 0
    assert len(get_starts(27_560, 8192, 4096)) == 6  # 20 s at level 1
    assert get_starts(6_890, 6144, 768) == [0, 746]  # 20 s with 1b_lyrics' top prior
    assert len(get_starts(20_671, 8192, 1024)) == 14  # 60 s with 5b's


def _level_run(prior, song, checkpoint=None, seed=0):
    zs = [torch.zeros(2, 0, dtype=torch.long) for _ in range(3)]
    s = Sampling(temp=1.0, generator=torch.Generator().manual_seed(seed), progress=False)
    return sample_level(prior, zs, song, 150, hop_fraction=0.5, sampling=s, checkpoint=checkpoint)


def test_an_interrupted_run_resumes_to_the_same_codes(tmp_path, monkeypatch):
    prior = make_prior("tiny_prior_5b_lyrics").eval()
    song = Song(artist=3, genres=(5,), total_length=int(1.5 * prior.hps.min_duration * 44100),
                lyrics=tuple(range(1, 40)))
    whole = _level_run(prior, song)[2]
    assert whole.shape == (2, 150) and len(get_starts(150, 64, 32)) == 4

    calls = {"n": 0}
    real = sample_mod._window

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(sample_mod, "_window", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _level_run(prior, song, tmp_path / "codes.pt")
    monkeypatch.setattr(sample_mod, "_window", real)
    saved = torch.load(tmp_path / "codes.pt")["zs"][2]
    assert saved.shape[1] == 64 + 32  # two windows were done
    resumed = _level_run(prior, song, tmp_path / "codes.pt", seed=123)[2]  # the saved RNG state wins
    assert torch.equal(resumed, whole)


def test_windowed_upsampling_reads_the_codes_above():
    vq = make_vqvae("tiny_vqvae")
    prior = make_prior("tiny_upsampler", vq).eval()
    song = Song()
    zs = [torch.zeros(1, 0, dtype=torch.long), torch.zeros(1, 0, dtype=torch.long),
          torch.randint(0, prior.bins, (1, 10))]
    s = Sampling(progress=False)
    with pytest.raises(ValueError, match="needs 16 level-2 codes under it, but level 2 has only 10"):
        sample_level(prior, zs, song, 40 * 4 // 4 + 60, sampling=s)
    zs[2] = torch.randint(0, prior.bins, (1, 40))
    out = sample_level(prior, zs, song, 160, sampling=s)
    assert out[1].shape == (1, 160) and int(out[1].max()) < prior.bins


def test_generate_writes_audio(tmp_path):
    torch.manual_seed(0)
    vq = make_vqvae("tiny_vqvae").eval()
    top = make_prior("tiny_prior", vq).eval()
    up = make_prior("tiny_upsampler", vq).eval()
    song = Song(artist=3, genres=(5,), total_length=int(1.5 * top.hps.min_duration * 44100),
                lyrics=tuple(range(1, 30)))
    audio = generate(vq, [None, up, top], song, total_length=128 * 80, n_samples=2, levels=(2, 1),
                     out_dir=tmp_path, sampling=Sampling(progress=False), alignment=(15, 0))
    assert audio.shape == (2, 128 * 80, 1) and audio.abs().max() <= 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "alignment.npz", "alignment_item_0.png", "alignment_item_1.png", "codes.pt", "index.html",
        "level_1_item_0.wav", "level_1_item_1.wav"]  # the page plays the lowest level sampled
    assert "level_1_item_1.wav" in (tmp_path / "index.html").read_text()
    with pytest.warns(UserWarning, match="no lyric alignment: this prior's preset names no alignment layer"):
        generate(vq, [None, None, top], song, total_length=128 * 8, levels=(2,), out_dir=tmp_path / "short",
                 sampling=Sampling(progress=False))
    assert not (tmp_path / "short" / "alignment.npz").exists()


def test_each_level_samples_at_its_own_temperature(tmp_path):
    torch.manual_seed(0)
    vq = make_vqvae("tiny_vqvae").eval()
    top = make_prior("tiny_top_prior", vq).eval()
    up = make_prior("tiny_upsampler", vq).eval()
    song = Song(total_length=44100)

    def run(temp, name):  # -> the codes sampled, per level
        generate(vq, [None, up, top], song, total_length=128 * 40, levels=(2, 1), out_dir=tmp_path / name,
                 sampling=Sampling(temp=temp, generator=torch.Generator().manual_seed(7), progress=False))
        return torch.load(tmp_path / name / "codes.pt")["zs"]

    # the top level hot, level 1 greedy: what sampling each level on its own with those gives
    mixed = run((1.0, 0.0, 1.5), "mixed")
    gen = torch.Generator().manual_seed(7)
    zs = [torch.zeros(1, 0, dtype=torch.long)] * 3
    zs = sample_level(top, zs, song, 40, sampling=Sampling(temp=1.5, generator=gen, progress=False))
    zs = sample_level(up, zs, song, 160, sampling=Sampling(temp=0.0, generator=gen, progress=False))
    assert torch.equal(mixed[2], zs[2]) and torch.equal(mixed[1], zs[1])
    hot = run(1.5, "hot")
    assert torch.equal(hot[2], mixed[2]) and not torch.equal(hot[1], mixed[1])  # level 1 hot: another sample
    with pytest.raises(ValueError, match="temperature must be a finite number"):
        Sampling(temp=(1.0, float("nan"), 1.0))
    with pytest.raises(ValueError, match="no temperature for level 2: 2 given"):
        run((1.0, 1.0), "short")


def test_decode_attention_rejects_bad_input():
    layout = CacheLayout(AttentionPattern(Kind.BLOCK, 4), 16)
    q, k = torch.randn(1, 2, 8), torch.randn(1, 2, 4, 8)
    with pytest.raises(ValueError, match="one-element int64"):
        decode_attention(q, k, k, layout, 3)
    with pytest.raises(ValueError, match="has 4 slots, got 5"):
        decode_attention(q, torch.randn(1, 2, 5, 8), torch.randn(1, 2, 5, 8), layout, torch.tensor([3]))


def test_decoder_needs_eval_mode():
    prior = make_prior("tiny_upsampler")
    with pytest.raises(ValueError, match="eval mode"):
        IncrementalDecoder(prior.prior, 1)


def test_primed_generation_continues_the_encoded_audio(tmp_path):
    torch.manual_seed(0)
    vq = make_vqvae("tiny_vqvae").eval()
    top = make_prior("tiny_prior", vq).eval()
    up = make_prior("tiny_upsampler", vq).eval()
    song = Song(artist=3, genres=(5,), total_length=int(1.5 * top.hps.min_duration * 44100))
    with torch.no_grad():
        prime = vq.encode(0.1 * torch.randn(2, 128 * 40, 1))  # codes of 40 top-level tokens of "audio"
    total = 128 * 100
    audio = generate(vq, [None, up, top], song, total_length=total, n_samples=2, levels=(2, 1), prime=prime,
                     sampling=Sampling(progress=False))
    assert audio.shape == (2, total, 1)
    zs = sample_level(top, list(prime), song, 100, hop_fraction=0.125, sampling=Sampling(progress=False))
    assert torch.equal(zs[2][:, :40], prime[2]) and zs[2].shape == (2, 100)  # the prime is kept, then continued


@pytest.mark.skipif(not (Path(__file__).resolve().parents[2] / "shared" / "reference" / "ids").is_dir(),
                    reason="the released ids files are not in the workspace")
def test_each_level_is_labelled_with_its_own_tables():
    # 1b_lyrics' top prior reads the v3 tables, the released upsamplers the v2 ones (a bag of genre
    # words). Rows as the original's labeller makes them for Ella Fitzgerald / Soul Jazz: v2 artist
    # 1042, genre words soul 6 and jazz 9; v3 artist 1595, genre "soul jazz" 424.
    from jukebox_fast.sample import Song

    ids = Path(__file__).resolve().parents[2] / "shared" / "reference" / "ids"
    with torch.device("meta"):
        top, up = make_prior("prior_1b_lyrics"), make_prior("upsampler_level_1")
    total = 44100 * 120
    song = Song("Ella Fitzgerald", "Soul Jazz", total, "A-tisket, a-tasket", ids=ids)
    y_up = song.labels(up, start=4096, n=1)
    assert y_up[0].tolist() == [total, 4096 * 32, 8192 * 32, 1042, 6, 9, -1, -1, -1]
    y_top = song.labels(top, start=0, n=2)
    lyrics = text.tokenize_lyrics("A-tisket, a-tasket", "v3")
    assert y_top[0, :5].tolist() == [total, 0, 6144 * 128, 1595, 424]
    assert y_top[0, 5:].tolist() == [0] * (384 - len(lyrics)) + lyrics and y_top.shape == (2, 5 + 384)
    # Ids given per level are used as given there, names everywhere else.
    per_level = Song("Ella Fitzgerald", "Soul Jazz", total, ids=ids, level_ids={1: (7, (3,))})
    assert per_level.labels(up, 0, 1)[0, 3:].tolist() == [7, 3, -1, -1, -1, -1]
    assert per_level.labels(top, 0, 1)[0, 3:5].tolist() == [1595, 424]
    with pytest.raises(ValueError, match="artist names need the released id lists"):
        Song("Ella Fitzgerald", "Soul Jazz", total).labels(up, 0, 1)


def test_int8_weights_keep_a_trained_priors_loss_within_one_percent(tmp_path):
    """Weight-only int8 (load_prior(..., weights="int8")): a tiny prior trained on codes with
    structure loses at most 1 % in bits per token, teacher-forced; sampling runs the C++ step on
    the int8 matrices and the prefill dequantises them one layer at a time."""
    from jukebox_fast.checkpoint import load_prior, save_prior

    torch.manual_seed(0)
    vq = make_vqvae("tiny_vqvae")
    prior = make_prior(hparams.get("tiny_top_prior", fp16_params=False), vq).train()  # against fp32 weights
    n_ctx, bins = prior.hps.n_ctx, prior.bins
    g = torch.Generator().manual_seed(1)

    def batch(n):  # a walk with steps of 3 or 5: learnable, not trivial
        steps = torch.where(torch.rand(n, n_ctx, generator=g) < 0.5, 3, 5)
        return (torch.randint(0, bins, (n, 1), generator=g) + steps.cumsum(1)) % bins

    y = torch.tensor([[44100 * 120, 0, 44100 * 10, 0, 0, -1, -1, -1, -1]] * 8)[:, : prior.y_emb.n_labels]
    opt = torch.optim.AdamW(prior.parameters(), lr=3e-3)
    for _ in range(150):
        loss, _ = prior([batch(8)], y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    save_prior(prior.eval(), tmp_path / "p.pt")
    full, int8 = (load_prior(tmp_path / "p.pt", weights=w) for w in ("stored", "int8"))
    z = batch(8)
    with torch.no_grad():
        a, b = full([z], y)[0].item(), int8([z], y)[0].item()
    assert a < 0.6 * math.log2(bins)  # it learnt the walk
    assert b <= 1.01 * a, (a, b)
    print(f"teacher-forced loss: fp32 {a:.4f}, int8 {b:.4f} bits per token ({100 * (b / a - 1):+.2f} %)")
    s = Sampling(progress=False, generator=torch.Generator().manual_seed(2))
    codes = sample_window(int8, z[:2, :8], 24, y=y[:2], sampling=s)
    assert codes.shape == (2, 24) and torch.equal(codes[:, :8], z[:2, :8])
