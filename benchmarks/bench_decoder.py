"""The dilated residual stacks: the torch reference (cuDNN / oneDNN convolutions) against the
fused extension kernel (``cuda`` on a GPU, ``cpp`` on the CPU), fp32 and bf16.

Rows:
- ``vqvae decode``: the released VQ-VAE decoder (random weights) turning ``--seconds`` of level-0
  codes into audio, end to end (fp32; the transposed convolutions are the same in both runs);
- ``vqvae resblocks``: only the decoder's residual blocks, each on the input it got in that decode;
- ``conditioner resblocks``: the upsamplers' conditioner stack (width 1024, depth 16, dilations
  cycling through 3^0..3^7) on one window of level-1 codes (2048 positions).

Bandwidth counts what a fused block must move: x read once and the output written once, plus
the weights. The reference moves several times that. Speed-up = reference time / kernel time,
both measured in this run.

This benchmark decides the dispatch rule for ``dilated_resblock`` on CUDA
(``jukebox_fast/measured.py``): ``auto`` takes the CUDA kernel only once a committed GPU run of
it shows the kernel ahead of the reference (cuDNN); until then the kernel runs on request. On
the CPU the ``cpp`` kernel's rule is ``CPP_BF16_MAX_WIDTH`` in ``jukebox_fast/ops/resblock.py``,
from ``results/decoder_cpu.md``.

On a CPU without bf16 instructions the bf16 rows are skipped (oneDNN would emulate them: about
30 minutes a row at the released width), unless ``--dtypes`` names bf16.

    python benchmarks/bench_decoder.py --seconds 60 --out benchmarks/results/decoder_h200.md
    python benchmarks/bench_decoder.py --seconds 10 --out benchmarks/results/decoder_cpu.md
    python benchmarks/bench_decoder.py --smoke          # the tiny VQ-VAE: checks the script
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from common import add_smoke, cpu_dtypes, device_name, median_time, record, report, versions
from jukebox_fast import make_vqvae
from jukebox_fast.dispatch import use_backend
from jukebox_fast.hparams import get
from jukebox_fast.models.resnet import ResConv1DBlock, Resnet1D
from jukebox_fast.ops import costs


def captured_blocks(vqvae, codes) -> list[tuple[ResConv1DBlock, torch.Tensor]]:
    """Every residual block of one decode, with a copy of the input it got."""
    seen = []
    hooks = [m.register_forward_pre_hook(lambda m, args: seen.append((m, args[0].clone())))
             for m in vqvae.modules() if isinstance(m, ResConv1DBlock)]
    with torch.no_grad(), use_backend(dilated_resblock="torch"):
        vqvae.decode([codes], start_level=0, end_level=1)
    for h in hooks:
        h.remove()
    return seen


def run_blocks(pairs):
    with torch.no_grad():
        for block, x in pairs:
            block(x)


def cost_of(pairs) -> costs.Cost:
    """What the blocks must move and compute (:func:`costs.dilated_resblock`), summed."""
    total = costs.Cost(0, 0)
    for block, x in pairs:
        n, c, length = x.shape
        total = total + costs.dilated_resblock(n, c, block.model[1].out_channels, length, x.dtype)
    return total


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def conditioner_blocks(device, n: int, length: int = 2048, preset: str = "upsampler_level_0"
                       ) -> list[tuple[ResConv1DBlock, torch.Tensor]]:
    hp = get(preset)
    stack = Resnet1D(hp.cond_width, hp.cond_depth, hp.cond_m_conv, hp.cond_dilation_growth_rate,
                     hp.cond_dilation_cycle, res_scale=True).to(device).eval()
    x = torch.randn(n, hp.cond_width, length, device=device)
    blocks = [m for m in stack.modules() if isinstance(m, ResConv1DBlock)]
    return [(b, x) for b in blocks]  # each block on the same input: the same work as the chain


def cast(pairs, dtype):
    return [(b.to(dtype), x.to(dtype)) for b, x in pairs]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=None, help="audio decoded (default 60 on a GPU, 10 on CPU)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--cond-length", type=int, default=2048, help="positions of the conditioner stack (its window's: 2048)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtypes", nargs="+", default=None, choices=list(DTYPES),
                        help="of the residual-block rows (default fp32 bf16; bf16 only where the CPU has it)")
    parser.add_argument("--out", type=Path, help="write the table (markdown) here as well")
    add_smoke(parser)
    args = parser.parse_args()
    if args.smoke:
        args.seconds, args.runs, args.cond_length, args.dtypes = 0.05, 1, 64, args.dtypes or ["fp32"]
    device = torch.device(args.device)
    kernel = "cuda" if device.type == "cuda" else "cpp"
    seconds = args.seconds or (60.0 if device.type == "cuda" else 10.0)
    dtype_names, skipped = cpu_dtypes(args.dtypes or list(DTYPES), device, args.dtypes is not None, DTYPES)
    torch.backends.cudnn.allow_tf32 = False  # fp32 means fp32 on both sides
    torch.manual_seed(0)

    vqvae = make_vqvae("tiny_vqvae" if args.smoke else "vqvae").to(device).eval()
    n_codes = int(seconds * 44100) // 8
    codes = torch.randint(0, vqvae.hps.l_bins, (args.batch, n_codes), device=device)

    rows, records = [], []

    def timed(name, fn, pairs=None):
        with use_backend(dilated_resblock="torch"):
            t_ref, want = median_time(fn, args.runs, device)
        with use_backend(dilated_resblock=kernel):
            t_ker, got = median_time(fn, args.runs, device)
        diff = "" if want is None else f"{(got.float() - want.float()).abs().max().item():.1e}"
        gbs = ""
        if pairs:
            cost, x = cost_of(pairs), pairs[0][1]
            gbs = f"{cost.bytes / t_ker / 1e9:.0f}"
            records.append(record("dilated_resblock", kernel, "torch", x.dtype, x.shape[1], x.shape[0], name, t_ker,
                                  t_ref, cost, device))
        rows.append((name, t_ref, t_ker, t_ref / t_ker, gbs, diff))

    def decode():
        with torch.no_grad():
            return vqvae.decode([codes], start_level=0, end_level=1)

    timed("vqvae decode, fp32", decode)
    pairs = captured_blocks(vqvae, codes)
    dtypes = [DTYPES[n] for n in dtype_names]
    for dtype in dtypes:
        these = pairs if dtype == torch.float32 else cast(pairs, dtype)
        timed(f"vqvae resblocks ({len(these)}), {str(dtype)[6:]}", lambda: run_blocks(these), these)
    del pairs
    cond = conditioner_blocks(device, args.batch, args.cond_length, "tiny_upsampler" if args.smoke else "upsampler_level_0")
    for dtype in dtypes:
        these = cond if dtype == torch.float32 else cast(cond, dtype)
        timed(f"conditioner resblocks ({len(these)}), {str(dtype)[6:]}", lambda: run_blocks(these), these)

    lines = [
        "# Dilated residual stacks: reference vs fused kernel",
        "",
        ("Smoke run: tiny VQ-VAE and conditioner; the numbers mean nothing. " if args.smoke else "")
        + f"{seconds:g} s of audio ({n_codes} level-0 codes, batch {args.batch}), "
        + ("tiny" if args.smoke else "released") + " VQ-VAE decoder and upsampler-conditioner shapes, random weights, "
        f"median of {args.runs} runs after a warm-up, `torch.no_grad()`, TF32 off.",
        *(f"{note}." for note in skipped),
        f"Machine: {device_name(device)}; {versions()}. Kernel: `{kernel}`.",
        "",
        "| what | reference (s) | kernel (s) | speed-up | kernel GB/s | max abs diff |",
        "|---|---|---|---|---|---|",
    ]
    lines += [f"| {n} | {a:.3f} | {b:.3f} | {r:.2f}x | {g} | {d} |" for n, a, b, r, g, d in rows]
    report("\n".join(lines) + "\n", args.out, records)


if __name__ == "__main__":
    main()
