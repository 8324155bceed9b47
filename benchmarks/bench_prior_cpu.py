"""One training step (forward + backward) of a prior: jukebox_fast against HF transformers' port.

Same random weights (copied through checkpoint.openai_to_hf), same codes and labels, same
process; each time is the median of ``--runs`` steps after a warm-up, the two models taking
turns so that machine noise hits both alike. Also checks that both give the same loss.

    python benchmarks/bench_prior_cpu.py --out benchmarks/results/prior_cpu.md
    python benchmarks/bench_prior_cpu.py --smoke     # one preset, one run: checks the script
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

from jukebox_fast.models.resnet import set_recompute

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from common import add_smoke, device_name, git_commit, report  # noqa: E402
from prior_inputs import codes, labels  # noqa: E402
from test_prior_hf_parity import build_pair  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["tiny_prior", "tiny_prior_5b_lyrics", "tiny_upsampler"])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--out", type=Path)
    add_smoke(parser)
    args = parser.parse_args()
    if args.smoke:
        args.presets, args.batch, args.runs = ["tiny_prior"], 1, 1
    import transformers

    lines = [
        "# Prior training step on CPU: jukebox_fast vs HF transformers",
        "",
        f"Machine: {device_name('cpu')}; torch {torch.__version__}, transformers {transformers.__version__}, "
        f"commit {git_commit()}.",
        f"Batch {args.batch}; forward + backward of the training loss; median of {args.runs} alternating runs "
        "after a warm-up. The upsampler's conditioner keeps its activations, as `train_prior` runs it "
        "where memory allows (`--recompute auto`: the original's gradient checkpointing only where the "
        "step would not fit otherwise); HF's port keeps them too.",
        "",
        "| preset | parameters | jukebox_fast (ms) | HF (ms) | HF / ours | loss difference |",
        "|---|---|---|---|---|---|",
    ]
    for name in args.presets:
        ours, hf = build_pair(name)
        set_recompute(ours.train(), False)
        hf.train()
        n = 1 if name == "tiny_prior_5b_lyrics" else args.batch  # HF gives every row row 0's lyrics there
        zs, y = codes(ours, n), labels(ours, n)

        def step_ours():
            loss, _ = ours(zs, y)
            loss.backward()
            return loss

        def step_hf():
            if ours.n_tokens:
                loss, _ = hf.forward_tokens(zs[0], [], y)
            else:  # HF's forward_tokens fails without lyrics: its conditioning, then its LM
                audio, meta, _ = hf.get_cond(zs[1:], y)
                loss, _ = hf.prior(zs[0], audio, meta)
            loss.backward()
            return loss

        diff = float((step_ours() - step_hf()).abs())  # also the warm-up
        times = {"ours": [], "hf": []}
        for _ in range(args.runs):
            for key, fn in (("ours", step_ours), ("hf", step_hf)):
                t0 = time.perf_counter()
                fn()
                times[key].append(time.perf_counter() - t0)
        a, b = (statistics.median(times[k]) * 1e3 for k in ("ours", "hf"))
        params = sum(p.numel() for p in ours.parameters())
        lines.append(f"| {name} | {params:,} | {a:.1f} | {b:.1f} | {b / a:.2f}x | {diff:.1e} |")
        print(lines[-1], file=sys.stderr, flush=True)
    report("\n".join(lines) + "\n", args.out)


if __name__ == "__main__":
    main()
