"""The Triton kernels compile for the H200 (sm_90) on any machine, GPU or not.

The interpreter accepts programs the GPU compiler rejects (dtype mixes in tl.dot, layouts,
atomics), so CI compiles each kernel ahead of time with the configurations the launchers use.
"""
from __future__ import annotations

import re

import pytest
import torch

triton = pytest.importorskip("triton")
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

import jukebox_fast.kernels.attention as attn  # noqa: E402
import jukebox_fast.kernels.decode as decode  # noqa: E402
import jukebox_fast.kernels.vq as vq  # noqa: E402

H200 = GPUTarget("cuda", 90, 32)
POINTER = {torch.float32: "*fp32", torch.bfloat16: "*bf16", torch.float16: "*fp16"}


def compile_for_h200(fn, pointers: dict[str, str], scalars: list[str], constexprs: dict, options: dict):
    signature = {**pointers, **{name: "i32" for name in scalars}, **{name: "constexpr" for name in constexprs}}
    try:
        return triton.compile(ASTSource(fn=fn, signature=signature, constexprs=constexprs), target=H200,
                              options=options)
    except RuntimeError as e:  # no CUDA backend in this Triton build: nothing to check against
        if "backend" in str(e).lower():
            pytest.skip(f"this Triton cannot target CUDA: {e}")
        raise


@pytest.mark.parametrize(
    "dtype,d,quantise,atomic",
    [(torch.bfloat16, 64, True, True), (torch.float16, 256, False, False), (torch.float32, 100, True, False)],
    ids=["bf16-D64-fused-atomics", "fp16-D256-search", "fp32-D100-fused"],
)
def test_search_kernel_compiles_for_sm90(dtype, d, quantise, atomic, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)  # the configuration a GPU run uses
    constexprs, options = vq.search_config(dtype, d, quantise=quantise, atomic_stats=atomic)
    p = POINTER[dtype]
    pointers = dict(x_ptr=p, c_ptr=p, c_sq_ptr="*fp32", idx_ptr="*i64", dist_ptr="*fp32", q_ptr=p,
                    err_ptr="*fp32", counts_ptr="*i32", sums_ptr="*fp32")
    scalars = ["N", "K", "D", "stride_x", "stride_c", "stride_q"]
    kernel = compile_for_h200(vq._search_kernel, pointers, scalars, constexprs, options)
    assert kernel.asm["cubin"], "no machine code"
    ptx = kernel.asm["ptx"]
    if dtype != torch.float32:
        assert "wgmma" in ptx, "the 16-bit search must run on Hopper's tensor cores (wgmma)"
    global_atomics = re.search(r"(?<![a-z.])(red|atom)\.global", ptx) is not None  # not cp.async.shared.global
    assert global_atomics == atomic


def test_segment_sums_kernel_compiles_for_sm90():
    pointers = dict(x_ptr="*fp32", order_ptr="*i64", starts_ptr="*i64", counts_ptr="*i64", sums_ptr="*fp32")
    config = vq.segment_sums_config(100)
    options = {name: config.pop(name) for name in ("num_warps", "enable_fp_fusion")}
    kernel = compile_for_h200(vq._segment_sums_kernel, pointers, ["D", "stride_x"], config, options)
    assert kernel.asm["cubin"]


# -- sparse attention ---------------------------------------------------------------------------
H200_SHARED_MEMORY = 227 * 1024  # bytes a block may use on sm_90

ATTENTION_CASES = [  # (pattern kind, head width, dtype): the released widths and every pattern
    (1, 64, torch.bfloat16), (2, 150, torch.float16), (3, 480, torch.bfloat16), (0, 256, torch.bfloat16),
    (7, 256, torch.float16), (6, 80, torch.bfloat16), (2, 64, torch.float32),
]


def _attention_compiles(fn, kind, d, dtype, **extra):
    """Compile one attention kernel, typing its arguments by name as the launchers pass them."""
    constexprs, options = attn.launch_config(kind, d, dtype)
    constexprs.update(extra)
    fp32_pointers = {"lse_ptr", "delta_ptr"} | ({"dq_ptr"} if extra.get("ATOMIC_DQ") else set())

    def arg_type(name: str) -> str:
        if name in constexprs:
            return "constexpr"
        if name.endswith("_ptr"):
            return "*fp32" if name in fp32_pointers else POINTER[dtype]
        return "fp32" if name in ("qk_scale", "scale") else "i32"

    signature = {name: arg_type(name) for name in fn.arg_names}
    try:
        kernel = triton.compile(ASTSource(fn=fn, signature=signature, constexprs=constexprs), target=H200,
                                options=options)
    except RuntimeError as e:
        if "backend" in str(e).lower():
            pytest.skip(f"this Triton cannot target CUDA: {e}")
        raise
    assert kernel.asm["cubin"], "no machine code"
    assert kernel.metadata.shared <= H200_SHARED_MEMORY, f"{kernel.metadata.shared} bytes of shared memory"
    if dtype != torch.float32:
        assert "wgmma" in kernel.asm["ptx"] or "mma.sync" in kernel.asm["ptx"], "no tensor-core instructions"
    return kernel


@pytest.mark.parametrize("kind,d,dtype", ATTENTION_CASES, ids=lambda x: str(x).removeprefix("torch."))
def test_attention_kernels_compile_for_sm90(kind, d, dtype, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    _attention_compiles(attn._fwd_kernel, kind, d, dtype)
    _attention_compiles(attn._bwd_q_kernel, kind, d, dtype)
    for atomic in (False, True):
        kernel = _attention_compiles(attn._bwd_kv_kernel, kind, d, dtype, ATOMIC_DQ=atomic)
        global_atomics = re.search(r"(?<![a-z.])(red|atom)\.global", kernel.asm["ptx"]) is not None
        assert global_atomics == atomic


@pytest.mark.parametrize("kind,d,dtype", [(2, 480, torch.bfloat16), (0, 256, torch.float16), (3, 150, torch.float32),
                                          (6, 80, torch.bfloat16), (7, 64, torch.bfloat16), (1, 64, torch.float32)],
                         ids=lambda x: str(x).removeprefix("torch."))
def test_decode_kernel_compiles_for_sm90(kind, d, dtype, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    config = decode.decode_config(d)
    options = {name: config.pop(name) for name in ("num_warps", "enable_fp_fusion")}
    constexprs = {"KIND": kind, **config}
    pointers = {name: POINTER[dtype] for name in ("q_ptr", "k_ptr", "v_ptr", "o_ptr")}
    signature = {**pointers, "pos_ptr": "*i64"}
    for name in decode._decode_kernel.arg_names:
        if name not in signature:
            signature[name] = "constexpr" if name in constexprs else ("fp32" if name == "qk_scale" else "i32")
    try:
        kernel = triton.compile(ASTSource(fn=decode._decode_kernel, signature=signature, constexprs=constexprs),
                                target=H200, options=options)
    except RuntimeError as e:
        if "backend" in str(e).lower():
            pytest.skip(f"this Triton cannot target CUDA: {e}")
        raise
    assert kernel.asm["cubin"]
