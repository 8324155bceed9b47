"""Lyrics vocabularies and cleaning, the lyric window, artist/genre ids, label rows."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from jukebox_fast import make_prior, text

# The released ids files are not part of the project; tests read them where the workspace has them.
IDS = Path(__file__).resolve().parents[2] / "shared" / "reference" / "ids"
needs_ids = pytest.mark.skipif(not IDS.is_dir(), reason=f"the released ids files are not at {IDS}")


def test_vocabularies_match_the_original_numbering():
    v2, v3 = text.VOCABULARIES["v2"], text.VOCABULARIES["v3"]
    assert len(v2) + 1 == 80 and len(v3) + 1 == 79  # n_vocab, with token 0 for padding
    tok = lambda s, v: text.tokenize_lyrics(s, v)
    assert tok("Aa0.", "v2") == [1, 27, 53, 63]
    assert tok("+' \t\n", "v2") == [70, 71, 77, 78, 79]
    assert tok("+' \t\n", "v3") == [70, 76, 77, 78]  # v3 has no '+': it is dropped
    assert text.detokenize([0, 8, 9, 0], "v3") == "HI"


def test_cleaning_transliterates_and_drops_what_the_vocabulary_lacks():
    raw = "André — “½”\\x/y+"
    assert text.clean_lyrics(raw, "v3") == 'Andre -- " 12"\nxy'
    assert text.clean_lyrics(raw, "v2") == 'Andre -- " 12"\nxy+'
    with pytest.raises(ValueError, match="must be one of"):
        text.clean_lyrics("x", "v9")


def test_lyric_window_pads_centres_and_clamps():
    tokens, idx = text.lyric_window([5, 6, 7], 5, total_length=1000, offset=0, duration=100)
    assert tokens == [0, 0, 5, 6, 7] and idx == [-1, -1, 0, 1, 2]
    song = list(range(1, 101))  # 100 characters over 1000 samples
    tokens, idx = text.lyric_window(song, 10, 1000, offset=500, duration=200)  # middle at sample 600
    assert idx == list(range(55, 65)) and tokens == song[55:65]
    assert text.lyric_window(song, 10, 1000, offset=0, duration=10)[1] == list(range(0, 10))  # clamped left
    assert text.lyric_window(song, 10, 1000, offset=990, duration=10)[1] == list(range(90, 100))  # right
    with pytest.raises(ValueError, match=r"offset must lie in \[0, total_length=1000\)"):
        text.lyric_window(song, 10, 1000, offset=1000, duration=10)


@needs_ids
def test_released_artist_and_genre_ids():
    v2a, v2g = text.load_ids(IDS / "v2_artist_ids.txt"), text.load_ids(IDS / "v2_genre_ids.txt")
    v3a, v3g = text.load_ids(IDS / "v3_artist_ids.txt"), text.load_ids(IDS / "v3_genre_ids.txt")
    assert text.artist_id("Alan Jackson", v2a, "v2") == 145 and text.artist_id("Alan Jackson", v3a) == 6785
    assert text.artist_id("Zac Brown Band", v2a, "v2") == 1069 and text.artist_id("Zac Brown Band", v3a) == 7169
    assert text.genre_ids("Country", v2g, "v2") == [11, -1, -1, -1, -1]
    assert text.genre_ids("Country", v3g) == [507]
    assert text.genre_ids("Blues Rock", v2g, "v2") == [2, 8, -1, -1, -1]
    assert text.artist_id("unknown", v3a) == 0 and text.genre_ids("Unknown", v2g, "v2")[0] == 0  # on purpose


@needs_ids
def test_a_misspelt_name_is_an_error_that_names_the_closest_entries():
    # The original takes artist 0 with a printed warning (and raises KeyError for a v2 genre word):
    # a misspelt name would condition the sample on the unknown artist without a word here.
    tables = text.IdTables(IDS)
    with pytest.raises(ValueError, match=r"artist 'Ella Fitzgerlad' is not in .*v3_artist_ids.txt; closest: "
                                         r"'ella fitzgerald'.*say 'unknown'"):
        text.artist_id("Ella Fitzgerlad", tables.get("v3", "artist"), "v3")
    with pytest.raises(ValueError, match=r"genre word 'jaz' is not in .*v2_genre_ids.txt; closest: 'jazz'"):
        text.genre_ids("Soul Jaz", tables.get("v2", "genre"), "v2")
    with pytest.raises(ValueError, match="closest: 'soul jazz'"):
        text.genre_ids("Soul Jaz", tables.get("v3", "genre"), "v3")


def test_the_lyric_window_follows_the_samplers_float32_rule_and_the_labellers_float64():
    # 2722 lyric tokens, a song of 3,629,395 samples, a window of 30,720 at 2,502,016: the middle is
    # 1887.99992 in float64 (the original's training labeller, Python numbers) and 1888.0 in float32
    # (its sampler, on the label row's 0-dim int64 tensors): the window moves by one character.
    full = list(range(1, 2723))
    _, trained = text.lyric_window(full, 384, 3_629_395, 2_502_016, 30_720)
    _, sampled = text.lyric_window(full, 384, 3_629_395, 2_502_016, 30_720, sampling=True)
    assert trained[0] == 1887 - 192 and sampled[0] == 1888 - 192
    for offset in (0, 1_000_000, 3_000_000):  # elsewhere the two rules agree
        assert text.lyric_window(full, 384, 3_629_395, offset, 30_720) == \
            text.lyric_window(full, 384, 3_629_395, offset, 30_720, sampling=True)


def test_id_files_are_checked(tmp_path):
    (tmp_path / "ids.txt").write_text("Rock;8\nblues;2\n\n", encoding="utf-8")
    table = text.load_ids(tmp_path / "ids.txt")
    assert table.ids == {"rock": 8, "blues": 2}
    assert text.genre_ids("Blues-Rock!", table, "v2", max_genres=3) == [2, 8, -1]
    with pytest.raises(ValueError, match="has 3 words; v2 labels take at most 2"):
        text.genre_ids("a b c", table, "v2", max_genres=2)
    (tmp_path / "bad.txt").write_text("rock 8\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad.txt:1: expected 'name;id'"):
        text.load_ids(tmp_path / "bad.txt")
    with pytest.raises(FileNotFoundError):
        text.load_ids(tmp_path / "none.txt")


def test_make_labels_feeds_a_lyrics_prior():
    torch.manual_seed(0)
    prior = make_prior("tiny_prior")
    lyrics = text.tokenize_lyrics("Hello world, hello sky\n" * 3, "v3")
    total = int(1.5 * prior.hps.min_duration * prior.hps.sr)  # the timing embedding needs >= min_duration
    y = text.make_labels(prior, artist=3, genres=[5], total_length=total, offset=0, lyrics=lyrics, n=2)
    assert y.shape == (2, 4 + 1 + 16) and y[0, :5].tolist() == [total, 0, prior.sample_length, 3, 5]
    loss, _ = prior(torch.randint(0, prior.bins, (2, prior.hps.n_ctx)), y)
    assert torch.isfinite(loss)
    with pytest.raises(ValueError, match="takes 1 genre slot"):
        text.make_labels(prior, 3, [5, 6], total)
