"""torch.compile for training: every transformer block of a model compiled in place.

A training step of the tiny presets on a CPU is bound by the interpreter, not by arithmetic:
thousands of small ATen calls a step (views, transposes, LayerNorms, elementwise products), each
costing more in dispatch than in work. Inductor fuses a block's elementwise work into a few
generated loops and runs forward and backward without the Python between them. Compiling each
block rather than the whole model compiles one graph per distinct block (layers of the same
pattern and width share it), several times faster to compile (the tiny prior's 48 blocks: 64 s
cold on 2 cores, against 227 s for the whole model, for the same step time), and the rest of
the model (conditioning, losses) stays eager. ``nn.Module.compile`` works in place, so
parameters, state-dict keys and checkpoints are unchanged.

On the CPU, each compiled graph's wrapper (the code that allocates buffers and calls its
kernels) is generated in C++ rather than Python (Inductor's ``cpp_wrapper``): at these sizes the
wrapper's own per-call cost is a large part of the step. The compiled tiny_prior step went from
57.9 to 44.8 ms with it (``bench_prior_cpu.py``, batch 2, back to back on a 2-core AVX2 EPYC).
The option is given per compiled block, so other torch.compile users in the process are not
affected.

The convolutional residual blocks are left eager: their time is oneDNN's convolutions, which
Inductor calls as they are, and the tiny VQ-VAE's step was slower compiled (1.10 s against 1.05 s
a step at batch 2, 2-core AVX2 EPYC).
"""
from __future__ import annotations

import torch

__all__ = ["BLOCKS", "compile_blocks"]

BLOCKS = ("ResAttnBlock",)  # the priors' transformer layers


# Graphs one block class may compile: each pattern, width and context is one (the tiny 5b_lyrics
# prior alone has 11); past Dynamo's default of 8 the rest would silently run eager.
RECOMPILE_LIMIT = 64


def compile_blocks(model: torch.nn.Module) -> int:
    """Compile every block of ``model`` whose class is in :data:`BLOCKS`, in place; returns how many."""
    import torch._dynamo

    config = torch._dynamo.config
    config.recompile_limit = max(config.recompile_limit, RECOMPILE_LIMIT)
    config.accumulated_recompile_limit = max(config.accumulated_recompile_limit, 4 * RECOMPILE_LIMIT)
    first = next(model.parameters(), None)
    options = {"cpp_wrapper": True} if first is None or first.device.type == "cpu" else None
    count = 0
    for module in model.modules():
        if type(module).__name__ in BLOCKS:
            module.compile(options=options)
            count += 1
    return count
