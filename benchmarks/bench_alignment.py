"""What the lyric alignment costs next to the sampling it follows, on the CPU.

For each lyrics structure, one sample's top level is sampled window by window (hop n_ctx / 8,
the top level's default, as ``generate`` samples it) and then aligned as ``generate`` aligns it
(:func:`jukebox_fast.alignment.lyric_alignment`: one teacher-forced forward per window through
the blocks up to the alignment layer, then one masked softmax of one head). Both are timed in
this process, on the same random weights; the ratio is the alignment's share.

Rows: the tiny presets (``tiny_prior``: 1b_lyrics' single encoder-decoder; ``tiny_prior_5b_lyrics``:
a separate lyric encoder) and, outside ``--smoke``, the released widths (2048 heads of 1b_lyrics,
4800 of 5b_lyrics) with few layers and a shorter context so a CPU finishes.

    python benchmarks/bench_alignment.py --out benchmarks/results/alignment_cpu.md
    python benchmarks/bench_alignment.py --smoke
"""
from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import torch

from common import add_smoke, device_name, report, versions


def case(name: str, preset: str, overrides: dict, layer: int, head: int, windows: int):
    return dict(name=name, preset=preset, overrides=overrides, layer=layer, head=head, windows=windows)


TINY = [case("tiny_prior (1b_lyrics' structure)", "tiny_prior", {}, 15, 0, 4),
        case("tiny_prior_5b_lyrics", "tiny_prior_5b_lyrics", {}, 18, 0, 4)]
# The released widths and heads with two layers and a shorter context, so a CPU finishes: neither
# has a lyric layer that early, so the share for the released depth is estimated from these
# per-layer times (below), and the row says so.
RELEASED = [case("1b_lyrics width 2048 (estimate)", "prior_1b_lyrics", dict(prior_depth=2, n_ctx=512, blocks=8), 63, 0, 2),
            case("5b_lyrics width 4800 (estimate)", "prior_5b_lyrics",
                 dict(prior_depth=2, n_ctx=256, blocks=4, prime_depth=2), 68, 2, 2)]


def run(c: dict) -> dict:
    from jukebox_fast import hparams, make_prior, make_vqvae
    from jukebox_fast.alignment import lyric_alignment
    from jukebox_fast.conditioning import Song
    from jukebox_fast.sample import Sampling, get_starts, sample_level

    torch.manual_seed(0)
    vq = make_vqvae(hparams.get("tiny_vqvae")).eval()
    released = hparams.get(c["preset"])
    hps = dataclasses.replace(released, **c["overrides"])
    prior = make_prior(hps, vq).eval().float()
    n_ctx = prior.hps.n_ctx
    total = n_ctx + (c["windows"] - 1) * (n_ctx // 8)  # `windows` windows at the top level's hop
    song = Song(0, 0, int(max(prior.hps.min_duration or 0, 1) * 44100 * 2), "la " * 400)
    zs = [torch.zeros(1, 0, dtype=torch.int64) for _ in range(vq.hps.levels)]
    t0 = time.perf_counter()
    with torch.no_grad():
        zs = sample_level(prior, zs, song, total, hop_fraction=0.125, sampling=Sampling(progress=False))
    sampling = time.perf_counter() - t0
    codes = zs[prior.level]
    row = dict(name=c["name"], width=prior.hps.prior_width, depth=released.prior_depth, layer=c["layer"], tokens=total,
               sampling=sampling)
    if not c["overrides"]:  # the whole model: align as generate does
        t0 = time.perf_counter()
        lyric_alignment(prior, codes, song, hop_fraction=0.125, layer=c["layer"], head=c["head"])
        row["aligning"] = time.perf_counter() - t0
        return row
    # Per layer: the alignment runs one forward of n_ctx codes through layer + 1 blocks per window
    # (plus, for 5b_lyrics, the lyric encoder); sampling runs every block for every code.
    layers = prior.hps.prior_depth
    t0 = time.perf_counter()
    with torch.no_grad():
        for start in get_starts(total, n_ctx, n_ctx // 8):
            prior.hidden_states(codes[:, start : start + n_ctx], [layers], song.labels(prior, start, 1))
    forward = (time.perf_counter() - t0) / layers
    row["sampling"] = sampling / layers * released.prior_depth
    row["aligning"] = forward * (c["layer"] + 1)
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path)
    add_smoke(p)
    args = p.parse_args(argv)
    cases = TINY[:1] if args.smoke else TINY + RELEASED
    rows = [run(c) for c in cases]
    lines = ["# Lyric alignment against sampling, CPU", "",
             f"{device_name('cpu')}; {versions()}. One sample; the top level sampled with hop n_ctx/8, then aligned "
             "(one forward per window up to the alignment layer). Share = alignment / (sampling + alignment). Tiny "
             "rows time the whole model. Estimate rows build the released width and heads with 2 layers and a shorter "
             "context, time sampling and the per-window forward per layer, and scale them to the released depth "
             "(all layers for sampling, alignment layer + 1 for the alignment); the 5b_lyrics row leaves out its "
             "lyric encoder's forward per window.", "",
             "| structure | width | layers (released) | alignment layer | tokens | sampling (s) | alignment (s) | share |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        share = r["aligning"] / (r["sampling"] + r["aligning"])
        lines.append(f"| {r['name']} | {r['width']} | {r['depth']} | {r['layer']} | {r['tokens']} | "
                     f"{r['sampling']:.2f} | {r['aligning']:.3f} | {100 * share:.1f}% |")
    report("\n".join(lines) + "\n", args.out, rows=rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
