"""Sampling speed: tokens per second of the cached decoder, and on a GPU the bandwidth it reaches.

GPU (default there): the released upsampler and 1b_lyrics shapes with random weights, the
transformer body in bf16 (``Sampling(dtype=torch.bfloat16)``), batch 1 and 16, with each decode
step implementation (``torch``: the PyTorch layer loop with the reference attention; ``triton``:
``kernels/decode_step.py``, three launches a layer), and the Triton step with weight-only int8
projections of the same weights. A window is prefilled to ``--prefill`` tokens,
then ``--steps`` decode steps are timed, eagerly and replaying a CUDA graph. Bandwidth = (bytes of
transformer weights + bytes of KV cache each step reads) / step time, against the copy bandwidth
measured in the same run. Kernels per step: the CUDA kernels one eager step launches (profiler).

CPU (default there, or ``--hf``): the same weights in jukebox_fast and in HF transformers'
``JukeboxPrior`` (reduced presets), each sampling one window ancestrally; the table gives the
rates of our sampler with the step the dispatch picks (the C++ ``decode_layers`` kernel) and with
the PyTorch reference step, HF's rate, and the ratios. Without transformers that comparison says
so and the rest runs.

``--smoke`` (or ``--dry-run``): the GPU table's code at a tiny size on whatever device is here (a
CPU check of the script).

    python benchmarks/bench_sampling.py --out benchmarks/results/sampling_h200.md
    python benchmarks/bench_sampling.py --hf --out benchmarks/results/sampling_cpu.md
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch

from common import add_smoke, device_name, median_time, record, report, sync, versions
from jukebox_fast import extension, hparams, make_prior
from jukebox_fast.dispatch import use_backend
from jukebox_fast.models.decoding import IncrementalDecoder
from jukebox_fast.models.transformer import weights_in
from jukebox_fast.ops import costs
from jukebox_fast.sample import Sampling, draw, sample_window

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def _conditioning(prior, n: int, device):
    """Random codes and labels for one window of ``prior``."""
    from prior_inputs import codes, labels

    zs, y = codes(prior, n), labels(prior, n)
    return [z.to(device) for z in zs], y.to(device)


def step_cost(decoder: IncrementalDecoder) -> costs.Cost:
    """What one decode step must read at the decoder's position (:func:`costs.decode_step`): every
    layer's weights as the step holds them (converted to the body's dtype), x_out, and the cache
    slots each layer's pattern sees, for the whole batch."""
    weights = [w for c in decoder.caches for w in c.weights] + [decoder.ar.x_out.weight]
    reads = []
    for c in decoder.caches:
        lo, hi = c.layout.visible(decoder.position.view(()))
        reads.append((c.k.shape[1], c.k.shape[3], int(hi - lo)))
    return costs.decode_step(weights, reads, decoder.n, decoder.dtype, decoder.ar.width)


def copy_gbs(device: str) -> float:
    """Device-to-device copy bandwidth (bytes read + written per second), measured here."""
    src = torch.empty(1 << 28 if device == "cuda" else 1 << 22, device=device).uniform_()
    dst = torch.empty_like(src)
    seconds, _ = median_time(lambda: dst.copy_(src), 10, device)
    return 2 * src.numel() * 4 / seconds / 1e9


def kernels_per_step(decoder: IncrementalDecoder, token: torch.Tensor) -> int | str:
    """CUDA kernels one eager decode step launches (profiler); "–" off CUDA."""
    if decoder.device.type != "cuda":
        return "–"
    from torch.profiler import ProfilerActivity, profile

    position = decoder.position.clone()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        decoder.step(token)
        torch.cuda.synchronize()
    decoder.position.copy_(position)
    return sum(1 for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA)


def gpu_rows(args, lines, device: str, peak: float, records: list[dict]) -> None:
    for name in args.models:
        prior = make_prior(hparams.get(name, **TINY) if args.dry_run else name, device=device).eval()
        int8 = weights_in(copy.deepcopy(prior), "int8")  # weight-only int8 of the same weights
        for n in args.batch:
            zs, y = _conditioning(prior, n, device)
            with torch.no_grad():
                tokens, x_cond, y_cond, enc, _ = prior.lm_inputs(zs[0], zs[1:], y)
            prefill = min(args.prefill, tokens.shape[1] - 1)
            times = {}
            for step_impl, model in (("torch", prior), ("triton", prior), ("triton, int8 weights", int8)):
                for graph in (False, True) if device == "cuda" else (False,):
                    row = f"| {name} | {n} | {step_impl} | {'graph' if graph else 'eager'} |"
                    try:
                        with use_backend(decode_layers=step_impl.split(",")[0]):
                            decoder = IncrementalDecoder(model.prior, n, x_cond, y_cond, enc, dtype=args.dtype)
                    except Exception as e:  # noqa: BLE001 - an implementation that cannot run here says why
                        lines.append(f"{row} not run: {str(e).splitlines()[0][:160]} | – | – | – | – | – |")
                        continue
                    decoder.prefill(tokens[:, :prefill])
                    cost = step_cost(decoder)
                    bytes_read = cost.bytes
                    token = tokens[:, prefill - 1]
                    kernels = kernels_per_step(decoder, token)
                    if graph:
                        decoder.capture()
                    for _ in range(3):  # warm-up
                        token = draw(decoder.step(token), 0.99)
                    sync(device)
                    t0 = time.perf_counter()
                    for _ in range(args.steps):
                        token = draw(decoder.step(token), 0.99)
                    sync(device)
                    step = (time.perf_counter() - t0) / args.steps
                    times[step_impl, graph] = step
                    gbs = bytes_read / step / 1e9
                    lines.append(f"{row} {step * 1e3:.3f} | {n / step:.0f} | {kernels} | {bytes_read / 1e9:.3f} | "
                                 f"{gbs:.0f} | {gbs / peak:.0%} |")
                    print(lines[-1], file=sys.stderr, flush=True)
            for graph in (False, True):
                if ("triton", graph) in times and ("torch", graph) in times:
                    records.append(record("decode_layers", "triton", "torch", decoder.dtype, prior.prior.width, n,
                                          f"{name}, position {prefill}, {'CUDA graph' if graph else 'eager'}",
                                          times["triton", graph], times["torch", graph], cost, device))
        del prior, int8
        if device == "cuda":
            torch.cuda.empty_cache()


def hf_rows(args, lines):
    try:
        from test_prior_hf_parity import hf_config
        from transformers.models.deprecated.jukebox import modeling_jukebox as jukebox
    except (ImportError, Exception) as e:  # noqa: BLE001 - pytest.skip at import raises its own type
        lines.append(f"| HF comparison not run: transformers' Jukebox port is not importable here ({e}) "
                     "| | | | | | | |")
        return

    from jukebox_fast.checkpoint import openai_to_hf

    for name, overrides in CPU_PRESETS.items():
        torch.manual_seed(0)
        ours = make_prior(hparams.get(name, **overrides)).eval()
        cfg = hf_config(ours.hps, ours.vqvae_hps)
        hf = jukebox.JukeboxPrior(cfg, level=cfg.level, nb_priors=ours.vqvae_hps.levels).eval()
        hf.load_state_dict(openai_to_hf(ours.state_dict()), strict=True)
        for n in args.cpu_batch:
            zs, y = _conditioning(ours, n, "cpu")
            tokens = ours.hps.n_ctx
            empty = torch.zeros(n, 0, dtype=torch.long)
            z_cond = zs[1] if len(zs) > 1 else None

            def mine(step):
                with use_backend(decode_layers=step):
                    sample_window(ours, empty, tokens, z_cond, y, Sampling(temp=1.0, progress=False))

            def theirs():
                with torch.no_grad():
                    hf.sample(n, music_tokens=empty, music_tokens_conds=zs[1:] or None, metadata=y, temp=1.0,
                              sample_tokens=tokens, chunk_size=32)

            kernel = median_time(lambda: mine("auto"), args.runs)[0]
            reference = median_time(lambda: mine("torch"), args.runs)[0]
            hf_time = median_time(theirs, args.runs)[0]
            label = f"{name} ({', '.join(f'{k}={v}' for k, v in overrides.items())})"
            rate = n * tokens
            lines.append(f"| {label} | {n} | {tokens} | {rate / kernel:.0f} | {rate / reference:.0f} | "
                         f"{rate / hf_time:.0f} | {hf_time / kernel:.2f}x | {hf_time / reference:.2f}x |")
            print(lines[-1], file=sys.stderr, flush=True)


# The released widths with a few layers, decoding at a long cache on a CPU.
RELEASED_CPU = {
    "prior_5b": dict(prior_depth=4, n_ctx=2048),
    "prior_1b_lyrics": dict(prior_depth=4, n_ctx=2048),
    "upsampler_level_1": dict(prior_depth=4, n_ctx=2048, cond_width=64, cond_depth=2),
}


class _Clock:
    """Stands in for sample_window's progress bar: a timestamp after every decode step."""

    def __init__(self):
        self.stamps = []

    def update(self, n: int) -> None:
        self.stamps.append(time.perf_counter())


def _hf_step_clock(hf) -> tuple[_Clock, object]:
    """Timestamps at the start of each of HF's one-token transformer calls (its decode steps;
    the prefix goes through in chunks before them). Returns the clock and the hook's handle."""
    clock = _Clock()

    def hook(module, args, kwargs):
        if args[0].shape[1] == 1:
            clock.update(1)

    return clock, hf.prior.transformer.register_forward_pre_hook(hook, with_kwargs=True)


def _step_seconds(clock: _Clock) -> float:
    """Median seconds between consecutive steps (the first, after the prefill, left out)."""
    gaps = [b - a for a, b in zip(clock.stamps[1:], clock.stamps[2:])]
    return statistics.median(gaps)


def released_rows(args, lines):
    """Decode steps at the released widths after a long prefix, timed step by step: ours with
    fp32, fp16 and int8 projection matrices (fp16 values throughout, so every row reads the same
    model) and HF's sampler (fp32), interleaved run after run in this process."""
    try:
        from test_prior_hf_parity import hf_config
        from transformers.models.deprecated.jukebox import modeling_jukebox as jukebox
    except (ImportError, Exception) as e:  # noqa: BLE001 - pytest.skip at import raises its own type
        jukebox, why = None, str(e).splitlines()[0]
    from jukebox_fast.checkpoint import openai_to_hf

    prefix, new = args.cpu_prefill, args.cpu_steps
    for name in args.released_models:
        overrides = RELEASED_CPU[name]
        torch.manual_seed(0)
        fp32 = weights_in(make_prior(hparams.get(name, fp16_params=False, **overrides)).eval(), "fp16")
        half = fp32
        fp32 = weights_in(copy.deepcopy(half), "stored")
        for m in fp32.modules():  # the fp16 values, as fp32: one model in every row
            if hasattr(m, "w_scale"):
                m.w.data = m.w.data.float()
        int8 = weights_in(copy.deepcopy(fp32), "int8")
        ours = {"fp32": fp32, "fp16": half, "int8": int8}
        hf = None
        if jukebox is not None:
            cfg = hf_config(fp32.hps, fp32.vqvae_hps)
            hf = jukebox.JukeboxPrior(cfg, level=cfg.level, nb_priors=fp32.vqvae_hps.levels).eval()
            hf.load_state_dict(openai_to_hf(fp32.state_dict()), strict=True)
        for n in args.cpu_batch:
            zs, y = _conditioning(fp32, n, "cpu")
            z_cond = zs[1] if len(zs) > 1 else None
            context = zs[0][:, :prefix]

            def run_ours(prior) -> float:
                clock = _Clock()
                sample_window(prior, context, prefix + new, z_cond, y, Sampling(temp=1.0, progress=False), clock)
                return _step_seconds(clock)

            def run_hf() -> float:
                clock, handle = _hf_step_clock(hf)
                try:
                    with torch.no_grad():
                        hf.sample(n, music_tokens=context, music_tokens_conds=zs[1:] or None, metadata=y, temp=1.0,
                                  sample_tokens=prefix + new, chunk_size=32)
                finally:
                    handle.remove()
                return _step_seconds(clock)

            samplers = {**{k: (lambda p=p: run_ours(p)) for k, p in ours.items()}, **({"HF": run_hf} if hf else {})}
            runs = {k: [] for k in samplers}
            for r in range(args.runs):  # interleaved, the order turning each run
                order = list(samplers)[r % len(samplers):] + list(samplers)[: r % len(samplers)]
                for k in order:
                    runs[k].append(samplers[k]())
            rate = {k: n / statistics.median(v) for k, v in runs.items()}
            spread = {k: f"{n / max(v):.0f}-{n / min(v):.0f}" for k, v in runs.items()}
            hps = fp32.hps
            cells = [f"{rate[k]:.0f} ({spread[k]})" for k in ("fp32", "fp16", "int8")]
            if hf:
                worst = {k: min(h / o for h, o in zip(runs["HF"], runs[k])) for k in ours}
                cells += [f"{rate['HF']:.0f} ({spread['HF']})"]
                cells += [f"{rate[k] / rate['HF']:.2f}x (worst {worst[k]:.2f}x)" for k in ("fp32", "fp16", "int8")]
            else:
                cells += [f"not run: {why}", "–", "–", "–"]
            lines.append(f"| {name} (width {hps.prior_width}, {hps.prior_depth} layers) | {n} | {prefix} | "
                         + " | ".join(cells) + " |")
            print(lines[-1], file=sys.stderr, flush=True)


# --dry-run: the released structures at a width and length that run anywhere in seconds.
TINY = dict(vqvae="tiny_vqvae", n_ctx=64, prior_width=32, prior_depth=4, heads=1, blocks=8, n_tokens=16,
            cond_width=16, cond_depth=2, min_duration=1.0)

# Reduced versions of the released structures that sample a window on a CPU in seconds.
CPU_PRESETS = {
    "upsampler_level_1": dict(vqvae="tiny_vqvae", n_ctx=1024, prior_width=256, prior_depth=8, heads=1, blocks=16,
                              cond_width=64, cond_depth=4),
    "prior_1b_lyrics": dict(vqvae="tiny_vqvae", n_ctx=768, prior_width=256, prior_depth=16, heads=2, blocks=16,
                            n_tokens=64, min_duration=1.0),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["upsampler_level_0", "prior_1b_lyrics"])
    parser.add_argument("--batch", type=int, nargs="+", default=None, help="GPU default 1 16; dry run 2")
    parser.add_argument("--cpu-batch", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--prefill", type=int, default=4096, help="tokens prefilled before the timed steps")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--runs", type=int, default=3, help="CPU: timed windows per sampler (median)")
    parser.add_argument("--hf", action="store_true", help="the CPU comparison with HF even where a GPU is present")
    parser.add_argument("--dry-run", action="store_true", help="the GPU table at a tiny size on this device")
    parser.add_argument("--released", action="store_true", help="CPU: also the released widths at a long cache")
    parser.add_argument("--cpu-prefill", type=int, default=1984, help="CPU, released widths: the prefix decoded from")
    parser.add_argument("--cpu-steps", type=int, default=33, help="CPU, released widths: tokens sampled after it")
    parser.add_argument("--released-models", nargs="+", default=list(RELEASED_CPU), choices=list(RELEASED_CPU),
                        help="CPU: which released widths")
    parser.add_argument("--no-small", action="store_true", help="CPU: only the released widths (with --released)")
    parser.add_argument("--out", type=Path)
    add_smoke(parser)
    args = parser.parse_args()
    args.dry_run = args.dry_run or args.smoke
    gpu = torch.cuda.is_available() and not args.hf
    device = "cuda" if gpu else "cpu"
    lines = ["# Sampling speed", "", f"Device: {device_name(device)}; {versions()}.", ""]
    records: list[dict] = []
    if gpu or args.dry_run:
        args.dtype = torch.bfloat16 if device == "cuda" else None
        args.batch = args.batch or ([2] if args.dry_run else [1, 16])
        if args.dry_run:
            args.prefill, args.steps = 8, 4
        peak = copy_gbs(device)
        lines += [f"{'Dry run: tiny presets. ' if args.dry_run else ''}Transformer body in "
                  f"{str(args.dtype or torch.float32).removeprefix('torch.')}, random weights, {args.steps} timed "
                  f"steps after a prefill of {args.prefill} tokens (bytes read per step at that position); "
                  f"copy bandwidth measured here: {peak:.0f} GB/s. Kernels: CUDA kernels per eager step.", "",
                  "| model | batch | step | mode | step (ms) | tokens/s | kernels | GB read per step | GB/s | "
                  "of copy bandwidth |", "|---|---|---|---|---|---|---|---|---|---|"]
        gpu_rows(args, lines, device, peak, records)
    else:
        why = extension.load()
        if not args.no_small:
            lines += [f"fp32, the same random weights in both, one window sampled ancestrally (temp 1) per run, "
                      f"median of {args.runs} runs after a warm-up; HF uses chunk_size 32. `auto` is the decode step the "
                      "dispatch picks here (the C++ kernel where the extension builds); `torch` forces the PyTorch "
                      "reference step. C++ extension: " + (f"not available ({why})" if why else "loaded") + ".", "",
                      "| preset | batch | tokens | tokens/s auto | tokens/s torch | HF tokens/s | auto vs HF | "
                      "torch vs HF |", "|---|---|---|---|---|---|---|---|"]
            hf_rows(args, lines)
        if args.released:
            lines += ["", "## Released widths at a long cache", "",
                      f"The released widths with {RELEASED_CPU['prior_5b']['prior_depth']} layers, random weights "
                      "rounded to fp16 (as the 5b priors store their projections) and read in every column as those "
                      "values: the C++ step with fp32, fp16 and int8 projection matrices (int8: weight-only, one scale "
                      "per output column, of the same values) and HF's sampler (fp32). After a prefix of "
                      f"{args.cpu_prefill} tokens, {args.cpu_steps} tokens sampled; each decode step timed on its own "
                      "(ours: between sample_window's progress updates; HF: between its one-token transformer calls), "
                      f"the median step of a run; {args.runs} runs, the samplers interleaved and their order turning. "
                      "Cells: tokens/s of the median run (the range over runs); ratios: median, and the worst run's "
                      "(ours / HF in the same round).", "",
                      "| preset | batch | prefix | C++ fp32 | C++ fp16 | C++ int8 | HF | fp32 vs HF | fp16 vs HF | "
                      "int8 vs HF |", "|---|---|---|---|---|---|---|---|---|---|"]
            released_rows(args, lines)
    report("\n".join(lines) + "\n", args.out, records)


if __name__ == "__main__":
    main()
