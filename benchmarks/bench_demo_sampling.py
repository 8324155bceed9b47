"""The demo's sampling settings against its targets, on the models finished demo runs trained.

Training is most of a demo run and its models do not depend on how they are sampled, so each
setting (top temperature, level 1's temperature, top-p) is tried here on the same models: every
run's top prior and upsampler draw its samples again, once per draw seed, as the demo draws them
(``DemoConfig.sampling`` with the setting and the draw seed as the seed). Per sample, the targets
of ``bench_demo.py``: at level 1 at least 70 % of the training clips' pitched fraction and 8
distinct notes; at level 2 (the top prior's codes alone) 8 notes. One sample missing one target
fails the default run that draws it, so the table counts samples that meet all three.

    python benchmarks/bench_demo_sampling.py --runs runs/seed_0 runs/seed_1 runs/seed_2 \\
        --settings 0.9,0.4,0 0.9,0.4,0.8 --draws 4 --out benchmarks/results/demo_sampling.md
    python benchmarks/bench_demo_sampling.py --smoke --runs demo_out    # checks the script
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import tempfile
from pathlib import Path

import torch
from bench_demo import TARGETS
from common import add_smoke, metadata, report

from jukebox_fast.audio import musicality
from jukebox_fast.checkpoint import load_prior, load_vqvae
from jukebox_fast.demo import DemoConfig, top_level_audio
from jukebox_fast.sample import generate

NOTES = 8


def _setting(text: str) -> tuple[float, float, float]:
    parts = [float(v) for v in text.split(",")]
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(f"a setting is TOP_T,LEVEL1_T,TOP_P (e.g. 0.9,0.4,0.8), got {text!r}")
    return parts[0], parts[1], parts[2]


def draw(run: Path, setting: tuple[float, float, float], seeds: list[int]) -> list[dict]:
    """Every sample the run's models draw under ``setting`` for each seed: level 1's and level 2's
    musicality, and whether it meets each target."""
    r = json.loads((run / "report.json").read_text())
    known = {f.name for f in dataclasses.fields(DemoConfig)}
    cfg = DemoConfig(**{k: v for k, v in r["config"].items() if k in known})
    train = r["musicality"]["training clips (all)"]["pitched"]
    vqvae = load_vqvae(run / "vqvae" / "vqvae.pth.tar")
    priors = [None, load_prior(run / "upsampler" / "prior_level_1.pth.tar", vqvae=vqvae),
              load_prior(run / "top_prior" / "prior_level_2.pth.tar", vqvae=vqvae)]
    sr = vqvae.hps.sr
    total, song = cfg.song(vqvae)  # the demo's labels: one sample off changes what a prior draws
    top_t, level1_t, top_p = setting
    samples = []
    for seed in seeds:
        sampling = dataclasses.replace(cfg, temperature=top_t, upsampler_temperature=level1_t, top_p=top_p,
                                       seed=seed).sampling()
        with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
            level1 = generate(vqvae, priors, song, total_length=total, n_samples=cfg.n_samples, levels=(2, 1),
                              sampling=sampling, out_dir=tmp, sr=sr, alignment=False)
            level2 = top_level_audio(vqvae, tmp)
        for a1, a2 in zip(level1, level2):
            m1, m2 = musicality(a1[:, 0].numpy(), sr), musicality(a2[:, 0].numpy(), sr)
            ok = {"pitched": m1["pitched"] / train >= TARGETS["pitched at level 1"],
                  "notes 1": m1["notes"] >= NOTES, "notes 2": m2["notes"] >= NOTES}
            samples.append({"run": run.name, "seed": seed, "level 1": m1, "level 2": m2, "ok": ok})
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=Path, nargs="+", required=True, metavar="FOLDER",
                        help="finished demo runs (each with report.json and its models)")
    parser.add_argument("--settings", type=_setting, nargs="+", default=[(0.9, 0.4, 0.0), (0.9, 0.4, 0.8)],
                        metavar="TOP_T,LEVEL1_T,TOP_P")
    parser.add_argument("--draws", type=int, default=4, help="draw seeds per run and setting")
    parser.add_argument("--first-seed", type=int, default=1, help="the draw seeds are this and the next ones")
    parser.add_argument("--out", type=Path, help="write the table (markdown) here as well")
    add_smoke(parser)
    args = parser.parse_args()
    if args.smoke:
        args.runs, args.settings, args.draws = args.runs[:1], args.settings[:1], 1
    seeds = list(range(args.first_seed, args.first_seed + args.draws))
    meta = metadata()
    lines = [f"# The demo's sampling settings on {len(args.runs)} run(s)' trained models, draw seeds "
             f"{seeds[0]}-{seeds[-1]}", "",
             f"{meta['device']}, torch {meta['torch']}, commit {meta['commit']}; runs: "
             + ", ".join(str(r) for r in args.runs) + ".", "",
             "| top T | level-1 T | top-p | samples | level 1 pitched | level 1 notes | level 2 notes | every target "
             "| level 1 pitched, mean (worst) | level 1 notes, mean | level 2 notes, mean | level 1 changes/s, mean "
             "| every target, per run |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    every = {}
    for setting in args.settings:
        samples = [s for run in args.runs for s in draw(run, setting, seeds)]
        every[",".join(map(str, setting))] = samples
        n = len(samples)

        def met(*keys):
            return f"{sum(all(s['ok'][k] for k in keys) for s in samples)}/{n}"

        def mean(level, key):
            return statistics.fmean(s[level][key] for s in samples)

        per_run = " ".join(f"{run.name}: {sum(all(s['ok'].values()) for s in samples if s['run'] == run.name)}/"
                           f"{sum(s['run'] == run.name for s in samples)}" for run in args.runs)
        lines.append(f"| {setting[0]} | {setting[1]} | {setting[2]} | {n} | {met('pitched')} | {met('notes 1')} | "
                     f"{met('notes 2')} | {met('pitched', 'notes 1', 'notes 2')} | {mean('level 1', 'pitched'):.0%} "
                     f"({min(s['level 1']['pitched'] for s in samples):.0%}) | {mean('level 1', 'notes'):.1f} | "
                     f"{mean('level 2', 'notes'):.1f} | {mean('level 1', 'changes_per_s'):.1f} | {per_run} |")
    lines += ["", f"Targets per sample: level 1 pitched >= {TARGETS['pitched at level 1']:.0%} of the training "
              f"clips', >= {NOTES} notes at level 1 and at level 2."]
    report("\n".join(lines) + "\n", args.out, samples=every)


if __name__ == "__main__":
    main()
