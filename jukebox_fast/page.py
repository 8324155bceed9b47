"""``index.html``: a page that plays each sample and lights up its lyrics as they are sung.

Built from a sampling folder: the wavs, and ``alignment.npz`` (:mod:`jukebox_fast.alignment`).
The page opens from the disk with no server and no network: the audio and the alignment pictures
sit beside it, and the alignment is inside it (a JSON script block; ``fetch`` of a ``file://``
URL is refused by browsers). Each character of the lyrics is its own element; while a sample
plays, the character its current top-level code attends to most is marked ``now`` and those
before it ``sung``. Labels and lyrics are escaped: markup in them shows as text.
"""
from __future__ import annotations

import html
import json
import os
from pathlib import Path

import numpy as np

from . import alignment as alignment_mod
from .files import atomic_text, atomic_write

__all__ = ["write_page", "PAGE"]

PAGE = "index.html"

_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 60rem; margin: 2rem auto; padding: 0 1rem; color: #222; }
section { border-top: 1px solid #ccc; padding: 1rem 0; }
.lyrics { white-space: pre-wrap; font-size: 1.15rem; line-height: 1.7; }
.lyrics span { color: #9a9a9a; }
.lyrics span.sung { color: #111; }
.lyrics span.now { color: #111; background: #ffd54f; border-radius: 2px; }
img.alignment { width: 100%; height: auto; border: 1px solid #ddd; }
audio { width: 100%; }
"""

# Follows each <audio>: on every time update, seek and animation frame while playing, the code
# under the play head gives the character (its row's most attended lyric character).
_SCRIPT = """
(function () {
  const data = JSON.parse(document.getElementById("alignment-data").textContent);
  for (const section of document.querySelectorAll("section.sample")) {
    const item = Number(section.dataset.item);
    const path = data.items[item];
    const audio = section.querySelector("audio");
    const spans = section.querySelectorAll(".lyrics span");
    let shown = -2;
    function show() {
      const code = Math.min(path.length - 1, Math.floor(audio.currentTime * data.sr / data.hop));
      const at = code >= 0 ? path[code] : -1;
      if (at === shown) return;
      shown = at;
      spans.forEach(function (span, i) {
        span.classList.toggle("sung", i < at);
        span.classList.toggle("now", i === at);
      });
      section.dataset.now = String(at);
    }
    function follow() { show(); if (!audio.paused) requestAnimationFrame(follow); }
    audio.addEventListener("timeupdate", show);
    audio.addEventListener("seeked", show);
    audio.addEventListener("play", follow);
    show();
  }
})();
"""


def _json_for_script(obj) -> str:
    """JSON that cannot end the <script> block it sits in."""
    return json.dumps(obj, separators=(",", ":")).replace("</", "<\\/").replace("<!--", "<\\!--")


def _picture(path: Path, alignment: np.ndarray) -> None:
    """A small image of the alignment: time across, characters down."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 1.8), layout="constrained")
    ax.imshow(alignment.T, origin="upper", aspect="auto", cmap="Greys", interpolation="nearest")
    ax.set_xlabel("top-level code")
    ax.set_ylabel("character")
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=80))
    plt.close(fig)


def write_page(folder: str | os.PathLike, title: str = "jukebox-fast samples") -> Path:
    """Write ``folder/index.html`` (and ``alignment_item_<i>.png``) from the folder's
    ``alignment.npz`` and its lowest-level wavs; returns the page's path."""
    folder = Path(folder)
    if not (folder / alignment_mod.FILE).exists():
        raise FileNotFoundError(f"{folder / alignment_mod.FILE} not found: the page shows a lyrics prior's "
                                "alignment (sample with a *_lyrics model, without --no-alignment)")
    saved = alignment_mod.load(folder)
    wavs = sorted(folder.glob("level_*_item_*.wav"), key=lambda p: (int(p.stem.split("_")[1]), int(p.stem.split("_")[-1])))
    if not wavs:
        raise FileNotFoundError(f"no level_<L>_item_<i>.wav in {folder}: the page plays the samples")
    low = int(wavs[0].stem.split("_")[1])
    characters = saved["characters"]
    paths = []
    sections = []
    for i, align in enumerate(saved["alignments"]):
        # The most attended character of each code (-1 where a row attends to no character).
        path = np.where(align.max(axis=1) > 0, align.argmax(axis=1), -1) if align.size else np.full(len(align), -1)
        paths.append([int(v) for v in path])
        picture = f"alignment_item_{i}.png"
        _picture(folder / picture, align)
        spans = "".join(f'<span data-i="{j}">{html.escape(c)}</span>' for j, c in enumerate(characters))
        wav = folder / f"level_{low}_item_{i}.wav"
        sections.append(
            f'<section class="sample" id="item-{i}" data-item="{i}" data-now="-1">\n'
            f"<h2>Sample {i}</h2>\n"
            f'<p class="labels">Artist: <span class="artist">{html.escape(saved["artist"])}</span> · '
            f'Genre: <span class="genre">{html.escape(saved["genres"])}</span></p>\n'
            f'<audio controls preload="auto" src="{html.escape(wav.name)}"></audio>\n'
            f'<p class="lyrics">{spans}</p>\n'
            f'<img class="alignment" src="{picture}" alt="alignment of sample {i}: top-level codes across, lyric '
            f'characters down">\n</section>')
    data = {"sr": saved["sr"], "hop": saved["hop"], "items": paths}
    page = (f'<!doctype html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{html.escape(title)}</title>\n'
            f"<style>{_STYLE}</style>\n</head>\n<body>\n<h1>{html.escape(title)}</h1>\n"
            "<p>Each sample plays its level-" + str(low) + " audio; the lyrics light up where the lyrics prior's "
            "alignment head looks as the song reaches it.</p>\n" + "\n".join(sections) + "\n"
            f'<script id="alignment-data" type="application/json">{_json_for_script(data)}</script>\n'
            f"<script>{_SCRIPT}</script>\n</body>\n</html>\n")
    return atomic_text(folder / PAGE, page)
