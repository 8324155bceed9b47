"""Where a lyrics prior's music attends in its lyrics: the original's ``get_alignment``.

The top prior of a lyrics model reads the lyrics through attention: 5b_lyrics through
encoder-decoder layers over a lyric encoder's states, 1b_lyrics through "prime" self-attention
layers over the lyric tokens that open its sequence. One head of one such layer learned to follow
the singing (``alignment_layer``, ``alignment_head``: 68, 2 in 5b_lyrics; 63, 0 in 1b_lyrics).
:func:`lyric_alignment` reads that head over a whole sample, window by window, as the original
does, giving for each top-level code how much it attends to each character of the song's lyrics.

:func:`save` / :func:`load` keep the alignments with what a page needs to show them (the lyric
tokens and their vocabulary, the labels, the top level's hop) in ``alignment.npz``.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .conditioning import Song
from .files import atomic_write

__all__ = ["lyric_alignment", "alignment_head_of", "save", "load", "FILE"]

FILE = "alignment.npz"


def alignment_head_of(prior, layer: int | None = None, head: int | None = None) -> tuple[int, int]:
    """(layer, head) to read: those given, else the preset's; refused where neither says."""
    layer = prior.hps.alignment_layer if layer is None else layer
    head = prior.hps.alignment_head if head is None else head
    if layer is None or head is None:
        raise ValueError("this prior's hyper-parameters name no alignment layer and head (only the released "
                         "lyrics models do): pass layer= and head= (a layer that sees the lyrics)")
    return int(layer), int(head)


@torch.no_grad()
def lyric_alignment(prior, codes: torch.Tensor, song: Song, *, hop_fraction: float = 0.125,
                    layer: int | None = None, head: int | None = None) -> list[np.ndarray]:
    """For top-level codes [N, T] sampled for ``song``: one float32 array per sample, [T, number of
    lyric tokens of the whole song], row t = how code t attends to each character.

    As the original's ``get_alignment``: codes shorter than ``n_ctx`` are padded with zeros to one
    window; windows of ``n_ctx`` start every ``hop_fraction · n_ctx`` codes (the last flush with
    the end); each runs the teacher-forced forward of the prior on its codes with its own lyric
    window, and the head's weights are placed at the lyric characters that window holds; later
    windows are written first so earlier ones win where they overlap; the padding is removed.
    Runs in fp32, one sample at a time.
    """
    from .sample import get_starts  # the sampler's windows

    layer, head = alignment_head_of(prior, layer, head)
    if not prior.n_tokens:
        raise ValueError("this prior takes no lyrics: there is nothing to align")
    if not isinstance(codes, torch.Tensor) or codes.dim() != 2 or codes.shape[1] == 0:
        raise ValueError(f"codes must be top-level codes [N, T], T >= 1, got "
                         f"{tuple(codes.shape) if isinstance(codes, torch.Tensor) else type(codes).__name__}")
    n_ctx = prior.hps.n_ctx
    n, total = codes.shape
    padding = max(0, n_ctx - total)
    codes = torch.cat([codes, codes.new_zeros(n, padding)], dim=1) if padding else codes  # [N, >= n_ctx]
    total += padding
    hop = int(hop_fraction * n_ctx)
    if hop < 1:
        raise ValueError(f"hop_fraction {hop_fraction} gives windows {hop} codes apart; it must give at least one")
    full = song.level_labels(prior)[2]
    starts = get_starts(total, n_ctx, hop)
    out = np.zeros((n, total, len(full) + 1), dtype=np.float32)  # the last column takes the padding's -1
    for start in reversed(starts):  # later windows first: earlier ones overwrite where they overlap
        y = song.labels(prior, start, 1, sampling=True)
        indices = song.lyric_indices(prior, start)
        for i in range(n):  # one sample at a time, as the original
            w = prior.lyric_attention(codes[i : i + 1, start : start + n_ctx], y.to(codes.device), layer, head)
            out[i, start : start + n_ctx][:, indices] = w[0].float().cpu().numpy()
    return [a[: total - padding, :-1] for a in out]


def save(folder: str | os.PathLike, alignments: Sequence[np.ndarray], prior, song: Song, hop: int,
         sr: int = 44100) -> Path:
    """Write ``folder/alignment.npz`` atomically: the alignments (``item_<i>``), the lyric tokens
    they index and their vocabulary, the labels as given, the top level's hop in samples."""
    from .text import detokenize

    version = "v3" if prior.hps.labels_v3 else "v2"
    tokens = song.level_labels(prior)[2]
    arrays = {f"item_{i}": np.asarray(a, dtype=np.float32) for i, a in enumerate(alignments)}
    characters = [detokenize([t], version) for t in tokens]  # one per token ("" for padding)
    arrays.update(tokens=np.asarray(tokens, dtype=np.int64), characters=np.asarray(characters, dtype=str),
                  artist=np.asarray(str(song.artist)), genres=np.asarray(str(song.genres)), hop=np.asarray(hop),
                  sr=np.asarray(sr), version=np.asarray(version))
    return atomic_write(Path(folder) / FILE, lambda f: np.savez(f, **arrays))


def load(folder: str | os.PathLike) -> dict:
    """What :func:`save` wrote: ``alignments`` (a list), ``characters`` (one per token), ``artist``,
    ``genres``, ``hop``, ``sr``."""
    with np.load(Path(folder) / FILE, allow_pickle=False) as data:
        items = sorted((k for k in data.files if k.startswith("item_")), key=lambda k: int(k[5:]))
        return {"alignments": [data[k] for k in items], "characters": [str(c) for c in data["characters"]],
                "artist": str(data["artist"]), "genres": str(data["genres"]), "hop": int(data["hop"]),
                "sr": int(data["sr"])}
