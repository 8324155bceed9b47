"""dilated_resblock's CUDA kernel against the reference on a GPU (skipped without one)."""
from __future__ import annotations

import pytest
import torch

import jukebox_fast
from jukebox_fast import extension, ops
from jukebox_fast.dispatch import use_backend
from resblock_check import assert_close_fp32, assert_within_twice_the_reference, inputs, released_dilations

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(extension.cuda_unavailable_reason() is not None,
                       reason=f"CUDA extension: {extension.cuda_unavailable_reason()}"),
]

SHAPES = [(1, 32, 32, 4099), (3, 5, 7, 37), (2, 64, 64, 70001), (1, 1024, 1024, 515), (2, 13, 29, 1)]


@pytest.fixture(autouse=True)
def _no_tf32():
    before = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32 = before


def run_cuda(tensors, dilation, res_scale):
    with torch.no_grad():
        return ops.dilated_resblock(*tensors, dilation, res_scale, backend="cuda")


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dilation", released_dilations())
def test_fp32(shape, dilation, poisoned):
    tensors = inputs(*shape, device="cuda", seed=dilation)
    assert_close_fp32(run_cuda(tensors, dilation, 0.25).cpu(), [t.cpu() for t in tensors], dilation, 0.25,
                      f"{shape} d={dilation}")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_low_precision(dtype, shape, poisoned):
    tensors = inputs(*shape, dtype=dtype, device="cuda", seed=1)
    for dilation in (1, 27, 2187):
        got = run_cuda(tensors, dilation, 0.5)
        assert_within_twice_the_reference(got, tensors, dilation, 0.5, f"{dtype} {shape} d={dilation}")


def test_auto_keeps_cudnn_until_a_benchmark_shows_the_kernel_ahead():
    from jukebox_fast import dispatch
    from jukebox_fast.measured import rule_for

    tensors = inputs(1, 32, 32, 100, device="cuda")
    with torch.no_grad():
        expected = "cuda" if rule_for("dilated_resblock", "cuda", torch.float32, 32, 1) else "torch"
        assert dispatch.resolve("dilated_resblock", *tensors, 3, 1.0).name == expected
        assert dispatch.resolve("dilated_resblock", *tensors, 3, 1.0, backend="cuda").name == "cuda"


def test_vqvae_decode_on_gpu_equals_torch():
    vqvae = jukebox_fast.make_vqvae("vqvae").cuda().eval()
    codes = [torch.randint(0, 2048, (2, 256), device="cuda") for _ in range(3)]
    with torch.no_grad():
        with use_backend(dilated_resblock="torch"):
            want = vqvae.decode(codes)
        with use_backend(dilated_resblock="cuda"):
            got = vqvae.decode(codes)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
