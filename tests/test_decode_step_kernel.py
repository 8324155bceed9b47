"""The Triton decode step (kernels/decode_step.py + kernels/decode.py) against the reference step.

On a CUDA device, or on the CPU with ``TRITON_INTERPRET=1``: every pattern at every position of a
40-position context, odd shapes, more samples than a program's rows, 16-bit weights by the 2×
rule, int8 weights, the split cache inside a step, bit-repeatability, and the launch budget (three a
layer, and the first rows' statistics once a step).
"""
from __future__ import annotations

import signal

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

pytest.importorskip("triton", reason="the Triton kernels need the triton package")
import jukebox_fast.kernels.decode as attention_kernels  # noqa: E402
from conftest import kernel_device  # noqa: E402
from decode_stacks import copy_caches, int8_stack, random_stack
from jukebox_fast import make_prior
from jukebox_fast.dispatch import use_backend
from jukebox_fast.models.decoding import IncrementalDecoder
from jukebox_fast.ops import DecodeLayer, DecodeStack, decode_layers

pytestmark = [pytest.mark.interpret, pytest.mark.usefixtures("poisoned")]

SHAPES = [(3, 40, 3, 5, 71), (17, 48, 2, 8, 64), (1, 64, 1, 64, 96)]  # odd; past BLOCK_R samples; one sample
# Positions at and around every block edge of the layouts (block 6, 7, 8; prime window 12), first and last.
POSITIONS = [0, 1, 5, 6, 7, 8, 11, 12, 13, 14, 20, 39]
# The wide and the one-sample shapes test what their size adds (rows past BLOCK_R, one row), and the
# residual scale what it adds: a few positions, since every edge is walked at the first shape with
# scale 1 (each interpreted step costs seconds).
FEW_POSITIONS = [0, 7, 13, 39]


def on(stack: DecodeStack, device, dtype=torch.float32) -> DecodeStack:
    """The stack on ``device``, projections, biases and caches in ``dtype`` (LayerNorm in fp32,
    int8 matrices and their scales as they are)."""
    layers = []
    for layer in stack.layers:
        weights = tuple(w.to(device, w.dtype if w.dtype == torch.int8 else torch.float32 if i in (0, 1, 6, 7) else dtype)
                        for i, w in enumerate(layer.weights))
        scales = tuple(None if s is None else s.to(device) for s in layer.scales)
        layers.append(DecodeLayer(weights, layer.k.to(device, dtype), layer.v.to(device, dtype), layer.layout,
                                  layer.n_head, layer.res_scale, layer.eps, scales))
    return DecodeStack(layers)


@pytest.mark.parametrize("shape,res_scale", [(SHAPES[0], 1.0), (SHAPES[0], 0.25), (SHAPES[1], 1.0), (SHAPES[2], 1.0)],
                         ids=str)
def test_every_pattern_at_its_edges_matches_the_reference(shape, res_scale):
    dev = kernel_device()
    base = random_stack(*shape, res_scale=res_scale, seed=sum(shape))
    ours, ref = on(base, dev), on(copy_caches(base), dev)
    g = torch.Generator().manual_seed(1)
    for p in POSITIONS if (shape, res_scale) == (SHAPES[0], 1.0) else FEW_POSITIONS:
        x = torch.randn(shape[0], shape[1], generator=g).to(dev)
        position = torch.tensor([p], device=dev)
        got = decode_layers(x, ours, position, backend="triton")
        want = decode_layers(x, ref, position, backend="torch")
        torch.testing.assert_close(got, want, rtol=1e-4, atol=2e-5, msg=lambda m: f"position {p}: {m}")
    for a, b in zip(ours.layers, ref.layers):  # the keys and values written along the way
        torch.testing.assert_close(a.k, b.k, rtol=1e-4, atol=2e-5)
        torch.testing.assert_close(a.v, b.v, rtol=1e-4, atol=2e-5)


def steps(base: DecodeStack, dtype, seed: int):
    """(position, Triton step, reference step, fp32 reference step) in ``dtype`` for random rows at
    three positions, each step on its own copy of ``base``'s caches."""
    dev = kernel_device()
    ours, ref, exact = on(base, dev, dtype), on(copy_caches(base), dev, dtype), on(copy_caches(base), dev)
    g = torch.Generator().manual_seed(seed)
    for p in (0, 13, 39):
        x = torch.randn(3, 40, generator=g).to(dev)
        position = torch.tensor([p], device=dev)
        yield (p, decode_layers(x.to(dtype), ours, position, backend="triton").float(),
               decode_layers(x.to(dtype), ref, position, backend="torch").float(),
               decode_layers(x.to(dtype).float(), exact, position, backend="torch"))


def assert_within_twice_the_references_error(p, got, ref_out, want, dtype):
    err, ref_err = (got - want).abs().max().item(), (ref_out - want).abs().max().item()
    assert err <= 2 * ref_err + torch.finfo(dtype).eps * want.abs().max().item(), (p, err, ref_err)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_16_bit_weights_are_within_twice_the_references_error(dtype):
    for p, got, ref_out, want in steps(random_stack(3, 40, 3, 5, 71, seed=7), dtype, seed=2):
        assert_within_twice_the_references_error(p, got, ref_out, want, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_int8_weights_are_widened_in_registers_and_scaled_per_column(dtype):
    # The step's product (x·q)·s against the reference's x·(q·s): fp32 alike up to rounding; in
    # bf16 within twice the reference's own error against the fp32 step of the same int8 weights.
    base = int8_stack(random_stack(3, 40, 3, 5, 71, seed=13))
    assert all(layer.weights[i].dtype == torch.int8 for layer in on(base, kernel_device()).layers
               for i in (2, 4, 8, 10))
    for p, got, ref_out, want in steps(base, dtype, seed=3):
        if dtype == torch.float32:
            torch.testing.assert_close(got, ref_out, rtol=1e-4, atol=2e-5, msg=lambda m: f"position {p}: {m}")
        else:
            assert_within_twice_the_references_error(p, got, ref_out, want, dtype)


def test_a_split_cache_inside_the_step(monkeypatch):
    monkeypatch.setattr(attention_kernels, "splits_for", lambda *args, **kwargs: 4)
    dev = kernel_device()
    base = random_stack(2, 40, 3, 5, 71, seed=3)
    ours, ref = on(base, dev), on(copy_caches(base), dev)
    for p in (1, 39):  # an empty share beside a full one; every share full
        x = torch.randn(2, 40, device=dev)
        position = torch.tensor([p], device=dev)
        torch.testing.assert_close(decode_layers(x, ours, position, backend="triton"),
                                   decode_layers(x, ref, position, backend="torch"), rtol=1e-4, atol=2e-5)
    assert all(int(c.abs().sum()) == 0 for _, _, c in ours.state["triton"].splits if c is not None)  # counters at 0


def _start_in_reverse(monkeypatch) -> None:
    """The interpreter starts a launch's programs from the last program id to the first (it starts
    them in order of id; a GPU may start them in any order)."""
    from triton.runtime import interpreter

    builder, grid = interpreter.interpreter_builder, []
    set_dim, set_idx = builder.set_grid_dim, builder.set_grid_idx

    def dim(x, y, z):
        grid[:] = (x, y, z)
        set_dim(x, y, z)

    monkeypatch.setattr(builder, "set_grid_dim", dim)
    monkeypatch.setattr(builder, "set_grid_idx", lambda x, y, z: set_idx(grid[0] - 1 - x, grid[1] - 1 - y,
                                                                          grid[2] - 1 - z))


WAIT_LIMIT_S = 300  # the three interpreted steps take about 5 s


def _fail_after(request, seconds: int, why: str) -> None:
    """Fail this test if it is still running in ``seconds``, rather than hang: in the interpreter a
    wait that is not over at once never ends (the test's thread runs every program)."""
    def fail(*_):
        raise TimeoutError(why)

    previous = signal.signal(signal.SIGALRM, fail)
    signal.alarm(seconds)
    request.addfinalizer(lambda: (signal.alarm(0), signal.signal(signal.SIGALRM, previous)))


def test_a_step_is_bit_repeatable_whatever_order_programs_start_in(monkeypatch, request):
    # No two programs add into one element (no sums by atomics), the row statistics' tiles merge in
    # a fixed order, and proj_mlp's programs take their phase from the order they start in, not from
    # their ids (taken from ids, the last ids would start first here and wait for ever): nothing
    # depends on which program runs first. On the GPU, the same twice.
    dev = kernel_device()
    base = random_stack(3, 40, 3, 5, 71, seed=4)
    outs = []
    for reverse in (False, True):
        if reverse and dev == "cpu":
            _start_in_reverse(monkeypatch)
            _fail_after(request, WAIT_LIMIT_S, "a program waited for one that had not started: phases taken from program ids?")
        stack = on(copy_caches(base), dev)
        x = torch.randn(3, 40, generator=torch.Generator().manual_seed(5)).to(dev)
        outs.append([decode_layers(x, stack, torch.tensor([p], device=dev), backend="triton") for p in range(3)])
        assert stack.state["triton"].sync.tolist() == [0, 0, 0, 0]
    assert all(torch.equal(a, b) for a, b in zip(*outs))


class _Ops(TorchDispatchMode):
    """The ATen ops a region runs, with their tensor arguments; none while ``paused`` (the
    interpreter's own work inside a launch)."""

    def __init__(self):
        super().__init__()
        self.calls, self.paused = [], False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not self.paused:
            tensors = [a for a in list(args) + list((kwargs or {}).values()) if isinstance(a, torch.Tensor)]
            self.calls.append((func, tensors))
        return func(*args, **(kwargs or {}))


# Ops that only describe a tensor anew: no kernel runs for them on a GPU.
_METADATA = {"view", "_unsafe_view", "as_strided", "slice", "select", "t", "transpose", "permute", "expand",
             "alias", "detach", "unsqueeze", "squeeze", "reshape", "lift_fresh", "empty", "empty_strided"}


@pytest.fixture
def traced(monkeypatch):
    """(ops, launches): the ATen ops of a region outside Triton launches, and the launches (the
    interpreter's own work inside a launch is not the step's)."""
    from jukebox_fast.kernels import decode as decode_module
    from jukebox_fast.kernels import decode_step

    launches, ops = [], _Ops()

    def counted(kernel, *args, real, **kwargs):
        launches.append(kernel)
        ops.paused = True
        try:
            return real(kernel, *args, **kwargs)
        finally:
            ops.paused = False

    for module in (decode_module, decode_step):
        monkeypatch.setattr(module, "launch", lambda kernel, *a, real=module.launch, **k: counted(kernel, *a, real=real, **k))
    return ops, launches


def test_the_step_launches_three_kernels_a_layer(traced):
    # The GPU path's step as the interpreter runs it: every Triton launch, and every ATen op that
    # would be a kernel on a GPU, counted for one step of a 6-layer stack.
    ops, launches = traced
    dev = kernel_device()
    stack = on(random_stack(2, 40, 3, 5, 71, seed=6), dev)
    x, position = torch.randn(2, 40, device=dev), torch.tensor([9], device=dev)
    decode_layers(x, stack, position, backend="triton")  # the first step allocates the stack's buffers
    launches.clear()
    with ops:
        decode_layers(x, stack, position, backend="triton")
    kernels = [f for f, _ in ops.calls if f.overloadpacket.__name__.removesuffix("_") not in _METADATA]
    layers = len(stack.layers)
    names = [k.fn.__name__ for k in launches]
    assert names == ["_qkv_kernel", "_decode_kernel", "_proj_mlp_kernel"] * layers, names
    # the last program of each proj_mlp launch left its tickets and phase counts at zero for the next
    assert stack.state["triton"].sync.tolist() == [0, 0, 0, 0]
    kernels = [f for f in kernels if f.overloadpacket.__name__ != "full"]  # the poisoned fixture fills the output
    assert len(kernels) <= 2, kernels  # the first rows' statistics (var_mean, stacked into their buffer)


@pytest.mark.parametrize("backend,dtype", [("torch", torch.bfloat16), ("triton", torch.bfloat16),
                                           ("triton", torch.float32)])
def test_a_decode_step_converts_no_weight(backend, dtype, traced):
    # Weights are converted to the step's dtype once, when the decoder is made.
    ops, _ = traced
    dev = kernel_device()
    prior = make_prior("tiny_top_prior", device=dev).eval()
    start = torch.zeros(2, 1, prior.prior.width, device=dev)  # the label model's start embedding
    with use_backend(decode_layers=backend):
        decoder = IncrementalDecoder(prior.prior, 2, y_cond=start, dtype=dtype)
    prepared = decoder.stack.state[backend]  # the step's own weights, made when the decoder was
    prepared = prepared if backend == "torch" else prepared.weights
    weights = {w.data_ptr() for layer in prepared for w in layer}
    weights |= {p.data_ptr() for p in prior.prior.transformer.parameters()}
    decoder.step(None)
    with ops:
        decoder.step(torch.tensor([3, 4], device=dev))
    conversions = [f for f, tensors in ops.calls if f.overloadpacket.__name__ in ("_to_copy", "to", "copy_")
                   and any(t.data_ptr() in weights for t in tensors)]
    assert not conversions, conversions
    assert all(w.dtype == dtype for layer in prepared for i, w in enumerate(layer) if i not in (0, 1, 6, 7))
