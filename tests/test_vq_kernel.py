"""The Triton kernels behind vq_nearest and vq_quantise, against the PyTorch reference.

They run on a CUDA device, or on the CPU through Triton's interpreter
(``TRITON_INTERPRET=1 python -m pytest -m interpret``): the only proof CI has that the kernels
are right. Every output the kernels write in full is poisoned before they run.
"""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

triton = pytest.importorskip("triton", reason="the Triton kernels need the triton package")
import triton.language as tl  # noqa: E402

import jukebox_fast.kernels.vq as kernels  # noqa: E402
from jukebox_fast.kernels.common import dot  # noqa: E402
import jukebox_fast.ops.vq as vq_mod
from jukebox_fast.ops import buffers
from conftest import kernel_device
from jukebox_fast import hparams, make_vqvae
from jukebox_fast.ops import vq_nearest, vq_quantise
from vq_check import assert_nearest, assert_same_codes_by_margin, poison

pytestmark = [pytest.mark.interpret, pytest.mark.usefixtures("poisoned")]

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# Odd and power-of-two widths, N and K off the tile sizes, D from 1 to the kernel's limit: the
# resource check's sweep (16, 64, 100, 128, 140, 256; rows wider than 64 are searched in chunks).
SHAPES = [(1, 1, 1), (7, 13, 5), (200, 100, 48), (129, 31, 100), (40, 70, 256), (300, 257, 64),
          (65, 40, 16), (33, 64, 32), (17, 50, 128), (23, 90, 140)]


def randn(*shape, dtype=torch.float32, device="cpu"):
    return torch.randn(*shape).to(device=device, dtype=dtype)


def quantise(x, c, deterministic=False, blocks=(None, None)):
    """The Triton implementation of vq_quantise, with the tile sizes a test asks for."""
    return vq_mod.vq_quantise_triton(x, c, True, deterministic, block_n=blocks[0], block_k=blocks[1])


@pytest.mark.parametrize("n,k,d", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_nearest_matches_the_reference(n, k, d, dtype, dev):
    x, c = randn(n, d, dtype=dtype, device=dev), randn(k, d, dtype=dtype, device=dev)
    idx, dist = vq_nearest(x, c, backend="triton")
    assert_nearest(x, c, idx, dist, reference=vq_nearest(x, c, backend="torch"))
    if dtype == torch.float32:
        ref_idx, ref_dist = vq_nearest(x, c, backend="torch")
        assert torch.equal(idx, ref_idx)
        torch.testing.assert_close(dist, ref_dist, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("n,k,d", [(300, 257, 64), (129, 31, 100), (40, 70, 256), (7, 13, 5), (45, 37, 140)])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("deterministic", [False, True], ids=["atomic", "deterministic"])
@pytest.mark.parametrize("blocks", [(None, None), (16, 16)], ids=["default-tiles", "16x16-tiles"])
def test_training_outputs_match_the_reference(n, k, d, dtype, deterministic, blocks, dev):
    x, c = randn(n, d, dtype=dtype, device=dev), randn(k, d, dtype=dtype, device=dev)
    out = quantise(x, c, deterministic, blocks)
    ref = vq_mod.vq_quantise_reference(x, c, True, deterministic)
    assert_nearest(x, c, out.codes, out.distances, reference=(ref.codes, ref.distances))
    assert torch.equal(out.codes, ref.codes)  # these inputs hold no near-ties
    assert out.quantised.dtype == dtype and torch.equal(out.quantised, c[out.codes])
    torch.testing.assert_close(out.commit, ref.commit, rtol=1e-5, atol=1e-5)
    assert out.counts.dtype == torch.int64 and torch.equal(out.counts, ref.counts)
    assert out.sums.dtype == torch.float32
    torch.testing.assert_close(out.sums, ref.sums, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", DTYPES)
def test_exact_ties_go_to_the_lowest_index_across_tiles(dtype, dev):
    d, k = 16, 200
    c = torch.randint(0, 2, (k, d)).float() * 2 - 1  # ±1 entries: every ‖c‖² is exactly 16
    x = torch.zeros(40, d)  # row j is a·e_j: every code with c[:, j] = +1 is exactly as near
    for j in range(39):
        x[j, j % d] = 0.5 * (1 + j // d)
    expected = [int((c[:, j % d] == 1).int().argmax()) for j in range(39)] + [0]  # last row: all tie
    x, c = x.to(dev, dtype), c.to(dev, dtype)
    assert vq_nearest(x, c, backend="triton")[0].tolist() == expected
    assert quantise(x, c, blocks=(16, 16)).codes.tolist() == expected  # ties across 13 K tiles


@pytest.mark.parametrize("dtype", DTYPES)
def test_duplicated_codebook_rows_tie_to_the_lower_twin(dtype, dev):
    c = torch.randn(150, 24)
    c[149], c[70], c[66] = c[3], c[3], c[65]  # twins in the same and in other tiles
    x = torch.cat([c[3] + 1e-2 * torch.randn(5, 24), c[65] + 1e-2 * torch.randn(5, 24)])
    x, c = x.to(dev, dtype), c.to(dev, dtype)
    expected = [3] * 5 + [65] * 5
    assert vq_nearest(x, c, backend="triton")[0].tolist() == expected
    out = quantise(x, c, blocks=(16, 16))
    assert out.codes.tolist() == expected
    assert out.counts[3] == 5 and out.counts[65] == 5 and out.counts.sum() == 10
    same = torch.ones(5, 24, device=dev, dtype=dtype)  # every code equal: all tie with code 0
    assert vq_nearest(randn(6, 24, dtype=dtype, device=dev), same, backend="triton")[0].tolist() == [0] * 6


@pytest.mark.parametrize("dtype", DTYPES)
def test_huge_codebook_norms_do_not_hide_the_nearest_code(dtype, dev):
    c = torch.randn(100, 16) * 1e3
    c[77] = torch.randn(16) * 0.01
    x = torch.randn(20, 16) * 0.01
    x, c = x.to(dev, dtype), c.to(dev, dtype)
    idx, dist = vq_nearest(x, c, backend="triton")
    assert idx.tolist() == [77] * 20
    assert_nearest(x, c, idx, dist, reference=vq_nearest(x, c, backend="torch"))


def test_more_than_65536_codes(dev, monkeypatch):
    if dev == "cpu":  # the interpreter walks 64 codes a step (1100 steps); 1024 reach the same indices in 69
        for key in [key for key in kernels._TILES if not key[1]]:  # rows up to 64 wide
            monkeypatch.setitem(kernels._TILES, key, (128, 1024) + kernels._TILES[key][2:])
    k, d = 70_000, 16
    c = randn(k, d, device=dev)
    x = randn(20, d, device=dev)
    c[k - 1], c[65_537] = x[0], x[1]  # exact hits past 2¹⁶
    for dtype in (torch.float32, torch.bfloat16):
        xs, cs = x.to(dtype), c.to(dtype)
        idx, dist = vq_nearest(xs, cs, backend="triton")
        assert idx[:2].tolist() == [k - 1, 65_537]
        assert_nearest(xs, cs, idx, dist, reference=vq_nearest(xs, cs, backend="torch"))


def test_one_row_and_no_rows(dev):
    c = randn(50, 20, device=dev)
    x = randn(1, 20, device=dev)
    assert_nearest(x, c, *vq_nearest(x, c, backend="triton"))
    assert torch.equal(quantise(x, c).quantised, c[vq_nearest(x, c, backend="torch")[0]])
    empty = randn(0, 20, device=dev)
    idx, dist = vq_nearest(empty, c, backend="triton")
    assert idx.shape == (0,) and dist.shape == (0,) and idx.dtype == torch.int64
    for deterministic in (False, True):
        out = quantise(empty, c, deterministic)
        assert out.quantised.shape == (0, 20) and float(out.commit) == 0.0
        assert torch.equal(out.counts, torch.zeros(50, dtype=torch.int64, device=dev))
        assert torch.equal(out.sums, torch.zeros(50, 20, device=dev))


def test_a_non_finite_row_reports_index_zero_and_nan_as_the_reference(dev):
    x, c = randn(10, 8, device=dev), randn(30, 8, device=dev)
    x[4, 2], x[7, 0] = float("nan"), float("inf")
    bad = torch.zeros(10, dtype=torch.bool, device=dev)
    bad[[4, 7]] = True
    idx, dist = vq_nearest(x, c, backend="triton", check_finite=False)
    ref_idx, ref_dist = vq_nearest(x, c, backend="torch", check_finite=False)
    assert torch.equal(idx, ref_idx) and idx[bad].tolist() == [0, 0]
    assert bool(dist[bad].isnan().all()) and bool(ref_dist[bad].isnan().all())
    assert_nearest(x[~bad], c, idx[~bad], dist[~bad])
    assert bool(quantise(x, c).commit.isnan())  # the training loss must see the NaN


def test_a_non_finite_codebook_row_is_never_chosen_as_the_reference(dev):
    x, c = randn(50, 8, device=dev), randn(30, 8, device=dev)
    c[3, 1], c[17, 0] = float("nan"), float("-inf")
    good = torch.ones(30, dtype=torch.bool, device=dev)
    good[[3, 17]] = False
    for backend in ("triton", "torch"):
        idx, dist = vq_nearest(x, c, backend=backend, check_finite=False)
        keep = good.nonzero().flatten()  # [28] the finite rows
        sub_idx, sub_dist = vq_nearest(x, c[good], backend="torch")
        assert torch.equal(idx, keep[sub_idx]), backend
        torch.testing.assert_close(dist, sub_dist)
    out = quantise(x, c)
    assert torch.equal(out.codes, keep[sub_idx]) and bool(torch.isfinite(out.quantised).all())


def test_mixed_dtypes_and_strided_rows(dev):
    x = randn(64, 40, dtype=torch.bfloat16, device=dev)
    c = randn(90, 40, device=dev)
    out = quantise(x, c)
    assert out.quantised.dtype == torch.float32  # computed in the promoted dtype, as the reference
    assert_nearest(x, c, out.codes, out.distances, reference=vq_nearest(x, c, backend="torch"))
    wide = randn(40, 128, device=dev)
    strided = wide.t()  # [128, 40] with stride (1, 128)
    idx, dist = vq_nearest(strided, c, backend="triton")
    assert torch.equal(idx, vq_nearest(strided.contiguous(), c, backend="torch")[0])


def test_deterministic_sums_repeat_bit_for_bit(dev):
    # Many rows on few codes: the order of additions matters for the bits of each sum.
    x, c = randn(2000, 32, device=dev), randn(5, 32, device=dev)
    first = quantise(x, c, deterministic=True)
    second = quantise(x, c, deterministic=True)
    assert torch.equal(first.sums, second.sums) and torch.equal(first.counts, second.counts)
    exact = torch.zeros(5, 32, dtype=torch.float64, device=dev).index_add_(0, first.codes, x.double())
    torch.testing.assert_close(first.sums.double(), exact, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(quantise(x, c).sums, first.sums, rtol=1e-5, atol=1e-4)  # atomic mode


def test_gradients_equal_the_reference(dev):
    c = randn(40, 12, device=dev)
    x0 = randn(3 * 17, 12, device=dev)
    g = randn(3 * 17, 12, device=dev)
    grads, values = [], []
    for backend in ("triton", "torch"):
        x = x0.clone().requires_grad_(True)
        out = vq_quantise(x, c, backend=backend)
        ((out.quantised * g).sum() + 0.25 * out.commit).backward()
        grads.append(x.grad)
        values.append((out.quantised.detach(), out.commit.detach()))
    # Straight-through: g itself; commitment: 0.25 · 2 · (x − q).
    q = c[vq_nearest(x0, c, backend="torch")[0]]
    torch.testing.assert_close(grads[1], g + 0.5 * (x0 - q))
    torch.testing.assert_close(grads[0], grads[1])
    torch.testing.assert_close(values[0], values[1])


@settings(max_examples=30, deadline=None)
@given(n=st.integers(0, 150), k=st.integers(1, 150), d=st.integers(1, 140), seed=st.integers(0, 2**31 - 1),
       dtype=st.sampled_from(DTYPES), blocks=st.sampled_from([(None, None), (16, 16), (32, 16), (16, 32)]),
       deterministic=st.booleans())
def test_random_shapes(n, k, d, seed, dtype, blocks, deterministic):
    dev = kernel_device()
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g).to(dev, dtype)
    c = torch.randn(k, d, generator=g).to(dev, dtype)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(buffers, "new_empty", poison)
        out = quantise(x, c, deterministic, blocks)
    assert_nearest(x, c, out.codes, out.distances, reference=vq_nearest(x, c, backend="torch"))
    assert torch.equal(out.quantised, c[out.codes])
    assert torch.equal(out.counts, torch.bincount(out.codes, minlength=k))
    exact = torch.zeros(k, d, dtype=torch.float64, device=dev).index_add_(0, out.codes, x.double())
    torch.testing.assert_close(out.sums.double(), exact, rtol=1e-5, atol=1e-4)
    exact_commit = (x.double() - c.double()[out.codes]).square().sum()
    torch.testing.assert_close(out.commit.double(), exact_commit, rtol=1e-5, atol=1e-4)


def test_a_vqvae_trains_through_the_kernels_with_the_same_losses(dev, monkeypatch):
    """JUKEBOX_FAST_BACKEND=triton: encode, EMA update and straight-through all go through the
    kernels, and four training steps give the torch backend's losses."""
    calls = []
    search = kernels.search
    monkeypatch.setattr(kernels, "search", lambda *a, **kw: calls.append(1) or search(*a, **kw))
    hps = hparams.get("tiny_vqvae", sample_length=2048)
    torch.manual_seed(1)
    audio = 0.3 * torch.randn(4, 2, 2048, 1, device=dev)  # four batches of two clips
    histories, codes = {}, {}
    for backend in ("torch", "triton"):
        monkeypatch.setenv("JUKEBOX_FAST_BACKEND", backend)
        torch.manual_seed(0)
        model = make_vqvae(hps, device=dev).train()
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        history = []
        for batch in audio:
            _, loss, metrics = model(batch)
            opt.zero_grad()
            loss.backward()
            opt.step()
            history += [float(loss.detach()), float(metrics["commit_loss"].detach()), float(metrics["fit"])]
        with torch.no_grad():
            codes[backend] = model.encode(audio[0])  # per level
        histories[backend] = torch.tensor(history)
        if backend == "torch":
            assert not calls, "the torch backend must not reach the kernels"
    # 4 steps × 3 levels of vq_quantise, then 3 levels of vq_nearest in encode.
    assert len(calls) == 4 * 3 + 3
    # The kernel's fp32 product is three TF32 products (as accurate as one fp32 product, rounded
    # differently), so a distance may differ from torch's by an ulp and a near-tie pick the other
    # code; the trajectories then drift apart a little. Measured on the CPU interpreter: 2.6e-5
    # absolute, 2.0e-4 relative at most over the 12 values; the bound leaves a factor of five.
    torch.testing.assert_close(histories["triton"], histories["torch"], rtol=1e-3, atol=1e-4)
    # Codes are compared one by one, not by their mean: one near-tie flipped (it happens with two
    # intra-op threads, whose sums round differently from one) moved a level's mean code by 0.24.
    for level, (got, want) in enumerate(zip(codes["triton"], codes["torch"])):
        assert (got != want).float().mean() <= 0.02, f"level {level}: {int((got != want).sum())} of {got.numel()} codes differ"


@pytest.mark.parametrize("d", [64, 140, 256])  # the released width; a chunked one; the widest
def test_fp32_search_gives_the_references_codes_at_the_released_shape(d, dev):
    # K = 2048 (every released level). fp32 goes through three TF32 products (kernels/common.py),
    # which round otherwise than the reference's BLAS: codes must be the reference's except where
    # the two nearest codes are within both methods' rounding (assert_same_codes_by_margin, whose
    # bound is written there). On these inputs no row is that close, so every code is the same.
    torch.manual_seed(3)
    n = 1000 if d == 64 else 300
    c = torch.randn(2048, d, device=dev)
    x = c[torch.randint(0, 2048, (n,), device=dev)] + 0.5 * torch.randn(n, d, device=dev)  # near codes
    idx, dist = vq_nearest(x, c, backend="triton")
    ref_idx, ref_dist = vq_nearest(x, c, backend="torch")
    assert assert_same_codes_by_margin(x, c, idx, ref_idx) == 0
    exact = (x.double() - c.double()[ref_idx]).square().sum(1)  # the chosen code's distance, in float64
    assert (dist.double() - exact).abs().max() <= 2 * (ref_dist.double() - exact).abs().max() + 1e-5


@triton.jit
def _product(a_ptr, b_ptr, out_ptr, PRECISION: tl.constexpr):
    r = tl.arange(0, 32)
    a = tl.load(a_ptr + r[:, None] * 32 + r[None, :])
    b = tl.load(b_ptr + r[:, None] * 32 + r[None, :])
    tl.store(out_ptr + r[:, None] * 32 + r[None, :], dot(a, b, tl.zeros([32, 32], tl.float32), PRECISION, False))


def test_the_three_tf32_products_are_as_accurate_as_one_fp32_product(dev):
    # The split x = hi + lo is emulated exactly here (TF32 products of TF32 values are exact in fp32),
    # so this is the accuracy the tensor cores give. Measured here: 2.1e-7 relative to Σ|a||b| at
    # most, against 1.5e-7 for PyTorch's fp32 matmul on the same inputs (one TF32 product: ~3e-4).
    torch.manual_seed(0)
    a, b = torch.randn(32, 32, device=dev), torch.randn(32, 32, device=dev)
    out = torch.full((32, 32), float("nan"), device=dev)
    _product[(1,)](a, b, out, PRECISION="tf32x3")
    exact = a.double() @ b.double()
    scale = a.double().abs() @ b.double().abs()
    err = ((out.double() - exact).abs() / scale).max().item()
    ref_err = (((a @ b).double() - exact).abs() / scale).max().item()
    assert err <= 2 * ref_err + 2 * torch.finfo(torch.float32).eps, (err, ref_err)


def test_torch_compile_sees_each_search_as_one_custom_op(dev):
    # Wired as sparse attention is: a torch.library custom op with a fake implementation, so a
    # compiled graph holds one node per call, with no graph break around the kernel.
    x, c = torch.randn(37, 16, device=dev), torch.randn(50, 16, device=dev)
    graphs = []

    def record(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    def both(x, c):
        q = vq_quantise(x, c, backend="triton")
        return vq_nearest(x, c, check_finite=False, backend="triton")[1].sum() + q.commit + q.sums.sum()

    got = torch.compile(both, backend=record, fullgraph=True)(x, c)  # fullgraph: a break raises
    targets = [n.target for n in graphs[0].graph.nodes]
    assert targets.count(torch.ops.jukebox_fast.vq_search.default) == 1
    assert targets.count(torch.ops.jukebox_fast.vq_quantise.default) == 1
    torch.testing.assert_close(got, both(x, c))


def test_the_kernels_take_the_codebook_terms_once_per_version(dev, monkeypatch):
    real, calls = vq_mod.code_norms, []
    monkeypatch.setattr(vq_mod, "code_norms", lambda c: calls.append(1) or real(c))
    x, c = torch.randn(50, 100, device=dev), torch.randn(40, 100, device=dev)
    first = vq_nearest(x, c, backend="triton")
    again = vq_quantise(x, c, backend="triton")
    assert len(calls) == 1 and torch.equal(again.codes, first[0])
    c[7] = x[3]  # an in-place change: the next search computes the terms again and finds row 7
    idx, _ = vq_nearest(x, c, backend="triton")
    assert len(calls) == 2 and int(idx[3]) == 7
