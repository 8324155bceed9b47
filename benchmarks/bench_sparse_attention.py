"""Sparse attention: the Triton kernels against the original's method, SDPA and FlexAttention.

Methods, all on the same inputs in one process:
  original  the original Jukebox: q, k, v as [N, T, H·d]; each pattern re-blocks the sequence
            (views, transposes, .contiguous() copies), splits the heads and runs dense masked
            attention on the pieces (fp32 softmax, hidden logits set to −1e9)
  sdpa      the same re-blocking, with torch's scaled_dot_product_attention on the pieces
  flex      FlexAttention (torch.compile'd) on the whole sequence with the pattern's block mask
  reference jukebox_fast's PyTorch reference (backend "torch"), what ``auto`` runs until a GPU
            run shows the kernels ahead: the baseline of the dispatch rule
  triton    jukebox_fast's kernels on the un-permuted sequence (backend "triton")

Shapes are the released priors' (one attention layer, batch ``--batch``): the 5b top level
(8 heads of 150, block_ctx 64, and 5b_lyrics' cross-attention to 512 lyric states), 1b_lyrics
(2 heads of 256 over 6144 + 384 positions, block_ctx 102, with its prime and dense layers) and
the upsamplers (1 head of 480, block_ctx 64). ``--length`` shrinks them for a CPU, keeping
their block counts.

Each time is the median of ``--runs`` after a warm-up: ``fwd`` without autograd, ``bwd`` the
backward of one recorded forward, ``fwd+bwd`` both. TFLOP/s counts only the visible (query, key)
pairs: 4·d per pair forward, 10·d backward (FlashAttention's convention: five matmuls, q·kᵀ
recomputed). Methods that cannot run a case say why.

    python benchmarks/bench_sparse_attention.py --out benchmarks/results/sparse_attention_h200.md
    python benchmarks/bench_sparse_attention.py --length 512 --dtype fp32 --runs 3   # a CPU look
    python benchmarks/bench_sparse_attention.py --smoke                               # checks the script
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from common import add_smoke, device_name, median_time, record, report, versions
from jukebox_fast import dispatch
from jukebox_fast.ops import AttentionPattern, Kind, costs, prime_window, sparse_attention

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
MODES = ("fwd", "bwd", "fwd+bwd")
METHODS = ("original", "sdpa", "flex", "reference", "triton")


@dataclass(frozen=True)
class Case:
    model: str
    heads: int
    d: int
    length: int  # T at full size
    blocks: int
    kinds: tuple[int, ...]
    prime_len: int = 0  # lyric tokens before the music (1b_lyrics' prime pattern)
    enc_len: int = 0  # encoder states (cross-attention)


CASES = [
    Case("5b", 8, 150, 8192, 128, (Kind.BLOCK, Kind.COLUMN, Kind.PREV_BLOCK, Kind.CROSS), enc_len=512),
    Case("1b_lyrics", 2, 256, 6144 + 384, 64, (Kind.BLOCK, Kind.COLUMN, Kind.PREV_BLOCK, Kind.PRIME, Kind.DENSE),
         prime_len=384),
    Case("upsampler", 1, 480, 8192, 128, (Kind.BLOCK, Kind.COLUMN, Kind.PREV_BLOCK)),
]


# -- the original's method ------------------------------------------------------------------------
def _split(x: torch.Tensor, heads: int) -> torch.Tensor:
    n, t, w = x.shape
    return x.view(n, t, heads, w // heads).permute(0, 2, 1, 3)  # [N, H, T, d]


def _merge(x: torch.Tensor) -> torch.Tensor:
    n, h, t, d = x.shape
    return x.permute(0, 2, 1, 3).reshape(n, t, h * d)  # [N, T, H·d]


def _dense_original(q, k, v, heads, scale, mask):
    q, k, v = _split(q, heads), _split(k, heads), _split(v, heads)
    w = (q @ k.transpose(-1, -2)) * scale
    if mask is not None:
        w = w.masked_fill(~mask, -1e9)
    w = torch.softmax(w.float(), dim=-1).type_as(w)
    return _merge(w @ v)


def _dense_sdpa(q, k, v, heads, scale, mask):
    q, k, v = _split(q, heads), _split(k, heads), _split(v, heads)
    causal = mask == "causal"
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=None if causal else mask, is_causal=causal, scale=scale)
    return _merge(out)


def permuted(q, k, v, pattern: AttentionPattern, heads: int, scale: float, dense: Callable, causal_mask) -> torch.Tensor:
    """One pattern the original's way: re-block [N, T, H·d], attend densely, undo the re-blocking."""
    n, t, w = q.shape
    bc = pattern.block_ctx
    if pattern.kind in (Kind.DENSE, Kind.CROSS):
        return dense(q, k, v, heads, scale, causal_mask(t, t) if pattern.kind == Kind.DENSE else None)
    if pattern.kind == Kind.PRIME:  # keys cut to the prime window, masked causally
        p = pattern.prime_len
        mask = pattern.mask(t, t, q.device)[:, :p]
        return dense(q, k[:, :p], v[:, :p], heads, scale, mask)
    nb = t // bc
    if pattern.kind == Kind.BLOCK:
        q, k, v = (x.reshape(n * nb, bc, w) for x in (q, k, v))  # [N·blocks, bc, H·d]
        return dense(q, k, v, heads, scale, causal_mask(bc, bc)).view(n, t, w)
    if pattern.kind == Kind.COLUMN:
        q, k, v = (x.view(n, nb, bc, w).transpose(1, 2).contiguous().view(n * bc, nb, w) for x in (q, k, v))
        out = dense(q, k, v, heads, scale, causal_mask(nb, nb))  # [N·bc, blocks, H·d]
        return out.view(n, bc, nb, w).transpose(1, 2).contiguous().view(n, t, w)
    # 3: each block against the previous one; block 0 against zeros
    k, v = (torch.cat([torch.zeros_like(x[:, :bc]), x[:, :-bc]], dim=1).reshape(n * nb, bc, w) for x in (k, v))
    return dense(q.reshape(n * nb, bc, w), k, v, heads, scale, None).view(n, t, w)


def original(q, k, v, pattern, heads, scale):
    tril = lambda a, b: torch.ones(a, b, dtype=torch.bool, device=q.device).tril_()  # noqa: E731
    return permuted(q, k, v, pattern, heads, scale, _dense_original, tril)


def sdpa(q, k, v, pattern, heads, scale):
    return permuted(q, k, v, pattern, heads, scale, _dense_sdpa, lambda a, b: "causal")


# -- FlexAttention --------------------------------------------------------------------------------
_FLEX: dict = {}


def flex(q, k, v, pattern, heads, scale):
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    if "fn" not in _FLEX:
        _FLEX["fn"] = torch.compile(flex_attention, dynamic=False)
    lq, lk = q.shape[1], k.shape[1]
    key = (pattern, lq, lk, str(q.device))
    if key not in _FLEX:
        def mask_mod(b, h, qi, kj):
            return pattern.visible(qi.view(1), kj.view(1)).view(())
        _FLEX[key] = create_block_mask(mask_mod, None, None, lq, lk, device=q.device)
    out = _FLEX["fn"](_split(q, heads), _split(k, heads), _split(v, heads), block_mask=_FLEX[key], scale=scale)
    return _merge(out)


def triton(q, k, v, pattern, heads, scale):
    return _merge(sparse_attention(_split(q, heads), _split(k, heads), _split(v, heads), pattern, scale=scale,
                                   backend="triton"))


def reference(q, k, v, pattern, heads, scale):
    return _merge(sparse_attention(_split(q, heads), _split(k, heads), _split(v, heads), pattern, scale=scale,
                                   backend="torch"))


IMPLS = {"original": original, "sdpa": sdpa, "flex": flex, "reference": reference, "triton": triton}


# -- measuring ------------------------------------------------------------------------------------
def patterns(case: Case, length: int) -> list[tuple[AttentionPattern, int]]:
    """(pattern, key length) per layer type of ``case`` at sequence length ``length``."""
    bc = length // case.blocks
    prime = prime_window(case.prime_len * length // case.length, case.blocks) if case.prime_len else 0
    enc = max(1, case.enc_len * length // case.length)
    return [(AttentionPattern(kind, bc, prime), enc if kind == Kind.CROSS else length) for kind in case.kinds]


def why_not(method: str, q, pattern, heads) -> str | None:
    if method == "triton":
        x = _split(q, heads)
        try:
            dispatch.resolve("sparse_attention", x, x, x, pattern, 1.0, backend="triton")
        except dispatch.BackendUnavailableError as e:
            return str(e).split("cannot run these inputs: ")[-1]
    return None


def _first_line(e: Exception) -> str:
    return f"{type(e).__name__}: {str(e).strip().splitlines()[0][:160]}" if str(e).strip() else type(e).__name__


def timed(method: str, mode: str, q, k, v, pattern, heads, scale, runs, device):
    fn = IMPLS[method]
    inputs = [x.detach().requires_grad_() for x in (q, k, v)]
    if mode == "fwd":
        with torch.no_grad():
            return median_time(lambda: fn(q, k, v, pattern, heads, scale), runs, device)[0]
    grad = torch.randn_like(q)
    if mode == "bwd":
        out = fn(*inputs, pattern, heads, scale)
        return median_time(lambda: torch.autograd.grad(out, inputs, grad, retain_graph=True), runs, device)[0]
    return median_time(lambda: torch.autograd.grad(fn(*inputs, pattern, heads, scale), inputs, grad), runs, device)[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=[c.model for c in CASES], choices=[c.model for c in CASES])
    parser.add_argument("--length", type=int, default=None, help="sequence length (default: each model's own)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--dtype", default=None, choices=sorted(DTYPES), help="default bf16 on GPU, fp32 on CPU")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--runs", type=int, default=None, help="timed runs per cell (default 10 GPU, 3 CPU)")
    parser.add_argument("--out", type=Path, help="write the table (markdown) here as well")
    add_smoke(parser)
    args = parser.parse_args()
    if args.smoke:  # one head of 480 over 128 positions, 2 per block; flex would compile
        args.models, args.length, args.runs, args.dtype = ["upsampler"], 256, 1, "fp32"
        args.methods = [m for m in args.methods if m != "flex"]
    cuda = args.device.startswith("cuda")
    runs = args.runs or (10 if cuda else 3)
    dtype = DTYPES[args.dtype or ("bf16" if cuda else "fp32")]

    lines = [
        "# Sparse attention, one layer",
        "",
        f"Device: {device_name(args.device)}; {versions()}.",
        f"{str(dtype).removeprefix('torch.')}, batch {args.batch}; median of {runs} runs after a warm-up. "
        "Speed-up is over the original's method in the same mode; TFLOP/s counts visible pairs only "
        "(4·d forward, 10·d backward). 'max err' is the largest |difference| from the original's output.",
        "",
        "| model | pattern | T | method | mode | time (ms) | speed-up vs original | TFLOP/s | max err |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    g = torch.Generator(device="cpu").manual_seed(0)
    records = []
    for case in (c for c in CASES if c.model in args.models):
        length = args.length or case.length
        width = case.heads * case.d
        for pattern, lk in patterns(case, length):
            q = torch.randn(args.batch, length, width, generator=g).to(args.device, dtype)  # [N, T, H·d]
            k, v = (torch.randn(args.batch, lk, width, generator=g).to(args.device, dtype) for _ in range(2))
            scale = case.d**-0.5
            pairs = costs.visible_pairs(pattern, length, lk)  # per (sample, head)
            with torch.no_grad():
                expected = original(q, k, v, pattern, case.heads, scale).float()
            label = pattern.name + (f" P={pattern.prime_len}" if pattern.kind == Kind.PRIME else "") + (
                f" bc={pattern.block_ctx}" if pattern.kind in (Kind.BLOCK, Kind.COLUMN, Kind.PREV_BLOCK) else "")
            base: dict[str, float] = {}
            times: dict[tuple[str, str], float] = {}
            for method in args.methods:
                reason = why_not(method, q, pattern, case.heads)
                try:
                    with torch.no_grad():
                        err = None if reason else (IMPLS[method](q, k, v, pattern, case.heads, scale).float()
                                                   - expected).abs().max().item()
                except Exception as e:  # noqa: BLE001 - a baseline that cannot run this case says why
                    reason = _first_line(e)
                if reason:
                    lines.append(f"| {case.model} | {label} | {length} | {method} | all | – | – | – | not run: {reason} |")
                    continue
                for mode in args.modes:
                    row = f"| {case.model} | {label} | {length} | {method} | {mode} |"
                    try:
                        seconds = timed(method, mode, q, k, v, pattern, case.heads, scale, runs, args.device)
                    except Exception as e:  # noqa: BLE001
                        lines.append(f"{row} – | – | – | not run: {_first_line(e)} |")
                        continue
                    times[method, mode] = seconds
                    if method == "original":
                        base[mode] = seconds
                    cost = costs.sparse_attention(pattern, length, lk, case.heads, case.d, dtype, args.batch, mode, pairs)
                    flops = cost.flops
                    speedup = f"{base[mode] / seconds:.2f}x" if mode in base else "–"
                    lines.append(f"{row} {seconds * 1e3:.3f} | {speedup} | {flops / seconds / 1e12:.2f} | {err:.2e} |")
                    print(lines[-1], file=sys.stderr, flush=True)
                if cuda:
                    torch.cuda.empty_cache()
            for mode in args.modes:
                if ("triton", mode) in times and ("reference", mode) in times:
                    cost = costs.sparse_attention(pattern, length, lk, case.heads, case.d, dtype, args.batch, mode, pairs)
                    records.append(record("sparse_attention", "triton", "torch", dtype, case.d, args.batch,
                                          f"{case.model} {label} T={length} {mode}", times["triton", mode],
                                          times["reference", mode], cost, args.device))
    report("\n".join(lines) + "\n", args.out, records)


if __name__ == "__main__":
    main()
