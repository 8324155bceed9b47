"""What each Triton kernel needs on an H200: every configuration the dispatch can choose at the
released shapes, compiled for sm_90 exactly as a launch compiles it.

A launch specialises a kernel on its arguments (16-byte aligned pointers and strides get the
divisibility attribute, integers equal to 1 become constants) and the launcher picks its tiles
and options. So the check restates none of that: it calls the ops' own Triton code paths
(``ops.attention.triton_forward`` / ``triton_backward``, ``ops.decode.decode_attention_triton``,
``ops.decode_layers``' Triton step, the VQ launchers) on meta tensors shaped and strided as the model passes them, inside
:func:`kernels.common.compile_only`, where each launch is compiled by Triton's ``warmup`` (its
binder, its option parsing) and not run. A stand-in driver gives Triton the target, so no GPU is
needed; on a GPU machine ``--device`` takes the target from the device.

For every compiled kernel it reads the dynamic shared memory Triton asks the launch for, and
from the machine code (``cuobjdump -res-usage``) the registers, stack frame and local memory per
thread, and works out how many blocks fit on one SM; from the PTX, the matrix instructions, the
atomics' memory ordering and the widest global load. A configuration passes when its shared
memory fits a block's limit (227 KiB on sm_90), it uses no stack or local memory (nothing
spills) and at least one block fits on an SM; its tests also ask every hot loop to stream (:func:`ttgir_facts`).

Beside the resources, a performance table: what each configuration's launches load and store
(``launch_cost.py``: grid × each program's tile loads) against the bytes its op must move
(``jukebox_fast.ops.costs``), and its floor time at 4.3 TB/s and the peak of its products. The
bytes rule (:data:`BYTES_RULE`) holds every configuration to its floor, or names in
:data:`EXPECTED` why it fails and the ceiling it must stay under.

    python benchmarks/kernel_resources.py --out benchmarks/results/kernels_sm90.md --json res.json
    python benchmarks/kernel_resources.py --device   # on a GPU machine, for its architecture
"""
from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import functools
import hashlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from common import git_commit
from launch_cost import HBM_BYTES_PER_S, PEAK_FLOPS, last_position, launch_cost, visible_slots
from jukebox_fast.ops import costs
from jukebox_fast.ops.patterns import AttentionPattern, CacheLayout, Kind

__all__ = ["SM90", "Case", "Row", "cases", "run_case", "check", "triton_folder", "markdown", "main"]


@dataclass(frozen=True)
class Limits:
    """Per-block and per-SM limits of the target (sm_90: H100 and H200)."""

    name: str = "sm_90 (H100/H200)"
    shared_per_block: int = 227 * 1024  # dynamic shared memory a block may opt in to
    shared_per_sm: int = 228 * 1024
    shared_reserved_per_block: int = 1024  # the system's share of each resident block
    registers_per_sm: int = 65536
    register_unit: int = 256  # registers are allocated per warp in units of this many
    warps_per_sm: int = 64
    blocks_per_sm: int = 32


SM90 = Limits()
WIDTHS = (64, 80, 150, 256, 480)  # head widths: 80, 150, 256, 480 are the released models'
HEADS = {64: 2, 80: 4, 150: 8, 256: 2, 480: 1}  # heads of the model with that width (64: any)
KINDS = tuple(Kind)  # every pattern kind has a code path of its own
DTYPES = (torch.float32, torch.bfloat16, torch.float16)
LENGTH, BLOCK_CTX, PRIME, ENCODER = 8192, 64, 448, 512  # n_ctx, block_ctx, P (1b_lyrics), lyric tokens


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


@dataclass
class Case:
    """One configuration: what the dispatch would run, as a function that makes its launches."""

    op: str
    config: str
    launches: Callable[[], None]
    cost: Callable[[], costs.Cost]  # what the op must move and compute (jukebox_fast.ops.costs)


@dataclass
class Row:
    """The resources of one compiled kernel of a case."""

    op: str
    config: str
    kernel: str
    tiles: str
    warps: int
    stages: int
    shared: int
    registers: int
    stack: int
    local: int
    blocks_per_sm: int
    tensor_cores: str = ""  # "wgmma", "mma" or "" (from the PTX)
    atomics: str = ""  # the memory orderings of the global atomics, e.g. "relaxed"
    load_bytes: int = 0  # the widest global load per thread, bytes (ld.global or cp.async)
    pipelined: str = ""  # "yes", or "no: why" (from the TTGIR: ttgir_facts)
    problems: list[str] = field(default_factory=list)
    launches: int = 0  # launches of this compiled kernel in the case (a step's layers alike: several)
    loaded: int = 0  # bytes its launches load, stored: store (launch_cost), flops: execute
    stored: int = 0
    flops: int = 0
    precision: str = ""  # the unit its products run on (launch_cost.PEAK_FLOPS)
    unique: int = 0  # the case's op: bytes it must move and FLOPs it must do (ops.costs), on every row
    op_flops: int = 0


# -- the cases -------------------------------------------------------------------------------------
def _meta(*shape, dtype=torch.float32) -> torch.Tensor:
    return torch.empty(*shape, dtype=dtype, device="meta")


def _heads(t: torch.Tensor, h: int) -> torch.Tensor:
    n, length, _ = t.shape
    return t.view(n, length, h, -1).transpose(1, 2)  # [N, H, L, d], as FactoredAttention._heads


def _attention_inputs(kind: int, d: int, dtype: torch.dtype):
    """q, k, v [N, H, L, d] as FactoredAttention passes them: head views of the projections
    (q | k | v thirds of c_attn's [N, L, 3·H·d]; for cross-attention q from c_attn and k | v from
    c_enc_kv over the lyric states)."""
    h, n = HEADS[d], 1
    if kind == Kind.CROSS:
        q = _heads(_meta(n, LENGTH, h * d, dtype=dtype), h)
        k, v = (_heads(t, h) for t in _meta(n, ENCODER, 2 * h * d, dtype=dtype).chunk(2, dim=2))
    else:
        q, k, v = (_heads(t, h) for t in _meta(n, LENGTH, 3 * h * d, dtype=dtype).chunk(3, dim=2))
    return q, k, v


def _attention_case(kind: int, d: int, dtype: torch.dtype, phase: str) -> Case:
    from jukebox_fast.ops.attention import _heads_inner, triton_backward, triton_forward

    scale = 1.0 / math.sqrt(d)

    def launches() -> None:
        q, k, v = _attention_inputs(kind, d, dtype)
        if phase == "forward":
            triton_forward(q, k, v, *AttentionPattern(kind, BLOCK_CTX, PRIME).kernel_args(), scale)
            return
        # The forward's outputs as it lays them out; the gradient of [N, L, H·d] arrives contiguous
        # and is viewed back per head.
        out, lse = _heads_inner(q, q.shape[2], v.dtype), _meta(*q.shape[:3])
        grad = _meta(*out.transpose(1, 2).shape, dtype=dtype).transpose(1, 2)
        triton_backward(grad, q, k, v, out, lse, *AttentionPattern(kind, BLOCK_CTX, PRIME).kernel_args(), scale,
                        deterministic=phase == "backward, deterministic dQ")

    def cost() -> costs.Cost:
        lk = ENCODER if kind == Kind.CROSS else LENGTH
        return costs.sparse_attention(AttentionPattern(kind, BLOCK_CTX, PRIME), LENGTH, lk, HEADS[d], d, dtype,
                                      mode="fwd" if phase == "forward" else "bwd", pairs=_pairs(kind))

    return Case("sparse_attention", f"{phase}, kind {int(kind)}, d={d}, {_name(dtype)}", launches, cost)


@functools.lru_cache(maxsize=None)
def _pairs(kind: int) -> int:
    lk = ENCODER if kind == Kind.CROSS else LENGTH
    return costs.visible_pairs(AttentionPattern(kind, BLOCK_CTX, PRIME), LENGTH, lk)


VQ_WIDTHS = (16, 64, 100, 128, 140, 256)  # the op takes 1..256; 64 is the released codebook's
VQ_VARIANTS = ("search", "fused statistics, atomics", "fused, deterministic statistics")


def _vq_case(dtype: torch.dtype, n: int, variant: str, d: int = 64) -> Case:
    from jukebox_fast.kernels import vq as kernels

    k = 2048

    def launches() -> None:
        x, c = _meta(n, d, dtype=dtype), _meta(k, d, dtype=dtype)
        code_sq, idx, dist = _meta(k), _meta(n, dtype=torch.int64), _meta(n)
        if variant == "search":  # vq_nearest
            kernels.search(x, c, code_sq, idx, dist)
            return
        q, errors = _meta(n, d, dtype=dtype), _meta(kernels.errors_size(n, d, dtype))
        if variant == "fused statistics, atomics":  # vq_quantise
            kernels.search(x, c, code_sq, idx, dist, q, errors, _meta(k, dtype=torch.int32), _meta(k, d))
            return
        kernels.search(x, c, code_sq, idx, dist, q, errors)  # deterministic: sums in a second pass
        counts = _meta(k, dtype=torch.int64)
        kernels.segment_sums(x, _meta(n, dtype=torch.int64), counts, counts, _meta(k, d))

    def cost() -> costs.Cost:
        return (costs.vq_nearest if variant == "search" else costs.vq_quantise)(n, k, d, dtype)

    return Case("vq", f"{variant}, D={d}, K=2048, N={n}, {_name(dtype)}", launches, cost)


def _decode_case(kind: int, d: int, dtype: torch.dtype, length: int) -> Case:
    from jukebox_fast.ops.decode import decode_attention_triton

    layout = CacheLayout(AttentionPattern(kind, BLOCK_CTX, PRIME), length, ENCODER)

    def launches() -> None:
        h, n = HEADS[d], 1
        # The step's q is the first third of c_attn's output row, viewed per head.
        q = _meta(n, (1 if kind == Kind.CROSS else 3) * h * d, dtype=dtype)[:, : h * d].reshape(n, h, d)
        k, v = _meta(n, h, layout.size, d, dtype=dtype), _meta(n, h, layout.size, d, dtype=dtype)
        decode_attention_triton(q, k, v, layout, _meta(1, dtype=torch.int64), 1.0 / math.sqrt(d))

    def cost() -> costs.Cost:
        return costs.decode_attention(1, HEADS[d], d, _slots(layout), dtype)

    return Case("decode_attention", f"kind {int(kind)}, d={d}, cache {length}, {_name(dtype)}", launches, cost)


def _slots(layout: CacheLayout) -> int:
    """Cache slots a layer's query sees at the last position (as launch_cost models the step)."""
    a = dict(zip(("KIND", "BC", "NB", "PRIME", "ENC"), layout.kernel_args()))
    lo, hi = visible_slots(last_position(a), a["BC"], a["NB"], a["PRIME"], a["ENC"], a["KIND"])
    return hi - lo


# The decode step's shapes per released model: (width, heads, head width, MLP width, context,
# block_ctx, pattern kinds). 5b_lyrics has the 5b's layers and its cross-attention.
STEP_MODELS = {
    "5b_lyrics": (4800, 8, 150, 4800, 8192, 64, (Kind.BLOCK, Kind.COLUMN, Kind.PREV_BLOCK, Kind.CROSS)),
    "1b_lyrics": (2048, 2, 256, 2048, 6528, 102, (Kind.DENSE, Kind.BLOCK, Kind.COLUMN, Kind.PREV_BLOCK, Kind.PRIME)),
    "upsampler": (1920, 1, 480, 1920, 8192, 64, (Kind.BLOCK, Kind.COLUMN, Kind.PREV_BLOCK)),
}


def _decode_step_case(model: str, dtype: torch.dtype, n: int, int8: bool = False) -> Case:
    """One Triton decode step (``ops.decode_layers``' triton implementation) through one layer of
    each kind the model has, on meta tensors as ``IncrementalDecoder`` lays them out; with
    ``int8``, the projection matrices are weight-only int8 with their column scales."""
    from jukebox_fast.ops.decode_layers import DecodeLayer, DecodeStack, _triton_call

    width, heads, d, hidden, length, bc, kinds = STEP_MODELS[model]
    n_state = heads * d
    matrix = torch.int8 if int8 else dtype

    def layer(kind: int) -> DecodeLayer:
        layout = CacheLayout(AttentionPattern(kind, bc, PRIME), length, ENCODER)
        qkv = n_state if kind == Kind.CROSS else 3 * n_state
        norm = _meta(width)
        weights = (norm, norm, _meta(width, qkv, dtype=matrix), _meta(qkv, dtype=dtype),
                   _meta(n_state, width, dtype=matrix), _meta(width, dtype=dtype), norm, norm,
                   _meta(width, hidden, dtype=matrix), _meta(hidden, dtype=dtype), _meta(hidden, width, dtype=matrix),
                   _meta(width, dtype=dtype))
        scales = tuple(_meta(weights[i].shape[1]) if int8 else None for i in (2, 4, 8, 10))
        cache = (n, heads, layout.size, d)
        return DecodeLayer(weights, _meta(*cache, dtype=dtype), _meta(*cache, dtype=dtype), layout, heads, scales=scales)

    def launches() -> None:
        stack = DecodeStack([layer(kind) for kind in kinds])
        _triton_call(_meta(n, width, dtype=dtype), stack, _meta(1, dtype=torch.int64))

    def cost() -> costs.Cost:
        layers = [layer(kind) for kind in kinds]
        tensors = [w for lay in layers for w in (*lay.weights, *(s for s in lay.scales if s is not None))]
        return costs.decode_step(tensors, [(heads, d, _slots(lay.layout)) for lay in layers], n, dtype, width)

    return Case("decode_layers", f"{model}, batch {n}, {_name(dtype)}{', int8 weights' if int8 else ''}", launches,
                cost)


def sample_cases() -> list[Case]:
    """One configuration of each kernel and code path (VQ search and fused statistics, whole rows
    and chunked; attention forward at a 16-bit and an fp32 width, and the backward's three ways to
    dQ: stored in one pass, a second kernel, atomics; decode attention with and without a split
    cache; the fused decode step): what the tests compile on every run, in well under a minute,
    to check the committed table against this Triton."""
    bf16, fp32 = torch.bfloat16, torch.float32
    return [_vq_case(fp32, 6890, "search"), _vq_case(bf16, 6890, "fused statistics, atomics"),
            _vq_case(fp32, 330_736, "fused statistics, atomics", 140),  # a row searched in chunks
            _attention_case(Kind.BLOCK, 150, bf16, "forward"),
            _attention_case(Kind.BLOCK, 150, bf16, "backward, atomic dQ"),  # whole blocks a key tile: one pass
            _attention_case(Kind.CROSS, 80, fp32, "forward"),
            _attention_case(Kind.COLUMN, 256, bf16, "backward, deterministic dQ"),
            _attention_case(Kind.COLUMN, 256, bf16, "backward, atomic dQ"),
            _decode_case(Kind.DENSE, 256, bf16, LENGTH), _decode_case(Kind.BLOCK, 150, bf16, LENGTH),
            _decode_step_case("upsampler", bf16, 1)]


def cases(quick: bool = False, level: str | None = None) -> list[Case]:
    """Every configuration; ``quick`` keeps two dtypes, two widths and two kinds; ``level``
    "sample" is :func:`sample_cases`, "smoke" one case (the dry run of the GPU evidence)."""
    if level == "sample":
        return sample_cases()
    if level == "smoke":
        return [_vq_case(torch.float32, 6890, "search")]
    dtypes = DTYPES[:2] if quick else DTYPES
    widths = (150, 480) if quick else WIDTHS
    kinds = (Kind.BLOCK, Kind.CROSS) if quick else KINDS
    out = [_vq_case(t, n, v) for t in dtypes for n in (330_736, 6890) for v in VQ_VARIANTS]
    out += [_vq_case(t, 330_736, v, d) for d in VQ_WIDTHS if d != 64 for t in dtypes for v in VQ_VARIANTS]
    from jukebox_fast.kernels.attention import MAX_FP32_HEAD_DIM

    for d in widths:
        for kind in kinds:
            for t in dtypes:
                if t == torch.float32 and d > MAX_FP32_HEAD_DIM:  # the dispatch takes the reference
                    continue
                for phase in ("forward", "backward, atomic dQ", "backward, deterministic dQ"):
                    out.append(_attention_case(kind, d, t, phase))
    out += [_decode_case(kind, d, t, LENGTH) for d in widths for kind in kinds for t in dtypes]
    models = ("upsampler",) if quick else tuple(STEP_MODELS)
    out += [_decode_step_case(m, t, n) for m in models for t in dtypes for n in (1, 16)]
    out += [_decode_step_case(m, torch.bfloat16, n, int8=True) for m in models for n in (1, 16)]
    return out


# -- compiling and reading ---------------------------------------------------------------------------
class _StandInDriver:
    """Stands in for Triton's CUDA driver: compiles for ``arch`` (default sm_90) on any machine,
    GPU or not; nothing is ever launched (compile_only)."""

    def __init__(self, arch: int = 90):
        self.arch = arch

    def get_current_target(self):
        from triton.backends.compiler import GPUTarget

        return GPUTarget("cuda", self.arch, 32)

    def get_current_device(self) -> int:
        return 0

    def get_current_stream(self, device=None) -> int:
        return 0

    def get_active_torch_device(self):
        return torch.device("meta")


def device_arch() -> int:
    """The compute capability of this machine's GPU as Triton targets it (90 on an H200)."""
    from triton.runtime import driver

    target = driver.active.get_current_target()
    return int(target.arch)


def _cuobjdump() -> str:
    import triton.backends.nvidia as nvidia

    bundled = Path(nvidia.__file__).parent / "bin" / "cuobjdump"
    found = str(bundled) if bundled.exists() else shutil.which("cuobjdump")
    if not found:
        raise RuntimeError("cuobjdump not found (Triton's NVIDIA backend bundles it)")
    return found


def _usage(cubin: bytes) -> dict[str, int]:
    """REG, STACK, LOCAL (per thread) and static SHARED of the cubin's kernel."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        text = subprocess.run([_cuobjdump(), "-res-usage", f.name], capture_output=True, text=True, check=True).stdout
    line = next(ln for ln in text.splitlines() if "REG:" in ln)
    return {k: int(v) for k, v in re.findall(r"(REG|STACK|SHARED|LOCAL):(\d+)", line)}


def blocks_per_sm(registers: int, warps: int, shared: int, limits: Limits = SM90) -> int:
    """Resident blocks per SM, from registers, warps and shared memory."""
    per_warp = math.ceil(registers * 32 / limits.register_unit) * limits.register_unit
    by_registers = (limits.registers_per_sm // per_warp) // warps if per_warp else limits.blocks_per_sm
    by_warps = limits.warps_per_sm // warps
    by_shared = limits.shared_per_sm // (shared + limits.shared_reserved_per_block)
    return max(0, min(limits.blocks_per_sm, by_registers, by_warps, by_shared))


def ptx_facts(ptx: str) -> dict:
    """What the PTX says about the matrix instructions, the atomics and the load width."""
    cores = "wgmma" if "wgmma.mma_async" in ptx else "mma" if re.search(r"\bmma\.sync", ptx) else ""
    orders = re.findall(r"\b(?:red|atom)\.global\.(?:\w+\.)?(relaxed|acq_rel|acquire|release)\.", ptx)
    plain = re.findall(r"\b(?:red|atom)\.global\.(?:add|inc|max|min|and|or|xor|exch|cas)\b", ptx)  # relaxed
    widths = [int(v or 1) * int(b) // 8 for v, b in re.findall(r"\bld\.global[\w.]*?(?:\.v(\d))?\.[bfsu](\d+)\b", ptx)]
    widths += [int(n, 0) for n in re.findall(  # (the copy's size: decimal or hex, as ptxas reads both)
        r"\bcp\.async\.c[ag]\.shared\.global(?:\.\w+)*\s*\[[^]]*\],\s*\[[^]]*\],\s*(0x[0-9a-fA-F]+|\d+)", ptx)]
    if "cp.async.bulk.tensor" in ptx:
        widths.append(16)
    return {"tensor_cores": cores, "atomics": ", ".join(sorted(set(orders + ["relaxed"] * bool(plain)))),
            "load_bytes": max(widths, default=0)}


def _loops(ttgir: str) -> list[tuple[list[str], bool]]:
    """Every ``scf.for`` of a TTGIR listing: (its own body lines, those of no loop nested in it;
    whether a loop is nested in it). Regions go by braces; an attribute dictionary opens and
    closes on its line."""
    stack, done = [], []  # [is a loop, own lines, holds a loop]
    for line in ttgir.splitlines():
        inner = next((entry for entry in reversed(stack) if entry[0]), None)
        if inner is not None:
            inner[1].append(line)
        net = line.count("{") - line.count("}")
        if net > 0:
            loop = "scf.for" in line
            if loop and inner is not None:
                inner[2] = True
            stack.append([loop, [], False])
        elif net < 0 and stack:
            loop, lines, nested = stack.pop()
            if loop:
                done.append((lines, nested))
    return done


_TILE_LOAD = r"%([A-Za-z_][A-Za-z_]*?)(?:_\d+)* = tt\.load [^\n]*: tensor<\d+x\d+x"
_COPY = r"async_copy_global_to_local|async_tma_copy_global_to_local|tt\.descriptor_load"


def ttgir_facts(ttgir: str) -> str:
    """Whether the kernel's hot loops stream their operands. A loop is hot when it holds a matrix
    product or loads 2-D tiles. Each hot loop holding a product is innermost, every 2-D tile a hot
    loop loads comes by an asynchronous copy (cp.async or TMA), and no wait in it drains every copy
    in flight (``async_wait {num >= 1}``). "yes", or "no: " and what fails; "-" for a kernel
    without a hot loop."""
    hot = []
    for lines, nested in _loops(ttgir):
        product = any("warp_group_dot" in ln or "tt.dot " in ln for ln in lines)
        tiles = any(re.search(_TILE_LOAD, ln) or re.search(_COPY, ln) for ln in lines)
        if product or tiles:
            hot.append((lines, nested and product))
    if not hot:
        return "-"
    why = []
    for lines, nested in hot:
        text = "\n".join(lines)
        if nested:
            why.append("a product sits in a loop around another loop (the key loop is not innermost)")
        sync = sorted({m for m in re.findall(_TILE_LOAD, text)})
        copies = len(re.findall(_COPY, text))
        waits = [int(n) for n in re.findall(r"ttg\.async_wait [^\n]*\{num = (\d+)", text)]
        if sync:
            why.append(f"synchronous tile loads of {', '.join(sync)}")
        if not copies:
            why.append("no asynchronous copy")
        elif waits and min(waits) < 1:
            why.append("a wait drains every copy (num = 0)")
    return "yes" if not why else "no: " + "; ".join(sorted(set(why)))


_TILE_NAMES = ("BLOCK_N", "BLOCK_K", "BLOCK_M", "BLOCK_D", "BLOCK_DK", "D_CHUNKS", "PRECISION", "DQ")


def _row(case: Case, kernel, compiled, limits: Limits) -> Row:
    md = compiled.metadata
    usage = _usage(compiled.asm["cubin"])
    src = getattr(compiled, "src", None)
    constants = getattr(src, "constants", {}) or {}
    names = kernel.arg_names
    values = {names[key[0]]: value for key, value in constants.items() if isinstance(key, tuple) and len(key) == 1}
    tiles = ", ".join(f"{n}={getattr(values[n], 'value', values[n])}" for n in _TILE_NAMES if n in values)
    row = Row(case.op, case.config, kernel.fn.__name__, tiles, md.num_warps, md.num_stages, md.shared,
              usage["REG"], usage["STACK"], usage["LOCAL"], blocks_per_sm(usage["REG"], md.num_warps, md.shared, limits),
              **ptx_facts(compiled.asm["ptx"]), pipelined=ttgir_facts(compiled.asm["ttgir"]))
    if md.shared > limits.shared_per_block:
        row.problems.append(f"{md.shared} B shared > {limits.shared_per_block}")
    if usage["STACK"] or usage["LOCAL"]:
        row.problems.append(f"spills: {usage['STACK']} B stack, {usage['LOCAL']} B local")
    if row.blocks_per_sm < 1:
        row.problems.append("does not fit on an SM")
    return row


def run_case(case: Case, arch: int = 90, limits: Limits = SM90) -> list[Row]:
    """Compile one case's launches for ``arch`` and read their resources."""
    from triton.runtime import driver

    from jukebox_fast.kernels.common import compile_only

    driver.set_active(_StandInDriver(arch))
    try:
        with compile_only() as compiled:
            case.launches()
    except Exception as e:  # an OutOfResources or a compiler error is this case's result
        return [Row(case.op, case.config, "?", "", 0, 0, 0, 0, 0, 0, 0, problems=[f"{type(e).__name__}: {str(e)[:300]}"])]
    finally:
        driver.set_active(None)  # back to the default, created lazily (reset_active would create it now)
    rows: dict[str, Row] = {}
    for c in compiled:  # a case that launches one kernel twice (two layers alike) lists it once, costs summed
        key = c.compiled.metadata.hash
        if key not in rows:
            rows[key] = _row(case, c.kernel, c.compiled, limits)
        row, lc = rows[key], launch_cost(c.kernel, c.grid, c.args, c.kwargs)
        row.launches += 1
        row.loaded, row.stored, row.flops, row.precision = (row.loaded + lc.loaded, row.stored + lc.stored,
                                                            row.flops + lc.flops, lc.precision)
    op = case.cost()
    for row in rows.values():
        row.unique, row.op_flops = op.bytes, op.flops
    return list(rows.values())


def _run_index(args) -> list[Row]:
    index, quick, level, arch = args
    return run_case(cases(quick, level)[index], arch)


def check(quick: bool = False, arch: int = 90, jobs: int | None = None, level: str | None = None) -> list[Row]:
    """Every case's rows (of ``cases(quick, level)``), compiled for ``arch`` in ``jobs`` processes."""
    from jukebox_fast.kernels import interpreter_on

    if interpreter_on():
        raise RuntimeError("unset TRITON_INTERPRET: the check compiles the kernels for the GPU")
    work = [(i, quick, level, arch) for i in range(len(cases(quick, level)))]
    jobs = jobs or min(os.cpu_count() or 1, 16)
    if jobs == 1:
        results = [_run_index(w) for w in work]
    else:  # spawned workers: no CUDA state crosses a fork
        import multiprocessing

        with concurrent.futures.ProcessPoolExecutor(min(jobs, len(work)), mp_context=multiprocessing.get_context("spawn")) as pool:
            results = list(pool.map(_run_index, work, chunksize=1 if level else 4))
    return [row for rows in results for row in rows]


# -- the static performance table ----------------------------------------------------------------------
BYTES_RULE = 1.2  # a configuration's bytes, at HBM bandwidth, take at most this times its floor

@dataclass(frozen=True)
class Expected:
    """Configurations (``op | configuration`` matching ``pattern``) known to fail the bytes rule or
    the pipelining rule today, why, and the bound that still holds: bytes µs <= ``ceiling`` × floor."""

    pattern: str
    why: str
    ceiling: float
    pipelined: bool = True  # whether their hot loops must still stream


_DENSE_BACKWARD = (
    "no issue yet: in dense, prime and cross-attention a key tile (128 keys at heads up to 128, 16-64 wider, where "
    "dK and dV must fit in registers) is seen by every later query, so every key program reads those queries' q "
    "and dO again, and dQ is summed across the key programs by fp32 atomics or recomputed per query tile by a "
    "second kernel that reads k and v again; in prime and cross-attention 8192 queries face 448-512 keys, so "
    "these reads dominate. FlashAttention-2 and -3 pay the same; uncached, they would set the time")
EXPECTED = (
    Expected(r"^sparse_attention \| backward, .*kind [067], d=\d+, (bfloat16|float16)$", _DENSE_BACKWARD, ceiling=10.0),
    Expected(r"^sparse_attention \| backward, .*kind [123], d=(150|256|480), (bfloat16|float16)$", "no issue yet: "
             "at heads of 256 and 480 (and columns at 150) the key tiles that fit in registers (16-64 keys) hold "
             "neither a whole 64-long block nor a 128-unit column, so dQ cannot be stored from the key loop: it "
             "takes fp32 atomics or a second kernel that reads q, k, v and dO again, and narrow key tiles read "
             "each query tile two to four times", ceiling=3.1),
    Expected(r"^sparse_attention \| backward, .*d=(150|256), float32$", "no issue yet: fp32 products keep their "
             "operands in registers, so heads of 129-256 take key tiles of 16 (wider ones spill): no one-pass "
             "backward, and every key tile reads its query tiles again", ceiling=2.3),
    Expected(r"^sparse_attention \| forward, kind [067], d=(150|256|480), (bfloat16|float16)$", "no issue yet: "
             "in dense, prime and cross-attention every 64-128-query tile reads the keys every other tile reads; "
             "16-bit products do 64-128 FLOPs per such byte, under the H200's 184, so uncached these reads would "
             "set the time (the 256-query tiles that bring heads up to 128 under the rule spill or overflow "
             "shared memory at 150-480)", ceiling=4.0),
    Expected(r"^sparse_attention \| forward, kind 2, d=480, (bfloat16|float16)$", "no issue yet: at heads of 480 "
             "a 128-query tile spills (520 B of stack), so 64-query tiles split each 128-long column and the "
             "second reads the first's keys again", ceiling=1.6),
    Expected(r"^sparse_attention \| forward, kind [123], d=(150|256), float32$", "no issue yet: fp32 products "
             "keep their operands in registers, so fp32 tiles of heads 129-256 wide hold 32 queries (128 spill "
             "with Triton 3.6) and read a 64-key block, column or previous block two to four times", ceiling=2.0),
    Expected(r"^vq \| fused.*(bfloat16|float16)$", "no issue yet: every row tile of the training variants reads "
             "the whole codebook, and 16-bit products are fast enough that these reads, uncached, would set the "
             "time: 256 rows up to 64 wide (1.1-1.3x the floor; rows of 16 move little per codebook read), 128 up "
             "to 192 wide (1.8-1.9x), 64 at 256 wide (3.3x), where 128 rows spill the fused statistics", ceiling=3.5),
)


def expected(op: str, config: str) -> Expected | None:
    return next((e for e in EXPECTED if re.search(e.pattern, f"{op} | {config}")), None)


@dataclass
class Performance:
    """One configuration's launches against its op's cost (the performance table's row)."""

    op: str
    config: str
    launches: int
    moved: int  # bytes its launches load and store
    unique: int  # bytes the op must move
    flops: int  # FLOPs its launches execute
    floor_us: float  # max(unique / HBM bandwidth, the op's FLOPs / the peak of its products)
    bytes_us: float  # moved / HBM bandwidth: its time if no byte came from a cache
    pipelined: str  # "yes" when every hot loop streams, else the first kernel's reason
    expected: Expected | None  # why the bytes rule is known to fail here

    @property
    def ratio(self) -> float:
        return self.moved / self.unique

    @property
    def passes_bytes(self) -> bool:
        return self.bytes_us <= BYTES_RULE * self.floor_us


def performance(rows: list[dict]) -> list[Performance]:
    """The performance table's rows, one per configuration, from a report's rows."""
    cases: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        cases.setdefault((r["op"], r["config"]), []).append(r)
    out = []
    for (op, config), rs in cases.items():
        main = max(rs, key=lambda r: r["flops"])
        moved = sum(r["loaded"] + r["stored"] for r in rs)
        floor = max(main["unique"] / HBM_BYTES_PER_S, main["op_flops"] / PEAK_FLOPS[main["precision"]])
        slow = [f"{r['kernel']}: {r['pipelined']}" for r in rs if r["pipelined"] not in ("yes", "-")]
        out.append(Performance(op, config, sum(r["launches"] for r in rs), moved, main["unique"],
                               sum(r["flops"] for r in rs), floor * 1e6, moved / HBM_BYTES_PER_S * 1e6,
                               slow[0] if slow else "yes", expected(op, config)))
    return out


def versions(device: bool = False) -> dict[str, str]:
    import triton

    out = {"triton": triton.__version__, "torch": torch.__version__, "python": sys.version.split()[0]}
    out["target"] = (f"{torch.cuda.get_device_name()} (sm_{device_arch()}, compiled on that machine)" if device
                     else "sm_90 (compiled without a GPU)")
    out["commit"] = git_commit()
    return out


def triton_folder(version: str) -> Path:
    """A folder holding Triton ``version`` alone (pip --target), for ``PYTHONPATH``: installed once
    into ``$JUKEBOX_FAST_TRITON_CACHE`` (default ~/.cache/jukebox_fast/triton-<version>)."""
    from jukebox_fast.files import atomic_dir

    base = Path(os.environ.get("JUKEBOX_FAST_TRITON_CACHE") or Path.home() / ".cache" / "jukebox_fast")
    folder = base / f"triton-{version}"
    if (folder / "triton" / "__init__.py").exists():
        return folder

    def install(tmp: Path) -> None:
        done = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(tmp),
                               f"triton=={version}"], capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"pip could not install triton=={version} into {base}: {done.stderr.strip()[-500:]}")

    return atomic_dir(folder, install)


def report(rows: list[Row], info: dict[str, str]) -> dict:
    return {"versions": info, "rows": [dataclasses.asdict(r) for r in rows]}


def _report_with(folder: Path, quick: bool, jobs: int | None, level: str | None = None) -> dict:
    """The check run by the Triton in ``folder`` (a subprocess with it first on the path)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "report.json"
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(folder), os.environ.get("PYTHONPATH")]))}
        cmd = [sys.executable, str(Path(__file__).resolve()), "--json", str(out)]
        cmd += ["--quick"] * quick + [f"--{level}"] * bool(level) + ([f"--jobs={jobs}"] if jobs else [])
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if not out.exists():
            raise RuntimeError(f"the check under {folder} failed (exit {done.returncode}): {done.stderr[-2000:]}")
        return json.loads(out.read_text())["reports"][0]


KERNEL_SOURCES = Path(__file__).resolve().parents[1] / "kernels"


def sources_digest(folder: Path = KERNEL_SOURCES) -> str:
    """sha256 over the Triton sources (``kernels/*.py``, names and bytes): the table says which
    kernels it describes, and the tests refuse a table older than the kernels."""
    h = hashlib.sha256()
    for f in sorted(folder.glob("*.py")):
        h.update(f.name.encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def _tables(text: str, heading: str) -> dict[str, list[dict]]:
    """The rows of every table under a ``## <heading> <version>`` line, per version."""
    tables, version, header = {}, None, None
    for line in text.splitlines():
        if line.startswith("## "):
            m = re.match(rf"## {heading} (\S+)$", line)
            version, header = (m.group(1), None) if m else (None, None)
            if version:
                tables[version] = []
        elif version and line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if header is None:
                header = cells
            elif not set("".join(cells)) <= set("-: "):
                tables[version].append(dict(zip(header, cells)))
    return tables


def read_markdown(text: str) -> tuple[str | None, dict[str, list[dict]]]:
    """The sources digest and the resource rows per Triton version of a table :func:`markdown` wrote."""
    digest = re.search(r"kernel sources digest `([0-9a-f]+)`", text, re.IGNORECASE)
    return (digest.group(1) if digest else None), _tables(text, "Triton")


def read_performance(text: str) -> dict[str, list[dict]]:
    """The performance rows per Triton version of a table :func:`markdown` wrote."""
    return _tables(text, "Performance with Triton")


def markdown(reports: list[dict]) -> str:
    lines = ["# Triton kernels on sm_90: resources of every configuration", "",
             f"Kernel sources digest `{sources_digest()}` (sha256 of `kernels/*.py`). "
             "Written by `python benchmarks/kernel_resources.py`. Every configuration the dispatch can choose at "
             "the released shapes, compiled as a launch compiles it. Limits per block: "
             f"{SM90.shared_per_block} B of shared memory, no stack or local memory (no spills), at least one block "
             "per SM. Shared = the dynamic shared memory the launch requests; registers, stack and local are per "
             "thread; blocks/SM from registers, warps and shared memory; matrix, atomics and load B (the widest "
             "global load per thread) from the PTX; pipelined from the TTGIR: every loop holding a matrix product "
             "is innermost, loads its 2-D tiles by asynchronous copies and never waits for all of them (num >= 1); "
             "loaded MB and GFLOP: what the case's launches of this kernel load and execute "
             "(`benchmarks/launch_cost.py`: grid × each program's tile loads, from the kernel's own tiles).", "",
             "The performance tables hold each configuration's launches against what its op must move and compute "
             f"(`jukebox_fast/ops/costs.py`): moved = bytes loaded and stored; unique = the op's bytes, each input "
             f"read once and each output written once; floor = max(unique / {HBM_BYTES_PER_S / 1e12:.1f} TB/s, "
             f"the op's FLOPs / the peak of its products: {PEAK_FLOPS['tf32'] / 1e12:.0f} TFLOP/s for 16-bit "
             f"operands, {PEAK_FLOPS['tf32x3'] / 1e12:.0f} for fp32 as three TF32 products, "
             f"{PEAK_FLOPS['ieee'] / 1e12:.0f} on the CUDA cores); bytes µs = moved / {HBM_BYTES_PER_S / 1e12:.1f} TB/s, "
             "the time of its traffic if no byte came from a cache. The bytes rule: bytes µs <= "
             f"{BYTES_RULE} × floor. Where the floor is set by memory that is moved <= {BYTES_RULE} × unique; "
             "where it is set by arithmetic, the re-reads of operands other programs share (a key tile every query "
             "tile walks, the codebook every row tile walks) must stay hidden behind the products even uncached. "
             "A configuration known to fail names the issue that owns the fix. Decode kernels are modelled at the "
             "last position of the context.", ""]
    for rep in reports:
        info, rows = rep["versions"], rep["rows"]
        bad = [r for r in rows if r["problems"]]
        lines += [f"## Triton {info['triton']}", "",
                  f"torch {info['torch']}, Python {info['python']}, target {info['target']}, commit {info['commit']}: "
                  f"{len(rows)} kernels compiled, {len(bad)} over a limit.", "",
                  "| op | configuration | kernel | tiles | warps | stages | shared (B) | registers | stack | local "
                  "| blocks/SM | matrix | atomics | load B | pipelined | loaded MB | GFLOP | ok |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            ok = "yes" if not r["problems"] else "NO: " + "; ".join(r["problems"])
            lines.append(f"| {r['op']} | {r['config']} | {r['kernel']} | {r['tiles']} | {r['warps']} | {r['stages']} "
                         f"| {r['shared']} | {r['registers']} | {r['stack']} | {r['local']} | {r['blocks_per_sm']} "
                         f"| {r['tensor_cores'] or '-'} | {r['atomics'] or '-'} | {r['load_bytes']} "
                         f"| {r.get('pipelined') or '-'} | {r['loaded'] / 1e6:.1f} | {r['flops'] / 1e9:.2f} | {ok} |")
        lines += ["", f"## Performance with Triton {info['triton']}", "",
                  "| op | configuration | launches | moved MB | unique MB | ratio | GFLOP | floor µs | bytes µs "
                  "| pipelined | bytes rule |", "|---|---|---|---|---|---|---|---|---|---|---|"]
        for p in performance(rows):
            verdict = "yes" if p.passes_bytes else f"expected: {p.expected.why}" if p.expected else "NO"
            lines.append(f"| {p.op} | {p.config} | {p.launches} | {p.moved / 1e6:.1f} | {p.unique / 1e6:.1f} "
                         f"| {p.ratio:.2f} | {p.flops / 1e9:.2f} | {p.floor_us:.1f} | {p.bytes_us:.1f} "
                         f"| {p.pipelined} | {verdict} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", help="write the markdown tables here")
    p.add_argument("--json", help="write the reports (rows and versions) as JSON here")
    p.add_argument("--device", action="store_true", help="compile for this machine's GPU (its architecture)")
    p.add_argument("--also-triton", nargs="*", default=[], metavar="VERSION",
                   help="run the check with these Triton versions too (installed into a cache folder)")
    p.add_argument("--quick", action="store_true", help="two dtypes, two widths, two kinds")
    p.add_argument("--sample", action="store_true", help="one configuration per kernel and code path (the tests)")
    p.add_argument("--smoke", action="store_true", help="one configuration (a dry run of the GPU evidence)")
    p.add_argument("--jobs", type=int, default=None, help="compiler processes (default: the cores, up to 16)")
    args = p.parse_args(argv)
    level = "smoke" if args.smoke else "sample" if args.sample else None
    reports = [report(check(args.quick, device_arch() if args.device else 90, args.jobs, level), versions(args.device))]
    reports += [_report_with(triton_folder(v), args.quick, args.jobs, level) for v in args.also_triton]
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(markdown(reports))
    if args.json:
        Path(args.json).write_text(json.dumps({"reports": reports}, indent=1))
    over = 0
    for rep in reports:
        bad = [r for r in rep["rows"] if r["problems"]]
        over += len(bad)
        for r in bad:
            print(f"OVER (Triton {rep['versions']['triton']}): {r['op']} | {r['config']} | {r['kernel']}: "
                  f"{'; '.join(r['problems'])}")
        print(f"{len(rep['rows'])} kernels compiled with Triton {rep['versions']['triton']} for "
              f"{rep['versions']['target']}; {len(bad)} over a limit")
    return 1 if over else 0


if __name__ == "__main__":
    sys.exit(main())
