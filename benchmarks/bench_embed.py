"""Representations (``jukebox_fast.embed.extract``) against jukemirlib's method on the same weights.

Methods, each in its own process (so each peak memory is its own):
  jukemirlib  the original-style method: the whole prior loaded, one clip at a time, every VQ-VAE
              level encoded (the original's ``encode`` runs all three) with the original's
              convolutions, then the transformer input built by hand and the layer loop, fp32
              (``embed.extract_reference(..., all_levels=True)``)
  extract     ``load_prior(..., layers=L)`` and ``extract``: only the blocks up to L built and run,
              the top level only encoded, clips batched; fp32 on the CPU, bf16 on a GPU
  extract-fp32  the same in fp32 on a GPU (what ``--dtype fp32`` gives)
  extract-triton  bf16 with the Triton sparse attention asked for (``auto`` on CUDA takes the
              PyTorch reference until a committed GPU run shows the kernel ahead)

Weights are random, at the released VQ-VAE's shapes and the 5b top prior's shapes (width 4800, 72
blocks, n_ctx 8192) on a GPU; on a CPU the prior is reduced (``--width``, ``--depth``, ``--heads``;
n_ctx stays 8192, so a clip is the released 23.8 s of tokens). Clips of ``--seconds`` of
synthetic music. Clips/s = clips / wall time of the whole extraction after one warm-up clip;
peak memory: the process's peak RSS on a CPU, ``max_memory_allocated`` on a GPU.

    python benchmarks/bench_embed.py --out benchmarks/results/embed_cpu.md
    python benchmarks/bench_embed.py --device cuda --clips 32 --out benchmarks/results/embed_h200.md
    python benchmarks/bench_embed.py --smoke      # the tiny VQ-VAE and a 2-block prior: checks the script
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from common import add_smoke, device_name, report, versions

CHILD = r"""
import json, resource, sys, time
import torch
from jukebox_fast import load_prior, load_vqvae
from jukebox_fast.demo import synth_clip
from jukebox_fast.dispatch import use_backend
from jukebox_fast.embed import MARGIN_TOKENS, extract, extract_reference, prepare_audio
folder, method, device, layer, clips, seconds, batch, shapes = sys.argv[1:9]
layer, clips, seconds, batch = int(layer), int(clips), float(seconds), int(batch)
vq_preset = json.loads(shapes).get("vqvae", "vqvae")
dev = torch.device(device)
full = method == "jukemirlib"
if folder == "-":  # built here, on the device, the same seed in every process (no 20 GB file)
    from jukebox_fast import hparams, make_prior, make_vqvae
    torch.manual_seed(0)
    vq = make_vqvae(vq_preset, device=dev).eval()
    vq.init_codebooks(torch.from_numpy(synth_clip(3.0, seed=99)[: 3 * 44100 // 128 * 128]).view(1, -1, 1).to(dev))
    prior = make_prior(hparams.get("prior_5b", fp16_params=False, **json.loads(shapes)), vq, device=dev).eval()
    if not full:
        prior.prior.transformer.keep_first(layer)  # what load_prior(..., layers=L) keeps
        torch.cuda.empty_cache()
else:
    vq = load_vqvae(folder + "/vqvae.pth.tar", device=dev)
    prior = load_prior(folder + "/prior_level_2.pth.tar", device=dev, layers=None if full else layer)
audio = [torch.from_numpy(synth_clip(seconds, seed=i)) for i in range(clips + 1)]
dtype = torch.bfloat16 if method in ("extract", "extract-triton") and dev.type == "cuda" else torch.float32
import contextlib
kernels = use_backend(sparse_attention="triton") if method == "extract-triton" else contextlib.nullcontext()
def sync():
    if dev.type == "cuda":
        torch.cuda.synchronize()
def run(batch_of):
    if full:
        with use_backend("torch"):
            return [extract_reference(vq, prior, a, (layer,), all_levels=True) for a in batch_of]
    with kernels:
        return extract(vq, prior, batch_of, (layer,), dtype=dtype, batch_size=batch)
run(audio[:1]); sync()
if dev.type == "cuda":
    torch.cuda.reset_peak_memory_stats()
t0 = time.perf_counter(); out = run(audio[1:]); sync(); wall = time.perf_counter() - t0
if dev.type == "cuda":
    peak = torch.cuda.max_memory_allocated()
else:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
first = out[0][layer].float().cpu()
n_ctx = prior.hps.n_ctx
x = prepare_audio(audio[1], 44100, (n_ctx + MARGIN_TOKENS) * 128).view(1, -1, 1).to(dev)
if full:
    with use_backend("torch"):
        codes = vq.encode(x)[-1][0, :n_ctx].cpu()
else:
    codes = vq.encode(x, start_level=2)[0][0, :n_ctx].cpu()
torch.save((first, codes), sys.argv[9] + f"/{method}.pt")
print(json.dumps({"wall": wall, "peak": peak, "shape": list(first.shape)}))
"""


def shapes(args) -> dict:
    if args.smoke:  # the tiny VQ-VAE (the released hops) under a two-block prior of 64 tokens
        return dict(prior_width=32, prior_depth=2, heads=1, n_ctx=64, blocks=8, vqvae="tiny_vqvae")
    return {} if args.released else dict(prior_width=args.width, prior_depth=args.depth, heads=args.heads)


def build(folder: Path, args) -> None:
    """Random weights at the shapes asked for, saved as our checkpoints (the prior describes
    itself), so each method's process loads them as a user would."""
    from jukebox_fast import hparams, make_prior, make_vqvae, save_prior, save_vqvae
    from jukebox_fast.demo import synth_clip

    torch.manual_seed(0)
    vq = make_vqvae(shapes(args).get("vqvae", "vqvae")).eval()
    vq.init_codebooks(torch.from_numpy(synth_clip(3.0, seed=99)[: 3 * 44100 // 128 * 128]).view(1, -1, 1))
    prior = make_prior(hparams.get("prior_5b", fp16_params=False, **shapes(args)), vq).eval()
    save_vqvae(vq, folder / "vqvae.pth.tar")
    save_prior(prior, folder / "prior_level_2.pth.tar")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--layer", type=int, default=36)
    p.add_argument("--clips", type=int, default=4)
    p.add_argument("--seconds", type=float, default=24.0)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--width", type=int, default=256, help="reduced prior width (CPU)")
    p.add_argument("--depth", type=int, default=72, help="reduced prior depth (CPU); 72 released")
    p.add_argument("--heads", type=int, default=2)
    p.add_argument("--released", action="store_true", help="the released 5b prior shapes (default on a GPU)")
    p.add_argument("--methods", nargs="+", default=None)
    p.add_argument("--out", type=Path)
    add_smoke(p)
    args = p.parse_args(argv)
    if args.smoke:
        args.clips, args.seconds, args.layer, args.batch_size = 1, 1.0, 1, 1
    gpu = args.device.startswith("cuda")
    args.released = args.released or gpu
    # A smoke run measures one method: each is a process of its own, and each costs seconds to start.
    methods = args.methods or (["jukemirlib", "extract", "extract-triton", "extract-fp32"] if gpu
                               else ["extract"] if args.smoke else ["jukemirlib", "extract"])
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        if not gpu:  # a GPU builds the released shapes in each process instead (20 GB in fp32)
            build(Path(tmp), args)
        for method in methods:
            done = subprocess.run([sys.executable, "-c", CHILD, "-" if gpu else tmp, method, args.device,
                                   str(args.layer), str(args.clips), str(args.seconds), str(args.batch_size),
                                   json.dumps(shapes(args)), tmp], capture_output=True, text=True)
            if done.returncode:
                results[method] = f"failed: {(done.stderr.strip().splitlines() or ['?'])[-1]}"
            else:
                results[method] = json.loads(done.stdout.strip().splitlines()[-1])
                results[method]["features"], results[method]["codes"] = torch.load(Path(tmp) / f"{method}.pt")
            print(method, {k: v for k, v in results[method].items() if k not in ("features", "codes")}
                  if isinstance(results[method], dict) else results[method], flush=True)
    base = results.get("jukemirlib")
    shape = ("released 5b top prior (width 4800, 72 blocks, 8 heads)" if args.released else
             "5b top prior at width 32, 2 blocks, n_ctx 64 (a smoke run: the numbers mean nothing)"
             if args.smoke else f"reduced 5b top prior (width {args.width}, {args.depth} blocks, {args.heads} heads)")
    shape += "" if args.smoke else ", n_ctx 8192"
    lines = ["# Representations: extract vs jukemirlib's method", "",
             f"{device_name(args.device)}; {versions()}", "",
             f"{'Tiny' if args.smoke else 'Released'} VQ-VAE, {shape}; layer {args.layer}; {args.clips} clips of {args.seconds:g} s "
             f"(after one warm-up clip); batch {args.batch_size}. Random weights.", "",
             "Codes: the first clip's top-level codes equal to jukemirlib's (the fused residual blocks round "
             "differently from the original's convolutions, which moves near-tied codes; a moved code changes every "
             "later state). Diff: max |state - jukemirlib's| / max |jukemirlib's| at that clip.", "",
             "| method | clips/s | speed-up | peak memory | codes equal | diff |",
             "|---|---|---|---|---|---|"]
    for method, r in results.items():
        if not isinstance(r, dict):
            lines.append(f"| {method} | {r} | | | | |")
            continue
        rate = args.clips / r["wall"]
        ratio = f"{base['wall'] / r['wall']:.2f}x" if isinstance(base, dict) else "-"
        if isinstance(base, dict) and method != "jukemirlib":
            diff = (r["features"] - base["features"]).abs().max() / base["features"].abs().max()
            diff, same = f"{float(diff):.1e}", f"{float((r['codes'] == base['codes']).float().mean()):.2%}"
        else:
            diff = same = "-"
        lines.append(f"| {method} | {rate:.3f} | {ratio} | {r['peak'] / 2**30:.2f} GiB | {same} | {diff} |")
    report("\n".join(lines) + "\n", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
