"""What a sample is conditioned on, and how each level's prior labels it.

A :class:`Song` holds names or ids (artist, genres), lyrics, the song's length and the sample's
offset; each level turns them into its own label rows with its own tables and version, as the
original labels each level with its own labeller. Sampling, training and representations all
label through here.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import torch

from . import text
from .text import make_labels

__all__ = ["Song"]


@dataclass(frozen=True)
class Song:
    """What a sample is conditioned on, as each level's prior reads it.

    ``artist`` and ``genres`` are names (``"Ella Fitzgerald"``, ``"Soul Jazz"``) or ids; names are
    mapped by each level with its own tables and version, as the original labels each level with
    its own labeller (the released upsamplers use the v2 tables, 1b_lyrics' top prior v3), and
    need ``ids`` (the folder of the released id files, or :class:`~jukebox_fast.text.IdTables`).
    Ids are used as given by every level; ``level_ids`` gives a level its own ids,
    ``{level: (artist_id, genre_ids)}``. ``lyrics`` is text (tokenised with each level's
    vocabulary) or tokens. ``total_length`` is the song's length in samples at 44.1 kHz (0: the
    prior's window), ``offset`` where the sample starts.
    """

    artist: str | int = 0
    genres: str | int | Sequence[int] = ()
    total_length: int = 0
    lyrics: str | Sequence[int] = ()
    offset: int = 0
    ids: str | os.PathLike | text.IdTables | None = None
    level_ids: Mapping[int, tuple[int, Sequence[int]]] = field(default_factory=dict)

    def __post_init__(self):
        if self.ids is not None and not isinstance(self.ids, text.IdTables):
            object.__setattr__(self, "ids", text.IdTables(self.ids))

    def level_labels(self, prior) -> tuple[int, list[int], list[int]]:
        """(artist id, genre ids padded with −1, lyric tokens) for ``prior``'s level."""
        hps = prior.hps
        version = "v3" if hps.labels_v3 else "v2"
        slots = hps.max_bow_genre_size
        if prior.level in self.level_ids:
            artist, genres = self.level_ids[prior.level]
            genres = [genres] if isinstance(genres, int) else list(genres)
        else:
            artist = self.artist if isinstance(self.artist, int) else text.artist_id(
                self.artist, self._table(version, "artist"), version)
            if isinstance(self.genres, str):
                genres = text.genre_ids(self.genres, self._table(version, "genre"), version, slots)
            else:
                genres = [self.genres] if isinstance(self.genres, int) else list(self.genres)
        if len([g for g in genres if g >= 0]) > slots:
            raise ValueError(f"the level-{prior.level} prior takes {slots} genre id(s), got {genres}")
        genres = (genres + [-1] * slots)[:slots]
        lyrics = text.tokenize_lyrics(self.lyrics, version) if isinstance(self.lyrics, str) else list(self.lyrics)
        return int(artist), [int(g) for g in genres], lyrics

    def _table(self, version: str, kind: str) -> text.IdTable:
        if self.ids is None:
            raise ValueError(f"{kind} names need the released id lists: pass ids= (a folder with "
                             f"{version}_{kind}_ids.txt), or give {kind} ids")
        return self.ids.get(version, kind)

    def lyric_indices(self, prior, start: int) -> list[int]:
        """Which characters of the song's lyrics the lyric window of ``prior``'s window at token
        ``start`` holds (−1 for padding), as :meth:`labels` (sampling) chooses them."""
        lyrics = self.level_labels(prior)[2]
        total = self.total_length or prior.sample_length
        return text.lyric_window(lyrics, prior.n_tokens, total, self.offset + start * prior.raw_to_tokens,
                                 prior.sample_length, sampling=True)[1]

    def labels(self, prior, start: int, n: int, *, sampling: bool = True) -> torch.Tensor | None:
        """y rows [n, ...] for the window of ``prior`` that starts at token ``start``. The lyric
        window follows the original sampler's float32 rule, or with ``sampling=False`` its
        training labeller's float64 one (:func:`~jukebox_fast.text.lyric_window`)."""
        if not prior.hps.labels:
            return None
        artist, genres, lyrics = self.level_labels(prior)
        total = self.total_length or prior.sample_length
        return make_labels(prior, artist, genres, total, self.offset + start * prior.raw_to_tokens, lyrics, n,
                           sampling=sampling)
