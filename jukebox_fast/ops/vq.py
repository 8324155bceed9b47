"""Vector-quantisation ops for the bottleneck.

- ``vq_nearest``: x[N, D], codebook[K, D] -> (indices int64 [N], squared distances fp32 [N]).
- ``vq_quantise``: the same, plus the dequantised rows, the commit-error sum and the EMA
  statistics (per-code counts and sums), with the original's straight-through gradients.

Distances use the original's expansion ``‖x‖² − 2·x·c + ‖c‖²`` in fp32 whatever the input dtype,
so a distance may come out slightly negative through rounding, exactly as in the original. Ties
go to the lowest index, as ``torch.argmin``; identical codebook rows always count as tied.

What a search needs of the codebook beyond its rows (‖c‖² with repeats and non-finite rows taken
out, a copy safe for the products, whether every row is finite) is computed once per codebook
version (:func:`codebook_terms`): an EMA update, a restart, an optimiser step or a load changes the
version, and the next search computes them again. A search itself makes no host sync.

Non-finite values: ``vq_nearest`` refuses NaN or inf in x or the codebook unless
``check_finite=False``. The check is one fused reduction over x (the codebook's is kept with its
terms) and one host read of its result, so hot paths and CUDA graph captures pass False (the
VQ-VAE's encoding does; ``VQVAE.encode`` checks its audio once instead). Unchecked, and always in
``vq_quantise``: a row of x whose ‖x‖² is NaN or inf gets index 0 and distance NaN (and its NaN
reaches the commit sum); a codebook row holding NaN or inf is never chosen (if every row does,
every index is 0 with distance inf or NaN).
"""
from __future__ import annotations

import weakref
from typing import NamedTuple

import torch

from .. import dispatch
from . import buffers

__all__ = ["Quantised", "codebook_terms", "vq_nearest", "vq_nearest_reference", "vq_quantise", "vq_quantise_reference", "TILE_ELEMENTS"]

# The reference never holds more than this many distances at once (16 MiB of fp32), where the
# original materialises all N×K of them (2.7 GB for 60 s of level-0 codes).
TILE_ELEMENTS = 1 << 22

_FLOATS = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def check_inputs(x: torch.Tensor, codebook: torch.Tensor, op: str = "vq_nearest") -> None:
    """Raise ValueError, naming what was expected and what came, for inputs no backend takes."""
    for name, t in (("x", x), ("codebook", codebook)):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 2:
            raise ValueError(f"{op}: {name} must be 2-D [rows, D], got shape {tuple(t.shape)}")
        if t.dtype not in _FLOATS:
            raise ValueError(f"{op}: {name} must be a float tensor, got {t.dtype}")
    if x.shape[1] != codebook.shape[1]:
        raise ValueError(
            f"{op}: x is [N, {x.shape[1]}] but codebook is [K, {codebook.shape[1]}]; "
            "the widths must match"
        )
    if codebook.shape[0] == 0 or codebook.shape[1] == 0:
        raise ValueError(f"{op}: the codebook must be non-empty, got shape {tuple(codebook.shape)}")
    if x.device != codebook.device:
        raise ValueError(f"{op}: x is on {x.device} but codebook is on {codebook.device}")


def code_norms(codebook: torch.Tensor) -> torch.Tensor:
    """‖c‖² fp32 [K], +inf for every row that repeats an earlier row.

    A BLAS (and Triton's interpreter, which calls one) may compute two equal columns of x·cᵀ
    through different code paths, so equal rows can get distances one ulp apart. Taking the
    repeats out of the search restores the tie rule: the lowest index wins.
    """
    c = codebook.float()
    k = c.shape[0]
    _, group = torch.unique(c, dim=0, return_inverse=True)  # [K] group of each row, < K
    order = torch.arange(k, device=c.device)
    first = torch.full((k,), k, dtype=torch.int64, device=c.device)
    first.scatter_reduce_(0, group, order, reduce="amin")  # [K] lowest row of each group
    out_of_search = (first[group] != order) | ~torch.isfinite(c).all(dim=1)  # repeats, non-finite rows
    return (c * c).sum(dim=1).masked_fill_(out_of_search, float("inf"))


def searchable(codebook: torch.Tensor) -> torch.Tensor:
    """The codebook with NaN/inf replaced by 0 for the products x·c: a non-finite row would make
    every distance NaN; its ‖c‖² of +inf (:func:`code_norms`) keeps it out of the search."""
    return codebook.nan_to_num(0.0, 0.0, 0.0)


class Terms(NamedTuple):
    """What a search needs of a codebook [K, D] beyond its rows."""

    searchable: torch.Tensor  # [K, D] the rows, NaN/inf replaced by 0 (:func:`searchable`)
    norms: torch.Tensor  # fp32 [K] ‖c‖², +inf for repeats and non-finite rows (:func:`code_norms`)
    finite: torch.Tensor  # bool [] every row finite


_TERMS: dict[int, tuple] = {}  # id(codebook) -> (weak reference, version stamp, Terms)


def codebook_terms(codebook: torch.Tensor) -> Terms:
    """The codebook's :class:`Terms`, computed once per version of the tensor: kept while the
    tensor lives and its version counter, storage, shape and dtype stay (in-place updates bump the
    version), computed afresh otherwise, and always while torch.compile traces."""
    if torch.compiler.is_compiling() or codebook.is_inference():  # no version counter to key on
        return _terms(codebook)
    key = id(codebook)
    stamp = (codebook._version, codebook.data_ptr(), codebook.shape, codebook.stride(), codebook.dtype,
             codebook.device)
    held = _TERMS.get(key)
    if held is not None and held[0]() is codebook and held[1] == stamp:
        return held[2]
    terms = _terms(codebook)

    def forget(ref, key=key):  # the tensor died: drop its terms (unless its id was reused since)
        if key in _TERMS and _TERMS[key][0] is ref:
            del _TERMS[key]

    _TERMS[key] = (weakref.ref(codebook, forget), stamp, terms)
    return terms


def _terms(codebook: torch.Tensor) -> Terms:
    return Terms(*_terms_op(codebook))


# An op of its own, so torch.compile sees one opaque node (code_norms' torch.unique has a
# data-dependent size) and the search around it compiles whole.
@torch.library.custom_op("jukebox_fast::vq_codebook_terms", mutates_args=())
def _terms_op(codebook: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        return searchable(codebook), code_norms(codebook), torch.isfinite(codebook).all()


@_terms_op.register_fake
def _(codebook):
    return (torch.empty_like(codebook), codebook.new_empty((codebook.shape[0],), dtype=torch.float32),
            codebook.new_empty((), dtype=torch.bool))


def check_finite_inputs(x: torch.Tensor, codebook: torch.Tensor, op: str) -> None:
    """Refuse NaN or inf: one fused reduction over x (the codebook's kept with its terms) and one
    host read; the rows are counted only to word the error."""
    if bool(torch.isfinite(x).all() & codebook_terms(codebook).finite):
        return
    for name, t in (("x", x), ("codebook", codebook)):
        rows = (~torch.isfinite(t).all(dim=1)).nonzero().flatten()
        if len(rows):
            raise ValueError(f"{op}: {name} holds NaN or inf in {len(rows)} of its {t.shape[0]} rows (first: row "
                             f"{int(rows[0])}); pass check_finite=False to skip this check (see the module notes "
                             "for what unchecked non-finite rows give)")


@torch.no_grad()
def vq_nearest_reference(x: torch.Tensor, codebook: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """PyTorch reference: the oracle for the kernels and the CPU implementation."""
    n, k = x.shape[0], codebook.shape[0]
    terms = codebook_terms(codebook)
    c, c_sq = terms.searchable.float(), terms.norms  # [K, D], [K]
    indices = buffers.new_empty((n,), torch.int64, x.device)
    dists = buffers.new_empty((n,), torch.float32, x.device)
    rows = max(1, TILE_ELEMENTS // k)
    for start in range(0, n, rows):
        xs = x[start : start + rows].float()
        d = xs @ c.t()  # [rows, K]
        x_sq = (xs * xs).sum(dim=1, keepdim=True)  # [rows, 1]
        # Same order of operations as the original: (‖x‖² − 2·x·c) + ‖c‖², in place.
        d.mul_(-2).add_(x_sq).add_(c_sq)
        torch.min(d, dim=1, out=(dists[start : start + rows], indices[start : start + rows]))
        # A row whose ‖x‖² is NaN or inf has no nearest code: (0, NaN), whatever its NaNs' positions.
        bad = ~torch.isfinite(x_sq.squeeze(1))
        indices[start : start + rows].masked_fill_(bad, 0)
        dists[start : start + rows].masked_fill_(bad, float("nan"))
    return indices, dists


def vq_nearest(
    x: torch.Tensor, codebook: torch.Tensor, *, check_finite: bool = True, backend: str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest codebook row for each row of ``x``.

    Args:
        x: [N, D] float tensor (fp32, fp16, bf16 or fp64). N may be 0.
        codebook: [K, D] float tensor on the same device.
        check_finite: raise ValueError (naming the first bad row) if x or the codebook holds NaN
            or inf: one fused reduction over x and one host read. False skips it, for hot paths
            and CUDA graph captures; the module notes say what non-finite rows then give.
        backend: implementation to use (see :mod:`jukebox_fast.dispatch`); None for the default.

    Returns:
        ``(indices, distances)``: int64 [N] and fp32 [N], the index of the nearest row (lowest
        index on ties) and its squared Euclidean distance. Neither carries a gradient; for the
        training outputs and the straight-through gradient use :func:`vq_quantise`.
    """
    check_inputs(x, codebook, "vq_nearest")
    if check_finite:
        check_finite_inputs(x, codebook, "vq_nearest")
    return dispatch.call("vq_nearest", x, codebook, backend=backend)


class Quantised(NamedTuple):
    """What :func:`vq_quantise` returns for x [N, D] and a codebook [K, D]."""

    codes: torch.Tensor  # int64 [N], as vq_nearest
    distances: torch.Tensor  # fp32 [N], as vq_nearest
    quantised: torch.Tensor  # [N, D] codebook[codes]; gradient passes straight through to x
    commit: torch.Tensor  # fp32 [] Σ‖x − codebook[codes]‖²; gradient 2·(x − codebook[codes]) to x
    counts: torch.Tensor | None  # int64 [K] rows per code (None unless stats=True)
    sums: torch.Tensor | None  # fp32 [K, D] sum of the rows of each code (None unless stats=True)


@torch.no_grad()
def vq_quantise_reference(
    x: torch.Tensor, codebook: torch.Tensor, stats: bool = True, deterministic: bool = False
) -> Quantised:
    """PyTorch reference of :func:`vq_quantise`, without autograd."""
    codes, dists = vq_nearest_reference(x, codebook)
    quantised = codebook.to(torch.promote_types(x.dtype, codebook.dtype))[codes]  # [N, D]
    commit = (x.float() - quantised.float()).square().sum()
    counts = sums = None
    if stats:
        k, d = codebook.shape
        counts = torch.bincount(codes, minlength=k)  # [K]
        if deterministic and x.device.type != "cpu":  # index_add_ uses atomics off the CPU
            order = torch.argsort(codes, stable=True)
            sums = torch.segment_reduce(x.float()[order], "sum", lengths=counts, axis=0)
        else:
            sums = torch.zeros(k, d, device=x.device).index_add_(0, codes, x.float())
    return Quantised(codes, dists, quantised, commit, counts, sums)


class _StraightThrough(torch.autograd.Function):
    """Runs an implementation of vq_quantise and gives x the reference's gradients: the
    dequantised rows pass the gradient through unchanged (straight-through estimator), the
    commit sum adds 2·(x − q). The codebook gets none (its loss, if any, is the caller's)."""

    @staticmethod
    def forward(ctx, x, codebook, impl, stats, deterministic):
        out = impl(x.detach(), codebook, stats, deterministic)  # the codebook as given: its terms are kept by identity
        ctx.save_for_backward(x, out.quantised)
        ctx.mark_non_differentiable(*(t for t in (out.codes, out.distances, out.counts, out.sums) if t is not None))
        return tuple(out)

    @staticmethod
    def backward(ctx, g_codes, g_dists, g_quantised, g_commit, g_counts, g_sums):
        x, quantised = ctx.saved_tensors
        grad = 2 * (x.float() - quantised.float()) * g_commit
        if g_quantised is not None:
            grad = grad + g_quantised
        return grad.to(x.dtype), None, None, None, None


def vq_quantise(
    x: torch.Tensor,
    codebook: torch.Tensor,
    *,
    stats: bool = True,
    deterministic: bool | None = None,
    backend: str | None = None,
) -> Quantised:
    """Nearest codes plus everything a training step of the bottleneck needs, in one pass.

    Args:
        x: [N, D] float tensor (fp32, fp16, bf16 or fp64); N may be 0. Gradients flow to it.
        codebook: [K, D] float tensor on the same device. It gets no gradient here.
        stats: also return the EMA statistics (per-code counts and sums).
        deterministic: per-code sums in a fixed order, bit-identical from run to run. None follows
            ``torch.are_deterministic_algorithms_enabled()``.
        backend: implementation to use (see :mod:`jukebox_fast.dispatch`); None for the default.

    Returns:
        :class:`Quantised`. ``quantised`` holds codebook[codes] exactly, in the promoted dtype of
        x and codebook (the original's ``x + (q − x).detach()`` rounds it by up to an ulp); its
        gradient is the straight-through estimator, and ``commit`` carries the commitment
        loss's gradient, so both train the encoder as the original does.
    """
    check_inputs(x, codebook, "vq_quantise")
    if deterministic is None:
        deterministic = torch.are_deterministic_algorithms_enabled()
    impl = dispatch.resolve("vq_quantise", x, codebook, backend=backend)
    return Quantised(*_StraightThrough.apply(x, codebook, impl.fn, bool(stats), bool(deterministic)))


# -- Triton -------------------------------------------------------------------------------------
def _triton_supports(x: torch.Tensor, codebook: torch.Tensor, *args, **kwargs) -> list[str]:
    reasons = dispatch.triton_reasons(x, codebook)
    if reasons:
        return reasons
    from ..kernels.vq import MAX_WIDTH

    if torch.float64 in (x.dtype, codebook.dtype):
        reasons.append("the Triton kernel takes fp32, bf16 or fp16, not float64")
    if x.shape[1] > MAX_WIDTH:
        reasons.append(f"the Triton kernel takes rows up to D={MAX_WIDTH} wide, got D={x.shape[1]}")
    if codebook.shape[0] >= 2**31:
        reasons.append(f"the Triton kernel takes fewer than 2**31 codes, got {codebook.shape[0]}")
    return reasons


def _kernel_inputs(x: torch.Tensor, codebook: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x and codebook in their common dtype with unit stride along D (tl.dot needs one dtype)."""
    dtype = torch.promote_types(x.dtype, codebook.dtype)
    x, codebook = x.to(dtype), codebook.to(dtype)
    return (x if x.stride(1) == 1 else x.contiguous()), codebook.contiguous()


# The kernels run inside torch.library custom ops with fake implementations (as sparse
# attention's do), so torch.compile traces a call as one opaque node with known output shapes.
# The codebook's terms are computed outside them (:func:`codebook_terms`, once per version).
@torch.library.custom_op("jukebox_fast::vq_search", mutates_args=())
def _vq_search(x: torch.Tensor, codebook: torch.Tensor, code_sq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    from ..kernels import vq as kernels

    n = x.shape[0]
    indices = buffers.new_empty((n,), torch.int64, x.device)
    dists = buffers.new_empty((n,), torch.float32, x.device)
    if n:
        kernels.search(x, codebook, code_sq, indices, dists)
    return indices, dists


@_vq_search.register_fake
def _(x, codebook, code_sq):
    n = x.shape[0]
    return x.new_empty((n,), dtype=torch.int64), x.new_empty((n,), dtype=torch.float32)


@torch.no_grad()
def vq_nearest_triton(x: torch.Tensor, codebook: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    terms = codebook_terms(codebook)
    return _vq_search(*_kernel_inputs(x, terms.searchable), terms.norms)


@torch.library.custom_op("jukebox_fast::vq_quantise", mutates_args=())
def _vq_quantise(x: torch.Tensor, codebook: torch.Tensor, code_sq: torch.Tensor, stats: bool, deterministic: bool,
                 block_n: int | None, block_k: int | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                                               torch.Tensor]:
    """codes, distances, quantised, commit sum, counts [K] and sums [K, D] (both empty without
    ``stats``: a custom op returns tensors only)."""
    from ..kernels import vq as kernels

    (n, d), k, dev = x.shape, codebook.shape[0], x.device
    codes = buffers.new_empty((n,), torch.int64, dev)
    dists = buffers.new_empty((n,), torch.float32, dev)
    quantised = buffers.new_empty((n, d), codebook.dtype, dev)
    errors = buffers.new_empty((kernels.errors_size(n, d, x.dtype, block_n),), torch.float32, dev)  # per program
    atomic = stats and not deterministic
    counts = torch.zeros(k, dtype=torch.int32, device=dev) if atomic else None  # atomics add into these
    sums = torch.zeros(k, d, device=dev) if atomic else None
    if n:
        kernels.search(x, codebook, code_sq, codes, dists, quantised, errors, counts, sums,
                       block_n=block_n, block_k=block_k)
    if stats and deterministic:
        counts = torch.bincount(codes, minlength=k)  # [K]
        order = torch.argsort(codes, stable=True)  # [N] rows grouped by code, in row order
        sums = buffers.new_empty((k, d), torch.float32, dev)
        kernels.segment_sums(x, order, counts.cumsum(0) - counts, counts, sums)
    if not stats:
        return codes, dists, quantised, errors.sum(), codes.new_empty((0,)), dists.new_empty((0, d))
    return codes, dists, quantised, errors.sum(), counts.long(), sums


@_vq_quantise.register_fake
def _(x, codebook, code_sq, stats, deterministic, block_n, block_k):
    (n, d), k = x.shape, codebook.shape[0]
    return (x.new_empty((n,), dtype=torch.int64), x.new_empty((n,), dtype=torch.float32),
            x.new_empty((n, d), dtype=codebook.dtype), x.new_empty((), dtype=torch.float32),
            x.new_empty((k if stats else 0,), dtype=torch.int64),
            x.new_empty((k if stats else 0, d), dtype=torch.float32))


@torch.no_grad()
def vq_quantise_triton(
    x: torch.Tensor, codebook: torch.Tensor, stats: bool = True, deterministic: bool = False, *,
    block_n: int | None = None, block_k: int | None = None,
) -> Quantised:
    terms = codebook_terms(codebook)
    codes, dists, quantised, commit, counts, sums = _vq_quantise(*_kernel_inputs(x, terms.searchable), terms.norms,
                                                                 bool(stats), bool(deterministic), block_n, block_k)
    return Quantised(codes, dists, quantised, commit, counts if stats else None, sums if stats else None)


dispatch.define_op(
    "vq_nearest",
    order=("triton", "torch"),
    doc="x[N, D], codebook[K, D] -> nearest index int64 [N], squared distance fp32 [N]",
)
dispatch.define_op(
    "vq_quantise",
    order=("triton", "torch"),
    doc="vq_nearest plus codebook[idx], the commit-error sum and per-code counts and sums",
)
_TRITON_NOTE = "Triton kernel (kernels/vq.py): tiled search, running argmin in registers"
dispatch.register("vq_nearest", "triton", vq_nearest_triton, supports=_triton_supports, note=_TRITON_NOTE)
dispatch.register(
    "vq_nearest", "torch", vq_nearest_reference, note="chunked PyTorch reference, any device"
)
dispatch.register(
    "vq_quantise", "triton", vq_quantise_triton, supports=_triton_supports,
    note=_TRITON_NOTE + ", fused dequantise/commit/EMA statistics",
)
dispatch.register(
    "vq_quantise", "torch", vq_quantise_reference, note="PyTorch reference, any device"
)
