"""Audio reading: formats, channel mixing, resampling, normalising, and clear errors."""
from __future__ import annotations

import numpy as np
import pytest
soundfile = pytest.importorskip("soundfile", reason="reading and writing audio files needs soundfile")

from jukebox_fast.audio import AudioError, read_audio


def test_stereo_flac_at_another_rate_becomes_mono_44k_peak_normalised(tmp_path):
    sr = 22050
    t = np.arange(sr) / sr
    left = 0.2 * np.sin(2 * np.pi * 440 * t)
    stereo = np.stack([left, 0.5 * left], axis=1).astype(np.float32)  # [T, 2]
    soundfile.write(tmp_path / "a.flac", stereo, sr)
    audio = read_audio(tmp_path / "a.flac")
    assert audio.dtype == np.float32 and audio.shape == (44100,)
    assert abs(np.abs(audio).max() - 0.95) < 1e-6
    # Still a 440 Hz tone after resampling: the spectrum peaks there.
    spectrum = np.abs(np.fft.rfft(audio))
    assert abs(np.argmax(spectrum) * 44100 / len(audio) - 440) < 2
    raw = read_audio(tmp_path / "a.flac", sr=sr, peak=None)
    np.testing.assert_allclose(raw, stereo.mean(axis=1), atol=1e-4)  # mono mix, no scaling


@pytest.mark.parametrize("content, error, message", [
    (None, FileNotFoundError, "audio file not found"),
    (b"not audio at all", AudioError, "cannot read audio from"),
])
def test_unusable_files_name_the_file(tmp_path, content, error, message):
    path = tmp_path / "x.wav"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(error, match=message) as e:
        read_audio(path)
    assert "x.wav" in str(e.value)


def test_empty_file(tmp_path):
    soundfile.write(tmp_path / "e.wav", np.zeros((0, 1), np.float32), 44100)
    with pytest.raises(AudioError, match="e.wav holds no audio samples"):
        read_audio(tmp_path / "e.wav")


def test_musicality_separates_notes_from_noise():
    from jukebox_fast.audio import musicality
    from jukebox_fast.demo import synth_clip

    sr, rng = 44100, np.random.default_rng(0)
    t = np.arange(2 * sr) / sr
    noise = rng.standard_normal(2 * sr)
    spectrum = np.fft.rfft(noise)
    spectrum[np.fft.rfftfreq(len(noise), 1 / sr) > 2000] = 0  # the demo's old samples: noise under 2 kHz
    smear = np.fft.irfft(spectrum, len(noise))
    tone, white, low, music = (musicality(a, sr) for a in (np.sin(2 * np.pi * 220 * t), noise, smear,
                                                             synth_clip(4.0, sr)))
    assert tone["pitched"] == 1.0 and tone["hnr_db"] > 30 and tone["flatness"] < 1e-6
    assert white["pitched"] == 0.0 and white["hnr_db"] < 0 and 0.5 < white["flatness"] < 0.6
    assert low["pitched"] < 0.05 and low["hnr_db"] < 0
    assert music["pitched"] > 0.9 and music["hnr_db"] > 10 and music["notes"] >= 5 and tone["notes"] == 1
    quiet = musicality(np.zeros(4096), sr)
    assert quiet["frames"] == 0 and np.isnan(quiet["pitched"]) and quiet["changes_per_s"] == 0


def test_changes_count_the_notes_that_follow_each_other():
    from jukebox_fast.audio import musicality

    sr = 44100
    t = np.arange(sr // 2) / sr

    def melody(freqs, gap=0.0):  # half a second per note, with `gap` s of silence between notes
        quiet = np.zeros(int(gap * sr))
        return np.concatenate([np.r_[np.sin(2 * np.pi * f * t), quiet] for f in freqs])

    walk = melody([220, 247, 277, 294, 330, 294, 277, 247])  # 7 changes in 4 s
    assert musicality(walk, sr)["changes_per_s"] == 7 / 4
    assert musicality(melody([220] * 8), sr)["changes_per_s"] == 0  # one note: no change
    back = melody([220, 330] * 4, gap=0.1)  # silence between the notes does not hide a change
    assert musicality(back, sr)["changes_per_s"] == 7 / len(back) * sr
    trill = np.sin(2 * np.pi * np.where((np.arange(2 * sr) // 256) % 2, 220, 233) * np.arange(2 * sr) / sr)
    assert musicality(trill, sr)["changes_per_s"] < 1  # a pitch flickering frame to frame is no melody
