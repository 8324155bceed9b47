"""pytest-benchmark suite for one decode step (``pip install -e ".[bench]"``).

    python -m pytest benchmarks/test_bench_sampling.py --benchmark-group-by=param:batch

One step of a prefilled window (embedding, every layer, logits) of the CPU-sized upsampler and
1b_lyrics presets of ``bench_sampling.py``, batch 1 and 4, fp32: the PyTorch reference step
against the kernel step (``cpp`` on the CPU, ``triton`` on a GPU), same inputs, one session.
"""
from __future__ import annotations

import pytest
import torch

from bench_sampling import CPU_PRESETS, _conditioning
from common import sync
from jukebox_fast import dispatch, hparams, make_prior
from jukebox_fast.models.decoding import IncrementalDecoder

pytest.importorskip("pytest_benchmark")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
KERNEL = "triton" if DEVICE == "cuda" else "cpp"
PREFILL = 500  # the step runs at this position: every pattern's cache partly filled


@pytest.mark.parametrize("backend", ["torch", KERNEL])
@pytest.mark.parametrize("batch", [1, 4])
@pytest.mark.parametrize("preset", list(CPU_PRESETS))
def test_decode_step(benchmark, preset, batch, backend):
    torch.manual_seed(0)
    prior = make_prior(hparams.get(preset, **CPU_PRESETS[preset]), device=DEVICE).eval()
    zs, y = _conditioning(prior, batch, DEVICE)
    with torch.no_grad():
        tokens, x_cond, y_cond, enc, _ = prior.lm_inputs(zs[0], zs[1:] or None, y)
    try:
        with dispatch.use_backend(decode_layers=backend):
            decoder = IncrementalDecoder(prior.prior, batch, x_cond, y_cond, enc)
    except dispatch.BackendUnavailableError as e:
        pytest.skip(str(e))
    decoder.prefill(tokens[:, :PREFILL])
    token = tokens[:, PREFILL - 1]

    def run():
        logits = decoder.step(token)
        sync(DEVICE)
        return logits

    def rewind():
        decoder.position.fill_(PREFILL)  # every round steps from the same position

    logits = benchmark.pedantic(run, setup=rewind, warmup_rounds=5, rounds=200)
    benchmark.extra_info["tokens/s"] = batch / benchmark.stats["median"]
    assert logits.shape == (batch, prior.prior.bins) and torch.isfinite(logits).all()
