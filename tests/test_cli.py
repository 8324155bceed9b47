"""The jukebox-fast command: every subcommand on tiny presets, the demo at its CI size, and the
one-line errors for bad input."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
soundfile = pytest.importorskip("soundfile", reason="reading and writing audio files needs soundfile")
import torch

from jukebox_fast.audio import write_wav
from jukebox_fast.cli import main
from jukebox_fast.demo import synth_set


def test_info_lists_ops_and_implementations(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    for op in ("vq_nearest", "sparse_attention", "decode_attention", "decode_layers", "dilated_resblock"):
        assert op in out
    assert "available" in out


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The README's main job at its CI size (--small)."""
    out = tmp_path_factory.mktemp("demo")
    assert main(["demo", "--small", "--out", str(out), "--quiet"]) == 0
    return out


def test_demo_writes_listenable_audio_pictures_and_a_report(demo):
    report = json.loads((demo / "report.json").read_text())
    assert set(report["seconds"]) == {"data", "vqvae", "top_prior", "upsampler", "sample", "cached_vs_recompute"}
    wavs = sorted((demo / "samples").glob("level_1_item_*.wav")) + [demo / "reconstruction.wav"]
    assert len(wavs) == 2
    for path in wavs:
        audio, sr = soundfile.read(path)
        assert sr == 44100 and audio.ndim == 1 and len(audio) > 40000, path
        assert 0 < abs(audio).max() <= 1.0 and audio.std() > 1e-4, path  # not silence
    assert (demo / "spectrogram.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert report["cached_tokens_per_s"] > 0 and report["recompute_tokens_per_s"] > 0
    assert "tokens/s" in (demo / "report.md").read_text()


def test_encode_then_decode(demo, tmp_path, capsys):
    vqvae = str(demo / "vqvae" / "vqvae.pth.tar")
    song = demo / "data" / "song_00.wav"
    codes = tmp_path / "codes.pt"
    assert main(["encode", str(song), "--vqvae", vqvae, "--out", str(codes)]) == 0
    saved = torch.load(codes)
    assert [z.shape[1] for z in saved["codes"]] == [88192 // 8, 88192 // 32, 88192 // 128]
    assert main(["decode", str(codes), "--vqvae", vqvae, "--out", str(tmp_path / "dec"), "--level", "1"]) == 0
    audio, sr = soundfile.read(tmp_path / "dec" / "level_1_item_0.wav")
    assert len(audio) == 88192 and sr == 44100
    assert (tmp_path / "dec" / "level_1.png").exists()


def test_sample_from_trained_checkpoints_and_resume(demo, tmp_path, capsys):
    ckpts = tmp_path / "models"
    ckpts.mkdir()
    shutil.copy(demo / "vqvae" / "vqvae.pth.tar", ckpts)
    shutil.copy(demo / "top_prior" / "prior_level_2.pth.tar", ckpts)
    shutil.copy(demo / "upsampler" / "prior_level_1.pth.tar", ckpts)
    args = ["sample", "--checkpoints", str(ckpts), "--levels", "2,1", "--seconds", "0.5", "--n-samples", "2",
            "--out", str(tmp_path / "s"), "--quiet", "--prime", str(demo / "data" / "song_01.wav"),
            "--prime-seconds", "0.2"]
    assert main(args) == 0
    first = torch.load(tmp_path / "s" / "codes.pt")["zs"]
    assert [z.shape for z in first[1:]] == [(2, 22016 // 32), (2, 22016 // 128)]
    assert main(args) == 0  # everything is sampled already: resumes, changes nothing
    assert all(torch.equal(a, b) for a, b in zip(first, torch.load(tmp_path / "s" / "codes.pt")["zs"]))
    for i in range(2):
        assert soundfile.read(tmp_path / "s" / f"level_1_item_{i}.wav")[0].shape == (22016,)


def test_train_subcommands_resume(tmp_path, capsys):
    synth_set(tmp_path / "songs", 2, 2.0)
    common = ["--steps", "2", "--batch-size", "1", "--checkpoint-every", "1", "--quiet", "--device", "cpu"]
    assert main(["train-vqvae", str(tmp_path / "songs"), "--out", str(tmp_path / "vq"), *common]) == 0
    vq = str(tmp_path / "vq" / "vqvae.pth.tar")
    assert main(["train-prior", str(tmp_path / "songs"), "--vqvae", vq, "--out", str(tmp_path / "up"),
                 "--preset", "tiny_upsampler", *common]) == 0
    more = [a if a != "2" else "3" for a in common]
    assert main(["train-prior", str(tmp_path / "songs"), "--vqvae", vq, "--out", str(tmp_path / "up"),
                 "--preset", "tiny_upsampler", "--resume", *more]) == 0
    assert torch.load(tmp_path / "up" / "checkpoint.pt", weights_only=False)["step"] == 3
    assert "prior_level_1.pth.tar" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["encode", "{tmp}/missing.wav", "--vqvae", "{vq}", "--out", "{tmp}/c.pt"], "audio file not found"),
    (["encode", "{tmp}/bad.wav", "--vqvae", "{vq}", "--out", "{tmp}/c.pt"], "cannot read audio from"),
    (["encode", "{tmp}/empty.wav", "--vqvae", "{vq}", "--out", "{tmp}/c.pt"], "holds no audio samples"),
    (["decode", "{tmp}/bad.wav", "--vqvae", "{vq}", "--out", "{tmp}/o"], "bad.wav"),
    (["encode", "{tmp}/empty.wav", "--vqvae", "{tmp}/nope.pth.tar", "--out", "{tmp}/c.pt"], "nope.pth.tar"),
    (["train-vqvae", "{tmp}/no_songs", "--out", "{tmp}/r", "--quiet"], "training data folder not found"),
    (["sample", "--checkpoints", "{tmp}", "--vqvae", "{vq}", "--out", "{tmp}/s"], "no prior for level 2"),
])
def test_bad_input_is_one_line_and_exit_2(argv, message, demo, tmp_path, capsys):
    (tmp_path / "bad.wav").write_bytes(b"RIFF but not audio")
    write_wav(tmp_path / "empty.wav", torch.zeros(0).numpy())
    vq = str(demo / "vqvae" / "vqvae.pth.tar")
    argv = [a.format(tmp=tmp_path, vq=vq) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"jukebox-fast {argv[0]}: error:") and err.count("\n") == 1, err
    assert message in err


def test_bad_arguments_exit_non_zero_with_a_message(capsys):
    with pytest.raises(SystemExit) as e:
        main(["demo", "--vqvae-steps", "many"])
    assert e.value.code == 2 and "invalid int value" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main([])
    assert e.value.code == 2


def test_bench_runs_a_script_and_rejects_unknown_names(tmp_path, capsys):
    assert main(["bench", "nope", "--out", str(tmp_path)]) == 2
    assert "unknown benchmark 'nope'" in capsys.readouterr().err
    assert main(["bench", "decoder", "--out", str(tmp_path), "--", "--seconds", "0.3", "--runs", "1"]) == 0
    table = (tmp_path / "decoder.md").read_text()
    assert "| vqvae decode, fp32 |" in table and "speed-up" in table


def test_bench_writes_into_a_relative_out_folder_and_runs_on_past_a_failure(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    # vq rejects --seconds and fails; decoder still runs, and its table lands under ./results here.
    code = main(["bench", "vq", "decoder", "--out", "results", "--", "--seconds", "0.3", "--runs", "1"])
    err = capsys.readouterr().err
    assert code == 2 and "benchmark(s) failed: vq" in err
    assert (tmp_path / "results" / "decoder.md").exists() and (tmp_path / "results" / "decoder.json").exists()
    assert not (Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "decoder.md").exists()  # the old bug


def test_module_entry_points_run():
    for cmd in ([sys.executable, "-m", "jukebox_fast.info"], [sys.executable, "-m", "jukebox_fast", "info"]):
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        assert "vq_nearest" in out
    exe = shutil.which("jukebox-fast")
    if exe:  # the console script exists once the package is installed
        out = subprocess.run([exe, "--help"], capture_output=True, text=True, check=True).stdout
        for command in ("demo", "info", "sample", "train-vqvae", "train-prior", "encode", "decode", "bench"):
            assert command in out
