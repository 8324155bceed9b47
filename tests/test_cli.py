"""The jukebox-fast command: info, the demo (the README's main job at a reduced size), errors."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import soundfile
import torch

from jukebox_fast import load_vqvae
from jukebox_fast.cli import main


def test_info_lists_ops_and_implementations(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "vq_nearest" in out and "torch" in out and "available" in out and "torch " in out


def test_demo_writes_listenable_outputs(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--steps", "2", "--seconds", "1", "--batch", "1", "--quiet"]) == 0
    for name in ("input.wav", "recon_level0.wav", "recon_level1.wav", "recon_level2.wav"):
        audio, sr = soundfile.read(out / name)
        assert sr == 44100 and audio.ndim == 1 and len(audio) == 44032, name  # 1 s, a multiple of 128
        assert 0 < abs(audio).max() <= 1.0
    assert (out / "spectrogram.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = json.loads((out / "report.json").read_text())
    assert report["steps"] == 2 and report["codes"]["level0"]["length"] == 44032 // 8
    codes = torch.load(out / "codes.pt")["codes"]
    model = load_vqvae(out / "vqvae.pth.tar")
    decoded = model.decode(codes, start_level=0)
    stored, _ = soundfile.read(out / "recon_level0.wav")
    # The wav is the decoded audio rounded to 16 bits.
    assert abs(decoded[0, :, 0].detach().numpy().clip(-1, 1) - stored).max() < 1.0 / 2**14
    assert "wrote" in capsys.readouterr().out


def test_bad_arguments_exit_non_zero_with_a_message(capsys):
    with pytest.raises(SystemExit) as e:
        main(["demo", "--steps", "many"])
    assert e.value.code == 2 and "invalid int value" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main([])
    assert e.value.code == 2


def test_runtime_errors_become_one_line_and_exit_2(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["demo", "--out", str(blocker / "sub"), "--steps", "0", "--seconds", "0.1", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("jukebox-fast demo: error:") and err.count("\n") == 1


def test_module_entry_points_run():
    for cmd in ([sys.executable, "-m", "jukebox_fast.info"], [sys.executable, "-m", "jukebox_fast", "info"]):
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        assert "vq_nearest" in out
    exe = shutil.which("jukebox-fast")
    if exe:  # the console script exists once the package is installed
        out = subprocess.run([exe, "--help"], capture_output=True, text=True, check=True).stdout
        assert "demo" in out and "info" in out and "examples:" in out
