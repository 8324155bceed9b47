"""The oracle for nearest-codebook results: exact float64 distances and the fp32 error rule."""
from __future__ import annotations

import torch

EPS32 = torch.finfo(torch.float32).eps


def exact_distances(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Squared distances [N, K] in float64 from the inputs as given (after their own rounding)."""
    x64, c64 = x.double().cpu(), c.double().cpu()
    # Differences, not the expansion: the oracle must not share the error it is checking.
    return torch.cdist(x64, c64, compute_mode="donot_use_mm_for_euclid_dist").square()


def expansion_error(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Per row [N]: what ‖x‖² − 2x·c + ‖c‖² in fp32 may lose to rounding, about eps·(‖x‖² + ‖c‖²)."""
    x64, c64 = x.double().cpu(), c.double().cpu()
    return 4 * EPS32 * (x64.square().sum(1) + c64.square().sum(1).max())


def errors(x, c, idx, dist) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row [N]: how far the chosen code is from the nearest one, and how far ``dist`` is from
    the chosen code's exact distance."""
    d = exact_distances(x, c)
    chosen = d.gather(1, idx.cpu().view(-1, 1)).squeeze(1)
    return chosen - d.min(dim=1).values, (dist.double().cpu() - chosen).abs()


def assert_nearest(x, c, idx, dist, reference=None) -> None:
    """``idx``/``dist`` must name a nearest code up to rounding and give its distance.

    Without ``reference`` the bound is the analytic fp32 expansion error. With ``reference``
    (the torch implementation's (idx, dist) on the same inputs) an implementation may err by no
    more than twice what the reference errs on these inputs, or by the analytic bound where that
    is larger: an fp32 kernel rounds in another order than the reference (three TF32 products on
    the GPU, kernels/common.py), within the expansion's own rounding.
    """
    n = x.shape[0]
    assert idx.shape == (n,) and idx.dtype == torch.int64, (idx.shape, idx.dtype)
    assert dist.shape == (n,) and dist.dtype == torch.float32, (dist.shape, dist.dtype)
    if n == 0:
        return
    assert bool(((idx >= 0) & (idx < c.shape[0])).all()), "an index is out of range (unwritten?)"
    assert bool(torch.isfinite(dist).all()), "a distance is not finite (unwritten?)"
    bound = expansion_error(x, c)
    if reference is None:
        tol = bound
    else:
        ref_gap, ref_err = errors(x, c, *reference)
        tol = torch.maximum(2 * torch.maximum(ref_gap, ref_err).max(), bound)
    gap, err = errors(x, c, idx, dist)
    assert bool((gap <= tol).all()), f"a chosen code is not (near-)nearest: gap {gap.max():.3g} > tol {tol.max():.3g}"
    assert bool((err <= tol).all()), f"a distance is off: {err.max():.3g} > tol {tol.max():.3g}"


def assert_same_codes_by_margin(x, c, idx, ref_idx) -> int:
    """Two fp32 searches that round differently (three TF32 products on a GPU's tensor cores, a
    BLAS's fp32 FMAs on the CPU; the interpreter emulates the first only up to its summation order)
    may pick different codes only for a row whose two nearest codes lie within both searches'
    rounding of each other. Each computed distance is within :func:`expansion_error` of the exact
    one, so two searches can disagree only where the exact gap between the nearest and the second
    nearest is at most twice that bound. Every other row must get the same code, and a row that
    differs must still be given a code within the bound of the nearest. Returns how many rows
    were near-ties (where the codes were free to differ)."""
    d = exact_distances(x, c)  # [N, K] float64
    two = d.topk(min(2, d.shape[1]), dim=1, largest=False).values  # [N, 2] nearest, second nearest
    bound = expansion_error(x, c)  # [N]
    gap = two[:, -1] - two[:, 0]
    clear = gap > 2 * bound
    idx, ref_idx = idx.cpu(), ref_idx.cpu()
    assert torch.equal(idx[clear], ref_idx[clear]), (
        f"{int((idx[clear] != ref_idx[clear]).sum())} rows with a clear nearest code got another one")
    chosen = d.gather(1, idx.view(-1, 1)).squeeze(1)
    assert bool((chosen - two[:, 0] <= 2 * bound).all()), "a near-tie row was given a code past the bound"
    return int((~clear).sum())


def poison(shape, dtype, device) -> torch.Tensor:
    """A stand-in for ``ops.buffers.new_empty``: NaN for floats, int64.min (never a valid index, even
    wrapped) for integers, so any element an implementation leaves unwritten fails the checks."""
    fill = float("nan") if dtype.is_floating_point else torch.iinfo(dtype).min
    return torch.full(shape, fill, dtype=dtype, device=device)
