"""Lyrics and labels as the released priors expect them.

- Lyrics: the original's character vocabularies (``v2``: 80 tokens for the 5b models, ``v3``: 79
  for 1b_lyrics), its cleaning (unidecode transliteration, backslash -> newline, characters
  outside the vocabulary dropped), and the choice of the lyric window for a sampling window.
- Artists and genres: id lookup from the ``name;id`` files a user supplies (the released
  ``v2_artist_ids.txt``, ``v2_genre_ids.txt``, ``v3_artist_ids.txt``, ``v3_genre_ids.txt``).
- :func:`make_labels`: the label row ``y`` a prior takes.
"""
from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

__all__ = ["VOCABULARIES", "UNKNOWN", "clean_lyrics", "tokenize_lyrics", "detokenize", "lyric_window", "IdTable",
           "IdTables", "load_ids", "artist_id", "genre_ids", "make_labels"]

_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
# Token t (from 1) is character t-1 of these strings; token 0 is padding / unknown.
VOCABULARIES = {
    "v2": _LETTERS + ".,:;!?-+'\"()[] \t\n",  # 79 characters + padding = n_vocab 80
    "v3": _LETTERS + ".,:;!?-'\"()[] \t\n",  # no '+': 78 characters + padding = n_vocab 79
}


def _vocab(version: str) -> str:
    if version not in VOCABULARIES:
        raise ValueError(f"lyrics vocabulary must be one of {sorted(VOCABULARIES)}, got {version!r}")
    return VOCABULARIES[version]


def clean_lyrics(text: str, version: str = "v3") -> str:
    """Transliterate to ASCII (unidecode), turn backslashes into newlines, drop every character
    outside the vocabulary, as the original does before tokenising."""
    from unidecode import unidecode  # imported here: only lyrics need it

    vocab = set(_vocab(version))
    text = unidecode(text).replace("\\", "\n")
    return "".join(ch for ch in text if ch in vocab)


def tokenize_lyrics(text: str, version: str = "v3") -> list[int]:
    """Cleaned lyrics -> one token per character (1-based; 0 is padding)."""
    index = {ch: i + 1 for i, ch in enumerate(_vocab(version))}
    return [index[ch] for ch in clean_lyrics(text, version)]


def detokenize(tokens, version: str = "v3") -> str:
    """Tokens -> text (padding decodes to nothing)."""
    vocab = _vocab(version)
    return "".join(vocab[t - 1] for t in (int(t) for t in tokens) if t > 0)


def lyric_window(full_tokens: list[int], n_tokens: int, total_length: int, offset: int,
                 duration: int, *, sampling: bool = False) -> tuple[list[int], list[int]]:
    """The ``n_tokens`` lyric tokens for a window of ``duration`` samples at ``offset`` in a song
    of ``total_length`` samples, and their character indices (−1 for padding).

    Lyrics are assumed spread linearly over the song: the window is centred on the character
    under the window's middle, clamped to the text; short lyrics are left-padded with zeros.

    The middle is ``len · (offset + duration / 2) / total_length``, truncated. The original's
    training labels compute it in float64 (Python numbers); its sampler, from the label row's
    0-dim int64 tensors, in float32, one rounding per operation. ``sampling=True`` follows the
    sampler, so a sampled window gets the lyrics the original's would (about 1 triple in 13,000
    rounds the other way: a window one character over).
    """
    if not 0 <= offset < total_length:
        raise ValueError(f"offset must lie in [0, total_length={total_length}), got {offset}")
    f = len(full_tokens)
    if f < n_tokens:
        pad = n_tokens - f
        return [0] * pad + list(full_tokens), [-1] * pad + list(range(f))
    if sampling:
        f32 = np.float32
        middle = int(f32(f) * (f32(offset) + f32(duration) / f32(2.0)) / f32(total_length))
    else:
        middle = int(f * (offset + duration / 2.0) / total_length)
    middle = min(max(middle, n_tokens // 2), f - n_tokens // 2)
    start = middle - n_tokens // 2
    return list(full_tokens[start : start + n_tokens]), list(range(start, start + n_tokens))


@dataclass(frozen=True)
class IdTable:
    """``name -> id`` read from a ``name;id`` file (names lowercased, as the original does)."""

    ids: dict[str, int]
    path: str = ""

    def __len__(self) -> int:
        return len(self.ids)


def load_ids(path: str | os.PathLike) -> IdTable:
    """Read a released ids file: UTF-8, one ``name;id`` per line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ids file not found: {path} (expected e.g. v3_artist_ids.txt)")
    ids = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        name, sep, value = line.rpartition(";")
        if not sep or not value.strip().lstrip("-").isdigit():
            raise ValueError(f"{path}:{number}: expected 'name;id', got {line!r}")
        ids[name.lower()] = int(value)
    return IdTable(ids, str(path))


def _normalise_v2(name: str) -> str:
    """Lowercase, every character outside [a-z0-9] becomes '_', runs collapsed, ends stripped."""
    return re.sub(r"_+", "_", re.sub(r"[^a-z0-9]", "_", name.lower())).strip("_")


UNKNOWN = "unknown"  # the name that asks for id 0 on purpose, in every table


def _lookup(key: str, shown: str, table: IdTable, what: str) -> int:
    """table[key], or an error that names the closest entries (``unknown`` asks for 0)."""
    if key in table.ids:
        return table.ids[key]
    if key == UNKNOWN:
        return 0
    near = difflib.get_close_matches(key, list(table.ids), n=4, cutoff=0.6)
    hint = f"; closest: {', '.join(repr(n) for n in near)}" if near else ""
    where = f" in {table.path}" if table.path else ""
    raise ValueError(f"{what} {shown!r} is not{where}{hint} (say {UNKNOWN!r} for the unknown {what}, id 0)")


def artist_id(name: str, table: IdTable, version: str = "v3") -> int:
    """The id of an artist: v2 normalises the name, v3 lowercases it. A name missing from the
    table is an error naming the closest entries; ``"unknown"`` is id 0 on purpose. (The original
    prints a warning and takes 0, which silently conditions on the unknown artist.)"""
    key = _normalise_v2(name) if version == "v2" else name.lower()
    return _lookup(key, name, table, "artist")


def genre_ids(genre: str, table: IdTable, version: str = "v3", max_genres: int | None = None) -> list[int]:
    """v2: one id per word of the normalised genre ("Blues Rock" -> [2, 8]), padded with −1 to
    ``max_genres`` (5); v3: the whole genre looked up lowercased, one id. A missing word or genre
    is an error naming the closest entries (the original raises KeyError); ``"unknown"`` is 0."""
    if version == "v2":
        words = _normalise_v2(genre).split("_")
        max_genres = 5 if max_genres is None else max_genres
        if len(words) > max_genres:
            raise ValueError(f"genre {genre!r} has {len(words)} words; v2 labels take at most {max_genres}")
        return [_lookup(w, w, table, "genre word") for w in words] + [-1] * (max_genres - len(words))
    ids = [_lookup(genre.lower(), genre, table, "genre")]
    return ids + [-1] * ((max_genres or 1) - 1)


class IdTables:
    """The released id files in one folder (``v2_artist_ids.txt``, ``v2_genre_ids.txt``,
    ``v3_artist_ids.txt``, ``v3_genre_ids.txt``), read on first use, once."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise FileNotFoundError(f"ids folder not found: {self.folder} (expected the released v2/v3 id lists)")
        self._tables: dict[str, IdTable] = {}

    def get(self, version: str, kind: str) -> IdTable:
        """The ``kind`` ("artist" or "genre") table of ``version`` ("v2" or "v3")."""
        name = f"{version}_{kind}_ids.txt"
        if name not in self._tables:
            self._tables[name] = load_ids(self.folder / name)
        return self._tables[name]


def make_labels(prior, artist: int, genres: list[int], total_length: int, offset: int = 0,
                lyrics: list[int] | None = None, n: int = 1, *, sampling: bool = False) -> torch.Tensor:
    """The label rows ``y`` [n, 4 + G + n_tokens] for one window of ``prior`` at ``offset`` (raw
    samples) in a song of ``total_length`` samples, with this window's lyric tokens chosen from
    the song's ``lyrics`` tokens (``sampling``: by the original sampler's float32 rule, see
    :func:`lyric_window`)."""
    hps = prior.hps
    if len(genres) != hps.max_bow_genre_size:
        raise ValueError(f"this prior takes {hps.max_bow_genre_size} genre slot(s) (pad with -1), got {len(genres)}")
    row = [int(total_length), int(offset), int(prior.sample_length), int(artist)] + [int(g) for g in genres]
    if prior.n_tokens:
        tokens, _ = lyric_window(list(lyrics or []), prior.n_tokens, total_length, offset, prior.sample_length,
                                 sampling=sampling)
        if max(tokens, default=0) >= hps.n_vocab:
            raise ValueError(f"lyric tokens must lie in [0, {hps.n_vocab}); tokenise with the "
                             f"{'v3' if hps.labels_v3 else 'v2'} vocabulary")
        row += tokens
    return torch.tensor([row] * n, dtype=torch.int64)
