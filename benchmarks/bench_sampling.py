"""Sampling speed: tokens per second of the cached decoder, and on a GPU the bandwidth it reaches.

GPU (default there): the released upsampler and 1b_lyrics shapes with random weights, the
transformer body in bf16 (``Sampling(dtype=torch.bfloat16)``), batch 1 and 16, with each decode
step implementation (``torch``: the PyTorch layer loop with the reference attention; ``triton``:
the same with the Triton decode-attention kernel). A window is prefilled to ``--prefill`` tokens,
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
import sys
import time
from pathlib import Path

import torch

from common import add_smoke, device_name, median_time, record, report, sync, versions
from jukebox_fast import extension, hparams, make_prior
from jukebox_fast.dispatch import use_backend
from jukebox_fast.models.decoding import IncrementalDecoder
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
        for n in args.batch:
            zs, y = _conditioning(prior, n, device)
            with torch.no_grad():
                tokens, x_cond, y_cond, enc, _ = prior.lm_inputs(zs[0], zs[1:], y)
            prefill = min(args.prefill, tokens.shape[1] - 1)
            times = {}
            for step_impl in ("torch", "triton"):
                for graph in (False, True) if device == "cuda" else (False,):
                    row = f"| {name} | {n} | {step_impl} | {'graph' if graph else 'eager'} |"
                    try:
                        with use_backend(decode_layers=step_impl):
                            decoder = IncrementalDecoder(prior.prior, n, x_cond, y_cond, enc, dtype=args.dtype)
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
        del prior
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


def _with_matrices(prior, dtype):
    """A copy of ``prior`` whose projection matrices (every Conv1D weight) are ``dtype``, as the
    5b priors store theirs in fp16 (``fp16_params``)."""
    import copy

    from jukebox_fast.models.transformer import Conv1D

    other = copy.deepcopy(prior)
    for m in other.modules():
        if isinstance(m, Conv1D):
            m.w.data = m.w.data.to(dtype)
    return other


def released_rows(args, lines):
    """Decode steps per second at the released widths, at a long cache: ours with 16-bit and with
    fp32 projection matrices (the same values), our PyTorch step, and HF's sampler."""
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
        fp32 = make_prior(hparams.get(name, fp16_params=False, **overrides)).eval()
        half = _with_matrices(fp32, torch.float16)
        fp32 = _with_matrices(half, torch.float32)  # the fp16 values, as fp32: one model in every row
        hf = None
        if jukebox is not None:
            cfg = hf_config(fp32.hps, fp32.vqvae_hps)
            hf = jukebox.JukeboxPrior(cfg, level=cfg.level, nb_priors=fp32.vqvae_hps.levels).eval()
            hf.load_state_dict(openai_to_hf(fp32.state_dict()), strict=True)
        for n in args.cpu_batch:
            zs, y = _conditioning(fp32, n, "cpu")
            z_cond = zs[1] if len(zs) > 1 else None
            context = zs[0][:, :prefix]

            def ours(prior, step, total):
                with use_backend(decode_layers=step):
                    sample_window(prior, context, total, z_cond, y, Sampling(temp=1.0, progress=False))

            def theirs(total):
                with torch.no_grad():
                    hf.sample(n, music_tokens=context, music_tokens_conds=zs[1:] or None, metadata=y, temp=1.0,
                              sample_tokens=total, chunk_size=32)

            def rate(fn) -> float:
                """Tokens/s of the decode steps alone: a window of prefix + new tokens minus one of
                prefix + 1 (the same prefill), median of the runs."""
                long_run = median_time(lambda: fn(prefix + new), args.runs)[0]
                short_run = median_time(lambda: fn(prefix + 1), args.runs)[0]
                if long_run - short_run < 0.1 * long_run:  # the steps drown in the prefill's noise
                    raise ValueError(f"the {new - 1} steps took under a tenth of the run ({long_run:.3f} s vs "
                                     f"{short_run:.3f} s): pass a larger --cpu-steps")
                return n * (new - 1) / (long_run - short_run)

            cpp16 = rate(lambda t: ours(half, "auto", t))
            cpp32 = rate(lambda t: ours(fp32, "auto", t))
            ref = rate(lambda t: ours(fp32, "torch", t))
            hf_rate = rate(theirs) if hf is not None else None
            hps = fp32.hps
            label = f"{name} (width {hps.prior_width}, {hps.prior_depth} layers)"
            hf_cells = (f"{hf_rate:.0f} | {cpp16 / hf_rate:.2f}x | {cpp32 / hf_rate:.2f}x" if hf_rate
                        else f"not run: {why} | – | –")
            lines.append(f"| {label} | {n} | {prefix} | {cpp16:.0f} | {cpp32:.0f} | {ref:.0f} | {hf_cells} | "
                         f"{cpp16 / cpp32:.2f}x |")
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
            lines += ["", f"## Released widths at a long cache", "",
                      f"The released widths with {RELEASED_CPU['prior_5b']['prior_depth']} layers, random weights "
                      f"rounded to fp16 (as the 5b priors store their projections) and used as such in every column: "
                      f"fp16 matrices streamed by the C++ step, the same values as fp32 matrices, our PyTorch step, "
                      f"HF's sampler (fp32). Steps after a prefix of {args.cpu_prefill} tokens: tokens/s of "
                      f"{args.cpu_steps - 1} decode steps, from a window of prefix + {args.cpu_steps} tokens minus one "
                      f"of prefix + 1, median of {args.runs} runs.", "",
                      "| preset | batch | prefix | C++ fp16 weights | C++ fp32 weights | torch step | HF | "
                      "fp16 vs HF | fp32 vs HF | fp16 vs fp32 |", "|---|---|---|---|---|---|---|---|---|---|"]
            released_rows(args, lines)
    report("\n".join(lines) + "\n", args.out, records)


if __name__ == "__main__":
    main()
