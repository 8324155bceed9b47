"""Audio files and pictures: reading any file soundfile reads, wav output, spectrogram PNGs.

Audio arrays are float, mono, shape [T] (or [T, 1]), in [-1, 1].
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Sequence

import numpy as np

__all__ = ["AudioError", "read_audio", "write_wav", "save_spectrogram", "log_spectrogram", "musicality",
           "AUDIO_SUFFIXES"]

# What soundfile (libsndfile) reads; used to pick the audio out of a training folder.
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".oga", ".mp3", ".aif", ".aiff", ".au", ".w64", ".caf", ".opus")


class AudioError(ValueError):
    """An audio file that cannot be used; the message names the file and the reason."""


# The longest audio one file may give, read or resampled: a header that claims a rate of 1 Hz
# would otherwise ask the resampler for tens of GB. An hour is longer than any song.
MAX_SECONDS = 3600.0


def read_audio(path: str | os.PathLike, sr: int = 44100, peak: float | None = 0.95, offset: float = 0.0,
               duration: float | None = None, max_seconds: float = MAX_SECONDS) -> np.ndarray:
    """Read ``path`` as mono float32 [T] at ``sr`` Hz: all of it, or ``duration`` seconds from
    ``offset`` seconds (counted in the file's own rate, before resampling).

    Channels are averaged, the rate converted with soxr (high quality), and with ``peak`` set the
    result is scaled so its largest magnitude is ``peak`` (silence stays silence).
    Raises FileNotFoundError, or :class:`AudioError` for a file soundfile cannot decode, one
    that holds no samples, or one with NaN or infinite samples (float wav/flac can hold them, and
    one of them would turn every code of the file to garbage), or one that would give more than
    ``max_seconds`` at either rate (checked from the header, before anything is allocated).
    """
    import soundfile
    import soxr

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"audio file not found: {path}")
    if not (math.isfinite(offset) and offset >= 0) or (duration is not None and not duration > 0):
        raise ValueError(f"offset must be >= 0 and duration > 0 seconds, got offset={offset}, duration={duration}")
    try:
        with soundfile.SoundFile(path) as f:
            file_sr = f.samplerate
            start = min(int(offset * file_sr), f.frames)
            frames = f.frames - start if duration is None else min(int(duration * file_sr), f.frames - start)  # read
            seconds = frames / file_sr if file_sr > 0 else math.inf
            if seconds > max_seconds:
                raise AudioError(f"{path}: {frames} samples at {file_sr} Hz are {seconds:.0f} s ({frames * sr / max(file_sr, 1):.3g} "
                                 f"samples at {sr} Hz), over the {max_seconds:g} s one file may give (a damaged header?)")
            f.seek(start)
            data = f.read(frames, dtype="float32", always_2d=True)  # [T, channels]
    except (soundfile.LibsndfileError, RuntimeError, TypeError) as e:
        raise AudioError(f"cannot read audio from {path}: {e} (readable: {', '.join(AUDIO_SUFFIXES)})") from None
    if data.shape[0] == 0:
        raise AudioError(f"{path} holds no audio samples")
    bad = ~np.isfinite(data).all(axis=1)
    if bad.any():
        first = int(np.argmax(bad))
        raise AudioError(f"{path} holds {int(bad.sum())} non-finite (NaN or inf) sample(s), the first at "
                         f"{first / file_sr:.3f} s (sample {first}); audio must be finite")
    audio = data.mean(axis=1)
    if file_sr != sr:
        audio = soxr.resample(audio, file_sr, sr, quality="HQ").astype(np.float32)
    top = float(np.abs(audio).max())
    if peak is not None and top > 0:
        audio = audio * (peak / top)
    return np.ascontiguousarray(audio, dtype=np.float32)


def _mono(audio) -> np.ndarray:
    a = np.asarray(audio.detach().cpu() if hasattr(audio, "detach") else audio, dtype=np.float32)
    if a.ndim == 2 and a.shape[1] == 1:
        a = a[:, 0]
    if a.ndim != 1:
        raise ValueError(f"expected mono audio of shape [T] or [T, 1], got {a.shape}")
    return a


def write_wav(path: str | os.PathLike, audio, sr: int = 44100) -> Path:
    """Write mono audio as 16-bit PCM wav, clipped to [-1, 1] as the original does; whole or not
    at all (:func:`jukebox_fast.files.atomic_write`)."""
    import soundfile

    from .files import atomic_write

    data = np.clip(_mono(audio), -1.0, 1.0)
    return atomic_write(path, lambda f: soundfile.write(f, data, sr, subtype="PCM_16", format="WAV"))


def log_spectrogram(audio, n_fft: int = 2048, hop: int = 256) -> np.ndarray:
    """Magnitude STFT in dB (Hann window), shape [n_fft // 2 + 1, frames]."""
    a = _mono(audio)
    if len(a) < n_fft:
        a = np.pad(a, (0, n_fft - len(a)))
    frames = 1 + (len(a) - n_fft) // hop
    idx = np.arange(n_fft)[None, :] + hop * np.arange(frames)[:, None]  # [frames, n_fft]
    spec = np.abs(np.fft.rfft(a[idx] * np.hanning(n_fft)[None, :], axis=1)).T
    return 20.0 * np.log10(np.maximum(spec, 1e-5))


def _frames(a: np.ndarray, n: int, hop: int) -> np.ndarray:
    if len(a) < n:
        a = np.pad(a, (0, n - len(a)))
    count = 1 + (len(a) - n) // hop
    return a[np.arange(n)[None, :] + hop * np.arange(count)[:, None]]  # [frames, n]


def musicality(audio, sr: int = 44100, frame: int = 2048, hop: int = 512, fmin: float = 50.0,
               fmax: float = 1000.0, threshold: float = 0.6, hold: int = 3) -> dict[str, float]:
    """How much of a clip is pitched sound rather than noise, from its frames (``frame`` samples,
    Hann window, every ``hop``), over the frames not silent (RMS over 1 % of the loudest frame's):

    - ``pitched``: the fraction of frames with a clear pitch: the normalised autocorrelation
      (divided by the window's own, as Boersma 1993 does) peaks above ``threshold`` at a lag of
      a pitch in [fmin, fmax] Hz, past its first zero crossing. A sung or played note is near 1;
      white noise, and noise low-passed under a few kHz, near 0.
    - ``hnr_db``: the harmonic-to-noise ratio of that peak r, 10·log10(r / (1 − r)), the
      median over frames (about +10 dB and up for clear notes, below 0 for noise).
    - ``flatness``: spectral flatness (geometric over arithmetic mean of the power spectrum),
      the median over frames: near 0 for tones, about 0.56 for white noise (near 0 too for noise
      low-passed far under Nyquist: read it with the other two).
    - ``notes``: how many semitones hold at least 2 % of the pitched frames. A decoder that
      repeats one code buzzes at one pitch (pitched, one note); a melody moves between several.
    - ``changes_per_s``: how often the pitch moves to another semitone, per second of audio: a
      change is a semitone held for ``hold`` frames in a row (about 35 ms) after another one was.
      A drone scores near 0 however many notes it wanders through once; the demo's training
      music about 4.4 (eighth notes at 120 bpm over slower organ and bass).

    numpy only; ``audio`` is mono [T] (or [T, 1]) float. Returns floats (NaN where every frame
    is silent)."""
    a = _mono(audio).astype(np.float64)
    x = _frames(a, frame, hop)
    x = x - x.mean(axis=1, keepdims=True)
    rms = np.sqrt((x * x).mean(axis=1))
    keep = rms > 0.01 * max(float(rms.max()), 1e-12)
    out = dict(pitched=float("nan"), hnr_db=float("nan"), flatness=float("nan"), notes=0, changes_per_s=0.0,
               frames=int(keep.sum()))
    if not keep.any():
        return out
    w = np.hanning(frame)
    xw = x[keep] * w
    spec = np.fft.rfft(xw, n=2 * frame, axis=1)  # zero-padded: linear, not circular, lags
    r = np.fft.irfft(np.abs(spec) ** 2, axis=1)[:, :frame]  # [frames, lags]
    rw = np.fft.irfft(np.abs(np.fft.rfft(w, n=2 * frame)) ** 2)[:frame]
    lo, hi = int(np.ceil(sr / fmax)), min(int(sr / fmin), frame // 2)  # lags of fmax..fmin
    norm = r[:, : hi + 1] / np.maximum(r[:, :1], 1e-20) / (rw[: hi + 1] / rw[0])  # [frames, lags]
    # A period is a peak after the autocorrelation first goes negative: low-passed noise decays
    # slowly from lag 0 and would otherwise score high at the shortest lag searched.
    negative = norm < 0
    first = np.where(negative.any(axis=1), negative.argmax(axis=1), hi + 1)  # [frames]
    lags = np.arange(hi + 1)
    searched = (lags[None, :] >= np.maximum(first, lo)[:, None])
    scored = np.where(searched, norm, 0.0)
    peak = np.clip(scored.max(axis=1), 1e-6, 1.0 - 1e-6)  # HNR stays finite
    pitched = peak > threshold
    # Distinct notes: a buzz at one period (a decoder repeating one code) is pitched too, music
    # moves between notes. Semitones (MIDI numbers) held by at least 2 % of the pitched frames.
    period = (scored >= 0.9 * peak[:, None]).argmax(axis=1)  # the shortest lag near the peak: no octave errors
    semis = np.round(69 + 12 * np.log2(sr / np.maximum(period, 1) / 440.0))  # [frames kept]
    midi = semis[pitched]
    values, counts = np.unique(midi, return_counts=True)
    notes = int((counts >= max(1, 0.02 * len(midi))).sum()) if len(midi) else 0
    held = _held_notes(np.where(pitched, semis, np.nan), keep, hold)
    out["changes_per_s"] = float(np.count_nonzero(np.diff(held)) / (len(a) / sr))
    power = np.abs(np.fft.rfft(xw, axis=1)) ** 2 + 1e-20
    flat = np.exp(np.log(power).mean(axis=1)) / power.mean(axis=1)
    out.update(notes=notes, pitched=float(pitched.mean()), hnr_db=float(np.median(10 * np.log10(peak / (1 - peak)))),
               flatness=float(np.median(flat)))
    return out


def _held_notes(semis: np.ndarray, keep: np.ndarray, hold: int) -> np.ndarray:
    """The semitones held for ``hold`` frames in a row, in order (``semis`` per kept frame, NaN where
    unpitched; a silent frame, not kept, ends a run too)."""
    track = np.full(len(keep), np.nan)
    track[keep] = semis  # [all frames]
    edges = np.flatnonzero(np.r_[True, track[1:] != track[:-1]])  # run starts (NaN != NaN: each its own run)
    lengths = np.diff(np.r_[edges, len(track)])
    notes = track[edges]
    return notes[(lengths >= hold) & ~np.isnan(notes)]


def save_spectrogram(path: str | os.PathLike, signals: Sequence, titles: Sequence[str], sr: int = 44100) -> Path:
    """One PNG with a log-magnitude spectrogram panel per signal, stacked, on a shared colour scale."""
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    specs = [log_spectrogram(s) for s in signals]
    top = max(float(s.max()) for s in specs)
    fig, axes = plt.subplots(len(specs), 1, figsize=(10, 2.6 * len(specs)), squeeze=False, layout="constrained")
    for ax, spec, title, sig in zip(axes[:, 0], specs, titles, signals):
        seconds = len(_mono(sig)) / sr
        im = ax.imshow(spec, origin="lower", aspect="auto", cmap="magma", vmin=top - 80, vmax=top,
                       extent=(0, seconds, 0, sr / 2000))
        ax.set_title(title)
        ax.set_ylabel("kHz")
    axes[-1, 0].set_xlabel("seconds")
    fig.colorbar(im, ax=axes[:, 0].tolist(), label="dB")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
