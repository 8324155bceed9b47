"""The demo's default run, as a new user runs it, once per seed: wall time and what each level plays.

Each run is a fresh ``jukebox-fast demo --seed S --quiet`` process (its wall time includes
starting Python and importing torch); its ``report.json`` gives the musicality of every stage.
The table checks the demo's targets (issue 32): at level 1 every sample keeps at least 70 % of
the training clips' pitched fraction and 8 distinct notes; the upsampler on the training clip's
true level-2 codes keeps 90 % of it; the level-2 reconstruction keeps 10 notes; every level-2
sample (the top prior's codes alone) holds 8; the whole run takes at most 6 minutes.

    python benchmarks/bench_demo.py --seeds 0 1 2 --out benchmarks/results/demo_runs.md
    python benchmarks/bench_demo.py --smoke     # the CI size, one seed: checks the script
    python benchmarks/bench_demo.py --reports runs/seed_0 runs/seed_1    # tabulate finished runs

With ``--reports`` the wall time is the sum of the report's stages (no process start-up).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import add_smoke, metadata, report

TARGETS = {"pitched at level 1": 0.70, "pitched, upsampler on true codes": 0.90}
MINUTES = 6.0


def checks(r: dict) -> dict[str, tuple[str, bool]]:
    """What one report shows against each target: (the value as shown, met)."""
    m = r["musicality"]
    train = m["training clips (all)"]["pitched"]
    n = r["config"]["n_samples"]
    up = [m[f"sample {i} (level 1)"] for i in range(n)]
    top = [m[f"sample {i} (level 2)"] for i in range(n)]
    true = m["upsampler on the true level-2 codes"]["pitched"] / train
    rec = m["reconstruction (level 2)"]["notes"]
    worst = min(s["pitched"] for s in up) / train
    return {
        "level 1: worst pitched / training": (f"{worst:.0%}", worst >= TARGETS["pitched at level 1"]),
        "level 1: fewest notes": (f"{min(s['notes'] for s in up)}", min(s["notes"] for s in up) >= 8),
        "level 1: changes/s": (" / ".join(f"{s['changes_per_s']:.1f}" for s in up), True),
        "upsampler on true codes / training": (f"{true:.0%}", true >= TARGETS["pitched, upsampler on true codes"]),
        "level-2 reconstruction: notes": (f"{rec}", rec >= 10),
        "level 2: fewest notes": (f"{min(s['notes'] for s in top)}", min(s["notes"] for s in top) >= 8),
        "level 2: changes/s": (" / ".join(f"{s['changes_per_s']:.1f}" for s in top), True),
        "training clips: changes/s": (f"{m['training clips (all)']['changes_per_s']:.1f}", True),
    }


def run(seed: int, out: Path, small: bool, quality: bool = False) -> tuple[float, dict]:
    cmd = [sys.executable, "-m", "jukebox_fast", "demo", "--out", str(out), "--seed", str(seed), "--quiet",
           "--overwrite"] + (["--small"] if small else []) + (["--quality"] if quality else [])
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0, json.loads((out / "report.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--keep", type=Path, help="keep each run's folder here (seed_<S>/)")
    parser.add_argument("--quality", action="store_true", help="the demo's --quality preset")
    parser.add_argument("--reports", type=Path, nargs="+", metavar="FOLDER",
                        help="tabulate these finished demo runs (their report.json) instead of running")
    parser.add_argument("--out", type=Path, help="write the table (markdown) here as well")
    add_smoke(parser)
    args = parser.parse_args()
    if args.smoke:
        args.seeds = args.seeds[:1]
    runs = []
    if args.reports:
        for folder in args.reports:
            r = json.loads((folder / "report.json").read_text())
            runs.append((r["config"]["seed"], sum(r["seconds"].values()), r))
    else:
        with tempfile.TemporaryDirectory() as tmp:
            root = args.keep or Path(tmp)
            for seed in args.seeds:
                wall, r = run(seed, root / f"seed_{seed}", args.smoke, args.quality)
                runs.append((seed, wall, r))
                print(f"seed {seed}: {wall:.0f} s", flush=True)
    rows = {name: [] for name in checks(runs[0][2])}
    for _, _, r in runs:
        for name, value in checks(r).items():
            rows[name].append(value)
    stages = list(runs[0][2]["seconds"])
    c = runs[0][2]["config"]
    lines = [f"# The demo, {len(runs)} seed(s): VQ-VAE {c['vqvae_steps']}, top prior {c['top_prior_steps']}, "
             f"upsampler {c['upsampler_steps']} steps; temperature {c['temperature']} (level 1: "
             f"{c['upsampler_temperature']}), top-p {c.get('top_p', 0.0)}", "", metadata_line(), "",
             "| | " + " | ".join(f"seed {s}" for s, _, _ in runs) + " |", "|---|" + "---|" * len(runs)]
    lines.append("| wall time (s) | " + " | ".join(
        f"{w:.0f}" + ("" if w <= 60 * MINUTES or args.smoke else " (over 6 min)") for _, w, _ in runs) + " |")
    lines += [f"| {stage} (s) | " + " | ".join(f"{r['seconds'][stage]:.1f}" for _, _, r in runs) + " |"
              for stage in stages]
    # Each model's own training time (a stage's row is the wall time of the two side by side)
    lines += [f"| {stage} training (s) | " + " | ".join(f"{r['training_seconds'][stage]:.1f}" for _, _, r in runs)
              + " |" for stage in runs[0][2].get("training_seconds", {})]
    lines += [f"| {name} | " + " | ".join(v + ("" if ok else " (missed)") for v, ok in values) + " |"
              for name, values in rows.items()]
    missed = [name for name, values in rows.items() if not all(ok for _, ok in values)]
    if not args.smoke:
        missed += ["wall time"] * any(w > 60 * MINUTES for _, w, _ in runs)
    lines += ["", "Every target met." if not missed else f"Missed: {', '.join(sorted(set(missed)))}."]
    report("\n".join(lines) + "\n", args.out)


def metadata_line() -> str:
    return ", ".join(f"{k}: {v}" for k, v in metadata().items())


if __name__ == "__main__":
    main()
