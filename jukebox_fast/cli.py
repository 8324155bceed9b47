"""The ``jukebox-fast`` command."""
from __future__ import annotations

import argparse
import sys

EXAMPLES = """examples:
  jukebox-fast info                      what runs on this machine, op by op
  jukebox-fast demo --out demo_out       fit tiny_vqvae to a synthetic clip, write wav + PNG
  jukebox-fast demo --steps 20 --seconds 2
"""


def _info(args: argparse.Namespace) -> int:
    from .info import report

    print(report())
    return 0


def _demo(args: argparse.Namespace) -> int:
    from .demo import run

    report = run(args.out, seconds=args.seconds, steps=args.steps, batch=args.batch, seed=args.seed,
                 progress=not args.quiet)
    t = report["timings"]
    print(f"wrote {args.out}/: input.wav, recon_level{{0,1,2}}.wav, spectrogram.png, codes.pt, "
          f"vqvae.pth.tar, report.json")
    print(f"fit {report['steps']} steps in {t['fit_s']:.1f} s (loss {report['loss_first']} -> {report['loss_last']}); "
          f"encode {t['encode_s']:.2f} s, decode level 0 {t['decode_level0_s']:.2f} s")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jukebox-fast",
        description="OpenAI's Jukebox with fast kernels and original-compatible checkpoints.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    from . import __version__

    parser.add_argument("--version", action="version", version=f"jukebox_fast {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("info", help="print ops x implementations x available or why not")
    p.set_defaults(func=_info)

    p = sub.add_parser("demo", help="VQ-VAE round trip on a synthetic clip (wav + spectrogram PNG)",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", default="jukebox_fast_demo", help="output folder")
    p.add_argument("--seconds", type=float, default=8.0, help="length of the synthetic clip")
    p.add_argument("--steps", type=int, default=200, help="training steps of tiny_vqvae on the clip")
    p.add_argument("--batch", type=int, default=4, help="windows per training step")
    p.add_argument("--seed", type=int, default=0, help="seed of the clip and of training")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, OSError, RuntimeError) as e:  # bad input, paths, checkpoints
        print(f"jukebox-fast {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
