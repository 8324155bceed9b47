"""One VQ-VAE training step (forward + backward) on the CPU, and where its time goes.

The tiny preset at the demo's window and batch: same weights, same audio, one process. The step
runs three ways, each ``--steps`` steps per round over ``--rounds`` rounds, with the order
rotating from round to round. A cell is the median round (with the range over rounds):

- ``oneDNN``: the model as training runs it, the residual blocks on the reference convolutions
  (while autograd records, the dispatch takes the torch reference), i.e. PyTorch's oneDNN
  convolutions. This is the baseline.
- ``native``: the same, with oneDNN off (``torch.backends.mkldnn.flags(enabled=False)``), i.e.
  PyTorch's own convolutions.
- ``compiled``: ``torch.compile`` of the whole model. The compiler's time is reported apart.

Then two tables:

- a profile of the oneDNN step: its ten most expensive ops by self time;
- the residual blocks' dilated k=3 convolution alone (forward + backward) at the demo's shapes,
  by dilation, oneDNN against native.

    python benchmarks/bench_vqvae_train_cpu.py --out benchmarks/results/vqvae_train_cpu.md
    python benchmarks/bench_vqvae_train_cpu.py --smoke     # a short window, one round: checks the script
"""
from __future__ import annotations

import argparse
import contextlib
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from common import add_smoke, report, versions
from jukebox_fast import hparams, make_vqvae
from jukebox_fast.demo import DemoConfig, synth_clip


def _rounds(fns: dict, rounds: int, steps: int) -> dict[str, list[float]]:
    """Per way, its median step time (s) in each round; the order turns every round."""
    names = list(fns)
    out = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            times = []
            for _ in range(steps):
                t0 = time.perf_counter()
                fns[name]()
                times.append(time.perf_counter() - t0)
            out[name].append(statistics.median(times))
    return out


def _cell(times: list[float]) -> str:
    return f"{statistics.median(times) * 1e3:.0f} ({min(times) * 1e3:.0f}-{max(times) * 1e3:.0f})"


def _native():
    return torch.backends.mkldnn.flags(enabled=False)


def _conv_rows(shapes, dilations, runs: int) -> list[str]:
    """The dilated k=3 convolution, forward + backward, oneDNN against native, per shape and dilation."""
    rows = []
    for n, c, length in shapes:
        for d in dilations:
            x = torch.randn(n, c, length, requires_grad=True)
            w = torch.randn(c, c, 3, requires_grad=True)
            b = torch.randn(c, requires_grad=True)
            g = torch.randn(n, c, length)

            def run():
                y = F.conv1d(x, w, b, padding=d, dilation=d)
                torch.autograd.grad(y, (x, w, b), g)

            def timed(ctx) -> float:
                with ctx:
                    for _ in range(2):
                        run()
                    ts = []
                    for _ in range(runs):
                        t0 = time.perf_counter()
                        run()
                        ts.append(time.perf_counter() - t0)
                return statistics.median(ts)

            onednn, native = timed(contextlib.nullcontext()), timed(_native())
            rows.append(f"| [{n}, {c}, {length}] | {d} | {onednn * 1e3:.2f} | {native * 1e3:.2f} | "
                        f"{native / onednn:.2f}x |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    demo = DemoConfig()
    parser.add_argument("--window", type=int, default=demo.vqvae_window, help="samples per training window")
    parser.add_argument("--batch", type=int, default=demo.vqvae_batch_size)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3, help="steps per way per round")
    parser.add_argument("--no-compile", action="store_true", help="leave out the compiled row")
    parser.add_argument("--out", type=Path)
    add_smoke(parser)
    args = parser.parse_args()
    if args.smoke:
        args.window, args.rounds, args.steps, args.no_compile = 4096, 1, 1, True

    torch.manual_seed(0)
    hps = hparams.get("tiny_vqvae", sample_length=args.window)
    model = make_vqvae(hps).train()
    n = args.batch * args.window
    x = torch.from_numpy(synth_clip(n / hps.sr + 0.1, hps.sr)[:n]).view(args.batch, args.window, 1).float()

    def step(net, ctx=contextlib.nullcontext):
        def run():
            with ctx():
                net.zero_grad(set_to_none=True)
                _, loss, _ = net(x)
                loss.backward()
            return loss.item()
        return run

    fns = {"oneDNN": step(model), "native": step(model, _native)}
    losses = {name: fn() for name, fn in fns.items()}  # also the warm-up
    compile_s = None
    if not args.no_compile:
        compiled = torch.compile(model)
        fns["compiled"] = step(compiled)
        t0 = time.perf_counter()
        losses["compiled"] = fns["compiled"]()
        compile_s = time.perf_counter() - t0
        fns["compiled"]()
    times = _rounds(fns, args.rounds, args.steps)
    base = times["oneDNN"]

    lines = [
        "# VQ-VAE training step on CPU: where the time goes",
        "",
        f"Machine: {platform.machine()}, {torch.get_num_threads()} threads; {versions()}.",
        f"`tiny_vqvae`, windows of {args.window} samples, batch {args.batch} (the demo's), fp32. "
        f"{args.rounds} rounds of {args.steps} steps of each way in turn, the order rotating. Cells: the median "
        "round's step time in ms (the range over rounds). Ratio: oneDNN's time over this way's, in the same round: "
        "median (worst round).",
        "",
        "| step | ms | oneDNN / this | loss |",
        "|---|---|---|---|",
    ]
    for name, ts in times.items():
        ratios = [b / t for b, t in zip(base, ts)]
        label = name + (f" (compiling took {compile_s:.0f} s)" if name == "compiled" else "")
        lines.append(f"| {label} | {_cell(ts)} | {statistics.median(ratios):.2f}x ({min(ratios):.2f}x) | "
                     f"{losses[name]:.6g} |")

    from torch.profiler import ProfilerActivity, profile

    prof_steps = max(1, args.steps)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(prof_steps):
            fns["oneDNN"]()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    lines += ["", "The oneDNN step's ten most expensive ops (self time, per step):", "",
              "| op | calls | ms | share |", "|---|---|---|---|"]
    for e in events[:10]:
        lines.append(f"| {e.key} | {e.count // prof_steps} | {e.self_cpu_time_total / prof_steps / 1e3:.1f} | "
                     f"{e.self_cpu_time_total / total:.0%} |")

    length = args.window // 2  # the first residual stack of the encoder runs at half the window
    width = hps.width * hps.hvqvae_multipliers[0]
    lines += ["", "The residual blocks' dilated k=3 convolution alone, forward + backward (median of "
              f"{5 if args.smoke else 15} runs, ms):", "",
              "| input [N, C, L] | dilation | oneDNN | native | native / oneDNN |", "|---|---|---|---|---|"]
    lines += _conv_rows([(args.batch, width, length), (args.batch, hps.width, length // 4)],
                        (1, 3) if args.smoke else (1, 3, 9, 27), 5 if args.smoke else 15)
    report("\n".join(lines) + "\n", args.out)


if __name__ == "__main__":
    main()
