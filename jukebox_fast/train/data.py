"""Training data: every audio file under a folder, and random windows of them."""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch

from ..audio import AUDIO_SUFFIXES, AudioError, read_audio

__all__ = ["AudioFolder", "ClipCodes", "BAD_FILE_CHOICES"]

BAD_FILE_CHOICES = ("skip", "stop")


class AudioFolder:
    """The audio files under ``folder`` (recursively), read once: mono, ``sr`` Hz, peak-normalised.

    Windows are drawn uniformly over all positions of all files at least one window long, so a
    long file is sampled in proportion to its length, as the original's dataset does.

    A file that cannot be used (unreadable, a broken link, NaN or inf samples, an absurd header,
    or shorter than the training window, see :meth:`drop_shorter`) is skipped with a warning
    naming it when ``bad_files`` is ``"skip"`` (``skipped`` lists them with the reason); with
    ``"stop"`` it raises :class:`AudioError` naming it.
    """

    def __init__(self, folder: str | os.PathLike, sr: int = 44100, bad_files: str = "skip"):
        folder = Path(folder)
        if bad_files not in BAD_FILE_CHOICES:
            raise ValueError(f"bad_files must be one of {BAD_FILE_CHOICES}, got {bad_files!r}")
        if not folder.is_dir():
            raise FileNotFoundError(f"training data folder not found: {folder}")
        found = sorted(p for p in folder.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES)
        if not found:
            raise AudioError(f"no audio files under {folder} (looked for {', '.join(AUDIO_SUFFIXES)})")
        self.folder, self.sr, self.bad_files = folder, sr, bad_files
        self.files, self.clips, self.skipped = [], [], []
        for path in found:
            try:
                clip = torch.from_numpy(read_audio(path, sr))
            except (AudioError, OSError) as e:  # OSError: a broken link, a file that went away
                self._refuse(str(e))
                continue
            self.files.append(path)
            self.clips.append(clip)
        if not self.files:
            raise AudioError(f"no usable audio file under {folder}: every one was skipped (see the warnings)")

    def _refuse(self, why: str) -> None:
        if self.bad_files == "stop":
            raise AudioError(f"{why} (pass bad_files='skip', or --bad-files skip, to train without it)")
        self.skipped.append(why)
        warnings.warn(f"skipping {why}", stacklevel=3)

    def drop_shorter(self, length: int) -> None:
        """Leave out the files shorter than one training window of ``length`` samples (or stop,
        per ``bad_files``): a window is never padded, so they could not be drawn anyway."""
        keep = []
        for i, (path, clip) in enumerate(zip(self.files, self.clips)):
            if clip.shape[0] >= length:
                keep.append(i)
            else:
                self._refuse(f"{path}: {clip.shape[0]} samples ({clip.shape[0] / self.sr:.3f} s), shorter than one "
                             f"training window of {length} samples ({length / self.sr:.3f} s)")
        if not keep:
            longest = max(c.shape[0] for c in self.clips) / self.sr
            raise AudioError(f"every file under {self.folder} is shorter than one training window "
                             f"({length / self.sr:.2f} s; the longest is {longest:.2f} s)")
        self.files = [self.files[i] for i in keep]
        self.clips = [self.clips[i] for i in keep]

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


class ClipCodes:
    """Every clip of an :class:`AudioFolder` encoded once, and random windows of its codes.

    A prior trained on windows of audio encodes each batch (the original's way); on a CPU that
    encoding is about half of a small prior's step. Here each clip is encoded whole, once, at
    levels ``start_level`` to ``end_level`` - 1, and a window is a slice of those codes. Windows
    start on a code boundary of the coarsest level (so an upsampler's window and its level-above
    window cover the same audio), and codes near a window's edge are the clip's, not those of
    audio cut at the edge. The codes are far smaller than the audio the folder already holds.
    """

    def __init__(self, folder: AudioFolder, vqvae, start_level: int, end_level: int, device=None,
                 chunk: int = 1 << 20):
        hops = vqvae.hps.hop_lengths
        self.hops = [hops[level] for level in range(start_level, end_level)]
        self.step = self.hops[-1]  # a window starts on one of these, in samples
        self.codes, self.lengths = [], []
        chunk = max(chunk // self.step, 1) * self.step  # whole coarsest codes per encoded piece
        for clip in folder.clips:
            n = clip.shape[0] // self.step * self.step
            pieces = []
            with torch.no_grad():  # pieces bound the encoder's activations for long files
                for a in range(0, n, chunk):
                    x = clip[a : min(a + chunk, n)].view(1, -1, 1).to(device)
                    pieces.append(vqvae.encode(x, start_level=start_level, end_level=end_level, check_finite=False))
            self.codes.append([torch.cat([p[i] for p in pieces], dim=1)[0] for i in range(len(self.hops))])  # [T_l]
            self.lengths.append(clip.shape[0])

    def windows(self, n_ctx: int, batch: int, generator: torch.Generator):
        """``batch`` random windows of ``n_ctx`` codes of the first level (and the matching codes of
        each level above): (codes, one [batch, n_ctx · hop_first / hop_l] per level, offsets
        [batch] and file lengths [batch] in samples)."""
        span = n_ctx * self.hops[0]  # samples a window covers
        usable = [(i, (c[0].shape[0] * self.hops[0] - span) // self.step + 1) for i, c in enumerate(self.codes)]
        usable = [(i, k) for i, k in usable if k > 0]
        if not usable:
            raise AudioError(f"every file is shorter than one training window of {span} samples")
        counts = torch.tensor([k for _, k in usable], dtype=torch.float64)
        picks = torch.multinomial(counts, batch, replacement=True, generator=generator)
        rows, offsets, totals = [], [], []
        for p in picks.tolist():
            i, k = usable[p]
            start = int(torch.randint(0, k, (1,), generator=generator)) * self.step  # samples
            rows.append([z[start // hop : (start + span) // hop] for z, hop in zip(self.codes[i], self.hops)])
            offsets.append(start)
            totals.append(self.lengths[i])
        zs = [torch.stack([r[j] for r in rows]) for j in range(len(self.hops))]  # per level [batch, T_l]
        return zs, torch.tensor(offsets), torch.tensor(totals)
