"""Sampling speed: tokens per second of the cached decoder, and on a GPU the bandwidth it reaches.

GPU (default there): the released upsampler and 1b_lyrics shapes with random weights in bf16,
batch 1 and 16. A window is prefilled to ``--prefill`` tokens, then ``--steps`` decode steps are
timed, eagerly and replaying a CUDA graph. Bandwidth = (bytes of transformer weights + bytes of
KV cache each step reads) / step time, set against ``--peak-gbs``.

CPU (default there, or ``--hf``): the same weights in jukebox_fast and in HF transformers'
``JukeboxPrior`` (reduced presets), each sampling one window ancestrally; the table gives the
rates of our sampler with the step the dispatch picks (the C++ ``decode_layers`` kernel) and with
the PyTorch reference step, HF's rate, and the ratios.

    python benchmarks/bench_sampling.py --out benchmarks/results/sampling_h200.md
    python benchmarks/bench_sampling.py --hf --out benchmarks/results/sampling_cpu.md
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from common import device_name, median_time, report, sync, versions
from jukebox_fast import extension, hparams, make_prior
from jukebox_fast.dispatch import use_backend
from jukebox_fast.models.decoding import IncrementalDecoder
from jukebox_fast.sample import Sampling, draw, sample_window

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def _conditioning(prior, n: int, device):
    """Random codes and labels for one window of ``prior``."""
    from test_prior_hf_parity import codes, labels

    zs, y = codes(prior, n), labels(prior, n)
    return [z.to(device) for z in zs], y.to(device)


def step_bytes(decoder: IncrementalDecoder) -> int:
    """Bytes one decode step reads at the decoder's position: every transformer weight once
    (plus x_out), and the cache slots each layer's pattern sees, for the whole batch."""
    ar = decoder.ar
    weights = sum(p.numel() * p.element_size() for p in ar.transformer.parameters()) + \
        ar.x_out.weight.numel() * ar.x_out.weight.element_size()
    cache = 0
    for c in decoder.caches:
        lo, hi = c.layout.visible(decoder.position.view(()))
        slots = int(hi - lo)
        cache += 2 * slots * c.k.shape[0] * c.k.shape[1] * c.k.shape[3] * c.k.element_size()
    return weights + cache


def gpu_rows(args, lines):
    device = "cuda"
    for name in args.models:
        prior = make_prior(name, device=device).eval().to(torch.bfloat16)
        for n in args.batch:
            zs, y = _conditioning(prior, n, device)
            with torch.no_grad():
                tokens, x_cond, y_cond, enc, _ = prior.lm_inputs(zs[0], zs[1:], y)
            for graph in (False, True):
                decoder = IncrementalDecoder(prior.prior, n, x_cond, y_cond, enc)
                decoder.prefill(tokens[:, : args.prefill])
                bytes_read = step_bytes(decoder)
                token = tokens[:, args.prefill - 1]
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
                gbs = bytes_read / step / 1e9
                lines.append(f"| {name} | {n} | {'graph' if graph else 'eager'} | {step * 1e3:.3f} | "
                             f"{n / step:.0f} | {bytes_read / 1e9:.3f} | {gbs:.0f} | {gbs / args.peak_gbs:.0%} |")
                print(lines[-1], file=sys.stderr, flush=True)
        del prior
        torch.cuda.empty_cache()


def hf_rows(args, lines):
    from test_prior_hf_parity import hf_config

    from jukebox_fast.checkpoint import openai_to_hf
    from transformers.models.deprecated.jukebox import modeling_jukebox as jukebox

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
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--cpu-batch", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--prefill", type=int, default=4096, help="tokens prefilled before the timed steps")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--runs", type=int, default=3, help="CPU: timed windows per sampler (median)")
    parser.add_argument("--peak-gbs", type=float, default=4800.0, help="the device's HBM bandwidth (H200: 4.8 TB/s)")
    parser.add_argument("--hf", action="store_true", help="the CPU comparison with HF even where a GPU is present")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    gpu = torch.cuda.is_available() and not args.hf
    device = "cuda" if gpu else "cpu"
    lines = ["# Sampling speed", "", f"Device: {device_name(device)}; {versions()}.", ""]
    if gpu:
        lines += [f"bf16, random weights, {args.steps} timed steps after a prefill of {args.prefill} tokens "
                  f"(bytes read per step at that position); peak {args.peak_gbs:.0f} GB/s.", "",
                  "| model | batch | mode | step (ms) | tokens/s | GB read per step | GB/s | of peak |",
                  "|---|---|---|---|---|---|---|---|"]
        gpu_rows(args, lines)
    else:
        why = extension.load()
        lines += [f"fp32, the same random weights in both, one window sampled ancestrally (temp 1) per run, median "
                  f"of {args.runs} runs after a warm-up; HF uses chunk_size 32. `auto` is the decode step the "
                  "dispatch picks here (the C++ kernel where the extension builds); `torch` forces the PyTorch "
                  "reference step. C++ extension: " + (f"not available ({why})" if why else "loaded") + ".", "",
                  "| preset | batch | tokens | tokens/s auto | tokens/s torch | HF tokens/s | auto vs HF | "
                  "torch vs HF |", "|---|---|---|---|---|---|---|---|"]
        hf_rows(args, lines)
    report("\n".join(lines) + "\n", args.out)


if __name__ == "__main__":
    main()
