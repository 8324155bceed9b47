"""The one place that chooses an implementation for each op.

Every op lists its implementations in priority order (e.g. ``cuda``, ``triton``, ``torch``).
The choice for one call is the first of these that is set:

1. the call's ``backend=`` argument;
2. the innermost :func:`use_backend` context that says something about this op;
3. the environment variable ``JUKEBOX_FAST_BACKEND_<OP>`` (e.g. ``JUKEBOX_FAST_BACKEND_VQ_NEAREST``);
4. the environment variable ``JUKEBOX_FAST_BACKEND``;
5. ``auto``: the first implementation that can run these inputs and does not decline them
   (an implementation may decline inputs where it measured slower than the next; on a CUDA
   device every fast implementation declines until a recorded GPU benchmark shows it ahead,
   :mod:`jukebox_fast.measured`). ``torch`` always can.

A choice made for one op (``backend=``, ``use_backend(vq_nearest=...)``, the per-op variable)
must name an implementation that op has. A global choice (``use_backend("triton")`` or
``JUKEBOX_FAST_BACKEND``) applies to every op that has an implementation of that name; the other
ops keep ``auto``. Either way, a requested implementation that cannot run the inputs raises
:class:`BackendUnavailableError` listing why: nothing falls back silently from a request.

CPU tensors go to ``torch``, except that with ``TRITON_INTERPRET=1`` in the environment the
Triton implementations accept CPU tensors (so their tests run without a GPU). That rule lives in
:func:`triton_reasons`, which Triton implementations use as their ``supports`` check.
"""
from __future__ import annotations

import contextlib
import contextvars
import importlib.util
import logging
import os
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import torch

from .kernels import interpreter_on

__all__ = [
    "AUTO",
    "BackendUnavailableError",
    "Impl",
    "Op",
    "Registry",
    "REGISTRY",
    "define_op",
    "register",
    "get_op",
    "ops",
    "resolve",
    "call",
    "bind",
    "use_backend",
    "triton_reasons",
    "interpreter_on",
]

AUTO = "auto"
ENV_GLOBAL = "JUKEBOX_FAST_BACKEND"
_log = logging.getLogger(__name__)


class BackendUnavailableError(NotImplementedError):
    """An implementation that was asked for explicitly cannot run the given inputs."""


def env_var(op_name: str) -> str:
    """Name of the environment variable that picks the implementation of one op."""
    return f"{ENV_GLOBAL}_{op_name.upper()}"


# Looked up once: find_spec walks sys.path, and the check runs on every op call.
_TRITON_INSTALLED = importlib.util.find_spec("triton") is not None


def _triton_missing() -> str | None:
    return None if _TRITON_INSTALLED else "the triton package is not installed"


def triton_reasons(*tensors: torch.Tensor) -> list[str]:
    """Why Triton kernels cannot run on these tensors (empty when they can)."""
    missing = _triton_missing()
    if missing:
        return [missing]
    reasons = []
    for t in tensors:
        if t.device.type == "cuda":
            continue
        if t.device.type == "cpu" and interpreter_on():
            continue
        hint = " (set TRITON_INTERPRET=1 to run the kernels on the CPU)" if t.device.type == "cpu" else ""
        reasons.append(f"a tensor is on {t.device.type}, Triton needs cuda{hint}")
        break
    return reasons


def _no_reasons(*args, **kwargs) -> list[str]:
    return []


def _always_available() -> str | None:
    return None


@dataclass
class Impl:
    """One implementation of an op.

    ``available()`` says why the implementation cannot run on this machine at all (missing
    package, extension that failed to build) or returns None; it is evaluated once.
    ``supports(*args, **kwargs)`` lists why it cannot run these particular inputs (device, dtype,
    shape limits); an empty list means it can. ``declines(*args, **kwargs)`` lists why ``auto``
    should pass over inputs it can run (a measured rule: another implementation is faster there);
    an explicit request still gets it. ``prepare(*args, **kwargs)``, where given, readies state the
    implementation keeps with its inputs (weights in its own form, buffers) before the first call
    that :meth:`Registry.bind` hands out, so the caller never learns which implementation runs.
    """

    name: str
    fn: Callable
    available: Callable[[], str | None] = _always_available
    supports: Callable[..., Sequence[str]] = _no_reasons
    note: str = ""
    declines: Callable[..., Sequence[str]] = _no_reasons
    prepare: Callable[..., None] | None = None
    _unavailable: str | None = field(default=None, init=False, repr=False)
    _checked: bool = field(default=False, init=False, repr=False)

    def unavailable_reason(self) -> str | None:
        if torch.compiler.is_compiling():  # no side effects while tracing (e.g. inside checkpoint)
            return self._unavailable if self._checked else self.available()
        if not self._checked:
            self._unavailable = self.available()
            self._checked = True
        return self._unavailable

    def reasons(self, args: tuple, kwargs: dict) -> list[str]:
        why = self.unavailable_reason()
        if why:
            return [why]
        return list(self.supports(*args, **kwargs))


@dataclass
class Op:
    """An op: a name, a priority order, and the implementations registered so far."""

    name: str
    order: tuple[str, ...]
    doc: str = ""
    impls: dict[str, Impl] = field(default_factory=dict)
    width_dim: int = -1  # the first tensor's dimension that measured rules call its width

    def ranked(self) -> list[Impl]:
        return [self.impls[n] for n in self.order if n in self.impls]

    def shape_of(self, args: tuple) -> tuple[torch.dtype, int | None, int | None] | None:
        """(dtype, width, batch) of a call, from its first tensor, for the measured rules."""
        first = args[0] if args else None
        if not isinstance(first, torch.Tensor):
            return None
        if first.dim() == 0:
            return first.dtype, None, None
        return first.dtype, int(first.shape[self.width_dim]), int(first.shape[0])


# Context frames, innermost last. Each frame maps an op name (or "*" for every op) to a choice.
_frames: contextvars.ContextVar[tuple[dict[str, str], ...]] = contextvars.ContextVar(
    "jukebox_fast_backend_frames", default=()
)


@contextlib.contextmanager
def use_backend(backend: str | None = None, /, **per_op: str) -> Iterator[None]:
    """Choose implementations inside a ``with`` block.

    ``use_backend("torch")`` applies to every op; ``use_backend(vq_nearest="triton")`` to one.
    Inner blocks override outer ones; the ``backend=`` argument of a call overrides both.
    """
    frame = {op: _normalise(choice) for op, choice in per_op.items()}
    if backend is not None:
        frame["*"] = _normalise(backend)
    token = _frames.set(_frames.get() + (frame,))
    try:
        yield
    finally:
        _frames.reset(token)


def _context_choice(op_name: str) -> tuple[str, str, bool] | None:
    """The innermost use_backend() frame's choice for this op, if any."""
    for frame in reversed(_frames.get()):
        if op_name in frame:
            return frame[op_name], f"use_backend({op_name}=...)", True
        if "*" in frame:
            return frame["*"], "use_backend(...)", False
    return None


# torch.compile cannot trace ContextVar.get, so it takes this function's result as a constant:
# a compiled graph keeps the backends in force when it was traced. This is the mark that
# torch.compiler.assume_constant_result sets; calling that would import torch._dynamo (and
# Triton) whenever jukebox_fast is imported. The torch.compile test fails if the mark changes.
_context_choice._dynamo_marked_constant = True


def _normalise(choice: str) -> str:
    if not isinstance(choice, str):
        raise TypeError(f"a backend is named by a string such as 'torch' or 'auto', got {choice!r}")
    return choice.strip().lower()


class Registry:
    """Ops and their implementations. The package uses the module-level :data:`REGISTRY`."""

    def __init__(self) -> None:
        self._ops: dict[str, Op] = {}
        self._logged: set[tuple[str, str, str]] = set()

    # -- building -------------------------------------------------------------------------------
    def define_op(self, name: str, order: Sequence[str], doc: str = "", width_dim: int = -1) -> Op:
        if name in self._ops:
            raise ValueError(f"op {name!r} is already defined")
        op = Op(name, tuple(order), doc, width_dim=width_dim)
        self._ops[name] = op
        return op

    def register(
        self,
        op_name: str,
        impl_name: str,
        fn: Callable,
        *,
        available: Callable[[], str | None] = _always_available,
        supports: Callable[..., Sequence[str]] = _no_reasons,
        note: str = "",
        declines: Callable[..., Sequence[str]] = _no_reasons,
        prepare: Callable[..., None] | None = None,
    ) -> Impl:
        op = self.get_op(op_name)
        if impl_name not in op.order:
            raise ValueError(f"op {op_name!r} orders {op.order}; {impl_name!r} is not among them")
        if impl_name in op.impls:
            raise ValueError(f"op {op_name!r} already has an implementation {impl_name!r}")
        impl = Impl(impl_name, fn, available, supports, note, declines, prepare)
        op.impls[impl_name] = impl
        return impl

    # -- reading --------------------------------------------------------------------------------
    def get_op(self, name: str) -> Op:
        try:
            return self._ops[name]
        except KeyError:
            raise KeyError(f"unknown op {name!r}; known ops: {sorted(self._ops)}") from None

    def ops(self) -> list[Op]:
        return list(self._ops.values())

    def known_backends(self) -> set[str]:
        """Every name an op orders, registered or not, plus ``auto``: anything else is a typo."""
        return {AUTO} | {n for op in self._ops.values() for n in op.order}

    def requested(self, op_name: str, backend: str | None = None) -> tuple[str, str, bool]:
        """The choice in force for one op: (choice, where it came from, applies to this op only)."""
        if backend is not None:
            return _normalise(backend), "the backend= argument", True
        chosen = _context_choice(op_name)
        if chosen is not None:
            return chosen
        var = env_var(op_name)
        if os.environ.get(var, "").strip():
            return _normalise(os.environ[var]), var, True
        if os.environ.get(ENV_GLOBAL, "").strip():
            return _normalise(os.environ[ENV_GLOBAL]), ENV_GLOBAL, False
        return AUTO, "the default", False

    def resolve(self, op_name: str, *args, backend: str | None = None, **kwargs) -> Impl:
        """The implementation that will run ``op(*args, **kwargs)``."""
        op = self.get_op(op_name)
        choice, source, op_specific = self.requested(op_name, backend)
        if choice != AUTO and choice not in self.known_backends():
            raise ValueError(
                f"{op_name}: unknown backend {choice!r} (from {source}); "
                f"known: {', '.join(sorted(self.known_backends()))}"
            )
        if choice != AUTO and choice not in op.impls:
            if op_specific:
                raise BackendUnavailableError(
                    f"{op_name}: backend {choice!r} was requested by {source}, but this op has "
                    f"no such implementation; it has: {', '.join(i.name for i in op.ranked())}"
                )
            choice = AUTO  # a global choice covers only the ops that offer it
        if choice != AUTO:
            impl = op.impls[choice]
            reasons = impl.reasons(args, kwargs)
            if reasons:
                raise BackendUnavailableError(
                    f"{op_name}: backend {choice!r} was requested by {source} but cannot run "
                    f"these inputs: {'; '.join(reasons)}"
                )
            return impl
        rejected = []
        for impl in op.ranked():
            reasons = impl.reasons(args, kwargs) or list(impl.declines(*args, **kwargs)) or _unmeasured(op, impl, args)
            if not reasons:
                return impl
            rejected.append((impl.name, reasons))
            self._log_skip(op_name, impl.name, reasons)
        detail = "; ".join(f"{n}: {', '.join(r)}" for n, r in rejected)
        raise BackendUnavailableError(f"{op_name}: no implementation can run these inputs ({detail})")

    def call(self, op_name: str, *args, backend: str | None = None, **kwargs):
        return self.resolve(op_name, *args, backend=backend, **kwargs).fn(*args, **kwargs)

    def bind(self, op_name: str, *args, backend: str | None = None, **kwargs) -> Callable:
        """The implementation that will run ``op(*args, **kwargs)``, resolved once and prepared
        for these inputs: for a loop that calls the op on inputs of fixed shapes and dtypes (a
        decode step), with no resolution in the loop. Returns the implementation's function."""
        impl = self.resolve(op_name, *args, backend=backend, **kwargs)
        if impl.prepare is not None:
            impl.prepare(*args, **kwargs)
        return impl.fn

    def _log_skip(self, op_name: str, impl_name: str, reasons: list[str]) -> None:
        if torch.compiler.is_compiling():
            return
        key = (op_name, impl_name, "; ".join(reasons))
        if key not in self._logged:
            self._logged.add(key)
            _log.info("%s: skipping %s (%s)", op_name, impl_name, key[2])


def _unmeasured(op: Op, impl: Impl, args: tuple) -> list[str]:
    """Why ``auto`` passes over a fast implementation on CUDA: no recorded GPU benchmark shows it
    ahead of the reference (``jukebox_fast.measured``). The last implementation (the reference)
    is never passed over."""
    from .measured import rule_for

    first = args[0] if args else None
    if not (isinstance(first, torch.Tensor) and first.is_cuda) or impl is op.ranked()[-1]:
        return []
    if rule_for(op.name, impl.name, *op.shape_of(args)):
        return []
    dtype, width, batch = op.shape_of(args)
    return [f"on CUDA no benchmark has measured it ahead of the reference at {str(dtype).removeprefix('torch.')}, "
            f"width {width}, batch {batch} (jukebox_fast/measured.py); ask for it with backend={impl.name!r}"]


REGISTRY = Registry()
define_op = REGISTRY.define_op
register = REGISTRY.register
get_op = REGISTRY.get_op
ops = REGISTRY.ops
resolve = REGISTRY.resolve
call = REGISTRY.call
bind = REGISTRY.bind
