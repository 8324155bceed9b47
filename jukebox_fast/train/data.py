"""Training data: every audio file under a folder, and random windows of them."""
from __future__ import annotations

import os
from pathlib import Path

import torch

from ..audio import AUDIO_SUFFIXES, AudioError, read_audio

__all__ = ["AudioFolder"]


class AudioFolder:
    """The audio files under ``folder`` (recursively), read once: mono, ``sr`` Hz, peak-normalised.

    Windows are drawn uniformly over all positions of all files at least one window long, so a
    long file is sampled in proportion to its length, as the original's dataset does.
    """

    def __init__(self, folder: str | os.PathLike, sr: int = 44100):
        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"training data folder not found: {folder}")
        self.files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES)
        if not self.files:
            raise AudioError(f"no audio files under {folder} (looked for {', '.join(AUDIO_SUFFIXES)})")
        self.sr = sr
        self.clips = [torch.from_numpy(read_audio(f, sr)) for f in self.files]

    def windows(self, length: int, batch: int, generator: torch.Generator):
        """``batch`` random windows: (audio [batch, length, 1], offsets [batch], file lengths [batch])
        with offsets and lengths in samples (the timing conditioning of a prior)."""
        usable = [(i, c.shape[0] - length + 1) for i, c in enumerate(self.clips) if c.shape[0] >= length]
        if not usable:
            longest = max(c.shape[0] for c in self.clips) / self.sr
            raise AudioError(f"every file is shorter than one training window ({length / self.sr:.2f} s; "
                             f"the longest is {longest:.2f} s)")
        counts = torch.tensor([n for _, n in usable], dtype=torch.float64)
        picks = torch.multinomial(counts, batch, replacement=True, generator=generator)
        audio, offsets, totals = [], [], []
        for p in picks.tolist():
            i, n = usable[p]
            start = int(torch.randint(0, n, (1,), generator=generator))
            audio.append(self.clips[i][start : start + length])
            offsets.append(start)
            totals.append(self.clips[i].shape[0])
        return torch.stack(audio).unsqueeze(-1), torch.tensor(offsets), torch.tensor(totals)  # [B, L, 1], [B], [B]
