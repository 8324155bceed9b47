"""Audio files and pictures: wav output and spectrogram PNGs.

Audio arrays are float, mono, shape [T] (or [T, 1]), in [-1, 1].
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

__all__ = ["write_wav", "save_spectrogram", "log_spectrogram"]


def _mono(audio) -> np.ndarray:
    a = np.asarray(audio.detach().cpu() if hasattr(audio, "detach") else audio, dtype=np.float32)
    if a.ndim == 2 and a.shape[1] == 1:
        a = a[:, 0]
    if a.ndim != 1:
        raise ValueError(f"expected mono audio of shape [T] or [T, 1], got {a.shape}")
    return a


def write_wav(path: str | os.PathLike, audio, sr: int = 44100) -> Path:
    """Write mono audio as 16-bit PCM wav, clipped to [-1, 1] as the original does."""
    import soundfile

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(path, np.clip(_mono(audio), -1.0, 1.0), sr, subtype="PCM_16")
    return path


def log_spectrogram(audio, n_fft: int = 2048, hop: int = 256) -> np.ndarray:
    """Magnitude STFT in dB (Hann window), shape [n_fft // 2 + 1, frames]."""
    a = _mono(audio)
    if len(a) < n_fft:
        a = np.pad(a, (0, n_fft - len(a)))
    frames = 1 + (len(a) - n_fft) // hop
    idx = np.arange(n_fft)[None, :] + hop * np.arange(frames)[:, None]  # [frames, n_fft]
    spec = np.abs(np.fft.rfft(a[idx] * np.hanning(n_fft)[None, :], axis=1)).T
    return 20.0 * np.log10(np.maximum(spec, 1e-5))


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
