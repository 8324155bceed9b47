"""Helpers for the sparse-attention kernel tests (interpreter and GPU)."""
from __future__ import annotations

import torch

from jukebox_fast.ops import sparse_attention


def inputs(n, h, lq, lk, d, dtype=torch.float32, device="cpu"):
    return [torch.randn(n, h, length, d).to(device, dtype).requires_grad_() for length in (lq, lk, lk)]


def run(q, k, v, pattern, backend, grad_out, scale=None):
    """Output and (dq, dk, dv) of one implementation."""
    out = sparse_attention(q, k, v, pattern, scale=scale, backend=backend)
    return (out, *torch.autograd.grad(out, (q, k, v), grad_out))


def oracle(q, k, v, pattern, grad_out, scale=None):
    """The reference in fp32 on the same (already rounded) inputs."""
    up = [t.detach().float().requires_grad_() for t in (q, k, v)]
    return run(*up, pattern, "torch", grad_out.float(), scale)


def assert_within_twice_the_reference(kernel, reference, exact, what):
    """The low-precision rule: the kernel's error against the fp32 oracle is at most twice the
    reference's own error in the same dtype (plus one ulp of the values' scale)."""
    for name, got, ref, ex in zip(("out", "dq", "dk", "dv"), kernel, reference, exact):
        assert torch.isfinite(got).all(), f"{what} {name}: non-finite (unwritten?) elements"
        err = (got.float() - ex).abs().max().item()
        ref_err = (ref.float() - ex).abs().max().item()
        ulp = torch.finfo(got.dtype).eps * ex.abs().max().item()
        assert err <= 2 * ref_err + ulp, f"{what} {name}: kernel error {err:.3g}, reference's {ref_err:.3g}"
