"""Representations (jukebox_fast.embed): against jukemirlib's step-by-step method on a tiny
5b-structured prior, the conditioning row of the original labeller, batching, and bad input."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from jukebox_fast import hparams, make_prior, make_vqvae
from jukebox_fast.embed import conditioning, extract, extract_reference, resample_frames

IDS = Path(__file__).resolve().parents[2] / "shared" / "reference" / "ids"
LAYERS = (1, 2, 3, 4)  # every block of tiny_top_prior (5b's structure: block and column layers)


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    vq = make_vqvae(hparams.get("tiny_vqvae")).eval()
    vq.init_codebooks(0.3 * torch.randn(1, 44032, 1))
    prior = make_prior("tiny_top_prior", vq).eval()
    return vq, prior


def clip(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return 0.4 * torch.randn(n, generator=g)


def close(a, b):
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("n", [44100, 9000, 3000, 300, 128])  # past n_ctx, under it, one code
def test_every_layer_of_one_clip_is_the_step_by_step_computation(models, n):
    vq, prior = models
    audio = clip(n, n)
    ref = extract_reference(vq, prior, audio, LAYERS)
    out = extract(vq, prior, audio, layers=LAYERS)
    assert sorted(out) == list(LAYERS)
    for layer in LAYERS:
        assert out[layer].shape == (min(n // 128, 64), 32) and out[layer].dtype == torch.float32
        close(out[layer], ref[layer])
    pooled = extract(vq, prior, audio, layers=LAYERS, meanpool=True)
    for layer in LAYERS:
        close(pooled[layer], ref[layer].mean(dim=0))


def test_unsorted_layers_all_come_back_and_only_the_blocks_needed_run(models, monkeypatch):
    vq, prior = models
    audio = clip(5000, 1)
    calls = []
    for i, block in enumerate(prior.prior.transformer._attn_mods, start=1):
        monkeypatch.setattr(block, "forward", lambda *a, _f=block.forward, _i=i, **k: calls.append(_i) or _f(*a, **k))
    out = extract(vq, prior, audio, layers=[3, 1, 2, 3])  # jukemirlib stops at the last one listed
    assert sorted(out) == [1, 2, 3] and calls == [1, 2, 3]


def test_a_batch_and_a_list_of_mixed_lengths_give_what_each_clip_gives_alone(models):
    vq, prior = models
    batch = torch.stack([clip(6000, 2), clip(6000, 3), clip(6000, 4)])  # [B, T]
    out = extract(vq, prior, batch, layers=(2, 4), batch_size=2)
    pooled = extract(vq, prior, batch.numpy(), layers=(2, 4), meanpool=True)
    for layer in (2, 4):
        assert out[layer].shape == (3, 46, 32) and pooled[layer].shape == (3, 32)
        for i in range(3):
            alone = extract(vq, prior, batch[i], layers=(layer,))[layer]
            close(out[layer][i], alone)
            close(pooled[layer][i], alone.mean(dim=0))  # per clip, never over the batch
    lengths = [9000, 700, 3000, 128, 5000]
    clips = [clip(n, 10 + n) for n in lengths]
    listed = extract(vq, prior, clips, layers=LAYERS, batch_size=3)
    assert isinstance(listed, list) and len(listed) == len(lengths)
    for c, got in zip(clips, listed):
        alone = extract(vq, prior, c, layers=LAYERS)
        for layer in LAYERS:
            close(got[layer], alone[layer])


def test_the_callers_array_is_not_changed_and_audio_is_peak_normalised(models):
    vq, prior = models
    a = clip(4000, 5).numpy()
    before = a.copy()
    loud = extract(vq, prior, a, layers=(2,))
    assert np.array_equal(a, before)
    quiet = extract(vq, prior, 0.1 * a, layers=(2,))  # the same clip, quieter: the same features
    close(loud[2], quiet[2])


def test_the_conditioning_row_is_the_original_labellers_unknown_62_s(models):
    _, prior = models
    total = int(62 * 44100) // 128 * 128  # 2,734,080
    # get_y: [total_length, offset, sample_length (n_ctx · raw_to_tokens), artist, genre slots]
    assert conditioning(prior)[0].tolist() == [2_734_080, 0, 64 * 128, 0, 0, -1, -1, -1, -1] and total == 2_734_080
    if IDS.is_dir():  # the same row from the names, through the released v2 tables
        from jukebox_fast.sample import Song

        assert torch.equal(Song("unknown", "unknown", total, ids=IDS).labels(prior, 0, 1), conditioning(prior))


def test_frames_are_resampled_as_scipy_resamples_them():
    torch.manual_seed(0)
    x = torch.randn(100, 3, dtype=torch.float64)
    for n_in, target in ((100, 30.0), (100, 51.0), (99, 30.0), (37, 100.0), (38, 100.0)):
        y = resample_frames(x[:n_in], 344.53125, target)
        assert y.shape == (int(np.ceil(n_in * target / 344.53125)), 3)
        try:
            from scipy.signal import resample
        except ImportError:  # the same spectrum by hand: a tone stays the tone
            continue
        np.testing.assert_allclose(y.numpy(), resample(x[:n_in].numpy(), y.shape[0], axis=0), rtol=1e-10, atol=1e-12)
    # Without scipy, check the defining property: a band-limited signal is sampled exactly anew.
    t_in, t_out = torch.arange(64, dtype=torch.float64) / 64, torch.arange(32, dtype=torch.float64) / 32
    tone = torch.cos(2 * torch.pi * 3 * t_in).unsqueeze(1)
    torch.testing.assert_close(resample_frames(tone, 64.0, 32.0)[:, 0], torch.cos(2 * torch.pi * 3 * t_out))
    up = resample_frames(tone, 64.0, 128.0)[:, 0]
    torch.testing.assert_close(up, torch.cos(2 * torch.pi * 3 * torch.arange(128).double() / 128))


def test_downsampled_and_pooled_shapes(models):
    vq, prior = models
    out = extract(vq, prior, clip(9000, 6), layers=(4,), downsample_target_rate=30.0)
    assert out[4].shape == (int(np.ceil(64 * 30 / (44100 / 128))), 32)
    ref = extract(vq, prior, clip(9000, 6), layers=(4,))[4]
    close(out[4], resample_frames(ref, 44100 / 128, 30.0))


@pytest.mark.parametrize("kwargs, message", [
    (dict(layers=(0,)), r"layers are numbered 1..4"),
    (dict(layers=(5,)), r"layers are numbered 1..4 \(the blocks this prior holds\), got \[5\]"),
    (dict(audio=torch.zeros(0)), "a clip holds no samples"),
    (dict(audio=torch.zeros(100)), "clip 0 has 100 samples; at least 128"),
    (dict(audio=[]), "audio is an empty list"),
    (dict(audio=torch.zeros(2, 3, 4)), r"got shape \(2, 3, 4\)"),
    (dict(audio=torch.zeros(500, dtype=torch.int16)), "audio must be float samples"),
    (dict(audio=torch.full((500,), float("nan"))), "a clip holds 500 NaN or inf samples"),
    (dict(batch_size=0), "batch_size must be an integer >= 1"),
    (dict(downsample_target_rate=-3.0), "downsample_target_rate must be a finite rate > 0 Hz"),
])
def test_bad_input_is_a_clear_error(models, kwargs, message):
    vq, prior = models
    args = dict(audio=clip(1000, 7), layers=(1,))
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        extract(vq, prior, **args)


@pytest.mark.parametrize("preset, message", [("tiny_prior", "conditioned on lyrics"),
                                             ("tiny_upsampler", "this is the level-1 upsampler")])
def test_the_wrong_prior_is_refused(models, preset, message):
    vq, _ = models
    with pytest.raises(ValueError, match=message):
        extract(vq, make_prior(preset, vq).eval(), clip(1000, 8), layers=(1,))


def test_a_prior_loaded_with_its_first_blocks_gives_the_same_states(models, tmp_path):
    from jukebox_fast import load_prior, save_prior

    vq, prior = models
    save_prior(prior, tmp_path / "prior_level_2.pth.tar")
    half = load_prior(tmp_path / "prior_level_2.pth.tar", layers=2)
    assert len(half.prior.transformer._attn_mods) == 2
    assert sum(p.numel() for p in half.parameters()) < sum(p.numel() for p in prior.parameters())
    audio = clip(7000, 9)
    full = extract(vq, prior, audio, layers=(1, 2))
    part = extract(vq, half, audio, layers=(2, 1))
    for layer in (1, 2):
        assert torch.equal(full[layer], part[layer])
    with pytest.raises(ValueError, match=r"layers are numbered 1..2 .*got \[3\]"):
        extract(vq, half, audio, layers=(3,))
    with pytest.raises(ValueError, match="holds only its first 2 of 4 blocks"):
        half.get_logits(torch.zeros(1, 64, dtype=torch.long), conditioning(half))
    with pytest.raises(ValueError, match=r"layers must be an integer in 1..4"):
        load_prior(tmp_path / "prior_level_2.pth.tar", layers=9)


def test_the_jukemirlib_facade_keeps_its_names_and_returns(models, tmp_path):
    import inspect

    pytest.importorskip("soundfile", reason="reading audio files needs soundfile")
    import jukebox_fast.jukemir as jukemirlib
    from jukebox_fast import save_prior, save_vqvae
    from jukebox_fast.audio import write_wav

    vq, prior = models
    names = set(inspect.signature(jukemirlib.extract).parameters)
    assert {"audio", "fpath", "meanpool", "layers", "offset", "duration", "downsample_target_rate",
            "downsample_method", "fp16", "fp16_out", "force_empty_cache"} <= names
    assert list(inspect.signature(jukemirlib.load_audio).parameters) == ["fpath", "offset", "duration"]
    with pytest.raises(FileNotFoundError, match="downloads nothing"):
        jukemirlib.setup_models(tmp_path, verbose=False)
    save_vqvae(vq, tmp_path / "vqvae.pth.tar")
    save_prior(prior, tmp_path / "prior_level_2.pth.tar")
    jukemirlib.setup_models(tmp_path, verbose=False, preset=None, max_layer=3)
    song = write_wav(tmp_path / "song.wav", 0.5 * clip(20000, 11).clamp(-1, 1).numpy())
    audio = jukemirlib.load_audio(song)
    assert audio.dtype == np.float32 and audio.ndim == 1 and abs(np.abs(audio).max() - 1.0) < 1e-6
    assert len(jukemirlib.load_audio(song, offset=0.1, duration=0.2)) == 8820
    reps = jukemirlib.extract(audio, layers=[3, 1])
    assert sorted(reps) == [1, 3] and all(isinstance(r, np.ndarray) and r.dtype == np.float32 for r in reps.values())
    assert reps[3].shape == (64, 32)  # n_ctx tokens of the 156 the clip has
    np.testing.assert_allclose(reps[3], extract_reference(vq, prior, torch.from_numpy(audio), (3,))[3].numpy(),
                               rtol=1e-5, atol=1e-5)
    pooled = jukemirlib.extract(fpath=song, layers=[2], meanpool=True, fp16_out=True)
    assert pooled[2].shape == (32,) and pooled[2].dtype == np.float16
    half = jukemirlib.extract(audio, layers=[3], fp16=True)[3]  # bf16 blocks: close, not equal
    assert np.abs(half - reps[3]).max() < 0.05 * np.abs(reps[3]).max()
    with pytest.raises(ValueError, match="pass exactly one of audio and fpath"):
        jukemirlib.extract(audio, fpath=song)


@pytest.fixture
def folder_and_models(models, tmp_path):
    pytest.importorskip("soundfile", reason="reading audio files needs soundfile")
    from jukebox_fast import save_prior, save_vqvae
    from jukebox_fast.audio import write_wav

    vq, prior = models
    save_vqvae(vq, tmp_path / "models" / "vqvae.pth.tar")
    save_prior(prior, tmp_path / "models" / "prior_level_2.pth.tar")
    songs = tmp_path / "songs"
    for i, n in enumerate((9000, 3000, 5000, 700)):
        write_wav(songs / ("sub" if i % 2 else "") / f"song_{i}.wav", 0.5 * clip(n, 20 + i).clamp(-1, 1).numpy())
    (songs / "song_bad.wav").write_bytes(b"RIFF but no audio")  # sorts between the good ones
    return songs, tmp_path / "models"


def test_embed_command_writes_one_npy_per_file_skips_a_bad_one_and_resumes(folder_and_models, tmp_path, capsys,
                                                                           monkeypatch):
    import json

    import jukebox_fast.embed_files as embed_files
    from jukebox_fast.cli import main

    songs, models_dir = folder_and_models
    out = tmp_path / "features"
    argv = ["embed", str(songs), "--checkpoints", str(models_dir), "--layers", "3", "1", "--out", str(out),
            "--batch-size", "2", "--quiet"]
    real = embed_files.extract
    calls = {"n": 0}

    def interrupted(*args, **kwargs):  # Ctrl-C during the second batch
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(embed_files, "extract", interrupted)
    assert main(argv) == 130
    assert "interrupted; the files finished so far are in" in capsys.readouterr().err
    first = sorted(p.relative_to(out) for p in out.rglob("*.npy"))
    assert len(first) == 2 and not list(out.rglob("*.tmp"))  # the first batch, whole; nothing half-written
    stamps = {p: (out / p).stat().st_mtime_ns for p in first}
    monkeypatch.setattr(embed_files, "extract", real)
    capsys.readouterr()
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "embedded 2 file(s)" in captured.out and "(2 done before, 1 unreadable)" in captured.out
    assert "skipped" in captured.err and "song_bad.wav" in captured.err
    assert all((out / p).stat().st_mtime_ns == t for p, t in stamps.items())  # not redone
    done = sorted(str(p.relative_to(out)) for p in out.rglob("*.npy"))
    assert done == ["song_0.npy", "song_2.npy", "sub/song_1.npy", "sub/song_3.npy"]
    vq, prior = models_from(models_dir)
    for name, n in (("song_0", 9000), ("sub/song_1", 3000), ("song_2", 5000), ("sub/song_3", 700)):
        array = np.load(out / f"{name}.npy")
        src = songs / f"{name}.wav"
        from jukebox_fast.audio import read_audio

        ref = extract(vq, prior, read_audio(src, 44100, peak=1.0), layers=(1, 3))
        assert array.shape == (2, min(n // 128, 64), 32) and array.dtype == np.float32
        np.testing.assert_allclose(array, torch.stack([ref[1], ref[3]]).numpy(), rtol=1e-5, atol=1e-5)
    index = [json.loads(line) for line in (out / "index-0.jsonl").read_text().splitlines()]
    assert sorted(r["npy"] for r in index) == done
    assert "song_bad.wav" in (out / "failed-0.log").read_text()
    assert json.loads((out / "settings.json").read_text())["layers"] == [1, 3]
    # Other settings into the same folder: refused, naming them.
    assert main(argv[:-1] + ["--meanpool", "--quiet"]) == 2
    assert "holds features made with other settings (meanpool: False -> True)" in capsys.readouterr().err


def models_from(folder):
    from jukebox_fast import load_prior, load_vqvae

    return load_vqvae(folder / "vqvae.pth.tar"), load_prior(folder / "prior_level_2.pth.tar")


def test_embed_splits_files_across_ranks(folder_and_models, tmp_path, monkeypatch, capsys):
    from jukebox_fast.cli import main

    songs, models_dir = folder_and_models
    out = tmp_path / "f"
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        assert main(["embed", str(songs), "--checkpoints", str(models_dir), "--layers", "2", "--meanpool",
                     "--out", str(out), "--quiet"]) == 0
    lines = {rank: (out / f"index-{rank}.jsonl").read_text().splitlines() for rank in (0, 1)}
    assert len(lines[0]) + len(lines[1]) == 4 and lines[0] and lines[1]
    assert all(np.load(p).shape == (1, 32) for p in out.rglob("*.npy"))


@pytest.mark.parametrize("extra, message", [
    (["--layers", "0"], "--layers are numbered from 1"),
    (["--layers", "9"], r"layers must be an integer in 1..4"),
    (["--batch-size", "0"], "--batch-size must be >= 1"),
    (["--downsample-rate", "-1"], "--downsample-rate must be a finite number > 0"),
])
def test_embed_bad_arguments_are_one_line(folder_and_models, tmp_path, capsys, extra, message):
    from jukebox_fast.cli import main

    songs, models_dir = folder_and_models
    assert main(["embed", str(songs), "--checkpoints", str(models_dir), "--out", str(tmp_path / "o"), *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
