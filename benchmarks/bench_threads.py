"""CPU threads on a quiet machine and on one whose cores are busy with other work.

OpenMP threads spin while they wait for each other. When other processes hold the cores, a
waiting thread spins through the time slice its partner needs, and a step can take many times
longer than with one thread. This measures one ``tiny_vqvae`` training step (forward, backward,
optimiser) and one ``tiny_top_prior`` decode step, each in a fresh process, with:

- ``threads``: 1, every core (``torch.set_num_threads``), or ``auto``: the idle cores at the
  start (``jukebox_fast.threads.configure_threads``, what the command line does);
- ``wait``: OpenMP's default wait policy, or ``OMP_WAIT_POLICY=PASSIVE`` (waiting threads sleep);
- ``load``: nothing else running, or one busy process per core (pure Python loops: other work).

Each row is the median over ``--runs`` steps after a warm-up; ratios are against the quiet,
default-policy, all-cores row of the same run.

    python benchmarks/bench_threads.py --out benchmarks/results/threads_cpu.md
    python benchmarks/bench_threads.py --smoke    # the quiet, all-cores row only: checks the script
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import subprocess
import sys
from pathlib import Path

from common import add_smoke, device_name, report, versions

CHILD = r"""
import json, statistics, sys, time
import torch
from jukebox_fast import hparams, make_prior, make_vqvae
from jukebox_fast.sample import Sampling, Song, sample_window
threads, runs, length, steps = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
if threads:
    torch.set_num_threads(threads)
else:  # what the command line does
    from jukebox_fast.threads import configure_threads
    configure_threads()
torch.manual_seed(0)
vq = make_vqvae(hparams.get("tiny_vqvae")).train()
opt = torch.optim.AdamW(vq.parameters(), 1e-4)
x = 0.3 * torch.randn(2, length, 1)
def train_step():
    _, loss, _ = vq(x)
    opt.zero_grad()
    loss.backward()
    opt.step()
prior = make_prior("tiny_top_prior", vq).eval()
y = Song(0, (0,), 6 * 44100).labels(prior, 0, 1)
def decode_steps():
    sample_window(prior, torch.zeros(1, 0, dtype=torch.int64), steps, y=y,
                  sampling=Sampling(temp=1.0, progress=False))
out = {"threads": torch.get_num_threads()}
for name, fn in (("vqvae train step", train_step), ("top prior, %d decode steps" % steps, decode_steps)):
    fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter(); fn(); times.append(time.perf_counter() - t0)
    out[name] = statistics.median(times)
print(json.dumps(out))
"""


def _spin(stop) -> None:
    n = 0
    while not stop.is_set():
        n += 1


def measure(threads: int, passive: bool, loaded: bool, runs: int, timeout: float, smoke: bool = False) -> dict | str:
    env = dict(os.environ)
    env.pop("OMP_WAIT_POLICY", None)
    if passive:
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    stop = mp.Event()
    busy = (os.cpu_count() or 1) if loaded else 0
    spinners = [mp.Process(target=_spin, args=(stop,), daemon=True) for _ in range(busy)]
    for p in spinners:
        p.start()
    try:
        sizes = ["4096", "4"] if smoke else ["32768", "32"]  # samples per training clip, decode steps
        done = subprocess.run([sys.executable, "-c", CHILD, str(threads), str(runs), *sizes], env=env, capture_output=True,
                              text=True, timeout=timeout)
        if done.returncode:
            return f"failed: {done.stderr.strip().splitlines()[-1]}"
        return json.loads(done.stdout.strip().splitlines()[-1])
    except subprocess.TimeoutExpired:
        return f"over {timeout:.0f} s"
    finally:
        stop.set()
        for p in spinners:
            p.join()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--timeout", type=float, default=300.0, help="seconds per configuration")
    p.add_argument("--out", type=Path)
    add_smoke(p)
    args = p.parse_args(argv)
    if args.smoke:
        args.runs, args.timeout = 1, 60.0
    cores = os.cpu_count() or 1
    rows = []
    for loaded in (False,) if args.smoke else (False, True):
        for passive in (False,) if args.smoke else (False, True):
            for threads in [cores] if args.smoke else sorted({1, cores}) + ([0] if not passive else []):
                r = measure(threads, passive, loaded, args.runs, args.timeout, args.smoke)
                rows.append(((loaded, passive, threads), r))
                print(rows[-1], flush=True)
    base = next(r for (loaded, passive, t), r in rows if not loaded and not passive and t == cores)
    names = [n for n in base if n != "threads"] if isinstance(base, dict) else []
    lines = ["# CPU threads: quiet and loaded cores", "", f"{device_name('cpu')}; {versions()}", "",
             f"{cores} cores; load = {cores} busy Python processes. Median of {args.runs} steps, seconds; "
             "x = time / (quiet, default wait, all cores).", "",
             "| load | OMP_WAIT_POLICY | threads | " + " | ".join(names) + " |",
             "|---|---|---|" + "---|" * len(names)]
    for (loaded, passive, threads), r in rows:
        cells = [f"{r[n]:.3f} s ({r[n] / base[n]:.1f}x)" for n in names] if isinstance(r, dict) else [r] * len(names)
        lines.append(f"| {'busy' if loaded else 'quiet'} | {'PASSIVE' if passive else 'default'} | "
                     f"{threads or 'auto: %s' % (r['threads'] if isinstance(r, dict) else '?')} | "
                     + " | ".join(cells) + " |")
    report("\n".join(lines) + "\n", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
