"""The memory plan at the released shapes: what sampling 5b_lyrics with both upsamplers holds.

Nothing is loaded and nothing runs: each row is :func:`jukebox_fast.memory.plan_sampling` for one
way to run (the models built on the meta device, the run's own code traced on meta tensors), on
a GPU (caches bf16 by default, no CPU convolution workspace) and on a CPU (caches fp32 unless
asked). The plan's accuracy is tested against measured peaks in ``tests/test_memory.py``
(CPU, tiny and reduced models) and by the GPU evidence run (``torch.cuda.max_memory_allocated``).

Weights as stored: 5b_lyrics keeps its projection matrices in fp16 (10.7 GiB), the upsamplers
in fp32 (3.7 GiB each). 16-bit weights: every projection matrix in 16 bits (the decode step's
dtype). int8: weight-only, one fp32 scale per output column (embeddings, LayerNorms and biases
stay); on a GPU the reference decode step reads them until the Triton step does.

    python benchmarks/bench_memory.py --out benchmarks/results/memory_plan.md
    python benchmarks/bench_memory.py --smoke
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from common import add_smoke, report, versions

ROWS = [  # (label, in_turn, weights, caches, batch)
    ("all levels held at once, weights as stored", False, "stored", None, None),
    ("levels in turn, weights as stored", True, "stored", None, None),
    ("levels in turn, 16-bit weights", True, "16-bit", None, None),
    ("levels in turn, 16-bit weights, bf16 caches", True, "16-bit", torch.bfloat16, None),
    ("levels in turn, 16-bit weights, bf16 caches, 1 sample per window pass", True, "16-bit", torch.bfloat16, 1),
    ("levels in turn, int8 weights, bf16 caches", True, "int8", torch.bfloat16, None),
]


def main(argv: list[str] | None = None) -> int:
    from jukebox_fast import hparams, memory
    from jukebox_fast.devices import size_text

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path)
    p.add_argument("--samples", type=int, default=3)
    p.add_argument("--seconds", type=float, default=20.0)
    add_smoke(p)
    args = p.parse_args(argv)
    if args.smoke:
        vq = hparams.get("tiny_vqvae")
        priors, levels = [None, hparams.get("tiny_upsampler"), hparams.get("tiny_prior_5b_lyrics")], [2, 1]
        what, seconds = "tiny presets (smoke: the numbers mean nothing)", 0.5
    else:
        vq = hparams.get("vqvae")
        priors = [hparams.get("upsampler_level_0"), hparams.get("upsampler_level_1"), hparams.get("prior_5b_lyrics")]
        levels = [2, 1, 0]
        what, seconds = "prior_5b_lyrics + upsampler_level_1 + upsampler_level_0, released VQ-VAE", args.seconds
    total = int(seconds * 44100) // vq.hop_lengths[-1] * vq.hop_lengths[-1]
    lines = ["# Memory plan: sampling the whole hierarchy", "",
             f"{what}; {args.samples} samples of {seconds:g} s; hop fractions 0.5, 0.5, 0.125. Planned with "
             f"{versions()} (nothing loaded, nothing run: meta-device builds and the run traced on meta tensors).",
             ""]
    rows = []
    for device in ("cuda", "cpu"):
        lines += [f"## On a {'GPU' if device == 'cuda' else 'CPU'}", "",
                  "| way to run | peak | in phase | largest items there | planned in |", "|---|---:|---|---|---:|"]
        for label, in_turn, weights, caches, batch in ROWS:
            choice = memory.Choice(in_turn=in_turn, weights=weights, caches=caches, batch=batch)
            t0 = time.perf_counter()
            plan = memory.plan_sampling(vq, priors, levels, n_samples=args.samples, total_length=total,
                                        choice=choice, device=device)
            took = time.perf_counter() - t0
            items = "; ".join(f"{i.name} {size_text(i.nbytes)}" for i in plan.largest(3))
            lines.append(f"| {label} | {size_text(plan.peak)} | {plan.peak_phase.name} | {items} | {took:.1f} s |")
            rows.append(dict(device=device, way=label, peak=plan.peak, phase=plan.peak_phase.name))
        lines.append("")
    fits = {(r["device"], r["way"]): r["peak"] for r in rows}
    best = min((r for r in rows if r["device"] == "cuda"), key=lambda r: r["peak"])
    lines.append(f"Smallest GPU plan: {best['way']}, {size_text(best['peak'])}: "
                 f"{'within' if best['peak'] <= 24 * 2**30 else 'over'} 24 GB, "
                 f"{'within' if best['peak'] <= 16 * 2**30 else 'over'} 16 GB.")
    report("\n".join(lines) + "\n", args.out, rows=rows, peaks={f"{d} | {w}": v for (d, w), v in fits.items()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
