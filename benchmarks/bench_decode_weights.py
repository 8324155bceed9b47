"""The decode step on the CPU with the priors' projection weights as fp32, fp16 and int8.

A decode step reads every weight once per token, so its time follows the weights' bytes. For the
released widths (4 layers, random weights), each step is timed with the C++ step as sampling runs
it (``IncrementalDecoder.step``: embeddings, the layers, the logits) at a position 1920 tokens
into the window, the three weight forms built from the same fp32 weights in this process
(``weights_in``: fp16, or weight-only int8 with one scale per output column), taking turns, median
of ``--runs`` rounds of ``--steps`` steps. Also the int8 step's output error against the fp32
step's, and the fp16 step's for scale, and after each layer: the rows leaving layers 1..k of
the int8 stack against the fp32 stack's, for the same random rows entering.

    python benchmarks/bench_decode_weights.py --out benchmarks/results/decode_weights_cpu.md
    python benchmarks/bench_decode_weights.py --smoke
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time
from pathlib import Path

import torch

from common import add_smoke, device_name, report, versions

MODELS = {"prior_5b": 4800, "prior_1b_lyrics": 2048, "upsampler_level_1": 1920}
FORMS = ("stored", "fp16", "int8")  # stored: fp32 here


def main(argv: list[str] | None = None) -> int:
    from jukebox_fast import hparams
    from jukebox_fast.models.decoding import IncrementalDecoder
    from jukebox_fast.models.prior import make_prior
    from jukebox_fast.models.transformer import weights_in

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--batch", type=int, nargs="+", default=[1, 4])
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--out", type=Path)
    add_smoke(p)
    args = p.parse_args(argv)
    torch.manual_seed(0)
    lines = ["# Decode step on the CPU: fp32, fp16 and int8 weights", "",
             f"{device_name('cpu')}; {versions()}. 4 layers at the released width, random weights; the C++ step "
             f"(IncrementalDecoder.step) at position 1920; median of {args.runs} rounds of {args.steps} steps, the "
             "forms taking turns. Weight bytes: the four projection matrices of the 4 layers. Error: the largest "
             "difference of the step's logits from the fp32 step's, over the largest fp32 logit; by layer: "
             "the rows leaving layers 1, 2, 3, 4 (int8 against fp32, the same rows entering), over the largest change the "
             "fp32 layers made to those rows.", "",
             "| model | width | batch | weights fp32 / fp16 / int8 (MB) | ms fp32 | ms fp16 | ms int8 | int8 vs fp32 "
             "| int8 vs fp16 | GB/s int8 | error fp16 | error int8 | int8 error by layer |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    rows = []
    for name in args.models:
        overrides = dict(prior_depth=4, fp16_params=False)
        if args.smoke:
            overrides.update(prior_width=64, heads=2, n_ctx=256, blocks=4)
            if name == "prior_1b_lyrics":
                overrides.update(n_tokens=16)
        hps = hparams.get(name, **overrides)
        base = make_prior(hps, hparams.get("tiny_vqvae") if args.smoke else None).eval()
        models = {form: weights_in(copy.deepcopy(base), form) for form in FORMS}
        matrices = {form: sum(m.w.numel() * m.w.element_size() for m in models[form].modules() if hasattr(m, "w_scale"))
                    for form in FORMS}
        for batch in ([1] if args.smoke else args.batch):
            decoders, tokens = {}, torch.randint(0, base.bins, (batch,))
            for form, model in models.items():
                d = IncrementalDecoder(model.prior, batch, x_cond=_cond(model, batch), y_cond=_start(model, batch))
                d.position.fill_(min(1920, model.prior.length - args.steps - 1))
                decoders[form] = (d, d.position.clone())
            logits = {form: d.step(tokens) for form, (d, _) in decoders.items()}
            times = {form: [] for form in FORMS}
            for _ in range(1 if args.smoke else args.runs):
                for form, (d, start) in decoders.items():
                    d.position.copy_(start)
                    t0 = time.perf_counter()
                    for _ in range(1 if args.smoke else args.steps):
                        d.step(tokens)
                    times[form].append((time.perf_counter() - t0) / (1 if args.smoke else args.steps))
            ms = {form: 1e3 * statistics.median(t) for form, t in times.items()}
            scale = logits["stored"].abs().max()
            err = {form: float((logits[form] - logits["stored"]).abs().max() / scale) for form in ("fp16", "int8")}
            by_layer = _layer_errors(decoders["stored"][0], decoders["int8"][0])
            mb = {form: matrices[form] / 1e6 for form in FORMS}
            lines.append(f"| {name} | {hps.prior_width} | {batch} | {mb['stored']:.0f} / {mb['fp16']:.0f} / "
                         f"{mb['int8']:.0f} | {ms['stored']:.1f} | {ms['fp16']:.1f} | {ms['int8']:.1f} | "
                         f"{ms['stored'] / ms['int8']:.2f}x | {ms['fp16'] / ms['int8']:.2f}x | "
                         f"{matrices['int8'] / ms['int8'] / 1e6:.1f} | {err['fp16']:.1e} | {err['int8']:.1e} | "
                         f"{' / '.join(f'{e:.1e}' for e in by_layer)} |")
            rows.append(dict(model=name, batch=batch, ms=ms, error=err, int8_error_by_layer=by_layer,
                             bytes={k: int(v) for k, v in matrices.items()}))
            print(lines[-1], flush=True)
    report("\n".join(lines) + "\n", args.out, rows=rows)
    return 0


def _layer_errors(exact, int8) -> list[float]:
    """Per layer k: the rows leaving layers 1..k of ``int8``'s stack against ``exact``'s (same
    rows x entering, at the decoders' position): the largest difference over the largest change
    the exact layers made to x (the residual stream itself would hide the error)."""
    from jukebox_fast.ops import DecodeStack, decode_layers

    x = torch.randn(exact.n, exact.stack.layers[0].weights[0].shape[0], generator=torch.Generator().manual_seed(1))
    errors = []
    for k in range(1, len(exact.stack.layers) + 1):
        want, got = (decode_layers(x, DecodeStack(d.stack.layers[:k]), d.position, backend="torch")
                     for d in (exact, int8))
        errors.append(float((got - want).abs().max() / (want - x).abs().max()))
    return errors


def _cond(model, batch: int):
    """The conditioning the decoder adds at every position: zeros of its shape."""
    if model.x_cond:  # an upsampler: the level above's codes, one vector per position
        return torch.zeros(batch, model.prior.length, model.prior.width)
    if model.hps.labels and model.y_emb.include_time_signal:
        return torch.zeros(batch, 1, model.prior.width)
    return None


def _start(model, batch: int):
    return torch.zeros(batch, 1, model.prior.width) if model.prior.y_cond else None


if __name__ == "__main__":
    raise SystemExit(main())
