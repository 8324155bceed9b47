"""dilated_resblock: the C++ CPU kernel against the reference, the dispatch's rules, the model
wiring and the extension's loader. (GPU parity: test_resblock_gpu.py; nvcc: test_ext_compile.py.)"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import jukebox_fast
from jukebox_fast import dispatch, extension, ops
from jukebox_fast.dispatch import BackendUnavailableError, use_backend
from resblock_check import assert_close_fp32, assert_within_twice_the_reference, inputs, released_dilations

pytestmark = pytest.mark.skipif(extension.load() is not None, reason=f"C++ extension: {extension.load()}")

SHAPES = [  # (N, C, S, L): odd widths and lengths, hidden != width, L shorter than the dilation
    (1, 32, 32, 1000),
    (3, 5, 7, 37),
    (2, 13, 29, 1),
    (1, 64, 64, 4397),
    (2, 9, 3, 257),
]


def run_cpp(tensors, dilation, res_scale):
    with torch.no_grad():
        return ops.dilated_resblock(*tensors, dilation, res_scale, backend="cpp")


@pytest.mark.parametrize("dilation", released_dilations())
def test_every_released_dilation(dilation, poisoned):
    tensors = inputs(2, 32, 32, 3001)
    assert_close_fp32(run_cpp(tensors, dilation, 1.0), tensors, dilation, 1.0, f"d={dilation}")


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dilation", [1, 2, 27, 2187])
def test_odd_shapes(shape, dilation, poisoned):
    tensors = inputs(*shape, seed=sum(shape) + dilation)
    res_scale = 0.25
    assert_close_fp32(run_cpp(tensors, dilation, res_scale), tensors, dilation, res_scale, f"{shape} d={dilation}")


def test_conditioner_width(poisoned):
    tensors = inputs(1, 1024, 1024, 45)
    assert_close_fp32(run_cpp(tensors, 81, 0.25), tensors, 81, 0.25, "width 1024")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("shape", [(1, 32, 32, 1000), (3, 5, 7, 37), (1, 64, 64, 513)], ids=str)
def test_low_precision_within_twice_the_reference(dtype, shape, poisoned):
    tensors = inputs(*shape, dtype=dtype, seed=3)
    for dilation in (1, 9, 243):
        got = run_cpp(tensors, dilation, 0.5)
        assert got.dtype == dtype
        assert_within_twice_the_reference(got, tensors, dilation, 0.5, f"{dtype} {shape} d={dilation}")


def test_strided_input():
    x, *w = inputs(2, 24, 24, 301)
    xt = x.transpose(1, 2).contiguous().transpose(1, 2)  # same values, channels-last strides
    assert not xt.is_contiguous()
    assert_close_fp32(run_cpp([xt, *w], 3, 1.0), [x, *w], 3, 1.0, "strided x")


def test_auto_takes_the_kernel_for_inference_only():
    tensors = inputs(1, 8, 8, 50)
    with torch.no_grad():
        assert dispatch.resolve("dilated_resblock", *tensors, 1, 1.0).name == "cpp"
    w = [t.requires_grad_() for t in tensors[1:]]
    assert dispatch.resolve("dilated_resblock", tensors[0], *w, 1, 1.0).name == "torch"
    with pytest.raises(BackendUnavailableError, match="inference only"):
        ops.dilated_resblock(tensors[0], *w, 1, backend="cpp")
    out = ops.dilated_resblock(tensors[0], *w, 1)  # auto: the reference, gradients flow
    out.sum().backward()
    assert w[0].grad is not None and w[0].grad.abs().sum() > 0


def test_auto_keeps_the_reference_where_it_measured_faster(monkeypatch):
    from jukebox_fast.ops import resblock

    wide = inputs(1, 512, 512, 20, dtype=torch.bfloat16)
    wide_fp16 = inputs(1, 512, 512, 20, dtype=torch.float16)
    narrow = inputs(1, 64, 64, 20, dtype=torch.bfloat16)
    with torch.no_grad():
        # Where the CPU has bf16 instructions, oneDNN's wide bf16 convolutions measured faster;
        # where it emulates them, the fused kernel (fp32 inside) is the only fast path.
        monkeypatch.setattr(resblock, "native_16bit", lambda dtype: False)
        assert dispatch.resolve("dilated_resblock", *wide, 1, 1.0).name == "cpp"
        monkeypatch.setattr(resblock, "native_16bit", lambda dtype: True)
        assert dispatch.resolve("dilated_resblock", *wide, 1, 1.0).name == "torch"
        assert dispatch.resolve("dilated_resblock", *narrow, 1, 1.0).name == "cpp"
        assert dispatch.resolve("dilated_resblock", *wide_fp16, 1, 1.0).name == "cpp"
        got = ops.dilated_resblock(*wide, 1, backend="cpp")  # asked for by name: it runs
    assert_within_twice_the_reference(got, wide, 1, 1.0, "wide bf16")


@pytest.mark.parametrize("change, message", [
    (lambda t: [t[0][0]] + t[1:], r"x must be \[N, C, L\]"),
    (lambda t: [t[0], t[1][:, :3]] + t[2:], r"w1 must be \[S, C, 3\] for x with C=8"),
    (lambda t: t[:3] + [t[3][:2]] + t[4:], r"w2 must be \[8, 6, 1\]"),
    (lambda t: [t[0].double()] + t[1:], "float32, float16 or bfloat16"),
    (lambda t: [t[0]] + [t[1].half()] + t[2:], "w1 is torch.float16 on cpu, but x is torch.float32"),
])
def test_bad_inputs_say_what_was_expected(change, message):
    tensors = change(inputs(1, 8, 6, 10))
    with pytest.raises(ValueError, match=message):
        ops.dilated_resblock(*tensors, 1)
    with pytest.raises(ValueError, match="dilation must be an int >= 1"):
        ops.dilated_resblock(*inputs(1, 8, 6, 10), 0)


def test_the_extension_checks_its_own_inputs():
    x, w1, b1, w2, b2 = inputs(1, 8, 6, 10)
    with pytest.raises(RuntimeError, match="out must be a contiguous tensor like x"):
        torch.ops.jukebox_fast_ext.dilated_resblock(x, w1, b1, w2, b2, 1, 1.0, torch.empty(1, 8, 9))
    with pytest.raises(RuntimeError, match="w1 must be"):
        torch.ops.jukebox_fast_ext.dilated_resblock(x, w1[:, :3], b1, w2, b2, 1, 1.0, torch.empty_like(x))


@pytest.mark.parametrize("preset, level", [("tiny_vqvae", 0), ("vqvae", 0), ("vqvae", 2)])
def test_vqvae_decode_with_the_extension_equals_torch(preset, level):
    vqvae = jukebox_fast.make_vqvae(preset).eval()
    codes = [torch.randint(0, vqvae.hps.l_bins, (2, 24)) for _ in range(3 - level)]
    with torch.no_grad():
        with use_backend(dilated_resblock="torch"):
            want = vqvae.decode(codes, start_level=level)
        with use_backend(dilated_resblock="cpp"):
            got = vqvae.decode(codes, start_level=level)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_upsampler_conditioner_with_the_extension_equals_torch():
    prior = jukebox_fast.make_prior("tiny_upsampler").eval()
    cond = prior.conditioner_blocks[0]
    z = torch.randint(0, prior.hps.l_bins if hasattr(prior.hps, "l_bins") else 16, (2, 16))
    with torch.no_grad():
        with use_backend(dilated_resblock="torch"):
            want = cond(z)
        with use_backend(dilated_resblock="cpp"):
            got = cond(z)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_the_cache_holds_one_finished_build():
    assert extension.load() is None
    if not any(True for _ in extension.cache_dir().glob(f"{extension.NAMESPACE}-*")):
        pytest.skip("the extension was loaded prebuilt (jukebox_fast._C), not from the cache")
    names = [p.name for p in extension.cache_dir().iterdir()]
    assert not [n for n in names if ".tmp-" in n], names
    key = extension._key(extension.sources(), extension._want_cuda() is None)
    assert (extension.cache_dir() / f"{extension.NAMESPACE}-{key}" / f"{extension.NAMESPACE}.so").exists()


def _info_rows(impl: str, **env) -> str:
    """`python -m jukebox_fast.info` in a fresh process: dilated_resblock's row for one impl."""
    out = subprocess.run([sys.executable, "-m", "jukebox_fast.info"], capture_output=True, text=True,
                         env={**os.environ, **env}, check=True).stdout
    rows = [line for line in out.splitlines() if line.split()[:2] == ["dilated_resblock", impl]]
    assert len(rows) == 1, out
    return rows[0]


def test_turned_off_extension_is_a_listed_reason():
    assert "unavailable: the C++ extension is turned off (JUKEBOX_FAST_EXT=0)" in _info_rows("cpp", JUKEBOX_FAST_EXT="0")


def test_missing_compiler_is_a_listed_reason(tmp_path):
    row = _info_rows("cpp", JUKEBOX_FAST_EXT_CACHE=str(tmp_path), CXX="no-such-compiler-jf")
    assert "unavailable: no C++ compiler: 'no-such-compiler-jf' is not on PATH" in row
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a CPU-only build")
def test_cuda_impl_of_a_cpu_build_says_why():
    assert "unavailable: the extension was built without CUDA" in _info_rows("cuda")


def test_torch_compile_traces_the_extension_op_without_graph_breaks():
    from jukebox_fast.models.resnet import Resnet1D

    torch._dynamo.reset()
    stack = Resnet1D(16, 3, dilation_growth_rate=3, res_scale=True).eval()
    x = torch.randn(2, 16, 100)
    ops_seen = []

    def backend(gm, example_inputs):
        ops_seen.extend(str(n.target) for n in gm.graph.nodes if n.op == "call_function")
        return gm.forward

    with torch.no_grad():
        want = stack(x)
        got = torch.compile(stack, fullgraph=True, backend=backend)(x)
    torch.testing.assert_close(got, want)
    assert sum("jukebox_fast_ext.dilated_resblock" in t for t in ops_seen) == 3, ops_seen
