"""step_logits: the C++ logits of a decode step against F.linear, its dispatch rules and checks.
(Through the decoder: test_sampling.py's incremental decoding against the full forward pass.)"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from jukebox_fast import dispatch, extension
from jukebox_fast.dispatch import BackendUnavailableError
from jukebox_fast.ops import step_logits
from jukebox_fast.ops.step_logits import CPP_MAX_ROWS

pytestmark = pytest.mark.skipif(extension.load() is not None, reason=f"C++ extension: {extension.load()}")


# (N, width, bins): the upsamplers' width and vocabulary; odd everything, bins not a multiple of the
# four rows a pass takes, a width under one vector; more samples than one.
@pytest.mark.parametrize("shape", [(1, 1920, 2048), (3, 67, 130), (5, 13, 7), (4, 256, 2049)], ids=str)
def test_the_logits_match_the_reference(shape, poisoned):
    n, width, bins = shape
    g = torch.Generator().manual_seed(sum(shape))
    h, w = torch.randn(n, width, generator=g), torch.randn(bins, width, generator=g) * width**-0.5
    got = step_logits(h, w, backend="cpp")
    torch.testing.assert_close(got, F.linear(h, w), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got, (h.double() @ w.double().T).float(), rtol=1e-5, atol=1e-5)


def test_auto_takes_the_kernel_only_where_it_runs():
    h, w = torch.randn(2, 40), torch.randn(50, 40)
    assert dispatch.resolve("step_logits", h, w).name == "cpp"
    assert dispatch.resolve("step_logits", h.bfloat16(), w.bfloat16()).name == "torch"
    with pytest.raises(BackendUnavailableError, match="float32"):
        step_logits(h.bfloat16(), w.bfloat16(), backend="cpp")
    many = torch.randn(CPP_MAX_ROWS + 1, 40)  # a batch where MKL's matrix product is faster
    assert dispatch.resolve("step_logits", many, w).name == "torch"
    torch.testing.assert_close(step_logits(many, w, backend="cpp"), F.linear(many, w), rtol=1e-5, atol=1e-5)
    w.requires_grad_(True)
    assert dispatch.resolve("step_logits", h, w).name == "torch"
    with torch.no_grad():
        assert dispatch.resolve("step_logits", h, w).name == "cpp"


def test_bad_input_is_an_error_that_says_what_came():
    with pytest.raises(ValueError, match=r"the same width, got \(2, 40\) and \(50, 41\)"):
        step_logits(torch.randn(2, 40), torch.randn(50, 41))
    with pytest.raises(ValueError, match="share dtype and device"):
        step_logits(torch.randn(2, 40), torch.randn(50, 40).double())
    with pytest.raises(RuntimeError, match=r"out must be \[2, 50\]"):
        torch.ops.jukebox_fast_ext.step_logits(torch.randn(2, 40), torch.randn(50, 40), torch.empty(2, 49))
