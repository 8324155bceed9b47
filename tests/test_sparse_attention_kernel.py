"""The Triton sparse-attention kernels against the PyTorch reference: outputs and gradients.

They run on a CUDA device, or on the CPU through Triton's interpreter
(``TRITON_INTERPRET=1 python -m pytest -m interpret``). Outputs and gradients are poisoned (NaN)
before the kernels run, and most tests use 16-wide tiles so that small sequences still cross
many tiles, ragged ends included.
"""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("triton", reason="the Triton kernels need the triton package")
import jukebox_fast.kernels.attention as kernels  # noqa: E402
from conftest import kernel_device
from jukebox_fast import dispatch, hparams, make_prior
from jukebox_fast.models.transformer import FactoredAttention
from jukebox_fast.ops import AttentionPattern, Kind, buffers, prime_window, sparse_attention
from prior_inputs import codes, labels
from attention_check import assert_within_twice_the_reference, inputs, oracle, run
from vq_check import poison

pytestmark = [pytest.mark.interpret, pytest.mark.usefixtures("poisoned")]

SMALL_TILES = kernels.AttentionConfig(block_m=16, block_n=16, block_dk=16)
PATTERNS = [
    AttentionPattern(Kind.DENSE), AttentionPattern(Kind.BLOCK, block_ctx=8), AttentionPattern(Kind.BLOCK, block_ctx=5),
    AttentionPattern(Kind.COLUMN, block_ctx=8), AttentionPattern(Kind.COLUMN, block_ctx=6), AttentionPattern(Kind.PREV_BLOCK, block_ctx=8),
    AttentionPattern(Kind.PREV_BLOCK, block_ctx=7), AttentionPattern(Kind.PRIME, prime_len=prime_window(10, 4)), AttentionPattern(Kind.CROSS),
]
# (Lq, Lk): a whole sequence off the tile size, one that is not a multiple of any block_ctx
# above, the last queries of a longer sequence (prefill of a primed prefix), a single query.
LENGTHS = [(40, 40), (37, 37), (13, 40), (1, 29)]
LOW_PRECISION = [torch.bfloat16, torch.float16]


def pattern_id(p: AttentionPattern) -> str:
    return {0: "dense", 6: "cross", 7: f"prime{p.prime_len}"}.get(p.kind, f"{p.name}{p.block_ctx}")


@pytest.fixture
def small_tiles(monkeypatch):
    monkeypatch.setattr(kernels, "config_for", lambda d, dtype, kernel="fwd", kind=None: SMALL_TILES)


@pytest.mark.parametrize("lq,lk", LENGTHS, ids=lambda n: str(n))
@pytest.mark.parametrize("pattern", PATTERNS, ids=pattern_id)
def test_fp32_outputs_and_gradients_match_the_reference(pattern, lq, lk, dev, small_tiles):
    q, k, v = inputs(2, 2, lq, lk, 20, device=dev)
    grad_out = torch.randn(2, 2, lq, 20, device=dev)
    got = run(q, k, v, pattern, "triton", grad_out)
    for name, a, b in zip(("out", "dq", "dk", "dv"), got, run(q, k, v, pattern, "torch", grad_out)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("dtype", LOW_PRECISION, ids=lambda t: str(t).removeprefix("torch."))
@pytest.mark.parametrize("pattern", PATTERNS, ids=pattern_id)
def test_half_precision_is_within_twice_the_references_error(pattern, dtype, dev, small_tiles):
    lq, lk = (21, 45) if pattern.kind != Kind.CROSS else (21, 19)
    q, k, v = inputs(1, 2, lq, lk, 24, dtype, dev)
    grad_out = torch.randn(1, 2, lq, 24, device=dev).to(dtype)
    assert_within_twice_the_reference(
        run(q, k, v, pattern, "triton", grad_out), run(q, k, v, pattern, "torch", grad_out),
        oracle(q, k, v, pattern, grad_out), f"{pattern_id(pattern)} {dtype}")


# Every pattern at every released head width, forward and backward, with the tiles the dispatch
# takes there (80: five 16-wide chunks; 150: five of 32; 256: four of 64, or eight of 32 in fp32;
# 480: four of 128, in 16-bit only), each width in more than one dtype.
RELEASED = [AttentionPattern(Kind.DENSE), AttentionPattern(Kind.BLOCK, block_ctx=8), AttentionPattern(Kind.COLUMN, block_ctx=6),
            AttentionPattern(Kind.PREV_BLOCK, block_ctx=8), AttentionPattern(Kind.CROSS),
            AttentionPattern(Kind.PRIME, prime_len=prime_window(10, 4))]
RELEASED_CASES = [(d, p, [torch.bfloat16, torch.float16, torch.float32][(i + j) % (2 if d > 256 else 3)])
                  for i, d in enumerate((80, 150, 256, 480)) for j, p in enumerate(RELEASED)]


@pytest.mark.parametrize("d,pattern,dtype", RELEASED_CASES,
                         ids=[f"d{d}-{pattern_id(p)}-{str(t)[6:]}" for d, p, t in RELEASED_CASES])
def test_every_pattern_at_the_released_head_widths_with_the_default_tiles(d, pattern, dtype, dev):
    lq, lk = 19, (19 if pattern.kind != Kind.CROSS else 12)
    q, k, v = inputs(1, 1, lq, lk, d, dtype, dev)
    grad_out = torch.randn(1, 1, lq, d, device=dev).to(dtype)
    got = run(q, k, v, pattern, "triton", grad_out)
    if dtype == torch.float32:
        for a, b in zip(got, run(q, k, v, pattern, "torch", grad_out)):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    else:
        assert_within_twice_the_reference(got, run(q, k, v, pattern, "torch", grad_out),
                                          oracle(q, k, v, pattern, grad_out), f"d={d}")


@pytest.mark.parametrize("pattern", PATTERNS, ids=pattern_id)
def test_deterministic_backward_is_bit_repeatable_and_agrees_with_atomics(pattern, dev, small_tiles):
    q, k, v = inputs(2, 1, 35, 35 if pattern.kind != Kind.CROSS else 9, 16, device=dev)
    grad_out = torch.randn(2, 1, 35, 16, device=dev)
    torch.use_deterministic_algorithms(True)
    try:
        first, second = (run(q, k, v, pattern, "triton", grad_out) for _ in range(2))
    finally:
        torch.use_deterministic_algorithms(False)
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    atomic = run(q, k, v, pattern, "triton", grad_out)  # dQ through fp32 atomics
    for a, b in zip(atomic, first):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


# (pattern, Lk, whether a 16-key tile holds every key its queries see): the backward then stores
# dQ from its key loop (one pass, no atomics, nothing read twice), else dQ takes the second kernel
# (deterministic) or fp32 atomics.
ONE_PASS = [
    (AttentionPattern(Kind.BLOCK, block_ctx=8), 40, True), (AttentionPattern(Kind.BLOCK, block_ctx=5), 40, False),
    (AttentionPattern(Kind.PREV_BLOCK, block_ctx=8), 40, True),
    (AttentionPattern(Kind.PREV_BLOCK, block_ctx=7), 40, False),
    (AttentionPattern(Kind.COLUMN, block_ctx=3), 40, True),  # 14 units: one tile
    (AttentionPattern(Kind.COLUMN, block_ctx=2), 40, False),  # 20 units: two tiles
    (AttentionPattern(Kind.DENSE), 16, True), (AttentionPattern(Kind.DENSE), 40, False),
    (AttentionPattern(Kind.PRIME, prime_len=10), 40, True), (AttentionPattern(Kind.PRIME, prime_len=20), 40, False),
    (AttentionPattern(Kind.PRIME, prime_len=0), 40, True),  # no query sees a key: dQ all zeros
    (AttentionPattern(Kind.CROSS), 12, True), (AttentionPattern(Kind.CROSS), 40, False),
]


@pytest.mark.parametrize("deterministic", [True, False], ids=["deterministic", "atomics"])
@pytest.mark.parametrize("pattern,lk,one_pass", ONE_PASS, ids=[f"{pattern_id(p)}-{n}" for p, n, _ in ONE_PASS])
def test_backward_stores_dq_in_one_pass_when_a_key_tile_holds_every_key_its_queries_see(
        pattern, lk, one_pass, deterministic, dev, small_tiles, monkeypatch):
    assert kernels.dq_in_one_pass(pattern.kind, lk, pattern.block_ctx, pattern.prime_len, 16) == one_pass
    launched, kernels_launch = [], kernels.launch

    def spy(kernel, grid, *args, **kwargs):
        launched.append((kernel.fn.__name__, kwargs.get("DQ")))
        return kernels_launch(kernel, grid, *args, **kwargs)

    monkeypatch.setattr(kernels, "launch", spy)
    lq = min(lk, 29) if pattern.kind != Kind.CROSS else 23  # the last queries of the keys (or 23 on the lyrics)
    q, k, v = inputs(2, 2, lq, lk, 20, device=dev)
    grad_out = torch.randn(2, 2, lq, 20, device=dev)
    torch.use_deterministic_algorithms(deterministic)
    try:
        got = run(q, k, v, pattern, "triton", grad_out)
    finally:
        torch.use_deterministic_algorithms(False)
    backward = launched[launched.index(("_delta_kernel", None)):]
    mode = (kernels.DQ_STORE if one_pass else kernels.DQ_LATER if deterministic else kernels.DQ_ATOMIC).value
    assert backward[1] == ("_bwd_kv_kernel", mode)
    assert [name for name, _ in backward] == ["_delta_kernel", "_bwd_kv_kernel"] + (
        ["_bwd_q_kernel"] if mode == kernels.DQ_LATER.value else [])
    for name, a, b in zip(("out", "dq", "dk", "dv"), got, run(q, k, v, pattern, "torch", grad_out)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=lambda m: f"{name}: {m}")


@settings(max_examples=12, deadline=None)
@given(
    kind=st.sampled_from([0, 1, 2, 3, 6, 7]), block_ctx=st.integers(1, 9), prime=st.integers(0, 30),
    lk=st.integers(1, 40), q_frac=st.floats(0.0, 1.0), d=st.integers(1, 40), heads=st.integers(1, 3),
    seed=st.integers(0, 2**31 - 1),
)
def test_random_shapes_and_patterns(kind, block_ctx, prime, lk, q_frac, d, heads, seed):
    torch.manual_seed(seed)
    pattern = AttentionPattern(kind, block_ctx, prime)
    lq = max(1, round(q_frac * lk)) if kind != Kind.CROSS else max(1, round(q_frac * 40))
    dev = kernel_device()
    q, k, v = inputs(1, heads, lq, lk, d, device=dev)
    grad_out = torch.randn(1, heads, lq, d, device=dev)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(buffers, "new_empty", poison)
        mp.setattr(kernels, "config_for", lambda d, dtype, kernel="fwd", kind=None: SMALL_TILES)
        got = run(q, k, v, pattern, "triton", grad_out, scale=0.37)
    for a, b in zip(got, run(q, k, v, pattern, "torch", grad_out, scale=0.37)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_strided_views_as_the_model_makes_them(dev, small_tiles):
    # q, k, v as FactoredAttention makes them: thirds of one [N, L, 3·H·d] projection, viewed as
    # [N, H, L, d]. The kernels read them in place; the output is [N, H, L, d] laid out as
    # [N, L, H, d], so merging the heads back is a view.
    n, length, h, d = 2, 24, 3, 8
    proj = torch.randn(n, length, 3 * h * d, device=dev, requires_grad=True)
    q, k, v = (t.view(n, length, h, d).transpose(1, 2) for t in proj.chunk(3, dim=2))
    assert not q.is_contiguous()
    pattern = AttentionPattern(Kind.COLUMN, block_ctx=6)
    out = sparse_attention(q, k, v, pattern, backend="triton")
    assert out.transpose(1, 2).is_contiguous()
    (grad,) = torch.autograd.grad(out.square().sum(), proj)
    ref = sparse_attention(q, k, v, pattern, backend="torch")
    (ref_grad,) = torch.autograd.grad(ref.square().sum(), proj)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-4, atol=1e-5)


def test_empty_query_set(dev):
    q, k, v = inputs(1, 2, 0, 7, 8, device=dev)
    out = sparse_attention(q, k, v, AttentionPattern(Kind.DENSE), backend="triton")
    assert out.shape == (1, 2, 0, 8)
    out.sum().backward()
    assert k.grad.abs().sum() == 0


def test_auto_takes_the_kernel_and_says_why_not(dev):
    q = k = v = torch.randn(1, 1, 8, 4, device=dev)
    assert dispatch.resolve("sparse_attention", q, k, v, AttentionPattern(Kind.DENSE), 0.5).name == "triton"
    wide = torch.randn(1, 1, 8, kernels.MAX_HEAD_DIM + 1, device=dev)
    assert dispatch.resolve("sparse_attention", wide, wide, wide, AttentionPattern(Kind.DENSE), 0.5).name == "torch"
    with pytest.raises(dispatch.BackendUnavailableError, match="heads up to d=512"):
        sparse_attention(wide, wide, wide, AttentionPattern(Kind.DENSE), backend="triton")
    with pytest.raises(dispatch.BackendUnavailableError, match="one dtype"):
        sparse_attention(q, k.half(), v, AttentionPattern(Kind.DENSE), backend="triton")
    fp32_wide = torch.randn(1, 1, 8, kernels.MAX_FP32_HEAD_DIM + 1, device=dev)  # 16-bit heads this wide do run
    with pytest.raises(dispatch.BackendUnavailableError, match="fp32 heads up to d=256"):
        sparse_attention(fp32_wide, fp32_wide, fp32_wide, AttentionPattern(Kind.DENSE), backend="triton")


def _prior_step(name: str, dev: str, **overrides):
    torch.manual_seed(0)
    prior = make_prior(hparams.get(name, **overrides), device=dev).train()
    return prior, codes(prior, 2), labels(prior, 2)


# Four layers each, since every layer costs seconds in the interpreter: tiny_prior with its prime
# layer brought forward (``prime_early``) holds block, column, previous-block and prime layers;
# order 9 gives a dense layer in four; tiny_prior_5b_lyrics, a separate lyric encoder, with order 6
# gives block, column, previous-block and cross-attention.
PRIORS = {"1b_lyrics-like": ("tiny_prior", dict(prior_depth=4)),
          "dense": ("tiny_prior", dict(prior_depth=4, attn_order=9)),
          "5b_lyrics-like": ("tiny_prior_5b_lyrics", dict(prior_depth=4, attn_order=6))}


@pytest.mark.parametrize("case", list(PRIORS))
def test_a_prior_training_step_runs_through_the_kernel(case, dev, monkeypatch, prime_early):
    name, overrides = PRIORS[case]
    prior, zs, y = _prior_step(name, dev, **overrides)
    kinds = {layer.attn.pattern.kind for layer in prior.prior.transformer._attn_mods}
    assert kinds == {"1b_lyrics-like": {1, 2, 3, 7}, "dense": {0, 1, 2, 3}, "5b_lyrics-like": {1, 2, 3, 6}}[case]
    results = {}
    for backend in ("torch", "triton"):
        monkeypatch.setenv("JUKEBOX_FAST_BACKEND", backend)
        prior.zero_grad()
        loss, _ = prior(zs, y)
        loss.backward()
        results[backend] = [loss.detach()] + [p.grad.clone() for p in prior.parameters() if p.grad is not None]
    for a, b in zip(results["triton"], results["torch"]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_torch_compile_traces_a_prior_step_without_graph_breaks(dev):
    prior, zs, y = _prior_step("tiny_upsampler", dev)
    graphs = []

    def record(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    def step(zs, y):
        return prior(zs, y)[0]

    with dispatch.use_backend("triton"):
        loss = torch.compile(step, backend=record, fullgraph=True)(zs, y)  # fullgraph: a break raises
        loss.backward()
    calls = [n for n in graphs[0].graph.nodes if n.target is torch.ops.jukebox_fast.sparse_attention_fwd.default]
    assert len(graphs) == 1
    assert len(calls) == sum(isinstance(m, FactoredAttention) for m in prior.modules())  # every layer
    grads = [p.grad.clone() for p in prior.parameters()]
    prior.zero_grad()
    with dispatch.use_backend("torch"):
        eager = step(zs, y)
        eager.backward()
    torch.testing.assert_close(loss, eager, rtol=1e-5, atol=1e-6)
    for a, b in zip(grads, [p.grad for p in prior.parameters()]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
