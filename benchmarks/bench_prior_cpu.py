"""One training step (forward + backward) of a prior: jukebox_fast, eager and compiled, against HF
transformers' port.

Same random weights (copied through checkpoint.openai_to_hf), same codes and labels, same
process. ``--rounds`` rounds; in each, every implementation runs ``--steps`` steps in turn (the
order rotating from round to round, so that machine noise hits all alike) and its round time is
the median of those steps. A table cell is the median round (the range over rounds); a ratio is
HF's time over ours within a round: its median and its worst round. GFLOP: the matrix products
of one step (torch's ``FlopCounterMode``: matmuls, convolutions, attention), ours and HF's; HF's
rate is those FLOPs over its median step, against the fp32 rate of one large matmul on this
machine, measured in the same run: a step that already runs near that rate can be beaten only by
doing fewer products. "compiled" is
``TrainConfig(compile=True)``: each transformer block compiled with torch.compile
(``jukebox_fast/train/compiled.py``); the compiler's own time (first steps) is reported beside it,
not in the step time. Also checks that all give the same loss.

    python benchmarks/bench_prior_cpu.py --out benchmarks/results/prior_cpu.md
    python benchmarks/bench_prior_cpu.py --smoke     # one preset, one short round: checks the script
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from jukebox_fast.models.resnet import set_recompute
from jukebox_fast.train.compiled import compile_blocks

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from common import add_smoke, device_name, git_commit, report  # noqa: E402
from prior_inputs import codes, labels  # noqa: E402
from test_prior_hf_parity import build_pair  # noqa: E402

# Released widths and attention blocks (96 and 64 positions), few layers and a short context, so
# that a CPU steps them in about a second.
RELEASED = {
    "prior_1b_lyrics": dict(prior_depth=2, n_ctx=512, n_tokens=64, blocks=6),
    "upsampler_level_1": dict(prior_depth=2, n_ctx=512, blocks=8, cond_depth=2),
}


def _rounds(fns: dict, rounds: int, steps: int) -> dict[str, list[float]]:
    """Per implementation, its median step time (s) in each round; the order turns every round."""
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


def _flops(fn) -> int:
    """The FLOPs of one call of ``fn``'s matrix products."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def matmul_rate(m: int = 1024, k: int = 2048, n: int = 2048, runs: int = 20) -> float:
    """FLOP/s of an [m, k] x [k, n] fp32 matmul, the best of ``runs`` after three warm-ups (a
    ceiling, so the fastest): a width-2048 layer's product over 1024 positions."""
    a, b = torch.randn(m, k), torch.randn(k, n)
    for _ in range(3):  # one warm-up read 30 % under the rate a minute later
        a @ b
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t0)
    return 2 * m * k * n / min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["tiny_prior", "tiny_prior_5b_lyrics", "tiny_upsampler"])
    parser.add_argument("--released", nargs="*", default=[], choices=list(RELEASED),
                        help="also these released widths, reduced (RELEASED in this script)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10, help="steps per implementation per round")
    parser.add_argument("--no-compile", action="store_true", help="leave out the compiled rows")
    parser.add_argument("--out", type=Path)
    add_smoke(parser)
    args = parser.parse_args()
    if args.smoke:
        args.presets, args.released, args.batch, args.rounds, args.steps = ["tiny_prior"], [], 1, 1, 1
        args.no_compile = True  # the compiler alone takes a minute
    import transformers

    lines = [
        "# Prior training step on CPU: jukebox_fast vs HF transformers",
        "",
        f"Machine: {device_name('cpu')}; torch {torch.__version__}, transformers {transformers.__version__}, "
        f"commit {git_commit()}.",
        f"Batch {args.batch} (1 for the 5b_lyrics structure: HF gives every row row 0's lyrics); forward + "
        f"backward of the training loss; {args.rounds} rounds of {args.steps} steps of each implementation in "
        "turn, the order rotating. Cells: the median round's step time (the range over rounds); ratios: HF / "
        "ours in the same round, median (worst round). The upsampler's conditioner keeps its activations, as "
        "`train_prior` runs it where memory allows; HF's port keeps them too. Compile: the seconds the first "
        "compiled step took (the compiler, with a cold cache unless said), not counted in the step times.",
        "",
        "| preset | parameters | eager (ms) | compiled (ms) | HF (ms) | HF / eager | HF / compiled | compile (s) | "
        "loss difference | GFLOP, ours / HF | HF's rate (of the matmul's) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    rate_shape = (64, 64, 64) if args.smoke else ()  # the default: a width-2048 layer
    rate = matmul_rate(*rate_shape)
    hf_rates = {}  # line -> HF's FLOP/s
    for name, overrides in [(p, {}) for p in args.presets] + [(p, RELEASED[p]) for p in args.released]:
        ours, hf = build_pair(name, **overrides)
        set_recompute(ours.train(), False)
        hf.train()
        n = 1 if "5b_lyrics" in name else args.batch
        zs, y = codes(ours, n), labels(ours, n)

        def step(model):
            def run():
                loss, _ = model(zs, y)
                loss.backward()
                return loss
            return run

        def step_hf():
            if ours.n_tokens:
                loss, _ = hf.forward_tokens(zs[0], [], y)
            else:  # HF's forward_tokens fails without lyrics: its conditioning, then its LM
                audio, meta, _ = hf.get_cond(zs[1:], y)
                loss, _ = hf.prior(zs[0], audio, meta)
            loss.backward()
            return loss

        fns = {"eager": step(ours), "hf": step_hf}
        flops = {"eager": _flops(fns["eager"]), "hf": _flops(step_hf)}  # also warm-ups
        reference = step_hf()
        diffs = [float((fns["eager"]() - reference).abs())]  # also the warm-up
        compile_s = None
        if not args.no_compile:
            compiled = copy.deepcopy(ours)
            compile_blocks(compiled)
            fns["compiled"] = step(compiled)
            t0 = time.perf_counter()
            diffs.append(float((fns["compiled"]() - reference).abs()))
            compile_s = time.perf_counter() - t0
            fns["compiled"]()
        times = _rounds(fns, args.rounds, args.steps)

        def cell(key):
            if key not in times:
                return "–"
            t = times[key]
            return f"{statistics.median(t) * 1e3:.1f} ({min(t) * 1e3:.1f}-{max(t) * 1e3:.1f})"

        def ratio(key):
            if key not in times:
                return "–"
            r = [h / o for h, o in zip(times["hf"], times[key])]
            return f"{statistics.median(r):.2f}x ({min(r):.2f}x)"

        label = name + (" (" + ", ".join(f"{k}={v}" for k, v in overrides.items()) + ")" if overrides else "")
        params = sum(p.numel() for p in ours.parameters())
        lines.append(f"| {label} | {params:,} | {cell('eager')} | {cell('compiled')} | {cell('hf')} | {ratio('eager')} | "
                     f"{ratio('compiled')} | {'–' if compile_s is None else f'{compile_s:.0f}'} | {max(diffs):.1e} | "
                     f"{flops['eager'] / 1e9:.2f} / {flops['hf'] / 1e9:.2f} | ")
        hf_rates[len(lines) - 1] = flops["hf"] / statistics.median(times["hf"])
        print(lines[-1], file=sys.stderr, flush=True)
    rate = max(rate, matmul_rate(*rate_shape))
    for i, hf_rate in hf_rates.items():  # against the faster of the two measures of the rate
        lines[i] += f"{hf_rate / 1e9:.0f} GFLOP/s ({hf_rate / rate:.0%}) |"
    lines += ["", f"The machine's fp32 matmul rate: {rate / 1e9:.0f} GFLOP/s ([1024, 2048] x [2048, 2048], the best "
              "of 20 at the start of the run and 20 at its end)."]
    report("\n".join(lines) + "\n", args.out)


if __name__ == "__main__":
    main()
