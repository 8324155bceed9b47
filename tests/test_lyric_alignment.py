"""The lyric alignment (the original's get_alignment) and the page that plays it.

The oracle reads the alignment head straight from the layer's weights, as the original's
FactoredAttention records it (its softmax, masked with -1e9; for a prime layer the keys are the
first ``(n_tokens // blocks + 1) · blocks`` positions and the music queries × lyric keys block is
kept), on the hidden state the blocks before it give, window by window.
"""
from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from jukebox_fast import hparams, make_prior, make_vqvae
from jukebox_fast.alignment import lyric_alignment
from jukebox_fast.conditioning import Song
from jukebox_fast.sample import get_starts

LYRICS = 'Hey, "are" you awake? Can you talk to me? The sea is wide and the night is long'
SONG = Song(0, 0, 44100 * 30, LYRICS)
CASES = {"tiny_prior": 15, "tiny_prior_5b_lyrics": 18}  # a prime layer (1b_lyrics-like), a cross layer (5b_lyrics)


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    vq = make_vqvae(hparams.get("tiny_vqvae")).eval()
    return vq, {name: make_prior(name, vq).eval() for name in CASES}


def direct_reading(prior, z, y, layer, head) -> torch.Tensor:
    """[N, n_ctx, n_tokens] read from the layer's own weights (see the module)."""
    state = prior.hidden_states(z, [layer], y)[layer] if layer else None  # the input of block `layer`
    block = prior.prior.transformer._attn_mods[layer]
    x = block.ln_0(state)
    attn = block.attn
    n_tokens = prior.n_tokens
    if attn.pattern.cross:
        q = attn.c_attn(x)
        k, _ = attn.c_enc_kv(prior.encoder_states(prior.split_labels(y)[1])).chunk(2, dim=2)
    else:
        q, k, _ = attn.c_attn(x).chunk(3, dim=2)
        prime_len = (n_tokens // prior.hps.blocks + 1) * prior.hps.blocks
        k = k[:, :prime_len]
    heads = attn.n_head
    q = q.view(q.shape[0], q.shape[1], heads, -1).transpose(1, 2)[:, head]  # [N, Lq, d]
    k = k.reshape(k.shape[0], k.shape[1], heads, -1).transpose(1, 2)[:, head]  # [N, Lk, d]
    w = (q @ k.transpose(1, 2)) / math.sqrt(q.shape[-1])
    if not attn.pattern.cross:
        mask = torch.ones(w.shape[1], w.shape[2]).tril()  # the original's 'prime' mask, offset 0
        w = w * mask + -1e9 * (1 - mask)
        return torch.softmax(w.float(), dim=-1)[:, n_tokens:, :n_tokens]
    return torch.softmax(w.float(), dim=-1)


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("length", [150, 40])  # several windows; one padded window
def test_the_alignment_is_the_heads_weights_placed_window_by_window(models, name, length):
    _, priors = models
    prior = priors[name]
    layer, head = CASES[name], 1
    torch.manual_seed(length)
    z = torch.randint(0, prior.bins, (2, length))
    got = lyric_alignment(prior, z, SONG, layer=layer, head=head)
    n_ctx = prior.hps.n_ctx
    full = SONG.level_labels(prior)[2]
    assert [a.shape for a in got] == [(length, len(full))] * 2 and got[0].dtype == np.float32
    padded = torch.cat([z, z.new_zeros(2, max(0, n_ctx - length))], dim=1)
    total = padded.shape[1]
    starts = get_starts(total, n_ctx, n_ctx // 8)
    earliest = {}  # code -> the earliest window holding it: its values win
    for start in starts:
        for t in range(start, start + n_ctx):
            earliest.setdefault(t, start)
    covered = np.zeros((length, len(full) + 1), dtype=bool)
    with torch.no_grad():
        for start in starts:
            y = SONG.labels(prior, start, 2)
            want = direct_reading(prior, padded[:, start : start + n_ctx], y, layer, head).numpy()
            cols = np.asarray(SONG.lyric_indices(prior, start))
            rows = [t for t in range(start, min(start + n_ctx, length)) if earliest[t] == start]
            keep = cols >= 0  # -1: padding
            for i in range(2):
                np.testing.assert_allclose(got[i][np.ix_(rows, cols[keep])],
                                           want[i][np.ix_([r - start for r in rows], np.flatnonzero(keep))],
                                           rtol=1e-5, atol=1e-6)
            covered[np.ix_(range(start, min(start + n_ctx, length)), cols)] = True
    assert not got[0][~covered[:, :-1]].any()  # characters no window held stay zero


def test_tiny_priors_need_the_layer_and_head_and_only_a_layer_that_sees_the_lyrics(models):
    _, priors = models
    z = torch.zeros(1, 64, dtype=torch.int64)
    with pytest.raises(ValueError, match="name no alignment layer and head .* pass layer= and head="):
        lyric_alignment(priors["tiny_prior"], z, SONG)
    with pytest.raises(ValueError, match=r"layer 3 is a .* layer; the lyrics are seen by this prior's prime layers \[15, 31\]"):
        lyric_alignment(priors["tiny_prior"], z, SONG, layer=3, head=0)
    with pytest.raises(ValueError, match=r"cross layers \[18\]"):
        lyric_alignment(priors["tiny_prior_5b_lyrics"], z, SONG, layer=17, head=0)


def test_the_released_presets_name_their_heads():
    assert (hparams.get("prior_5b_lyrics").alignment_layer, hparams.get("prior_5b_lyrics").alignment_head) == (68, 2)
    assert (hparams.get("prior_1b_lyrics").alignment_layer, hparams.get("prior_1b_lyrics").alignment_head) == (63, 0)
    from jukebox_fast.ops import Kind, layer_kinds

    assert layer_kinds(10, 79)[68] == Kind.CROSS and layer_kinds(12, 72)[63] == Kind.PRIME


@pytest.fixture(scope="module")
def sampled(models, tmp_path_factory):
    """A lyrics sample written by `jukebox-fast sample`: codes, wav, alignment and page."""
    pytest.importorskip("soundfile", reason="writing wavs needs soundfile")
    from jukebox_fast import save_prior, save_vqvae
    from jukebox_fast.cli import main

    vq, priors = models
    root = tmp_path_factory.mktemp("lyrics")
    save_vqvae(vq, root / "models" / "vqvae.pth.tar")
    save_prior(priors["tiny_prior_5b_lyrics"], root / "models" / "prior_level_2.pth.tar")
    out = root / "out"
    argv = ["sample", "--checkpoints", str(root / "models"), "--seconds", "0.6", "--n-samples", "2", "--lyrics", LYRICS,
            "--alignment", "18:1", "--artist", "3", "--genre", "5", "--out", str(out), "--quiet"]
    assert main(argv) == 0
    return out, argv


def test_sample_saves_the_alignment_and_a_page_and_a_rerun_keeps_them(sampled, capsys):
    from jukebox_fast import alignment
    from jukebox_fast.cli import main

    out, argv = sampled
    saved = alignment.load(out)
    codes = torch.load(out / "codes.pt", weights_only=False)["zs"][2]
    assert len(saved["alignments"]) == 2 and saved["alignments"][0].shape == (codes.shape[1], len(saved["characters"]))
    assert "".join(saved["characters"]) == LYRICS and saved["hop"] == 128
    page = (out / "index.html").read_text()
    assert page.count('<section class="sample"') == 2 and "level_2_item_1.wav" in page
    stamp = (out / "alignment.npz").stat().st_mtime_ns
    assert main(argv) == 0  # a rerun resumes: nothing sampled again, the alignment kept
    assert (out / "alignment.npz").stat().st_mtime_ns == stamp
    assert "open " in capsys.readouterr().out


def test_no_alignment_and_priors_without_lyrics_write_none(sampled, tmp_path, recwarn):
    from jukebox_fast import save_prior
    from jukebox_fast.cli import main

    out, argv = sampled
    models_dir = Path(argv[argv.index("--checkpoints") + 1])
    plain = tmp_path / "plain"
    shutil.copy(models_dir / "vqvae.pth.tar", tmp_path / "vqvae.pth.tar")
    vq = make_vqvae(hparams.get("tiny_vqvae"))
    save_prior(make_prior("tiny_top_prior", vq), tmp_path / "prior_level_2.pth.tar")
    assert main(["sample", "--checkpoints", str(tmp_path), "--vqvae", str(models_dir / "vqvae.pth.tar"),
                 "--seconds", "0.5", "--out", str(plain), "--quiet"]) == 0
    skipped = tmp_path / "skipped"
    assert main([*argv[:argv.index("--out")], "--out", str(skipped), "--no-alignment", "--quiet"]) == 0
    for folder in (plain, skipped):
        assert not (folder / "alignment.npz").exists() and not (folder / "index.html").exists()
    assert not [w for w in recwarn if "alignment" in str(w.message)]  # nothing said about it


MARKUP = '<script>window.owned = 1</script> & "Co"'


def page_for(folder: Path, prior, song: Song, rows: np.ndarray, seconds: float = 1.0) -> Path:
    """A page for one silent wav of ``seconds`` and the alignment ``rows`` [codes, characters]."""
    from jukebox_fast import alignment
    from jukebox_fast.audio import write_wav
    from jukebox_fast.page import write_page

    write_wav(folder / "level_2_item_0.wav", np.zeros(int(44100 * seconds), dtype=np.float32))
    alignment.save(folder, [rows.astype(np.float32)], prior, song, hop=128)
    return write_page(folder)


def test_the_page_escapes_labels_and_lyrics(tmp_path, models):
    prior = models[1]["tiny_prior_5b_lyrics"]
    song = Song(MARKUP, 0, 44100 * 30, 'say "hi" </script>', level_ids={2: (0, (0,))})
    chars = len(song.level_labels(prior)[2])
    page = page_for(tmp_path, prior, song, np.eye(20, chars)).read_text()
    assert "<script>window.owned" not in page and "&lt;script&gt;window.owned = 1&lt;/script&gt; &amp; &quot;Co&quot;" in page
    assert '<span data-i="4">&quot;</span>' in page  # the lyrics' quote, escaped
    data = page.split('<script id="alignment-data" type="application/json">')[1].split("</script>")[0]
    assert json.loads(data)["items"] == [[i if i < chars else -1 for i in range(20)]]


# -- in a real browser ----------------------------------------------------------------------------
CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="the browser test drives chromium with playwright "
                                   "(pip install playwright; it is in the test extras)")
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"no browser at {CHROMIUM}: apt-get install chromium (.ci/run does)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--autoplay-policy=no-user-gesture-required"])
        yield b
        b.close()


def seek(page, item: int, seconds: float) -> int:
    """Move sample ``item``'s play head and return the character the page then marks."""
    page.evaluate("""([item, t]) => new Promise(done => {
                       const a = document.querySelector('#item-' + item + ' audio');
                       a.addEventListener('seeked', () => done(), {once: true}); a.currentTime = t; })""", [item, seconds])
    return int(page.get_attribute(f"#item-{item}", "data-now"))


def opened(browser, page_path: Path):
    page = browser.new_page()
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(page_path.resolve().as_uri())  # from the disk: no server, no network
    page.wait_for_function("document.querySelector('#item-0 audio').readyState >= 1")
    return page, errors


def test_the_highlight_moves_forward_as_the_song_plays(tmp_path, models, browser):
    # An alignment that walks through the lyrics, one character every four codes.
    prior = models[1]["tiny_prior_5b_lyrics"]
    chars = len(SONG.level_labels(prior)[2])
    codes = 44100 // 128
    rows = np.zeros((codes, chars))
    rows[np.arange(codes), np.minimum(np.arange(codes) // 4, chars - 1)] = 1.0
    page, errors = opened(browser, page_for(tmp_path, prior, SONG, rows))
    seen = []
    for seconds in (0.02, 0.2, 0.4, 0.6, 0.9):
        now = seek(page, 0, seconds)
        assert now == min(int(seconds * 44100 // 128) // 4, chars - 1)
        assert page.locator("#item-0 .lyrics span.now").count() == 1
        assert page.locator("#item-0 .lyrics span.sung").count() == now  # every character before it
        seen.append(now)
    assert seen == sorted(seen) and seen[0] < seen[-1]  # later in the song, further in the lyrics
    assert page.inner_text("#item-0 .lyrics") == LYRICS  # the lyrics as text, quotes included
    seek(page, 0, 0.45)  # mid-song for the picture (README: JUKEBOX_FAST_PAGE_SCREENSHOT=docs/lyrics_page.png)
    page.screenshot(path=os.environ.get("JUKEBOX_FAST_PAGE_SCREENSHOT") or str(tmp_path / "page.png"), full_page=True)
    assert not errors, errors


def test_a_sampled_page_follows_its_alignment_in_the_browser(sampled, browser):
    from jukebox_fast import alignment

    out, _ = sampled
    saved = alignment.load(out)
    page, errors = opened(browser, out / "index.html")
    for item in (0, 1):
        duration = page.evaluate(f"document.querySelector('#item-{item} audio').duration")
        path = json.loads(page.inner_text("#alignment-data"))["items"][item]
        for fraction in (0.1, 0.5, 0.9):
            code = min(len(path) - 1, int(fraction * duration * saved["sr"] // saved["hop"]))
            assert seek(page, item, fraction * duration) == path[code]
    assert not errors, errors


def test_markup_in_the_labels_shows_as_text_in_the_browser(tmp_path, models, browser):
    prior = models[1]["tiny_prior_5b_lyrics"]
    song = Song(MARKUP, 0, 44100 * 30, 'say "hi"', level_ids={2: (0, (0,))})
    page, errors = opened(browser, page_for(tmp_path, prior, song, np.zeros((10, 8))))
    assert page.inner_text("#item-0 .artist") == MARKUP
    assert page.evaluate("window.owned") is None and not errors
