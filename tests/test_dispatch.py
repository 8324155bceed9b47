"""Dispatch: precedence, environment overrides, and the errors of explicit requests."""
from __future__ import annotations

import pytest
import torch

from jukebox_fast import dispatch
from jukebox_fast.dispatch import BackendUnavailableError, Registry, use_backend


def _toy(registry: Registry, cuda_ok=True, triton_supports=None):
    """Op 'toy' with impls that return their own name; triton refuses inputs flagged 'no_triton'."""
    registry.define_op("toy", order=("cuda", "triton", "torch"))
    registry.register("toy", "cuda", lambda x: "cuda",
                      available=lambda: None if cuda_ok else "extension not built")
    registry.register("toy", "triton", lambda x: "triton",
                      supports=triton_supports or (lambda x: ["flagged input"] if x == "no_triton" else []))
    registry.register("toy", "torch", lambda x: "torch")
    return registry


@pytest.fixture
def reg(monkeypatch):
    for var in ("JUKEBOX_FAST_BACKEND", "JUKEBOX_FAST_BACKEND_TOY"):
        monkeypatch.delenv(var, raising=False)
    return _toy(Registry())


def test_auto_takes_first_runnable_in_priority_order(reg):
    assert reg.call("toy", "x") == "cuda"
    unbuilt = _toy(Registry(), cuda_ok=False)
    assert unbuilt.call("toy", "x") == "triton"
    assert unbuilt.call("toy", "no_triton") == "torch"


def test_auto_passes_over_a_declining_impl_but_a_request_gets_it():
    reg = Registry()
    reg.define_op("toy", order=("cpp", "torch"))
    reg.register("toy", "cpp", lambda x: "cpp", declines=lambda x: ["slower here"] if x == "wide" else [])
    reg.register("toy", "torch", lambda x: "torch")
    assert reg.call("toy", "narrow") == "cpp"
    assert reg.call("toy", "wide") == "torch"
    assert reg.call("toy", "wide", backend="cpp") == "cpp"


class _OnCuda(torch.Tensor):
    """A CPU tensor that says it is on CUDA: what the dispatch's CUDA rule looks at."""

    @property
    def is_cuda(self):
        return True


def test_on_cuda_auto_takes_a_kernel_only_where_a_benchmark_measured_it_ahead(reg, monkeypatch):
    from jukebox_fast import measured

    x = torch.zeros(2).as_subclass(_OnCuda)
    resolved = reg.resolve("toy", x)
    assert resolved.name == "torch"  # cuda and triton: no recorded GPU win
    assert reg.call("toy", x, backend="triton") == "triton"  # a request still gets the kernel
    monkeypatch.setattr(measured, "CUDA_RULES", [measured.Rule("toy", "triton", "benchmarks/results/toy_h200.md")])
    assert reg.call("toy", x) == "triton"
    assert reg.call("toy", torch.zeros(2)) == "cuda"  # CPU inputs: the rule does not apply
    with pytest.raises(BackendUnavailableError, match="no benchmark has measured it ahead"):
        monkeypatch.setattr(measured, "CUDA_RULES", [])
        bare = Registry()
        bare.define_op("toy", order=("triton", "torch"))
        bare.register("toy", "triton", lambda x: "triton")
        bare.register("toy", "torch", lambda x: "torch", supports=lambda x: ["no"])
        bare.call("toy", x)


def test_a_measured_rule_covers_only_its_dtypes_widths_and_batches(reg, monkeypatch):
    from jukebox_fast import measured

    rule = measured.Rule("toy", "triton", "benchmarks/results/toy_h200.md", dtypes=("bf16",), widths=(64, 480),
                         batches=(1, 16), speedup=1.8)
    monkeypatch.setattr(measured, "CUDA_RULES", [rule])

    def on_cuda(*shape, dtype=torch.bfloat16):
        return torch.zeros(*shape, dtype=dtype).as_subclass(_OnCuda)

    assert reg.resolve("toy", on_cuda(16, 480)).name == "triton"  # batch 16, width 480: both ends covered
    assert reg.resolve("toy", on_cuda(1, 64)).name == "triton"
    assert reg.resolve("toy", on_cuda(17, 480)).name == "torch"  # batch outside
    assert reg.resolve("toy", on_cuda(4, 512)).name == "torch"  # width outside
    assert reg.resolve("toy", on_cuda(4, 128, dtype=torch.float32)).name == "torch"  # dtype outside
    with pytest.raises(BackendUnavailableError, match="at float32, width 128, batch 4"):
        bare = Registry()
        bare.define_op("toy", order=("triton", "torch"))
        bare.register("toy", "triton", lambda x: "triton")
        bare.register("toy", "torch", lambda x: "torch", supports=lambda x: ["no"])
        bare.call("toy", on_cuda(4, 128, dtype=torch.float32))


def test_precedence_argument_context_env_op_env_global(reg, monkeypatch):
    monkeypatch.setenv("JUKEBOX_FAST_BACKEND", "triton")
    assert reg.call("toy", "x") == "triton"
    monkeypatch.setenv("JUKEBOX_FAST_BACKEND_TOY", "torch")
    assert reg.call("toy", "x") == "torch"  # per-op variable beats the global one
    with use_backend("cuda"):
        assert reg.call("toy", "x") == "cuda"  # a context beats both variables
        with use_backend(toy="triton"):
            assert reg.call("toy", "x") == "triton"  # inner context wins
            assert reg.call("toy", "x", backend="torch") == "torch"  # the argument beats all
        assert reg.call("toy", "x") == "cuda"  # and the inner context is gone on exit
    assert reg.call("toy", "x") == "torch"


def test_env_auto_and_case_are_accepted(reg, monkeypatch):
    monkeypatch.setenv("JUKEBOX_FAST_BACKEND_TOY", " Torch ")
    assert reg.call("toy", "x") == "torch"
    monkeypatch.setenv("JUKEBOX_FAST_BACKEND_TOY", "auto")
    assert reg.call("toy", "x") == "cuda"


@pytest.mark.parametrize("how", ["argument", "context", "op_env", "global_env", "global_context"])
def test_explicit_request_that_cannot_run_raises_with_reasons(reg, monkeypatch, how):
    call = lambda: reg.call("toy", "no_triton", **({"backend": "triton"} if how == "argument" else {}))
    if how == "op_env":
        monkeypatch.setenv("JUKEBOX_FAST_BACKEND_TOY", "triton")
    if how == "global_env":
        monkeypatch.setenv("JUKEBOX_FAST_BACKEND", "triton")
    ctx = {"context": use_backend(toy="triton"), "global_context": use_backend("triton")}.get(how)
    with pytest.raises(BackendUnavailableError, match=r"'triton'.*flagged input"):
        if ctx is None:
            call()
        else:
            with ctx:
                call()


def test_unavailable_implementation_reports_its_reason(monkeypatch):
    reg = _toy(Registry(), cuda_ok=False)
    with pytest.raises(BackendUnavailableError, match="extension not built"):
        reg.call("toy", "x", backend="cuda")


def test_op_specific_request_for_missing_impl_is_an_error_but_global_is_scoped(reg, monkeypatch):
    reg.define_op("plain", order=("triton", "torch"))
    reg.register("plain", "torch", lambda x: "torch")
    with pytest.raises(BackendUnavailableError, match="no such implementation"):
        reg.call("plain", "x", backend="triton")
    with pytest.raises(BackendUnavailableError, match="no such implementation"):
        reg.call("plain", "x", backend="cuda")
    # A global choice covers the ops that have it; 'plain' has no cuda impl and keeps auto.
    with use_backend("cuda"):
        assert reg.call("plain", "x") == "torch"
        assert reg.call("toy", "x") == "cuda"


def test_unknown_backend_name_is_a_value_error(reg, monkeypatch):
    with pytest.raises(ValueError, match="unknown backend 'trtion'.*known: auto, cuda, torch, triton"):
        reg.call("toy", "x", backend="trtion")
    monkeypatch.setenv("JUKEBOX_FAST_BACKEND", "gpu")
    with pytest.raises(ValueError, match="from JUKEBOX_FAST_BACKEND"):
        reg.call("toy", "x")


def test_nothing_runnable_under_auto_lists_every_reason():
    reg = Registry()
    reg.define_op("picky", order=("triton", "torch"))
    reg.register("picky", "triton", lambda: None, available=lambda: "no triton here")
    reg.register("picky", "torch", lambda: None, supports=lambda: ["unsupported shape"])
    with pytest.raises(BackendUnavailableError, match="triton: no triton here; torch: unsupported shape"):
        reg.call("picky")


def test_availability_is_computed_once():
    calls = []
    reg = Registry()
    reg.define_op("once", order=("triton", "torch"))
    reg.register("once", "triton", lambda: "triton", available=lambda: calls.append(1) or None)
    reg.register("once", "torch", lambda: "torch")
    for _ in range(3):
        assert reg.call("once") == "triton"
    assert calls == [1]


def test_registration_errors():
    reg = Registry()
    reg.define_op("a", order=("torch",))
    with pytest.raises(ValueError, match="already defined"):
        reg.define_op("a", order=("torch",))
    with pytest.raises(ValueError, match="not among them"):
        reg.register("a", "cuda", lambda: None)
    reg.register("a", "torch", lambda: None)
    with pytest.raises(ValueError, match="already has"):
        reg.register("a", "torch", lambda: None)
    with pytest.raises(KeyError, match="unknown op 'b'"):
        reg.call("b")


def test_triton_reasons_follow_device_and_interpreter(monkeypatch):
    pytest.importorskip("triton")
    cpu = torch.zeros(1)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    (reason,) = dispatch.triton_reasons(cpu)
    assert "cpu" in reason and "TRITON_INTERPRET=1" in reason
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert dispatch.triton_reasons(cpu) == []
    assert dispatch.triton_reasons(torch.zeros(1, device="meta")) != []


@pytest.mark.parametrize("op", ["vq_nearest", "vq_quantise"])
def test_the_package_sends_cpu_tensors_to_torch_unless_the_interpreter_is_on(op, monkeypatch):
    pytest.importorskip("triton")
    for var in ("JUKEBOX_FAST_BACKEND", f"JUKEBOX_FAST_BACKEND_{op.upper()}", "TRITON_INTERPRET"):
        monkeypatch.delenv(var, raising=False)
    import jukebox_fast.ops  # noqa: F401

    x = torch.randn(4, 3)
    assert [i.name for i in dispatch.get_op(op).ranked()] == ["triton", "torch"]
    assert dispatch.resolve(op, x, x).name == "torch"
    with pytest.raises(BackendUnavailableError, match=f"{op}.*'triton'.*backend= argument.*TRITON_INTERPRET=1"):
        dispatch.resolve(op, x, x, backend="triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert dispatch.resolve(op, x, x).name == "triton"
    with pytest.raises(BackendUnavailableError, match="fp32, bf16 or fp16, not float64"):
        dispatch.resolve(op, x.double(), x.double(), backend="triton")
    assert dispatch.resolve(op, x.double(), x.double()).name == "torch"  # auto passes it on
    wide = torch.randn(2, 300)
    with pytest.raises(BackendUnavailableError, match="up to D=256 wide, got D=300"):
        dispatch.resolve(op, wide, wide, backend="triton")
