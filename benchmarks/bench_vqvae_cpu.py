"""Encode and decode times of the released VQ-VAE: jukebox_fast against HF transformers' port.

Same random weights (copied through the key mapping), same audio, same process, both under
``torch.no_grad()``; the median of ``--runs`` timed runs after one warm-up. Also checks that the
two give the same codes and audio, so a speed-up never hides a wrong answer.

    python benchmarks/bench_vqvae_cpu.py --seconds 8 --runs 5 --out benchmarks/results/vqvae_cpu.md
    python benchmarks/bench_vqvae_cpu.py --smoke     # the tiny VQ-VAE, one run: checks the script
"""
from __future__ import annotations

import argparse
import platform
from pathlib import Path

import torch

import jukebox_fast
from common import add_smoke, git_commit, median_time, report
from jukebox_fast.checkpoint import openai_to_hf
from jukebox_fast.demo import synth_clip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--out", type=Path, help="write the table (markdown) here as well")
    add_smoke(parser)
    args = parser.parse_args()
    if args.smoke:
        args.seconds, args.runs = 0.1, 1

    from transformers.models.deprecated.jukebox import JukeboxVQVAE, JukeboxVQVAEConfig

    torch.manual_seed(0)
    sr = 44100
    n = int(args.seconds * sr) // 128 * 128
    x = torch.from_numpy(synth_clip(n / sr, sr)[:n]).view(1, n, 1)
    ours = jukebox_fast.make_vqvae("vqvae").eval()
    ours.init_codebooks(x)
    hf = JukeboxVQVAE(JukeboxVQVAEConfig()).eval()
    hf.load_state_dict(openai_to_hf(ours.state_dict()), strict=True)

    rows = []
    with torch.no_grad():
        t_ours, z_ours = median_time(lambda: ours.encode(x), args.runs)
        t_hf, z_hf = median_time(lambda: hf.encode(x), args.runs)
        same = all(torch.equal(a, b) for a, b in zip(z_ours, z_hf))
        rows.append(("encode, 3 levels", t_ours, t_hf, "codes identical" if same else "CODES DIFFER"))
        for level in range(3):
            zs = z_ours[level:]
            t_ours, a = median_time(lambda: ours.decode(zs, start_level=level), args.runs)
            t_hf, b = median_time(lambda: hf.decode(zs, start_level=level), args.runs)
            diff = float((a - b).abs().max())
            rows.append((f"decode from level {level}", t_ours, t_hf, f"max abs diff {diff:.1e}"))

    commit = git_commit()
    import transformers

    lines = [
        "# VQ-VAE encode/decode on CPU: jukebox_fast vs HF transformers",
        "",
        f"{args.seconds:g} s of audio ({n} samples, batch 1), released architecture, random weights, "
        f"median of {args.runs} runs after a warm-up, `torch.no_grad()`.",
        f"Machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads; "
        f"torch {torch.__version__}, transformers {transformers.__version__}, commit {commit}.",
        "",
        "| step | jukebox_fast (s) | HF (s) | HF / ours | check |",
        "|---|---|---|---|---|",
    ]
    for name, a, b, check in rows:
        lines.append(f"| {name} | {a:.3f} | {b:.3f} | {b / a:.2f}x | {check} |")
    report("\n".join(lines) + "\n", args.out)


if __name__ == "__main__":
    main()
