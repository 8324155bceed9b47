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
