"""The VQ-VAE on a CUDA device: the same codes and audio as on the CPU, and clear device errors."""
from __future__ import annotations

import pytest
import torch

from jukebox_fast import hparams, make_prior, make_vqvae
from jukebox_fast.ops import vq_nearest

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    cpu = make_vqvae("vqvae").eval()
    x = 0.3 * torch.randn(2, 16384, 1)
    cpu.init_codebooks(x)
    gpu = make_vqvae("vqvae", device="cuda").eval()
    gpu.load_state_dict(cpu.state_dict())
    return cpu, gpu, x


def test_codes_and_audio_match_the_cpu(models, monkeypatch):
    cpu, gpu, x = models
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # compare fp32 with fp32
    with torch.no_grad():
        zc, zg = cpu.encode(x), gpu.encode(x.cuda())
        for level, (a, b) in enumerate(zip(zc, zg)):
            # Different conv algorithms round differently: allow a rare flip between near-tied codes.
            assert (a != b.cpu()).float().mean() < 1e-3, level
        for level in range(3):
            ya = cpu.decode(zc[level:], start_level=level)
            yb = gpu.decode([z.cuda() for z in zc[level:]], start_level=level).cpu()
            torch.testing.assert_close(yb, ya, rtol=1e-4, atol=1e-5)


def test_device_mismatch_is_a_value_error(models):
    _, gpu, x = models
    with pytest.raises(ValueError, match="audio is on cpu but the model is on cuda"):
        gpu.encode(x)
    with pytest.raises(ValueError, match=r"codes of level 0 must lie in \[0, 2048\)"):
        gpu.decode([torch.full((1, 4), 5000, device="cuda")], end_level=1)


def test_vq_nearest_on_cuda_matches_cpu():
    x, c = torch.randn(5000, 64), torch.randn(2048, 64)
    i_cpu, d_cpu = vq_nearest(x, c)
    i_gpu, d_gpu = vq_nearest(x.cuda(), c.cuda(), backend="torch")
    assert (i_gpu.cpu() != i_cpu).float().mean() < 1e-3
    torch.testing.assert_close(d_gpu.cpu(), d_cpu, rtol=1e-4, atol=1e-3)


def test_training_step_on_cuda():
    model = make_vqvae(hparams.get("tiny_vqvae", sample_length=4096), device="cuda").train()
    _, loss, _ = model(0.3 * torch.randn(2, 4096, 1, device="cuda"))
    loss.backward()
    assert torch.isfinite(loss)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_vq_kernels_at_60_seconds_of_level_0_codes(dtype):
    from jukebox_fast.ops import vq_quantise
    from vq_check import assert_nearest, assert_same_codes_by_margin

    x = torch.randn(330_750, 64, device="cuda").to(dtype)
    c = torch.randn(2048, 64, device="cuda").to(dtype)
    idx, dist = vq_nearest(x, c, backend="triton")
    ref_idx, ref_dist = vq_nearest(x, c, backend="torch")
    rows = slice(0, 4096)  # the float64 oracle on a slice keeps host memory small
    assert_nearest(x[rows], c, idx[rows], dist[rows], reference=(ref_idx[rows], ref_dist[rows]))
    if dtype == torch.float32:  # codes by margin: only near-ties may differ (vq_check states the bound)
        assert_same_codes_by_margin(x[rows], c, idx[rows], ref_idx[rows])
    out = vq_quantise(x, c, backend="triton")
    assert torch.equal(out.codes, idx)
    assert torch.equal(out.counts, torch.bincount(idx, minlength=2048))
    sums = torch.zeros(2048, 64, dtype=torch.float64, device="cuda").index_add_(0, idx, x.double())
    torch.testing.assert_close(out.sums.double(), sums, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_cuda_graph_decoding_equals_eager(backend):
    from jukebox_fast.dispatch import use_backend
    from jukebox_fast.models.decoding import IncrementalDecoder
    from prior_inputs import codes, labels

    torch.manual_seed(0)
    prior = make_prior("tiny_prior", device="cuda").eval()
    zs, y = codes(prior, 2), labels(prior, 2)
    with torch.no_grad():
        tokens, x_cond, y_cond, enc, _ = prior.lm_inputs(zs[0].cuda(), None, y.cuda())
    outs = {}
    for graph in (False, True):
        with use_backend(decode_layers=backend):  # the step's implementation is resolved when the decoder is made
            decoder = IncrementalDecoder(prior.prior, 2, x_cond, y_cond, enc)
        steps = [decoder.prefill(tokens[:, :20])[:, -1]]
        for t in range(20, tokens.shape[1]):
            if graph and decoder._graph is None:
                decoder.capture()
            steps.append(decoder.step(tokens[:, t - 1]))
        outs[graph] = torch.stack(steps, dim=1)
    torch.testing.assert_close(outs[True], outs[False], rtol=1e-5, atol=1e-6)


def test_encoding_makes_no_host_sync_and_replays_in_a_cuda_graph():
    # The codebook terms are kept per codebook version, and encode(check_finite=False) checks
    # nothing on the host: no sync (CUDA raises on one in "error" mode), so a graph can hold it.
    model = make_vqvae(hparams.get("tiny_vqvae"), device="cuda").eval()
    x = 0.3 * torch.randn(2, 8192, 1, device="cuda")
    for backend in ("torch", "triton"):
        from jukebox_fast.dispatch import use_backend

        with use_backend(vq_nearest=backend):
            eager = model.encode(x, check_finite=False)  # the first call computes the terms
            torch.cuda.synchronize()
            torch.cuda.set_sync_debug_mode("error")
            try:
                again = model.encode(x, check_finite=False)
            finally:
                torch.cuda.set_sync_debug_mode("default")
            assert all(torch.equal(a, b) for a, b in zip(again, eager))
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):  # warm-up on a side stream, as capture wants
                model.encode(x, check_finite=False)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                captured = model.encode(x, check_finite=False)
            graph.replay()
            torch.cuda.synchronize()
            assert all(torch.equal(a, b) for a, b in zip(captured, eager)), backend
