"""TrainConfig(compile=True): the repeated blocks compiled in place train as the eager ones do."""
from __future__ import annotations

import copy

import torch

from jukebox_fast.models.transformer import Transformer
from jukebox_fast.train import TrainConfig
from jukebox_fast.train.compiled import compile_blocks
from jukebox_fast.train.loop import fit


def _model() -> Transformer:
    torch.manual_seed(0)
    return Transformer(width=16, length=12, n_head=2, depth=2, attn_order=0, blocks=3)  # two dense layers: one graph


def test_compiled_blocks_give_the_eager_outputs_and_gradients():
    from torch._inductor.utils import run_and_get_code

    eager = _model()
    compiled = copy.deepcopy(eager)
    assert compile_blocks(compiled) == 2
    x = torch.randn(2, 12, 16)

    def forward_backward():
        out = compiled(x)
        out.square().sum().backward()
        return out

    got, codes = run_and_get_code(forward_backward)
    want = eager(x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    # On the CPU every graph, forward and backward, calls its kernels from a C++ wrapper: a Python
    # one defines `call(args)`.
    assert codes and all("inductor_entry" in code and "def call(" not in code for code in codes)
    want.square().sum().backward()
    for (name, a), (_, b) in zip(compiled.named_parameters(), eager.named_parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-6, msg=lambda m: f"{name}: {m}")
    assert list(compiled.state_dict()) == list(eager.state_dict())  # checkpoints keep their keys


def test_fit_compiles_when_asked_and_learns_the_same():
    x = torch.randn(2, 12, 16)

    def loss_fn(model, batch):
        return (model(batch) - 1.0).square().mean(), {}

    runs = []
    for compile in (False, True):
        model = _model()
        summary = fit(model, loss_fn, lambda gen: x, TrainConfig(steps=3, warmup_steps=1, lr=1e-2, compile=compile),
                      progress=False)
        assert all((block._compiled_call_impl is not None) == compile for block in model._attn_mods)
        runs.append(summary["losses"])
    torch.testing.assert_close(torch.tensor(runs[1]), torch.tensor(runs[0]), rtol=1e-4, atol=1e-6)
    assert runs[0][-1] < runs[0][0]
