"""dilated_resblock's CUDA kernel against the reference on a GPU (skipped without one)."""
from __future__ import annotations

import pytest
import torch

import jukebox_fast
from jukebox_fast import extension, ops
from jukebox_fast.dispatch import use_backend
from resblock_check import assert_close_fp32, inputs, released_dilations

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
def test_16_bit_blocks_are_out_of_the_kernels_scope(dtype):
    # The kernel's stated scope: an fp32 reference (README, ops/resblock.py); cuDNN runs 16-bit blocks.
    tensors = inputs(1, 32, 32, 100, dtype=dtype, device="cuda")
    with torch.no_grad(), pytest.raises(Exception, match="the CUDA kernel is an fp32 reference"):
        ops.dilated_resblock(*tensors, 3, 0.5, backend="cuda")


def test_auto_never_takes_the_kernel_and_a_request_does():
    from jukebox_fast import dispatch

    tensors = inputs(1, 32, 32, 100, device="cuda")
    with torch.no_grad():
        assert dispatch.resolve("dilated_resblock", *tensors, 3, 1.0).name == "torch"
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
